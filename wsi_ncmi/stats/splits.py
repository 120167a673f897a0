"""Patient-grouped train/val/test splits.

Methods (``split`` config section):

- ``column``: the manifest's ``split.column`` (values ``train``, ``val``, ``test``) — one fold;
- ``kfold``: ``k`` stratified folds grouped by ``patient_id``; each fold's test part is one
  group-fold, and ``val_fraction`` of the remaining patients (stratified) is held out as val;
- ``logo``: leave one value of ``group_column`` (centre, scanner) out as the test part per fold,
  val carved from the rest as for kfold.

A patient never appears in two parts of one fold; :func:`validate_splits` checks that (and
that the splits match the manifest) for new splits and for a ``splits.json`` being reused.
Record: ``{"method", "seed", "folds": [{"fold", "train", "val", "test"}, ...]}`` (slide ids).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ..errors import InputError

PARTS = ("train", "val", "test")


def patient_keys(df: pd.DataFrame) -> pd.Series:
    """Grouping key per row: its ``patient_id``, or — when blank (unknown, e.g. BRACS'
    group list) — the slide itself, as the evaluation's bootstrap treats it."""
    patients = df["patient_id"].astype(str).str.strip()
    return ("patient:" + patients).where(patients != "", "slide:" + df["slide_id"])


def make_splits(df: pd.DataFrame, y: np.ndarray, split_cfg: dict, seed: int) -> dict:
    """Splits of the manifest ``df`` (columns ``slide_id``, ``patient_id`` and the split or
    group column) with class indices ``y`` (one per row), as a ``splits.json`` record."""
    method = split_cfg["method"]
    if method == "column":
        folds = [_column_fold(df, split_cfg["column"])]
    elif method == "kfold":
        folds = _kfold(df, y, split_cfg["k"], split_cfg["val_fraction"], seed)
    else:
        folds = _logo(df, y, split_cfg["group_column"], split_cfg["val_fraction"], seed)
    return {"method": method, "seed": seed, "folds": folds}


def validate_splits(splits: dict, df: pd.DataFrame, method: str, source: str) -> None:
    """Raise :class:`InputError` listing every way ``splits`` does not fit the manifest ``df``:
    another method, unknown or missing slides, a slide in two parts, a patient across parts.
    ``source`` names where the splits came from in the message."""
    if not isinstance(splits, dict) or not isinstance(splits.get("folds"), list):
        raise InputError(f"{source}: not a splits record (no 'folds' list)")
    if splits.get("method") != method:
        raise InputError(f"{source}: made with split method {splits.get('method')!r}, the "
                         f"config asks for {method!r} (use another output folder)")
    patient = dict(zip(df["slide_id"], patient_keys(df), strict=True))
    problems = []
    for i, fold in enumerate(splits["folds"]):
        problems += _fold_problems(fold, i, patient)
    if problems:
        raise InputError(f"{source}: {'; '.join(problems)}")


def _fold_problems(fold: dict, index: int, patient: dict[str, str]) -> list[str]:
    if not isinstance(fold, dict) or any(not isinstance(fold.get(p), list) for p in PARTS):
        return [f"fold {index}: needs lists 'train', 'val', 'test'"]
    name = f"fold {fold.get('fold', index)}"
    problems = []
    where: dict[str, list[str]] = defaultdict(list)
    for part in PARTS:
        for sid in fold[part]:
            where[sid].append(part)
    unknown = [sid for sid in where if sid not in patient]
    if unknown:
        problems.append(f"{name}: slide(s) not in the manifest: {', '.join(unknown)}")
    missing = [sid for sid in patient if sid not in where]
    if missing:
        problems.append(f"{name}: manifest slide(s) in no part: {', '.join(missing)}")
    doubled = [f"{sid} ({'+'.join(parts)})" for sid, parts in where.items() if len(parts) > 1]
    if doubled:
        problems.append(f"{name}: slide(s) in several parts: {', '.join(doubled)}")
    parts_of: dict[str, set[str]] = defaultdict(set)
    for sid, parts in where.items():
        if sid in patient:
            parts_of[patient[sid]].update(parts)
    straddle = [f"{pid.removeprefix('patient:')} ({'+'.join(sorted(p))})"
                for pid, p in parts_of.items() if len(p) > 1]
    if straddle:
        problems.append(f"{name}: patient(s) in several parts: {', '.join(straddle)}")
    if not fold["train"]:
        problems.append(f"{name}: empty training part")
    return problems


