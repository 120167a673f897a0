"""Prediction heads: linear probe, centroid head, classifier softmax."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from wsi_ncmi.errors import InputError
from wsi_ncmi.model.heads import PROBE_CS, fit_centroids, fit_linear_probe, probe_cv_splits
from wsi_ncmi.stats.simplex import centroid_scores, kl_to_centroids, softmax


def embeddings(n: int, n_classes: int, seed: int, dim: int = 16, shift: float = 1.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    centres = rng.normal(size=(n_classes, dim)) * shift
    x = centres[y] + rng.normal(size=(n, dim))
    patients = np.array([f"P{i // 2}" for i in range(n)])  # two slides per patient
    return x.astype(np.float32), y, patients


def simplex_points(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(k), size=n)


def test_centroids_are_training_class_means_and_prediction_is_argmin_kl():
    p = simplex_points(60, 8, seed=0)
    y = np.arange(60) % 3
    means = fit_centroids(p, y, 3)
    for c in range(3):
        np.testing.assert_allclose(means[c], p[y == c].mean(0))
    test = simplex_points(25, 8, seed=1)
    kl = np.array([[np.sum(q * np.log(q / s)) for s in means] for q in test])
    np.testing.assert_allclose(kl_to_centroids(test, means), kl, atol=1e-12)
    scores = centroid_scores(test, means)
    np.testing.assert_allclose(scores.sum(1), 1.0)
    np.testing.assert_array_equal(scores.argmax(1), kl.argmin(1))
    np.testing.assert_allclose(scores, np.exp(-kl) / np.exp(-kl).sum(1, keepdims=True))


def test_a_point_at_a_centroid_is_assigned_to_it():
    p = simplex_points(40, 5, seed=2)
    y = np.arange(40) % 4
    means = fit_centroids(p, y, 4)
    np.testing.assert_array_equal(centroid_scores(means, means).argmax(1), np.arange(4))


def test_centroid_head_survives_zero_outputs():
    means = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    scores = centroid_scores(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), means)
    assert np.all(np.isfinite(scores))
    np.testing.assert_array_equal(scores.argmax(1), [0, 1])


def test_missing_training_class_is_an_input_error():
    p = simplex_points(10, 4, seed=3)
    with pytest.raises(InputError, match=r"\[2\]"):
        fit_centroids(p, np.arange(10) % 2, 3)
    x, y, _ = embeddings(20, 2, seed=0)
    with pytest.raises(InputError, match="no training slide"):
        fit_linear_probe(x, y, 3)


def test_softmax_matches_definition_and_is_stable():
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]])
    out = softmax(logits)
    np.testing.assert_allclose(out[0], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum())
    np.testing.assert_allclose(out[1], [0.5, 0.5, 0.0])


def test_probe_is_standardised_multinomial_logistic_regression_with_the_chosen_c():
    x, y, patients = embeddings(120, 3, seed=4)
    probe = fit_linear_probe(x, y, 3, groups=patients, seed=0)
    assert probe.C in PROBE_CS
    test, _, _ = embeddings(30, 3, seed=5)
    x64, test64 = x.astype(np.float64), test.astype(np.float64)
    scaler = StandardScaler().fit(x64)
    ref = LogisticRegression(C=probe.C, max_iter=5000).fit(scaler.transform(x64), y)
    expected = ref.predict_proba(scaler.transform(test64))
    np.testing.assert_allclose(probe.scores(test), expected, atol=1e-10)
    # multinomial: probabilities are the softmax of the three decision functions
    np.testing.assert_allclose(expected, softmax(ref.decision_function(
        scaler.transform(test64))), atol=1e-12)
    assert probe.selection["grouped_by"] == "patient" and probe.selection["folds"] == 5


def test_probe_learns_held_out_classes_and_is_deterministic():
    x, y, patients = embeddings(200, 3, seed=6, shift=1.5)
    a = fit_linear_probe(x[:100], y[:100], 3, groups=patients[:100], seed=1)
    b = fit_linear_probe(x[:100], y[:100], 3, groups=patients[:100], seed=1)
    np.testing.assert_array_equal(a.scores(x[100:]), b.scores(x[100:]))
    assert (a.scores(x[100:]).argmax(1) == y[100:]).mean() > 0.8


def test_cv_folds_never_split_a_patient_and_keep_every_class():
    x, y, patients = embeddings(90, 3, seed=7)
    splits, reason = probe_cv_splits(y, patients.astype(object), seed=0)
    assert reason is None and len(splits) == 5
    for train, val in splits:
        assert not set(patients[train]) & set(patients[val])
        assert set(y[train]) == {0, 1, 2}


def test_probe_without_enough_patients_falls_back_and_says_why():
    x, _, _ = embeddings(12, 2, seed=8)
    y = np.array([0] * 6 + [1] * 6)
    patients = np.array(["A"] * 6 + ["B"] * 6)  # one patient per class
    probe = fit_linear_probe(x, y, 2, groups=patients, seed=0)
    assert probe.C == 1.0 and "1 patient" in probe.selection["fallback"]
    assert probe.scores(x).shape == (12, 2)
