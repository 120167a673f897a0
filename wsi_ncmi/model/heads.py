"""Prediction heads that turn a frozen model's slide outputs into class scores (n×C).

- Linear probe: standardised slide embeddings → multinomial logistic regression
  (scikit-learn, L2, lbfgs). Its inverse regularisation C is chosen from :data:`PROBE_CS` by
  cross-validated log-loss on the training split only, with folds grouped by patient and
  stratified by class; ties go to the smaller C (stronger regularisation). Too few patients
  per class for two folds → C = 1 and the reason is recorded.
- Centroid head: s_c = mean of the outputs p (rows of a simplex) over the training slides of
  class c; scores = softmax_c(−KL(p‖s_c)), so the prediction is argmin_c KL(p‖s_c).
  Its raw scores stay near 1/C when the divergences are small, so predict calibrates them
  with a temperature T (:func:`fit_temperature`, fitted on the fold's validation slides).
- Classifier head (CE family): softmax of the run's own logits.

A fitted probe is stored as plain numbers (:func:`probe_record`, no pickle) and scored from
them by :func:`probe_proba`, which gives the same numbers as the scikit-learn pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ..errors import InputError
from ..stats.simplex import class_means, softmax

#: the prediction heads, in the order reports list them
HEADS = ("linear_probe", "centroid", "classifier")
#: seed of the stored probe's cross-validation folds (predict)
PROBE_SEED = 0
PROBE_SCHEMA_VERSION = 1
CALIBRATION_SCHEMA_VERSION = 1
#: inverse L2 strengths tried by the probe's cross-validation
PROBE_CS = tuple(float(c) for c in np.logspace(-4, 4, 9))
PROBE_MAX_FOLDS = 5
PROBE_DEFAULT_C = 1.0
PROBE_MAX_ITER = 5000
#: bounds of a fitted temperature, in units of the logits' spread (their mean standard
#: deviation over classes)
TEMPERATURE_RANGE = (0.01, 100.0)


@dataclass
class LinearProbe:
    """A fitted probe: ``pipeline`` (scaler + logistic regression), the chosen ``C``, and how it
    was chosen (``selection``: folds, grouping, mean CV log-loss per C, or a fallback
    reason)."""

    pipeline: Pipeline
    n_classes: int
    C: float
    selection: dict = field(default_factory=dict)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(n×C) class probabilities for embeddings ``x`` (n×m)."""
        return _full_proba(self.pipeline, np.asarray(x, dtype=np.float64), self.n_classes)


def _pipeline(c: float, seed: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(
        C=c, max_iter=PROBE_MAX_ITER, random_state=seed))


