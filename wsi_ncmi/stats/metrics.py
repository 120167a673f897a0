"""Slide-level classification metrics from class scores.

Inputs everywhere: ``y`` (n,) true class indices in ``0..C-1`` and ``scores`` (n×C) class
probabilities (rows sum to 1); the predicted class is ``argmax(scores)`` (ties → lowest index).
Implemented with numpy (fast enough to repeat a thousand times in a bootstrap) and checked
against scikit-learn in the tests:

- macro-F1: mean F1 over the classes present in ``y`` or predicted (scikit-learn's default
  label set); a class never predicted but present has F1 = 0.
- balanced accuracy: mean recall over the classes present in ``y``.
- AUC per class: one-vs-rest ROC AUC of ``scores[:, c]`` for ``y == c`` (ties count ½).
  Undefined (NaN, with a reason) for a class absent from ``y`` or for the only class present.
  Macro AUC: mean over the classes whose AUC is defined; NaN when none is.
- ECE (expected calibration error): confidence = max score, split into 15 equal-width bins
  ``(b/15, (b+1)/15]`` (a confidence of exactly 0 goes to the first bin; the same edges as
  scikit-learn's ``calibration_curve(strategy="uniform")``), ECE = Σ_b n_b/n·|acc_b − conf_b|
  over non-empty bins. In [0, 1], lower is better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15
#: the scalar metrics, in the order of :func:`metric_vector`
SCALARS = ("macro_f1", "auc_macro", "balanced_accuracy", "accuracy", "ece")


@dataclass
class Metrics:
    """Point estimates for one set of predictions.

    ``scalars``: :data:`SCALARS` → float (NaN when undefined); ``auc_per_class`` (C,) float;
    ``precision``, ``recall``, ``f1`` (C,) float, NaN where undefined (precision: class never
    predicted; recall: class absent from ``y``; F1: both); ``support`` (C,) int, slides per
    true class; ``confusion`` (C×C) int, rows = true class, columns = predicted class;
    ``notes``: class index → why its AUC (or recall) is undefined.
    """

    scalars: dict[str, float]
    auc_per_class: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion: np.ndarray
    notes: dict[int, str]


def check_inputs(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``y`` as int64 (n,) and ``scores`` as float64 (n×C); ValueError on bad shapes or labels."""
    y = np.asarray(y).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or y.shape != (scores.shape[0],):
        raise ValueError(f"y must be (n,) and scores (n, C), got {y.shape} and {scores.shape}")
    if len(y) and (y.min() < 0 or y.max() >= scores.shape[1]):
        raise ValueError(f"labels must lie in 0..{scores.shape[1] - 1}")
    return y, scores


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C×C) int64 counts: row = true class, column = predicted class."""
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 per class from a confusion matrix, NaN where undefined.

    F1 = 2·tp / (2·tp + fp + fn), so a class that is present but never predicted (or predicted
    but absent) has F1 = 0.
    """
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(0), cm.sum(1)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, actual)
    f1 = _ratio(2 * tp, predicted + actual)
    return precision, recall, f1


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (n,), tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(x)])
    ranks = np.empty(len(x))
    ranks[order] = (first + (counts + 1) / 2.0)[group]
    return ranks


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` (n,) for the boolean ``positive`` (n,) (Mann–Whitney U / n₁n₀);
    NaN when either side is empty."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = average_ranks(score)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc_per_class(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(C,) one-vs-rest AUC per class, NaN for a class absent from ``y`` or the only one."""
    return np.array([binary_auc(y == c, scores[:, c]) for c in range(scores.shape[1])])


def undefined_reasons(y: np.ndarray, n_classes: int) -> dict[int, str]:
    """Class index → why its one-vs-rest AUC and recall cannot be computed on ``y``."""
    counts = np.bincount(y, minlength=n_classes)
    reasons = {}
    for c in range(n_classes):
        if counts[c] == 0:
            reasons[c] = "class absent from the evaluated slides (AUC and recall undefined)"
        elif counts[c] == len(y):
            reasons[c] = "only class present (one-vs-rest AUC undefined)"
    return reasons


def ece(correct: np.ndarray, confidence: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error (fraction) of predictions with ``confidence`` (n,) in [0, 1]
    and ``correct`` (n,) bool, over ``n_bins`` equal-width bins (see the module docstring)."""
    if len(correct) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], confidence, side="left")
    acc = np.bincount(bins, weights=correct.astype(np.float64), minlength=n_bins)
    conf = np.bincount(bins, weights=confidence, minlength=n_bins)
    return float(np.abs(acc - conf).sum() / len(correct))


def metric_vector(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The :data:`SCALARS` followed by the C per-class AUCs, as one float vector (5 + C,).

    ``y`` (n,) int, ``scores`` (n×C) float, already checked (see :func:`check_inputs`).
    """
    n_classes = scores.shape[1]
    if len(y) == 0:
        return np.full(len(SCALARS) + n_classes, np.nan)
    pred = scores.argmax(1)
    cm = confusion(y, pred, n_classes)
    _, recall, f1 = per_class(cm)
    aucs = auc_per_class(y, scores)
    seen = (cm.sum(0) + cm.sum(1)) > 0
    scalars = [
        float(f1[seen].mean()),
        float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
        float(np.nanmean(recall)),
        float(np.trace(cm) / len(y)),
        ece(pred == y, scores.max(1)),
    ]
    return np.concatenate([scalars, aucs])


def compute_metrics(y: np.ndarray, scores: np.ndarray) -> Metrics:
    """All point estimates for labels ``y`` (n,) and class scores ``scores`` (n×C)."""
    y, scores = check_inputs(y, scores)
    n_classes = scores.shape[1]
    vec = metric_vector(y, scores)
    cm = confusion(y, scores.argmax(1), n_classes)
    precision, recall, f1 = per_class(cm)
    return Metrics(
        scalars=dict(zip(SCALARS, map(float, vec[: len(SCALARS)]), strict=True)),
        auc_per_class=vec[len(SCALARS):], precision=precision, recall=recall, f1=f1,
        support=cm.sum(1), confusion=cm, notes=undefined_reasons(y, n_classes))
