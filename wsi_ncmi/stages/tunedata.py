"""What a tune reads: the train+val part of a cohort, never its test split.

The manifest's test rows are dropped before any label is mapped or any feature file is opened
(:func:`split_off_test`): with ``split.method: column`` the rows whose split column says
``test``; with ``kfold``/``logo`` the test part of one outer fold, made exactly as ``train``
makes it (that split stratifies on every slide's label, as train's does; the held-out labels
serve nothing else). Only the remaining slides' feature files are inspected and read.

Selection folds (:func:`selection_folds`): the given train/val split when every class has at
least ``min_val_patients`` patients in its validation part, else ``inner_folds``
patient-grouped, stratified folds over train+val, each fold's held-out part serving as its
validation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..formats.config import resolve_config, split_seed
from ..formats.labels import map_labels
from ..formats.manifests import load_manifest
from ..model.bags import BagInfo
from ..model.inference import check_bags
from ..model.losses import loss_names
from ..stats.splits import make_splits, patient_keys, validate_splits
from .train import absent_class_problems, feature_dim_problems

log = logging.getLogger("wsi_ncmi")


@dataclass
class TuneData:
    """What every trial reads: the raw base config, ``classes``, ``labels`` (slide id → class
    index, train+val only), the selection ``folds`` (test parts empty), how they were chosen
    (``selection``), the ``held_out`` test slide ids and the bags' ``infos``."""

    raw: dict
    classes: list[str]
    labels: dict[str, int]
    folds: list[dict]
    selection: str
    held_out: list[str]
    infos: dict[str, BagInfo]


def split_off_test(df: pd.DataFrame, cfg: dict, fold: int | None
                   ) -> tuple[pd.DataFrame, dict]:
    """The manifest rows a tune may read (train+val) and the outer fold (``train``, ``val``,
    ``test`` slide ids) they come from; the test rows are dropped before anything else."""
    split = cfg["split"]
    if split["method"] == "column":
        if fold not in (None, 0):
            raise InputError("--fold applies to kfold and logo splits; a column split has "
                             "one fold")
        if split["column"] not in df.columns:
            raise InputError(f"manifest has no split column {split['column']!r}")
        part = df[split["column"]].str.strip().str.lower()
        bad = df.loc[~part.isin(("train", "val", "test")), "slide_id"].tolist()
        if bad:
            raise InputError(f"manifest column {split['column']!r} must be train, val or "
                             f"test; not for slide(s) {', '.join(bad)}")
        outer = {"fold": 0, **{p: df.loc[part == p, "slide_id"].tolist()
                               for p in ("train", "val", "test")}}
    else:
        _, y, problems = map_labels(df, cfg["task"])
        if problems:
            raise InputError(f"{len(problems)} problem(s) before tuning: {'; '.join(problems)}")
        folds = make_splits(df, y, split, split_seed(cfg))["folds"]
        index = 0 if fold is None else fold
        if not 0 <= index < len(folds):
            raise InputError(f"--fold {index}: the {split['method']} split has folds "
                             f"0–{len(folds) - 1}")
        outer = folds[index]
        log.warning("tuning on outer fold %d of %d: the other folds' test slides are part of "
                    "this search; only fold %d's test part is clean for the tuned config",
                    index, len(folds), index)
    validate_splits({"method": split["method"], "folds": [outer]}, df, split["method"],
                    "tune split")
    pool = df[~df["slide_id"].isin(outer["test"])].reset_index(drop=True)
    return pool, outer


def selection_folds(pool: pd.DataFrame, y: np.ndarray, n_classes: int, outer: dict,
                    cfg: dict, settings: dict) -> tuple[list[dict], str]:
    """The folds trials are trained and validated on, and a sentence saying which
    (module docstring)."""
    label = dict(zip(pool["slide_id"], y.tolist(), strict=True))
    patient = dict(zip(pool["slide_id"], patient_keys(pool), strict=True))
    per_class = [len({patient[s] for s in outer["val"] if label[s] == c})
                 for c in range(n_classes)]
    need = settings["min_val_patients"]
    if outer["val"] and min(per_class) >= need:
        return ([{"fold": 0, "train": outer["train"], "val": outer["val"], "test": []}],
                f"the validation split ({len(outer['val'])} slides, ≥ {need} patients per "
                "class)")
    k = settings["inner_folds"]
    inner = make_splits(pool, y, {"method": "kfold", "k": k, "val_fraction": 0},
                        split_seed(cfg))
    return ([{"fold": f["fold"], "train": f["train"], "val": f["test"], "test": []}
             for f in inner["folds"]],
            f"{k} patient-grouped inner folds over train+val (the validation split has "
            f"{min(per_class)} patient(s) in its smallest class, fewer than {need})")


def prepare(raw: dict, features_dir: Path, manifest: Path, settings: dict, fold: int | None
            ) -> TuneData:
    """Read the manifest, drop the test split, map the remaining labels, choose the selection
    folds and inspect the train+val feature files only; :class:`InputError` listing every
    problem."""
    cfg = resolve_config(raw, loss_names())
    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise InputError(f"{features_dir}: feature folder not found")
    df = load_manifest(manifest, required=("slide_id", "patient_id",
                                           cfg["task"]["label_column"]))
    pool, outer = split_off_test(df, cfg, fold)
    log.info("test split: %d slides held out, never read", len(outer["test"]))
    if pool.empty:
        raise InputError(f"{manifest}: no train or val slides to tune on")
    classes, y, problems = map_labels(pool, cfg["task"])
    if problems:
        raise InputError(f"{len(problems)} problem(s) before tuning: {'; '.join(problems)}")
    folds, selection = selection_folds(pool, y, len(classes), outer, cfg, settings)
    labels = dict(zip(pool["slide_id"], y.tolist(), strict=True))
    infos, bag_problems = check_bags(features_dir, pool["slide_id"].tolist())
    problems = (bag_problems + feature_dim_problems(infos)
                + absent_class_problems({"folds": folds}, labels, classes))
    if problems:
        raise InputError(f"{len(problems)} problem(s) before tuning: {'; '.join(problems)}")
    log.info("selection on %s", selection)
    return TuneData(raw=raw, classes=classes, labels=labels, folds=folds, selection=selection,
                    held_out=list(outer["test"]), infos=infos)


