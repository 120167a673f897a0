"""Temperature scaling of the centroid head (model/heads.fit_temperature): on synthetic simplex
outputs whose labels follow softmax(−KL/T0), the fitted T recovers T0 and the held-out ECE
falls; the ranking never changes; a few perfectly separated slides give finite confidence;
degenerate inputs stay finite."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_ncmi.errors import InputError
from wsi_ncmi.model.heads import TEMPERATURE_RANGE, fit_temperature
from wsi_ncmi.stats.metrics import ece
from wsi_ncmi.stats.simplex import centroid_scores, kl_to_centroids, softmax

MEANS = np.array([[0.7, 0.2, 0.1], [0.15, 0.7, 0.15], [0.1, 0.2, 0.7]])


def outputs(n: int, rng: np.random.Generator) -> np.ndarray:
    """n points of the 3-simplex, each halfway between a random class mean and a random
    Dirichlet(2, 2, 2) point."""
    return 0.5 * MEANS[rng.integers(0, 3, n)] + 0.5 * rng.dirichlet([2.0, 2.0, 2.0], n)


def labels_at_temperature(p: np.ndarray, t0: float, rng: np.random.Generator) -> np.ndarray:
    """Labels drawn from softmax(−KL(p‖s_c)/t0): the centroid head with T = t0 is calibrated
    for them by construction."""
    proba = centroid_scores(p, MEANS, t0)
    return (rng.random(len(p))[:, None] > np.cumsum(proba, 1)).sum(1)


def calibration_error(p: np.ndarray, y: np.ndarray, t: float) -> float:
    scores = centroid_scores(p, MEANS, t)
    return ece(scores.argmax(1) == y, scores.max(1))


@pytest.mark.parametrize("t0", [0.05, 0.2])
def test_fitted_temperature_recovers_the_true_one_and_lowers_held_out_ece(t0):
    rng = np.random.default_rng(0)
    p_val, p_test = outputs(20000, rng), outputs(20000, rng)
    y_val, y_test = labels_at_temperature(p_val, t0, rng), labels_at_temperature(p_test, t0, rng)
    t = fit_temperature(-kl_to_centroids(p_val, MEANS), y_val)
    assert t == pytest.approx(t0, rel=0.05)
    before, after = calibration_error(p_test, y_test, 1.0), calibration_error(p_test, y_test, t)
    assert before > 0.1  # softmax(−KL) sits near 1/3 while the labels are far more certain
    assert after < 0.02 and after < before / 5
    np.testing.assert_array_equal(centroid_scores(p_test, MEANS, t).argmax(1),
                                  centroid_scores(p_test, MEANS).argmax(1))


def test_temperature_follows_the_scale_of_collapsed_outputs():
    """Outputs that barely move (KL differences of ~1e-6 nats, as a collapsed demo model's)
    are calibrated as well as ordinary ones: the search range scales with the logits."""
    rng = np.random.default_rng(1)
    p = outputs(5000, rng)
    y = labels_at_temperature(p, 0.1, rng)
    logits = -kl_to_centroids(p, MEANS)
    assert fit_temperature(logits * 1e-5, y) == pytest.approx(1e-5 * fit_temperature(logits, y),
                                                              rel=1e-3)


def test_separable_and_degenerate_inputs():
    logits = np.array([[0.0, -1.0], [-1.0, 0.0], [0.0, -2.0]])
    y = np.array([0, 1, 0])
    # every slide right: plain log-loss would send T to 0 (certainty); Platt's targets,
    # (n_c + 1)/(n_c + 2) = 3/4, 2/3, 3/4 here, keep the confidence near theirs
    t = fit_temperature(logits, y)
    spread = np.mean(np.std(logits, axis=1))
    assert TEMPERATURE_RANGE[0] * spread < t < TEMPERATURE_RANGE[1] * spread
    proba = softmax(logits / t)[np.arange(3), y]
    assert proba.mean() == pytest.approx(np.mean([3 / 4, 2 / 3, 3 / 4]), abs=0.02)
    assert fit_temperature(np.zeros((3, 2)), y) == 1.0  # no spread: left uncalibrated
    with pytest.raises(InputError, match="no labelled slides"):
        fit_temperature(np.zeros((0, 2)), np.zeros(0))
