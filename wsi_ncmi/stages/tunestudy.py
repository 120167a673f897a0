"""The Optuna study behind ``wsi-ncmi tune``: storage, identity, workers, stale trials, reading.

The study lives in ``DIR/study.journal`` (Optuna's JournalStorage over a journal file: an
append-only log that several processes, also on other machines of a shared file system, write
under a file lock). Opening it again continues the same study.

**Identity.** The first call stores what the study searches (loss, search space, the resolved
base config without ``device``/``data``, and a digest of the selection folds and their labels)
as the study's user attribute ``identity``; a later call with anything else is refused, so
trials of different searches never mix.

**Workers and stale trials.** Every trial records its worker (``worker_host``, ``worker_pid``)
and a ``heartbeat`` (Unix time, renewed after every epoch). A trial left RUNNING by a worker
that was killed is *stale* when its process is gone (same host) or its heartbeat is older than
``stale_after_s`` (another host). Before each new trial a worker marks stale trials FAIL
and enqueues their parameters again (the new trial's ``retry_of`` names the old one), so a
killed trial is retried once, with the same settings, and never counted twice. Telling a
finished trial fails in the journal, so of two workers reaping the same trial only one
enqueues it. A trial interrupted by Ctrl-C enqueues its own retry (``note``: interrupted).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ..errors import InputError
from ..formats.tunefolder import journal_path

STUDY_NAME = "wsi-ncmi-tune"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def digest(obj: object) -> str:
    """sha256 of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def open_study(out_dir: Path, identity: dict, pruner: optuna.pruners.BasePruner
               ) -> optuna.Study:
    """Create or continue the study in ``out_dir``; :class:`InputError` when it searches
    something else than ``identity`` says (module docstring). The caller sets the sampler
    (its seed depends on the trials already there)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(journal_path(out_dir))))
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    plain = json.loads(json.dumps(identity))
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", plain)
    elif stored != plain:
        differ = sorted(k for k in plain.keys() | stored.keys() if plain.get(k) != stored.get(k))
        raise InputError(f"{journal_path(out_dir)}: holds a study with another "
                         f"{', '.join(differ)}; use another --out folder")
    return study


def mark_worker(trial: optuna.Trial) -> None:
    """Record this process as the trial's worker, with a fresh heartbeat."""
    trial.set_user_attr("worker_host", socket.gethostname())
    trial.set_user_attr("worker_pid", os.getpid())
    trial.set_user_attr("heartbeat", time.time())


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: FrozenTrial, stale_after_s: float, now: float | None = None) -> bool:
    """Whether a RUNNING trial's worker is gone (module docstring)."""
    attrs = trial.user_attrs
    beat = attrs.get("heartbeat")
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    if attrs.get("worker_host") == socket.gethostname() and \
            attrs.get("worker_pid") not in (None, os.getpid()) and \
            not _process_alive(int(attrs["worker_pid"])):
        return True
    return beat is not None and (now or time.time()) - beat > stale_after_s


def reap_stale(study: optuna.Study, stale_after_s: float) -> list[int]:
    """Mark the study's stale trials FAIL and enqueue their parameters again; return the
    numbers of the trials reaped here."""
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial, stale_after_s):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):
            continue  # another worker finished or reaped it first
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        reaped.append(trial.number)
    return reaped


def counts(study: optuna.Study) -> tuple[int, int]:
    """(finished trials: complete or pruned, trials running now)."""
    trials = study.get_trials(deepcopy=False)
    return (sum(t.state in FINISHED for t in trials),
            sum(t.state == TrialState.RUNNING for t in trials))


def _number(x: object) -> float:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else float("-inf")


def best_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The best complete trial: highest value, then highest validation AUC (user attribute
    ``val_auc``; undefined counts lowest), then the earliest."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        return None
    return max(done, key=lambda t: (t.value, _number(t.user_attrs.get("val_auc")), -t.number))


def plotted_value(trial: FrozenTrial) -> float:
    """The value a trial is drawn with: its objective, or for a pruned trial the last value it
    reported (NaN when none)."""
    if trial.value is not None:
        return float(trial.value)
    if trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    return float("nan")


def trial_row(trial: FrozenTrial) -> dict:
    """One trials.csv row (:data:`wsi_ncmi.formats.tunefolder.TRIAL_COLUMNS` + ``params``)."""
    duration = (trial.duration.total_seconds() if trial.duration is not None else None)
    attrs = trial.user_attrs
    note = attrs.get("note")
    if trial.state == TrialState.FAIL and note is None:
        note = "worker stopped; retried as a new trial"
    if attrs.get("start"):
        note = "the base config's values" + (f"; {note}" if note else "")
    if "retry_of" in attrs:
        note = f"retry of trial {attrs['retry_of']}" + (f"; {note}" if note else "")
    value = trial.value if trial.state == TrialState.COMPLETE else None
    return {"number": trial.number, "state": trial.state.name, "value": value,
            "val_auc": attrs.get("val_auc"), "epochs_run": attrs.get("epochs_run"),
            "duration_s": None if duration is None else round(duration, 2), "note": note,
            "params": dict(trial.params)}
