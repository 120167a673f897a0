"""Slide-level metrics against scikit-learn, including classes absent from the split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from wsi_ncmi.stats.metrics import ECE_BINS, average_ranks, compute_metrics


def random_predictions(n: int, n_classes: int, seed: int, skill: float = 1.5,
                       ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax scores that lean towards the true class by ``skill``; with ``ties``
    a third of the rows copy another row's scores (exact ties, labels kept)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += skill
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if ties:
        scores[rng.choice(n, n // 3, replace=False)] = scores[rng.choice(n, n // 3)]
    return y, scores


def sklearn_auc(y: np.ndarray, scores: np.ndarray) -> float:
    if scores.shape[1] == 2:
        return roc_auc_score(y, scores[:, 1])
    return roc_auc_score(y, scores, multi_class="ovr", average="macro")


CASES = [(2, 0, False), (2, 1, True), (3, 2, False), (4, 3, True), (5, 4, False)]


@pytest.mark.parametrize(("n_classes", "seed", "ties"), CASES)
def test_scalars_match_sklearn(n_classes, seed, ties):
    y, scores = random_predictions(300, n_classes, seed, ties=ties)
    pred = scores.argmax(1)
    m = compute_metrics(y, scores)
    assert m.scalars["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert m.scalars["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m.scalars["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y, pred), abs=1e-12)
    assert m.scalars["auc_macro"] == pytest.approx(sklearn_auc(y, scores), abs=1e-12)
    for c in range(n_classes):
        assert m.auc_per_class[c] == pytest.approx(roc_auc_score(y == c, scores[:, c]),
                                                   abs=1e-12)


@pytest.mark.parametrize(("n_classes", "seed", "ties"), CASES)
def test_per_class_and_confusion_match_sklearn(n_classes, seed, ties):
    y, scores = random_predictions(200, n_classes, seed, skill=0.8, ties=ties)
    pred = scores.argmax(1)
    m = compute_metrics(y, scores)
    labels = list(range(n_classes))
    np.testing.assert_array_equal(m.confusion, confusion_matrix(y, pred, labels=labels))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    np.testing.assert_allclose(np.nan_to_num(m.precision), p, atol=1e-12)
    np.testing.assert_allclose(m.recall, r, atol=1e-12)
    np.testing.assert_allclose(m.f1, f, atol=1e-12)
    np.testing.assert_array_equal(m.support, s)


def test_ece_matches_calibration_curve_bins():
    y, scores = random_predictions(500, 3, seed=7, skill=1.0)
    conf, correct = scores.max(1), (scores.argmax(1) == y).astype(int)
    prob_true, prob_pred = calibration_curve(correct, conf, n_bins=ECE_BINS, strategy="uniform")
    edges = np.linspace(0, 1, ECE_BINS + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], conf), minlength=ECE_BINS)
    expected = np.sum(counts[counts > 0] * np.abs(prob_true - prob_pred)) / len(y)
    assert compute_metrics(y, scores).scalars["ece"] == pytest.approx(expected, abs=1e-12)


def test_ece_of_calibrated_and_overconfident_predictions():
    confident = np.tile([0.8, 0.2], (10, 1))
    # confidence 0.8 and every prediction right: off by 0.2
    assert compute_metrics(np.zeros(10, dtype=int), confident).scalars["ece"] == \
        pytest.approx(0.2, abs=1e-12)
    # confidence 0.8 and 8 of 10 right: calibrated
    labels = np.array([0] * 8 + [1] * 2)
    assert compute_metrics(labels, confident).scalars["ece"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_absent_class_gives_nan_with_reason_not_a_crash():
    y, scores = random_predictions(120, 3, seed=3)
    keep = y != 2
    y, scores = y[keep], scores[keep]
    m = compute_metrics(y, scores)
    assert np.isnan(m.auc_per_class[2]) and np.isnan(m.recall[2])
    assert "absent" in m.notes[2]
    # macro AUC is the mean over the two classes whose AUC is defined
    expected = np.mean([roc_auc_score(y == c, scores[:, c]) for c in (0, 1)])
    assert m.scalars["auc_macro"] == pytest.approx(expected, abs=1e-12)
    pred = scores.argmax(1)
    assert m.scalars["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert m.scalars["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred),
                                                           abs=1e-12)
    assert m.confusion.shape == (3, 3) and m.support[2] == 0


def test_single_class_split_has_undefined_auc():
    y = np.zeros(5, dtype=int)
    scores = np.tile([0.7, 0.3], (5, 1))
    m = compute_metrics(y, scores)
    assert np.isnan(m.scalars["auc_macro"])
    assert m.scalars["accuracy"] == 1.0
    assert "only class" in m.notes[0] and "absent" in m.notes[1]


def test_average_ranks_share_ties():
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])),
                                  [3.5, 1.0, 3.5, 2.0])


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        compute_metrics(np.zeros(3, dtype=int), np.zeros((4, 2)))
    with pytest.raises(ValueError):
        compute_metrics(np.array([0, 2]), np.full((2, 2), 0.5))
