"""The tune folder ``DIR/`` written by ``wsi-ncmi tune``. Every file of it is named here.

    DIR/study.journal     the Optuna study (JournalStorage, append-only; several workers share
                          it, a second call continues it)
    DIR/best.yaml         the best trial's training config (usable as `train --config`)
    DIR/trials.csv        one row per trial
    DIR/search.png        objective per trial and the best so far
    DIR/provenance.json   the last tune call's provenance record

``docs/artifacts.md`` documents every field.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from ..atomic import atomic_path

JOURNAL = "study.journal"
BEST = "best.yaml"
TRIALS = "trials.csv"
SEARCH_PLOT = "search.png"
#: leading columns of trials.csv; one ``param:<config key>`` column per searched setting follows
TRIAL_COLUMNS = ("number", "state", "value", "val_auc", "epochs_run", "duration_s", "note")


def journal_path(out_dir: Path) -> Path:
    """``DIR/study.journal``."""
    return Path(out_dir) / JOURNAL


def write_best(out_dir: Path, cfg: dict, header: Sequence[str]) -> Path:
    """``DIR/best.yaml``: the resolved config ``cfg`` under ``header`` comment lines."""
    path = Path(out_dir) / BEST
    comments = "".join(f"# {line}\n" for line in header)
    with atomic_path(path) as tmp:
        tmp.write_text(comments + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path


def write_trials(out_dir: Path, rows: list[dict], params: Sequence[str]) -> Path:
    """``DIR/trials.csv`` from one dict per trial (:data:`TRIAL_COLUMNS` plus the params by
    config key); a value that does not apply is left blank."""
    path = Path(out_dir) / TRIALS
    columns = [*TRIAL_COLUMNS, *(f"param:{p}" for p in params)]
    frame = pd.DataFrame([{**{c: r.get(c) for c in TRIAL_COLUMNS},
                           **{f"param:{p}": r.get("params", {}).get(p) for p in params}}
                          for r in rows], columns=columns)
    frame["epochs_run"] = frame["epochs_run"].astype("Int64")
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path