def _column_fold(df: pd.DataFrame, column: str) -> dict:
    if column not in df.columns:
        raise InputError(f"manifest has no split column {column!r}")
    values = df[column].str.strip().str.lower()
    bad = df.loc[~values.isin(PARTS), "slide_id"]
    if len(bad):
        raise InputError(f"manifest column {column!r} must be train, val or test; not for "
                         f"slide(s) {', '.join(bad)}")
    return {"fold": 0, **{part: df.loc[values == part, "slide_id"].tolist() for part in PARTS}}


def _kfold(df: pd.DataFrame, y: np.ndarray, k: int, val_fraction: float, seed: int) -> list:
    groups = patient_keys(df).to_numpy()
    if len(set(groups)) < k:
        raise InputError(f"kfold: {len(set(groups))} patient(s) cannot fill {k} folds")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    try:
        parts = list(splitter.split(np.zeros(len(df)), y, groups))
    except ValueError as exc:  # a class too small for k folds
        raise InputError(f"kfold with k = {k}: {exc} (lower split.k)") from None
    folds = []
    for i, (rest, test) in enumerate(parts):
        train, val = _carve_val(rest, y, groups, val_fraction, seed + i)
        folds.append(_fold_record(df, i, train, val, test))
    return folds


def _logo(df: pd.DataFrame, y: np.ndarray, column: str, val_fraction: float, seed: int) -> list:
    if column not in df.columns:
        raise InputError(f"manifest has no group column {column!r}")
    group = df[column].str.strip()
    empty = df.loc[group == "", "slide_id"]
    if len(empty):
        raise InputError(f"manifest column {column!r} is empty for slide(s) {', '.join(empty)}")
    per_patient = group.groupby(patient_keys(df)).nunique()
    mixed = per_patient[per_patient > 1].index.tolist()
    if mixed:
        raise InputError(f"leave-one-group-out: patient(s) in several {column!r} groups: "
                         f"{', '.join(m.removeprefix('patient:') for m in mixed)}")
    values = sorted(group.unique())
    if len(values) < 2:
        raise InputError(f"leave-one-group-out needs ≥ 2 values in column {column!r}")
    groups = patient_keys(df).to_numpy()
    folds = []
    for i, value in enumerate(values):
        test = np.flatnonzero(group.to_numpy() == value)
        rest = np.flatnonzero(group.to_numpy() != value)
        train, val = _carve_val(rest, y, groups, val_fraction, seed + i)
        folds.append({**_fold_record(df, i, train, val, test), "test_group": value})
    return folds


def _carve_val(rest: np.ndarray, y: np.ndarray, groups: np.ndarray, val_fraction: float,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices ``rest`` into train and a patient-grouped val share, stratified by
    each patient's most frequent class: per class, ``round(val_fraction × patients)`` of its
    patients (at least one when it has two or more; none when it has one, so that no class
    leaves the training part), drawn with ``seed``."""
    if val_fraction == 0:
        return rest, rest[:0]
    rng = np.random.default_rng(seed)
    patient_class: dict[str, int] = {}
    for patient in sorted(set(groups[rest])):
        classes, counts = np.unique(y[rest][groups[rest] == patient], return_counts=True)
        patient_class[patient] = int(classes[np.argmax(counts)])
    val: set[str] = set()
    for cls in sorted(set(patient_class.values())):
        members = [p for p, c in patient_class.items() if c == cls]
        take = 0 if len(members) < 2 else max(1, round(val_fraction * len(members)))
        val.update(rng.permutation(members)[:take].tolist())
    in_val = np.isin(groups[rest], list(val))
    return rest[~in_val], rest[in_val]


def _fold_record(df: pd.DataFrame, i: int, train: np.ndarray, val: np.ndarray,
                 test: np.ndarray) -> dict:
    ids = df["slide_id"].to_numpy()
    return {"fold": i, "train": ids[np.sort(train)].tolist(), "val": ids[np.sort(val)].tolist(),
            "test": ids[np.sort(test)].tolist()}
