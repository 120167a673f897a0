"""The ``metrics.json`` record of an evaluated split, and the data every fold's evaluation
shares: per head, the metrics of the pooled rows with 95 % bootstrap intervals over patients,
per-class figures, the confusion matrix, per-fold point estimates and their mean ± sd, and the
NCMI measure."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..formats.runfolder import fold_dir, read_fold_meta
from ..model.heads import HEADS
from ..stats.bootstrap import CI_LEVEL, Units, metric_intervals, resampling_units
from ..stats.metrics import ECE_BINS, SCALARS, compute_metrics


@dataclass
class RunData:
    """What every fold of a run needs: resolved ``cfg``, ``splits`` record, ``classes``,
    ``labels`` (slide id → class index), ``patients`` (slide id → patient id, "" if none),
    ``features_dir``, ``manifest``."""

    cfg: dict
    splits: dict
    classes: list[str]
    labels: dict[str, int]
    patients: dict[str, str]
    features_dir: Path
    manifest: Path


@dataclass
class FoldResult:
    """One fold on the evaluated split: ``slide_ids`` (n), ``y`` (n,), ``scores`` head →
    (n×C), ``ncmi`` and ``ncmi_train`` measures, ``fit`` head → how it was fitted."""

    fold: int
    slide_ids: list[str]
    y: np.ndarray
    scores: dict[str, np.ndarray]
    ncmi: dict[str, float]
    ncmi_train: dict[str, float]
    fit: dict[str, dict] = field(default_factory=dict)


def num(x: float) -> float | None:
    """A JSON-safe number: NaN/inf → None (``null``)."""
    return float(x) if np.isfinite(x) else None


def head_metrics(y: np.ndarray, scores: np.ndarray, units: Units, classes: list[str], n_boot: int,
                 seed: int) -> dict:
    """The metrics.json entry of one head: scalars and per-class AUC with 95 % intervals,
    per-class precision/recall/F1/support, the confusion matrix and notes."""
    point = compute_metrics(y, scores)
    interval = metric_intervals(y, scores, units, n_boot, seed)

    def entry(j: int, value: float) -> dict:
        return {"value": num(value), "ci95": [num(interval.low[j]), num(interval.high[j])],
                "n_boot_valid": int(interval.n_valid[j])}

    out = {name: entry(j, point.scalars[name]) for j, name in enumerate(SCALARS)}
    out["per_class"] = {
        name: {"precision": num(point.precision[c]), "recall": num(point.recall[c]),
               "f1": num(point.f1[c]), "support": int(point.support[c]),
               "auc": entry(len(SCALARS) + c, point.auc_per_class[c])}
        for c, name in enumerate(classes)}
    out["confusion"] = point.confusion.tolist()
    out["notes"] = {classes[c]: reason for c, reason in point.notes.items()}
    return out


def common_heads(results: list[FoldResult]) -> list[str]:
    """Heads that scored every fold, in :data:`HEADS` order."""
    return [h for h in HEADS if all(h in r.scores for r in results)]


def pool(results: list[FoldResult]) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Slide ids, labels and per-head scores of all folds' rows, folds in order."""
    ids = [s for r in results for s in r.slide_ids]
    y = np.concatenate([r.y for r in results])
    return ids, y, {h: np.concatenate([r.scores[h] for r in results])
                    for h in common_heads(results)}


def _mean_sd(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    return {"mean": num(finite.mean()) if len(finite) else None,
            "sd": num(finite.std(ddof=1)) if len(finite) > 1 else None}


def fold_summary(results: list[FoldResult]) -> dict:
    """Per head and scalar metric: mean and sd (ddof = 1; null with one fold) over the folds
    where the metric is defined."""
    out: dict = {}
    for head in common_heads(results):
        values = np.array([[compute_metrics(r.y, r.scores[head]).scalars[m] for m in SCALARS]
                           for r in results])
        out[head] = {m: _mean_sd(values[:, j]) for j, m in enumerate(SCALARS)}
    return out


def build_metrics(results: list[FoldResult], data: RunData, run_dir: Path, split: str,
                  n_boot: int, seed: int, probe_input: str) -> dict:
    """The ``metrics.json`` record (see the issue's contract; extra keys are additive)."""
    ids, y, scores = pool(results)
    units = resampling_units(ids, [data.patients[s] for s in ids])
    folds = []
    for r in results:
        folds.append({
            "fold": r.fold, "n_slides": len(r.slide_ids),
            "heads": {h: {m: num(v) for m, v in compute_metrics(r.y, s).scalars.items()}
                      for h, s in r.scores.items()},
            "ncmi": {k: num(v) for k, v in r.ncmi.items()},
            "ncmi_train": {k: num(v) for k, v in r.ncmi_train.items()},
            "fit": r.fit})

    def fold_mean(key: str) -> dict:
        return {m: num(np.mean([getattr(r, key)[m] for r in results]))
                for m in ("ncmi", "cmi", "gamma")}

    meta = read_fold_meta(fold_dir(run_dir, results[0].fold))
    return {
        "split": split, "n_slides": len(ids), "classes": data.classes,
        "heads": {h: head_metrics(y, s, units, data.classes, n_boot, seed)
                  for h, s in scores.items()},
        "ncmi": fold_mean("ncmi"),
        "ncmi_train": fold_mean("ncmi_train"),
        "run": str(run_dir), "loss": meta.get("loss"), "encoder": meta.get("encoder"),
        "loss_settings": meta.get("loss_settings"),
        "n_folds": len(results),
        "pooled": ("out-of-fold: each fold's rows scored by that fold's model"
                   if len(results) > 1 else "single fold"),
        "class_counts": {c: int((y == i).sum()) for i, c in enumerate(data.classes)},
        "n_patients": len({data.patients[s] for s in ids if data.patients[s]}),
        "bootstrap": {"method": "percentile", "level": CI_LEVEL, "n_boot": n_boot, "seed": seed,
                      "unit": units.kind, "n_units": units.n_units},
        "ece_bins": f"{ECE_BINS} equal-width bins on the max class probability",
        "probe_input": probe_input,
        "folds": folds,
        "fold_summary": fold_summary(results),
    }
