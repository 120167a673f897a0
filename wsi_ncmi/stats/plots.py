"""Figures: confusion matrix and one-vs-rest ROC curves (one PNG per head), and the course of a
hyper-parameter search.

Drawn on matplotlib's Agg canvas directly (no pyplot state, no display needed) and written
atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from ..atomic import atomic_path
from .metrics import binary_auc

DPI = 120


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: Path, title: str) -> Path:
    """Confusion matrix (C×C counts, rows = true class) as a PNG at ``path``: colour = share of
    the true class's slides (row-normalised), text = count and share."""
    cm = np.asarray(cm)
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    size = 1.2 + 0.7 * len(classes)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of true class")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center",
                    fontsize=8, color="white" if share[i, j] > 0.6 else "black")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=list(classes))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return _save(fig, path)


#: per-class line styles and markers of the ROC plot: curves that coincide (a perfect
#: classifier's, every class at AUC 1) stay told apart by style and marker, not colour alone
ROC_LINESTYLES = ("-", "--", "-.", ":")
ROC_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def roc_style(c: int) -> dict:
    """Matplotlib line keywords of class ``c``'s ROC curve: a distinct (line style, marker)
    pair for every class up to len(ROC_LINESTYLES) × len(ROC_MARKERS)."""
    return {"linestyle": ROC_LINESTYLES[c % len(ROC_LINESTYLES)],
            "marker": ROC_MARKERS[(c + c // len(ROC_MARKERS)) % len(ROC_MARKERS)],
            "markevery": 0.1 + 0.03 * (c % 4), "markersize": 5, "linewidth": 1.5,
            "alpha": 0.85}


def roc_figure(y: np.ndarray, scores: np.ndarray, classes: Sequence[str], title: str
               ) -> Figure:
    """One-vs-rest ROC curve per class (labels ``y`` (n,), scores (n×C)), each with its own
    :func:`roc_style`; a class whose AUC is undefined on these slides is listed as such."""
    y = np.asarray(y)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    for c, name in enumerate(classes):
        positive = y == c
        if positive.all() or not positive.any():
            missing = "negatives" if positive.any() else "positives"
            ax.plot([], [], label=f"{name}: AUC undefined (no {missing})", **roc_style(c))
            continue
        fpr, tpr, _ = roc_curve(positive, scores[:, c])
        ax.plot(fpr, tpr, label=f"{name}: AUC {binary_auc(positive, scores[:, c]):.3f}",
                **roc_style(c))
    ax.set_xlim(-0.01, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_roc(y: np.ndarray, scores: np.ndarray, classes: Sequence[str], path: Path,
             title: str) -> Path:
    """:func:`roc_figure` as a PNG at ``path``."""
    return _save(roc_figure(y, scores, classes, title), path)


def plot_search(numbers: Sequence[int], values: Sequence[float], pruned: Sequence[bool],
                path: Path, title: str, objective: str = "validation macro-F1") -> Path:
    """A search as a PNG at ``path``: ``values`` (the objective of each trial ``numbers``, in
    trial order; a pruned trial's value is the last it reported, NaN for none) as dots, pruned
    trials as crosses, and the best finished (not pruned) value so far as a step line."""
    numbers = np.asarray(numbers)
    values = np.asarray(values, dtype=np.float64)
    pruned = np.asarray(pruned, dtype=bool)
    done = ~pruned & np.isfinite(values)
    best = np.fmax.accumulate(np.where(done, values, np.nan)) if len(values) else values
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    ax.scatter(numbers[done], values[done], s=18, color="tab:blue", label="finished trial")
    ax.scatter(numbers[pruned], values[pruned], s=22, marker="x", color="0.55",
               label="pruned (last reported)")
    ax.step(numbers, best, where="post", color="tab:red", linewidth=1.5, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)