def _full_proba(pipeline: Pipeline, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba with one column per class 0..C-1 (zero for classes unseen in fitting)."""
    out = np.zeros((len(x), n_classes))
    out[:, pipeline.classes_] = pipeline.predict_proba(x)
    return out


def probe_cv_splits(y: np.ndarray, groups: np.ndarray, seed: int
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], str | None]:
    """Patient-grouped stratified folds, or no folds and the reason why."""
    per_class = [len(set(groups[y == c])) for c in np.unique(y)]
    k = min(PROBE_MAX_FOLDS, min(per_class))
    if k < 2:
        return [], (f"a class has {min(per_class)} patient(s) in the training split; C = "
                    f"{PROBE_DEFAULT_C} without cross-validation")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups)), None


def fit_linear_probe(x: np.ndarray, y: np.ndarray, n_classes: int,
                     groups: Sequence[str] | None = None, seed: int = 0) -> LinearProbe:
    """Fit the probe on training embeddings ``x`` (n×m) with labels ``y`` (n,) in 0..C-1.

    ``groups`` (n,): patient per slide (folds never split a patient); None → each slide its
    own group. Raises :class:`InputError` when a class has no training slide.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    absent = sorted(set(range(n_classes)) - set(y.tolist()))
    if absent:
        raise InputError(f"linear probe: class index(es) {absent} have no training slide")
    groups_arr = np.asarray(groups if groups is not None else np.arange(len(y)), dtype=object)
    splits, reason = probe_cv_splits(y, groups_arr, seed)
    # a few hundred slides: multithreaded BLAS only adds contention (seconds on 2 cores)
    with threadpool_limits(limits=1):
        return _fit_probe(x, y, n_classes, splits, reason, groups is not None, seed)


def _fit_probe(x: np.ndarray, y: np.ndarray, n_classes: int,
               splits: list[tuple[np.ndarray, np.ndarray]], reason: str | None,
               grouped: bool, seed: int) -> LinearProbe:
    selection: dict = {"grouped_by": "patient" if grouped else "slide",
                       "scoring": "mean log-loss over validation folds (nats)"}
    if reason:
        best = PROBE_DEFAULT_C
        selection["fallback"] = reason
    else:
        losses = {}
        for c in PROBE_CS:
            fold_losses = []
            for train, val in splits:
                fitted = _pipeline(c, seed).fit(x[train], y[train])
                fold_losses.append(log_loss(y[val], _full_proba(fitted, x[val], n_classes),
                                            labels=list(range(n_classes))))
            losses[c] = float(np.mean(fold_losses))
        best = min(PROBE_CS, key=lambda c: (losses[c], c))
        selection.update(folds=len(splits), cv_log_loss={f"{c:g}": v for c, v in losses.items()})
    return LinearProbe(pipeline=_pipeline(best, seed).fit(x, y), n_classes=n_classes, C=best,
                       selection=selection)


def fit_centroids(p: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(C×k) class means of the training outputs ``p`` (n×k); :class:`InputError` when a
    class has no training slide."""
    means = class_means(p, y, n_classes)
    absent = [c for c in range(n_classes) if np.isnan(means[c]).any()]
    if absent:
        raise InputError(f"centroid head: class index(es) {absent} have no training slide")
    return means


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the mean cross-entropy of softmax(``logits`` / T) (n×C)
    against labels ``y`` (n,) in 0..C-1 — temperature scaling (Guo et al. 2017) — with
    Platt's smoothed targets: (n_c + 1)/(n_c + 2) on a slide's class c (n_c: slides of c),
    the rest shared by the other classes. So a few slides the head separates perfectly give
    finite confidence, not T → 0; with many slides the targets are the labels. Searched in
    :data:`TEMPERATURE_RANGE` times the logits' spread (1 when they do not spread).
    Predictions (the argmax) are unchanged; only confidence is rescaled."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    if len(y) == 0:
        raise InputError("temperature: no labelled slides to fit it on")
    spread = float(np.mean(np.std(logits, axis=1)))
    if not spread > 0:
        return 1.0
    n, n_classes = logits.shape
    count = np.bincount(y, minlength=n_classes)[y]
    hit = (count + 1) / (count + 2)
    targets = np.repeat(((1 - hit) / (n_classes - 1))[:, None], n_classes, axis=1)
    targets[np.arange(n), y] = hit

    def cross_entropy(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - (targets * z).sum(1)))

    low, high = np.log(TEMPERATURE_RANGE) + np.log(spread)
    best = minimize_scalar(cross_entropy, bounds=(low, high), method="bounded",
                           options={"xatol": 1e-6})
    return float(np.exp(best.x))


def probe_record(probe: LinearProbe, classes: Sequence[str]) -> dict:
    """The JSON-able parameters of a fitted :class:`LinearProbe`."""
    scaler, logreg = probe.pipeline[0], probe.pipeline[-1]
    return {
        "schema_version": PROBE_SCHEMA_VERSION, "input": "z", "classes": list(classes),
        "C": probe.C, "selection": probe.selection, "seed": PROBE_SEED,
        "scaler_mean": scaler.mean_.tolist(), "scaler_scale": scaler.scale_.tolist(),
        "coef": logreg.coef_.tolist(), "intercept": logreg.intercept_.tolist(),
        "fitted_classes": [int(c) for c in logreg.classes_],
    }


def probe_proba(record: dict, z: np.ndarray) -> np.ndarray:
    """(n×C) float64 class probabilities of embeddings ``z`` (n×m) under a stored probe —
    the same numbers as the scikit-learn pipeline it was taken from."""
    x = (np.asarray(z, dtype=np.float64) - np.asarray(record["scaler_mean"])) \
        / np.asarray(record["scaler_scale"])
    logits = x @ np.asarray(record["coef"]).T + np.asarray(record["intercept"])
    if logits.shape[1] == 1:  # binary: scikit-learn keeps one logit, for the second class
        logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
    out = np.zeros((len(x), len(record["classes"])))
    out[:, record["fitted_classes"]] = softmax(logits)
    return out
