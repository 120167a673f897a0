"""Patient-level bootstrap intervals: coverage, shrinkage, determinism, pairing."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from wsi_ncmi.stats.bootstrap import (
    metric_intervals,
    paired_difference,
    resample_indices,
    resampling_units,
)
from wsi_ncmi.stats.metrics import SCALARS, compute_metrics


def cohort(n: int, seed: int, n_classes: int = 3, skill: float = 1.5,
           slides_per_patient: int = 2):
    """Labels, scores and patient ids: consecutive slides share a patient (and a label)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, n_classes, size=-(-n // slides_per_patient)),
                  slides_per_patient)[:n]
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += skill
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    patients = [f"P{i // slides_per_patient:04d}" for i in range(n)]
    return y, scores, patients


def ids(n: int) -> list[str]:
    return [f"S{i:04d}" for i in range(n)]


def test_units_group_slides_by_patient_and_fall_back_to_slides():
    units = resampling_units(["a", "b", "c", "d"], ["p1", "p1", "", "p2"])
    assert units.kind == "patient" and units.n_units == 3
    assert units.codes[0] == units.codes[1] != units.codes[3]
    slides = resampling_units(["a", "b"], None)
    assert slides.kind == "slide" and slides.n_units == 2
    assert resampling_units(["a", "b"], ["", " "]).kind == "slide"


def test_resamples_draw_whole_patients():
    patients = ["p0", "p0", "p0", "p1", "p2", "p2"]
    units = resampling_units(ids(6), patients)
    for idx in resample_indices(units.codes, 50, seed=1):
        counts = np.bincount(idx, minlength=6)
        assert counts[0] == counts[1] == counts[2] and counts[4] == counts[5]
        assert len(set(np.array(patients)[idx])) <= 3


@pytest.mark.parametrize("seed", range(6))
def test_intervals_cover_the_point_estimate(seed):
    y, scores, patients = cohort(200, seed)
    units = resampling_units(ids(200), patients)
    interval = metric_intervals(y, scores, units, n_boot=500, seed=seed)
    point = compute_metrics(y, scores)
    values = [point.scalars[k] for k in SCALARS] + list(point.auc_per_class)
    for j, value in enumerate(values):
        assert interval.low[j] <= value <= interval.high[j], (j, value)
        assert interval.n_valid[j] == 500


def test_intervals_shrink_with_more_slides():
    widths = {}
    for n in (60, 240, 960):
        y, scores, patients = cohort(n, seed=11)
        iv = metric_intervals(y, scores, resampling_units(ids(n), patients), 400, seed=0)
        widths[n] = iv.high[: len(SCALARS)] - iv.low[: len(SCALARS)]
    assert np.all(widths[60] > widths[240]) and np.all(widths[240] > widths[960])
    # roughly 1/sqrt(n): four times the slides, about half the width
    ratio = widths[960][:4] / widths[240][:4]
    assert np.all((ratio > 0.35) & (ratio < 0.7)), ratio


def test_patient_resampling_is_not_fooled_by_duplicate_slides():
    """Four identical slides per patient carry one patient's information: resampling patients
    gives the interval of the one-slide cohort; resampling slides would be too narrow."""
    y, scores, _ = cohort(100, seed=5, slides_per_patient=1)
    y4, scores4 = np.repeat(y, 4), np.repeat(scores, 4, axis=0)
    patients4 = [f"P{i // 4:04d}" for i in range(400)]
    one = metric_intervals(y, scores, resampling_units(ids(100), None), 400, seed=0)
    by_patient = metric_intervals(y4, scores4, resampling_units(ids(400), patients4), 400, 0)
    by_slide = metric_intervals(y4, scores4, resampling_units(ids(400), None), 400, seed=0)
    np.testing.assert_allclose(by_patient.low, one.low)
    np.testing.assert_allclose(by_patient.high, one.high)
    acc = SCALARS.index("accuracy")
    assert by_slide.high[acc] - by_slide.low[acc] < 0.7 * (one.high[acc] - one.low[acc])


def test_same_seed_same_interval_and_seed_matters():
    y, scores, patients = cohort(80, seed=2)
    units = resampling_units(ids(80), patients)
    a = metric_intervals(y, scores, units, 200, seed=3)
    b = metric_intervals(y, scores, units, 200, seed=3)
    c = metric_intervals(y, scores, units, 200, seed=4)
    np.testing.assert_array_equal(a.low, b.low)
    np.testing.assert_array_equal(a.high, b.high)
    assert not np.array_equal(a.low, c.low)


def test_undefined_resamples_are_counted_not_crashing():
    y = np.array([0] * 10 + [1])  # one slide of class 1: many resamples miss it
    scores = np.tile([0.6, 0.4], (11, 1))
    scores[-1] = [0.3, 0.7]
    iv = metric_intervals(y, scores, resampling_units(ids(11), None), 300, seed=0)
    auc = SCALARS.index("auc_macro")
    assert 0 < iv.n_valid[auc] < 300
    assert iv.n_valid[SCALARS.index("accuracy")] == 300


def test_paired_difference_of_a_run_with_itself_is_exactly_zero():
    y, scores, patients = cohort(90, seed=4)
    diff = paired_difference(y, scores, scores, resampling_units(ids(90), patients), 200, 0)
    for name in SCALARS:
        assert diff[name]["diff"] == 0 and diff[name]["ci95"] == [0, 0]


def test_paired_difference_detects_a_better_run_and_matches_sklearn():
    y, weak, patients = cohort(300, seed=8, skill=0.3)
    _, strong, _ = cohort(300, seed=8, skill=2.5)
    units = resampling_units(ids(300), patients)
    diff = paired_difference(y, weak, strong, units, 300, seed=0)
    f1_gap = (f1_score(y, strong.argmax(1), average="macro")
              - f1_score(y, weak.argmax(1), average="macro"))
    auc_gap = (roc_auc_score(y, strong, multi_class="ovr")
               - roc_auc_score(y, weak, multi_class="ovr"))
    assert diff["macro_f1"]["diff"] == pytest.approx(f1_gap, abs=1e-12)
    assert diff["auc_macro"]["diff"] == pytest.approx(auc_gap, abs=1e-12)
    for name in ("macro_f1", "auc_macro"):
        lo, hi = diff[name]["ci95"]
        assert 0 < lo <= diff[name]["diff"] <= hi
    # both runs scored on the same resamples: the difference's interval is narrower than two
    # independent intervals would give
    f1 = SCALARS.index("macro_f1")
    wa, wb = (np.diff([iv.low[f1], iv.high[f1]])[0] for iv in (
        metric_intervals(y, weak, units, 300, seed=0),
        metric_intervals(y, strong, units, 300, seed=0)))
    lo, hi = diff["macro_f1"]["ci95"]
    assert hi - lo < np.hypot(wa, wb)
