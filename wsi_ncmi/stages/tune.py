"""The ``tune`` stage: a hyper-parameter search for one loss, selected on validation data only.

**The test split is never read** (:mod:`wsi_ncmi.stages.tunedata`): its manifest rows are
dropped before any label is mapped or any feature file is opened, and the log says how many
slides were held out. With ``kfold``/``logo`` splits the tune uses outer fold ``fold``
(default 0); the other folds' test slides are then part of the search, so only that fold's
test part is clean for the tuned config (the log warns).

**Selection.** The objective of a trial is its validation macro-F1: the best epoch's value of
each selection fold (the checkpoint ``train`` would keep), averaged over the folds. The
selection folds are the given train/val split when it is large enough, else patient-grouped
inner folds over train+val (:func:`~wsi_ncmi.stages.tunedata.selection_folds`; thresholds in
the space file's ``tune`` section). Ties between trials go to the higher
validation AUC (one-vs-rest macro, at the kept epochs, averaged over the folds), then to the
earlier trial. Every trial trains with the base config's seed.

**Search.** Every trial trains at one lr: ``optim.lr: auto`` (train's default, which tries
four) means the loss's single default lr here (``LOSS_LR``), so that a trial's budget is one
training whatever the space holds (a trial's config, and ``best.yaml``, hold no ``lr_grid``). A
new study's first trial (worker 0's) takes the base config's values — the defaults, or what
``--config`` set — for every searched setting the space can draw (the rest are sampled;
``trials.csv`` notes it): when the space holds them all, the tune's best is never below the
base config on its selection folds, even with two or three trials. Then Optuna's TPE sampler
(``--seed`` seeds it, together with the worker number and the number of trials already in the
study, so a resumed or parallel worker does not replay another's random draws;
``constant_liar`` keeps parallel workers apart), and a median pruner: after every epoch the
trial reports its fold's best validation macro-F1 so far at step ``fold × E + epoch − 1`` (fold
0-based, epoch 1-based, E = the most epochs a trial can run) and stops when that falls below
the median of earlier trials at the same step (once ``prune_after_trials`` trials finished,
after ``prune_warmup_epochs`` steps). A trial whose loss diverges (NaN) is pruned with a
note.

**Budget.** ``--trials N`` finished (complete or pruned) trials in the study, each at most E
epochs per selection fold; the same N and space file give every loss the same budget.
A call runs trials until the study holds N (running trials of other workers count), so a second
call with a larger N continues and one with N already reached only writes the report.

Writes into ``DIR`` (:mod:`wsi_ncmi.formats.tunefolder`): ``study.journal``, ``best.yaml``,
``trials.csv``, ``search.png`` and ``provenance.json``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import InputError
from ..formats.config import deep_merge, resolve_config, single_lr, split_seed
from ..formats.featurefile import read_encoder_name
from ..formats.tunefolder import SEARCH_PLOT, journal_path, write_best, write_trials
from ..formats.tunespace import SearchSpace, load_space, overrides
from ..model.bags import open_bags
from ..model.device import select_device
from ..model.fit import FoldContext, TrainingDiverged, train_fold
from ..model.losses import loss_names
from ..stats.plots import plot_search
from .provenance import write_record
from .train import resolved_loss_section
from .tunedata import TuneData, prepare
from .tunestudy import (
    FINISHED,
    best_trial,
    counts,
    digest,
    mark_worker,
    open_study,
    plotted_value,
    reap_stale,
    trial_row,
)

log = logging.getLogger("wsi_ncmi")
STALE_AFTER_S = 3600.0


@dataclass
class TuneResult:
    """``finished`` trials in the study, the ``best`` trial's number and value (None when no
    trial completed) and the files written."""

    finished: int
    best: tuple[int, float] | None
    paths: list[Path]


def trial_config(data: TuneData, values: dict) -> dict:
    """The resolved training config of a trial: the base config with ``values`` (config key →
    value) set, the classes and every loss setting filled in."""
    cfg = resolve_config(deep_merge(data.raw, overrides(values)), loss_names())
    cfg["optim"]["lr"] = single_lr(cfg)
    del cfg["optim"]["lr_grid"]  # a trial trains at one lr; studies made before the grid resume
    cfg["task"]["classes"] = list(data.classes)
    cfg["loss"] = resolved_loss_section(cfg, len(data.classes))
    return cfg


def check_space(space: SearchSpace, data: TuneData, loss: str) -> None:
    """Refuse a space that searches another loss's settings, or whose bounds or choices make
    a config train would refuse (each checked with the other settings at their first bound)."""
    others = sorted(space.losses() - {loss})
    if others:
        raise InputError(f"{space.files[-1]}: searches settings of loss(es) "
                         f"{', '.join(others)}, but the loss is {loss}")
    first = {n: p.corners()[0] for n, p in space.params.items()}
    for name, param in space.params.items():
        for value in param.corners():
            try:
                trial_config(data, {**first, name: value})
            except InputError as exc:
                raise InputError(f"{space.files[-1]}: {name} = {value!r} gives a config "
                                 f"train refuses ({exc})") from None


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict:
    """Draw every parameter of ``space`` for ``trial``."""
    values = {}
    for name, p in space.params.items():
        if p.kind == "categorical":
            values[name] = trial.suggest_categorical(name, list(p.choices))
        elif p.kind == "int":
            values[name] = trial.suggest_int(name, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            values[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
    return values


def epoch_budget(space: SearchSpace, data: TuneData) -> int:
    """E: the most epochs a trial can run per selection fold."""
    if "optim.epochs" in space.params:
        return int(space.params["optim.epochs"].largest())
    return int(resolve_config(data.raw, loss_names())["optim"]["epochs"])


def make_objective(data: TuneData, space: SearchSpace, ctx: FoldContext, feature_dim: int,
                   encoder: str) -> Callable[[optuna.Trial], float]:
    """The objective of a trial (module docstring): mean validation macro-F1 of the best
    epochs over the selection folds, reporting to the pruner after every epoch."""
    stride = epoch_budget(space, data)

    def run_fold(trial: optuna.Trial, cfg: dict, index: int, fold: dict) -> tuple[float, float,
                                                                                  int]:
        best = -math.inf

        def report(row: dict) -> None:
            nonlocal best
            if np.isfinite(row["val_macro_f1"]):
                best = max(best, row["val_macro_f1"])
            trial.set_user_attr("heartbeat", time.time())
            trial.report(best if np.isfinite(best) else 0.0, index * stride + row["epoch"] - 1)
            if trial.should_prune():
                trial.set_user_attr("note", f"pruned at fold {index}, epoch {row['epoch']}")
                raise optuna.TrialPruned()

        trained = train_fold(replace(ctx, cfg=cfg), fold, data.classes, feature_dim, encoder,
                             on_epoch=report)
        kept = trained.history[trained.meta["best_epoch"] - 1]
        return trained.meta["best_val_macro_f1"], kept["val_auc"], len(trained.history)

    def objective(trial: optuna.Trial) -> float:
        mark_worker(trial)
        values = suggest(trial, space)
        try:
            cfg = trial_config(data, values)
            runs = [run_fold(trial, cfg, i, fold) for i, fold in enumerate(data.folds)]
        except TrainingDiverged as exc:
            trial.set_user_attr("note", f"diverged: {exc}")
            raise optuna.TrialPruned() from None
        except KeyboardInterrupt:
            trial.set_user_attr("note", "interrupted; retried as a new trial")
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        except InputError as exc:
            trial.set_user_attr("note", f"error: {exc}")
            raise
        f1s, aucs, epochs = zip(*runs, strict=True)
        auc = float(np.mean(aucs)) if np.all(np.isfinite(aucs)) else None
        trial.set_user_attr("val_auc", auc)
        trial.set_user_attr("fold_macro_f1", [float(f) for f in f1s])
        trial.set_user_attr("epochs_run", int(sum(epochs)))
        value = float(np.mean(f1s))
        log.info("trial %d: validation macro-F1 %.4f (AUC %s) over %d fold(s), %s",
                 trial.number, value, "n/a" if auc is None else f"{auc:.4f}", len(f1s),
                 ", ".join(f"{k} {v}" for k, v in values.items()))
        return value

    return objective


def tune_study(config: dict, out_dir: Path, features_dir: Path, manifest: Path,
               space_path: Path, n_trials: int, *, seed: int = 0, worker: int = 0,
               fold: int | None = None, stale_after_s: float = STALE_AFTER_S,
               config_files: Sequence[Path] = (), command: str = "wsi-ncmi tune"
               ) -> TuneResult:
    """Run trials until the study in ``out_dir`` holds ``n_trials`` finished ones, then write
    the report (module docstring).

    ``config``: raw (merged) base config holding the task, split and everything not searched;
    ``space_path``: the search-space file (:mod:`wsi_ncmi.formats.tunespace`); ``seed``: seeds
    the sampler (with ``worker``, this process's number among parallel workers); ``fold``:
    the outer fold of a kfold/logo split (default 0); ``stale_after_s``: seconds without a
    heartbeat after which another host's running trial counts as stopped.
    """
    if n_trials < 1:
        raise InputError(f"--trials must be ≥ 1, got {n_trials}")
    space = load_space(space_path)
    loss = resolve_config(config, loss_names())["loss"]["name"]
    data = prepare(config, features_dir, manifest, space.settings, fold)
    check_space(space, data, loss)
    base = trial_config(data, {})
    identity = {"loss": loss, "space": space.as_dict(), "outer_fold": fold or 0,
                "config": {k: v for k, v in base.items() if k not in ("device", "data")},
                "selection": digest([data.folds, data.labels])}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(out_dir, identity, optuna.pruners.MedianPruner(
        n_startup_trials=space.settings["prune_after_trials"],
        n_warmup_steps=space.settings["prune_warmup_epochs"]))
    sampler_seed = int(np.random.SeedSequence([seed, worker, len(study.trials)])
                       .generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(
        seed=sampler_seed, n_startup_trials=space.settings["startup_trials"],
        constant_liar=True)
    if worker == 0 and not study.trials:
        study.enqueue_trial(space.values_in(base), user_attrs={"start": True})
    first = next(iter(data.infos.values()))
    ctx = FoldContext(cfg=base, source=open_bags(data.infos, base["data"]["cache_max_gb"]),
                      labels=data.labels, n_classes=len(data.classes),
                      device=select_device(base["device"]))
    objective = make_objective(data, space, ctx, first.feature_dim,
                               read_encoder_name(first.path) or Path(features_dir).name)
    ran = 0
    while True:
        reaped = reap_stale(study, stale_after_s)
        if reaped:
            log.info("trial(s) %s of a stopped worker will be retried",
                     ", ".join(map(str, reaped)))
        finished, running = counts(study)
        if finished + running >= n_trials:
            break
        study.optimize(objective, n_trials=1, gc_after_trial=False)
        ran += 1
    log.info("ran %d trial(s) here; the study holds %d finished (%d running elsewhere)", ran,
             finished, running)
    paths, best = write_report(Path(out_dir), study, data, space, loss, n_trials, seed)
    write_record(Path(out_dir), command=command,
                 config={"loss": loss, "trials": n_trials, "seed": seed, "worker": worker,
                         "fold": fold, "space": space.as_dict(), "base_config": base,
                         "selection": data.selection, "held_out_slides": len(data.held_out),
                         "epoch_budget": epoch_budget(space, data),
                         "best": None if best is None else {"number": best.number,
                                                            "value": best.value,
                                                            "params": best.params}},
                 inputs=[Path(manifest), *map(Path, config_files), *space.files,
                         *(info.path for info in data.infos.values())],
                 outputs=[*paths, journal_path(out_dir)],
                 seeds={"sampler": seed, "worker": worker, "training": base["seed"],
                        "split": split_seed(base)})
    return TuneResult(finished=finished,
                      best=None if best is None else (best.number, float(best.value)),
                      paths=paths)


def write_report(out_dir: Path, study: optuna.Study, data: TuneData, space: SearchSpace,
                 loss: str, n_trials: int, seed: int
                 ) -> tuple[list[Path], FrozenTrial | None]:
    """trials.csv, search.png and (when a trial completed) best.yaml; returns the paths and
    the best trial (or None)."""
    trials = study.get_trials(deepcopy=False)
    paths = [write_trials(out_dir, [trial_row(t) for t in trials], list(space.params))]
    shown = [t for t in trials if t.state in FINISHED]
    paths.append(plot_search([t.number for t in shown], [plotted_value(t) for t in shown],
                             [t.state == TrialState.PRUNED for t in shown],
                             out_dir / SEARCH_PLOT,
                             f"tune {loss}: {len(shown)} finished trials"))
    best = best_trial(trials)
    if best is None:
        log.warning("no trial completed yet: no best.yaml")
        return paths, None
    cfg = trial_config(data, best.params)
    cfg["data"].update(features_dir=None, manifest=None)
    auc = best.user_attrs.get("val_auc")
    header = [
        f"wsi-ncmi tune: best of {len(shown)} finished trials (trial {best.number}), "
        f"loss {loss}",
        f"validation macro-F1 {best.value:.4f}, AUC "
        f"{'n/a' if auc is None else f'{auc:.4f}'} (ties: higher AUC, then earlier trial),",
        f"  mean over {len(data.folds)} selection fold(s): {data.selection}",
        f"test split: {len(data.held_out)} slides held out, never read",
        f"budget: {n_trials} trials x at most {epoch_budget(space, data)} epochs x "
        f"{len(data.folds)} fold(s); sampler seed {seed}",
        "use: wsi-ncmi train --config THIS_FILE --features F --manifest M "
        "[--seeds 0,1,2,3,4]",
    ]
    paths.append(write_best(out_dir, cfg, header))
    return paths, best
