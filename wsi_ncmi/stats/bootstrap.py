"""Percentile bootstrap intervals for slide-level metrics, resampling patients.

Slides of one patient are not independent, so the resampling unit is the patient: a resample
draws as many patients as there are, with replacement, and takes all slides of each draw.
Slides without a ``patient_id`` are their own unit; with no patient ids at all the unit is the
slide. The model and the heads stay fixed: the intervals describe the uncertainty from which
slides happened to be evaluated, not from retraining. Runs trained with several seeds on the
same splits are paired by seed, and each resample's patients are shared by every seed
(:func:`seed_paired_difference`), which also gives a second interval that resamples the seeds
as well: the one for comparing recipes rather than trained models.

A resample where a metric is undefined (e.g. an AUC when a class was not drawn) is left out of
that metric's interval; how many resamples counted is reported as ``n_valid``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .metrics import SCALARS, check_inputs, metric_vector

CI_LEVEL = 0.95


@dataclass
class Units:
    """Resampling units: ``codes`` (n,) int unit index per slide; ``kind`` "patient" or
    "slide"; ``n_units`` how many distinct units."""

    codes: np.ndarray
    kind: str
    n_units: int


@dataclass
class Interval:
    """Percentile intervals of a vector statistic: ``low``, ``high`` (d,) and ``n_valid`` (d,)
    resamples where the statistic was finite."""

    low: np.ndarray
    high: np.ndarray
    n_valid: np.ndarray


def resampling_units(slide_ids: Sequence[str], patient_ids: Sequence[str] | None) -> Units:
    """Group slides by patient (a blank patient id makes the slide its own unit); by slide
    when ``patient_ids`` is None or entirely blank."""
    patients = [] if patient_ids is None else [str(p).strip() for p in patient_ids]
    if not any(patients):
        keys = [f"slide:{s}" for s in slide_ids]
        kind = "slide"
    else:
        keys = [f"patient:{p}" if p else f"slide:{s}"
                for s, p in zip(slide_ids, patients, strict=True)]
        kind = "patient"
    _, codes = np.unique(np.array(keys, dtype=object), return_inverse=True)
    return Units(codes=codes.astype(np.int64), kind=kind, n_units=int(codes.max(initial=-1)) + 1)


def resample_indices(codes: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """``n_boot`` arrays of slide indices, each all slides of as many units as there are,
    drawn with replacement (numpy ``default_rng(seed)``; same seed → same resamples)."""
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        units = rng.integers(0, len(counts), size=len(counts))
        lengths = counts[units]
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out.append(order[np.repeat(starts[units], lengths) + offsets])
    return out


def percentile_interval(samples: np.ndarray, level: float = CI_LEVEL) -> Interval:
    """Percentile interval per column of ``samples`` (n_boot×d), ignoring non-finite entries;
    NaN bounds for a column with no finite sample."""
    tail = 100 * (1 - level) / 2
    finite = np.isfinite(samples)
    low, high = np.full(samples.shape[1], np.nan), np.full(samples.shape[1], np.nan)
    for j in np.flatnonzero(finite.any(0)):
        low[j], high[j] = np.percentile(samples[finite[:, j], j], [tail, 100 - tail])
    return Interval(low=low, high=high, n_valid=finite.sum(0))


def bootstrap(stat: Callable[[np.ndarray], np.ndarray], units: Units, n_boot: int,
              seed: int) -> Interval:
    """Percentile 95 % interval of ``stat`` (slide indices → (d,) float vector) over
    ``n_boot`` unit resamples."""
    draws = resample_indices(units.codes, n_boot, seed)
    return percentile_interval(np.stack([stat(idx) for idx in draws]))


def metric_intervals(y: np.ndarray, scores: np.ndarray, units: Units, n_boot: int,
                     seed: int) -> Interval:
    """Intervals of :func:`wsi_ncmi.stats.metrics.metric_vector` (the scalars, then per-class AUC)
    for labels ``y`` (n,) and scores (n×C)."""
    y, scores = check_inputs(y, scores)
    return bootstrap(lambda idx: metric_vector(y[idx], scores[idx]), units, n_boot, seed)


def paired_difference(y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                      units: Units, n_boot: int, seed: int) -> dict[str, dict]:
    """B − A for every scalar metric on the same slides, with a paired 95 % interval (both
    runs scored on each resample's slides): :func:`seed_paired_difference` with one seed.

    ``y`` (n,) labels; ``scores_a``, ``scores_b`` (n×C) the two runs' scores for the same
    slides in the same order.
    """
    return seed_paired_difference(y, [scores_a], [scores_b], units, n_boot, seed)


def _seed_scores(y: np.ndarray, runs: Sequence[np.ndarray]) -> tuple[np.ndarray, list]:
    if not runs:
        raise ValueError("at least one seed is needed")
    checked = [check_inputs(y, s) for s in runs]
    if len({s.shape for _, s in checked}) > 1:
        raise ValueError(f"scores differ in shape: {[s.shape for _, s in checked]}")
    return checked[0][0], [s for _, s in checked]


def seed_paired_difference(y: np.ndarray, scores_a: Sequence[np.ndarray],
                           scores_b: Sequence[np.ndarray], units: Units, n_boot: int,
                           seed: int) -> dict[str, dict]:
    """B − A for every scalar metric, paired by training seed and by patient.

    ``y`` (n,) labels of the n evaluated slides (the same in every seed); ``scores_a[s]``,
    ``scores_b[s]`` (n×C): runs A and B trained with the s-th seed, rows in the order of
    ``y``. The point estimate is the mean over seeds of m(B_s) − m(A_s). Each bootstrap
    replicate draws the patients once and applies that draw to every seed (the seeds were
    evaluated on the same patients, so their differences share the patients' luck; drawing
    per seed would treat S seeds as S independent test sets and narrow the interval up to √S
    times); ``ci95`` is the percentile interval of the replicates' mean differences. It
    describes which patients were tested, given these trained seeds.

    ``ci95_seeds`` adds the training seeds: each replicate also draws S of the seed pairs
    (A_s, B_s) with replacement (numpy ``default_rng([seed, 1])``, one draw per replicate, after
    the same patient draw) and averages B − A over them. It is the interval to read for "does
    recipe B beat recipe A", not "did these trained models differ": on the defaults study's
    noise floor (one tuned recipe against itself with other seeds, 88 cells and heads, 3 seeds
    each; docs/training.md) ``ci95`` excluded 0 in 21, ``ci95_seeds`` in 1. With few seeds it
    is coarse (3 seeds give 10 distinct draws); None for one seed.

    Returns ``{metric: {"a", "b" (means over seeds), "diff", "ci95": [lo, hi], "ci95_seeds":
    [lo, hi] or None, "n_valid", "n_seeds", "per_seed" (list of B − A), "b_better" (seeds with
    B − A > 0), "ties" (seeds with B − A = 0)}}`` for each of
    :data:`~wsi_ncmi.stats.metrics.SCALARS`.
    """
    if len(scores_a) != len(scores_b):
        raise ValueError(f"{len(scores_a)} seeds of A but {len(scores_b)} of B")
    y, a_runs = _seed_scores(y, scores_a)
    _, b_runs = _seed_scores(y, scores_b)
    if a_runs[0].shape != b_runs[0].shape:
        raise ValueError(f"scores differ in shape: {a_runs[0].shape} vs {b_runs[0].shape}")
    k, n_seeds = len(SCALARS), len(a_runs)
    seed_rng = np.random.default_rng([seed, 1])

    def mean_diffs(idx: np.ndarray) -> np.ndarray:
        """(2k,): the mean of B − A over every seed, then over a draw of the seeds."""
        per_seed = np.array([metric_vector(y[idx], b[idx])[:k] - metric_vector(y[idx], a[idx])[:k]
                             for a, b in zip(a_runs, b_runs, strict=True)])
        drawn = per_seed[seed_rng.integers(0, n_seeds, size=n_seeds)]
        return np.concatenate([per_seed.mean(0), drawn.mean(0)])

    a = np.array([metric_vector(y, s)[:k] for s in a_runs])
    b = np.array([metric_vector(y, s)[:k] for s in b_runs])
    d = b - a
    interval = bootstrap(mean_diffs, units, n_boot, seed)
    return {name: {"a": float(a[:, j].mean()), "b": float(b[:, j].mean()),
                   "diff": float(d[:, j].mean()),
                   "ci95": [float(interval.low[j]), float(interval.high[j])],
                   "ci95_seeds": None if n_seeds < 2 else
                   [float(interval.low[k + j]), float(interval.high[k + j])],
                   "n_valid": int(interval.n_valid[j]), "n_seeds": len(d),
                   "per_seed": [float(x) for x in d[:, j]],
                   "b_better": int((d[:, j] > 0).sum()), "ties": int((d[:, j] == 0).sum())}
            for j, name in enumerate(SCALARS)}


def seed_mean_metrics(y: np.ndarray, scores: Sequence[np.ndarray], units: Units,
                      n_boot: int, seed: int) -> dict[str, dict]:
    """Every scalar metric of one run trained with several seeds: the mean over seeds with a
    95 % interval from the same shared patient draws as :func:`seed_paired_difference`.

    ``scores[s]`` (n×C) the s-th seed's scores for the slides of ``y``. Returns ``{metric:
    {"value", "ci95": [lo, hi], "n_valid", "seed_sd" (sd over seeds, ddof = 1; NaN for one
    seed), "per_seed"}}``.
    """
    y, runs = _seed_scores(y, scores)
    k = len(SCALARS)
    values = np.array([metric_vector(y, s)[:k] for s in runs])
    interval = bootstrap(lambda idx: np.mean([metric_vector(y[idx], s[idx])[:k] for s in runs],
                                             axis=0), units, n_boot, seed)
    sd = values.std(0, ddof=1) if len(runs) > 1 else np.full(k, np.nan)
    return {name: {"value": float(values[:, j].mean()),
                   "ci95": [float(interval.low[j]), float(interval.high[j])],
                   "n_valid": int(interval.n_valid[j]), "seed_sd": float(sd[j]),
                   "per_seed": [float(x) for x in values[:, j]]}
            for j, name in enumerate(SCALARS)}
