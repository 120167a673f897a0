"""``compare``: evaluated runs side by side, with paired bootstrap differences.

Reads each run's ``eval/<split>/metrics.json`` and ``predictions.csv`` (written by
:func:`wsi_ncmi.stages.evaluate.evaluate_run`) for one head. Runs are compared only on identical
evaluated slides with identical true labels; otherwise the comparison is refused with the
reason. For each pair (A, B) in the order given, B − A in every scalar metric on the same
bootstrap resamples of patients (slides when no patient ids), so the interval reflects the
difference, not the two runs' separate uncertainties.

Multi-seed folders (``train --seeds``, :mod:`wsi_ncmi.formats.seedruns`) are paired by seed
and by patient: on the seeds every folder holds, B − A is averaged over seeds, each bootstrap
replicate draws the patients once for every seed
(:func:`wsi_ncmi.stats.bootstrap.seed_paired_difference`), and the report says in how many
seeds B beat A. Beside that interval (these trained models, resampled patients) stands one that
also resamples the seeds: the one to read when the question is whether one recipe or loss beats
another. A comparison of single runs says that it rests on one seed. Single runs and
multi-seed folders are not mixed.

Writes ``comparison.csv`` (one row per run), ``differences.csv`` (one row per pair and metric),
``differences_by_seed.csv`` (multi-seed: one row per pair, seed and metric), ``comparison.md``
and a ``provenance.json`` record to the output folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..errors import InputError
from ..formats.runfolder import eval_dir, read_eval
from ..formats.seedruns import is_multi_seed, seed_dir, seed_runs
from ..model.heads import HEADS
from ..stats.bootstrap import (
    Units,
    resampling_units,
    seed_mean_metrics,
    seed_paired_difference,
)
from ..stats.metrics import SCALARS
from ..stats.reports import render_compare_report
from .provenance import write_record


@dataclass
class EvaluatedRun:
    """One run's evaluation for one head: ``name``, ``metrics`` (metrics.json), ``rows``
    (its predictions.csv rows for the head, indexed by slide id)."""

    name: str
    metrics: dict
    rows: pd.DataFrame


@dataclass
class Comparison:
    """``text``: the markdown report; ``rows``: one dict per run; ``pairs``: one dict per
    pair; ``paths``: files written."""

    text: str
    rows: list[dict]
    pairs: list[dict]
    paths: list[Path]


def load_evaluated(run_dir: Path, split: str, head: str, name: str) -> EvaluatedRun:
    """A run's evaluation of ``split`` restricted to ``head``; :class:`InputError` when it was
    not evaluated, lacks the head, or scores a slide twice."""
    metrics, pred = read_eval(run_dir, split)
    if head not in metrics["heads"]:
        raise InputError(f"{run_dir}: no {head} head (a {metrics.get('loss')} run has "
                         f"{', '.join(metrics['heads'])})")
    rows = pred[pred["head"] == head]
    doubled = rows.loc[rows["slide_id"].duplicated(), "slide_id"].tolist()
    if doubled:
        raise InputError(f"{eval_dir(run_dir, split) / 'predictions.csv'}: slide(s) scored by "
                         "several folds "
                         f"({', '.join(doubled[:5])}); compare the test split")
    return EvaluatedRun(name=name, metrics=metrics, rows=rows.set_index("slide_id"))


def _run_names(run_dirs: Sequence[Path]) -> list[str]:
    names = [Path(r).name for r in run_dirs]
    return names if len(set(names)) == len(names) else [str(r) for r in run_dirs]


def _some(ids: list[str]) -> str:
    """``3 (a, b, c…)``: a count and the first few ids."""
    if not ids:
        return "0"
    return f"{len(ids)} ({', '.join(ids[:3])}{'…' if len(ids) > 3 else ''})"


def check_comparable(runs: list[EvaluatedRun]) -> None:
    """Raise :class:`InputError` listing every reason the runs cannot be compared: other
    classes, other evaluated slides, or other true labels for the same slide."""
    ref = runs[0]
    problems = []
    for run in runs[1:]:
        if run.metrics["classes"] != ref.metrics["classes"]:
            problems.append(f"{run.name} has classes {run.metrics['classes']}, {ref.name} has "
                            f"{ref.metrics['classes']}")
            continue
        only_ref = sorted(set(ref.rows.index) - set(run.rows.index))
        only_run = sorted(set(run.rows.index) - set(ref.rows.index))
        if only_ref or only_run:
            problems.append(f"the runs' evaluated slides differ: {_some(only_ref)} only in "
                            f"{ref.name}, {_some(only_run)} only in {run.name}")
            continue
        labels = run.rows.loc[ref.rows.index, "true_label"]
        differ = labels.index[labels.to_numpy() != ref.rows["true_label"].to_numpy()].tolist()
        if differ:
            problems.append(f"{run.name} and {ref.name} disagree on the true label of "
                            f"{len(differ)} slide(s) ({', '.join(differ[:3])})")
    if problems:
        raise InputError(f"cannot compare: {'; '.join(problems)}")


def load_groups(run_dirs: Sequence[Path], split: str, head: str
                ) -> tuple[list[str], list[dict], list[int] | None]:
    """Run names, per run its evaluations by seed (key None for a single run), and the seeds
    every multi-seed folder holds (None for single runs)."""
    names = _run_names(run_dirs)
    multi = [is_multi_seed(d) for d in run_dirs]
    if any(multi) and not all(multi):
        single = [n for n, m in zip(names, multi, strict=True) if not m]
        raise InputError(f"cannot pair multi-seed folders with single runs ({', '.join(single)}"
                         "); give only multi-seed folders (train --seeds) or only runs")
    if not all(multi):
        return names, [{None: load_evaluated(d, split, head, n)}
                       for d, n in zip(run_dirs, names, strict=True)], None
    by_seed = [seed_runs(d) for d in run_dirs]
    common = [s for s in by_seed[0] if all(s in runs for runs in by_seed)]
    if not common:
        raise InputError("the multi-seed folders share no seed: "
                         + "; ".join(f"{n}: {', '.join(map(str, r))}"
                                     for n, r in zip(names, by_seed, strict=True)))
    groups = [{s: load_evaluated(runs[s], split, head, f"{n} (seed {s})") for s in common}
              for runs, n in zip(by_seed, names, strict=True)]
    return names, groups, common


def run_row(name: str, group: dict, head: str, y: np.ndarray, scores: list[np.ndarray],
            units: Units, n_boot: int, seed: int) -> dict:
    """One comparison row: a single run's metrics.json values, or a multi-seed run's means
    over seeds with their intervals and the sd over seeds."""
    evals = list(group.values())
    ncmi = [e.metrics["ncmi"]["ncmi"] for e in evals if e.metrics["ncmi"]["ncmi"] is not None]
    row = {"run": name, "loss": evals[0].metrics.get("loss"), "n_seeds": len(evals),
           "ncmi": float(np.mean(ncmi)) if ncmi else None}
    if None in group:
        return {**row, **{m: {**evals[0].metrics["heads"][head][m], "seed_sd": None}
                          for m in SCALARS}}
    means = seed_mean_metrics(y, scores, units, n_boot, seed)
    return {**row, **{m: {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                          for k, v in means[m].items()} for m in SCALARS}}


def paired_inputs(groups: dict[str, list[EvaluatedRun]]
                  ) -> tuple[np.ndarray, dict[str, list[np.ndarray]], Units]:
    """The inputs of a seed-paired bootstrap over evaluations already checked comparable
    (:func:`check_comparable`): true class indices y (N,) in the first evaluation's slide
    order, each group's per-seed scores (N×C float64, rows in that order), and the resampling
    units (patients)."""
    first = next(iter(groups.values()))[0]
    classes = first.metrics["classes"]
    order = first.rows.index
    y = first.rows["true_label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    columns = [f"score_{c}" for c in classes]
    scores = {name: [e.rows.loc[order, columns].to_numpy(np.float64) for e in group]
              for name, group in groups.items()}
    return y, scores, resampling_units(list(order), first.rows["patient_id"].tolist())


def compare_runs(run_dirs: Sequence[Path], out_dir: Path, split: str = "test",
                 head: str = "linear_probe", n_boot: int = 1000, seed: int = 0) -> Comparison:
    """Compare ≥ 2 evaluated runs (or multi-seed folders) on ``split`` with ``head``; write
    the tables to ``out_dir`` and return them. ``n_boot`` resamples and ``seed`` drive the
    paired bootstrap."""
    if head not in HEADS:
        raise InputError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    if len(run_dirs) < 2:
        raise InputError("compare needs at least two runs")
    names, groups, seeds = load_groups(run_dirs, split, head)
    check_comparable([e for g in groups for e in g.values()])
    y, scores, units = paired_inputs({n: list(g.values())
                                      for n, g in zip(names, groups, strict=True)})
    rows = [run_row(n, g, head, y, scores[n], units, n_boot, seed)
            for n, g in zip(names, groups, strict=True)]
    pairs = [{"a": a, "b": b,
              **seed_paired_difference(y, scores[a], scores[b], units, n_boot, seed)}
             for a, b in combinations(names, 2)]
    bootstrap = {"n_boot": n_boot, "seed": seed, "unit": units.kind, "n_units": units.n_units,
                 "seeds": seeds}
    text = render_compare_report(rows, pairs, split, head, len(y), bootstrap)
    paths = write_comparison(Path(out_dir), rows, pairs, text, seeds)
    folders = ([Path(d) for d in run_dirs] if seeds is None else
               [seed_dir(d, s) for d in run_dirs for s in seeds])
    write_record(Path(out_dir), command="compare",
                 config={"runs": [str(r) for r in run_dirs], "split": split, "head": head,
                         "n_boot": n_boot, "seed": seed, "seeds": seeds},
                 inputs=[eval_dir(r, split) / n for r in folders
                         for n in ("metrics.json", "predictions.csv")],
                 outputs=paths, seeds={"bootstrap": seed})
    return Comparison(text=text, rows=rows, pairs=pairs, paths=paths)


def write_comparison(out_dir: Path, rows: list[dict], pairs: list[dict], text: str,
                     seeds: list[int] | None = None) -> list[Path]:
    """comparison.csv, differences.csv, comparison.md and, for multi-seed runs,
    differences_by_seed.csv in ``out_dir``, atomically."""
    table = pd.DataFrame([
        {"run": r["run"], "loss": r["loss"], "n_seeds": r["n_seeds"], "ncmi": r["ncmi"],
         **{k: v for m in SCALARS for k, v in (
             (m, r[m]["value"]), (f"{m}_ci_low", r[m]["ci95"][0]),
             (f"{m}_ci_high", r[m]["ci95"][1]), (f"{m}_seed_sd", r[m]["seed_sd"]))}}
        for r in rows])
    diffs = pd.DataFrame([
        {"run_a": p["a"], "run_b": p["b"], "metric": m, "value_a": p[m]["a"],
         "value_b": p[m]["b"], "diff_b_minus_a": p[m]["diff"], "ci_low": p[m]["ci95"][0],
         "ci_high": p[m]["ci95"][1],
         **dict(zip(("ci_seeds_low", "ci_seeds_high"), p[m]["ci95_seeds"] or (None, None),
                    strict=True)),
         "n_boot_valid": p[m]["n_valid"],
         "n_seeds": p[m]["n_seeds"], "b_better_seeds": p[m]["b_better"],
         "tied_seeds": p[m]["ties"]}
        for p in pairs for m in SCALARS])
    frames = {"comparison.csv": table, "differences.csv": diffs}
    if seeds is not None:
        frames["differences_by_seed.csv"] = pd.DataFrame([
            {"run_a": p["a"], "run_b": p["b"], "seed": s, "metric": m,
             "diff_b_minus_a": p[m]["per_seed"][i]}
            for p in pairs for m in SCALARS for i, s in enumerate(seeds)])
    paths = []
    for name, frame in frames.items():
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
        paths.append(out_dir / name)
    with atomic_path(out_dir / "comparison.md") as tmp:
        tmp.write_text(text)
    return [*paths, out_dir / "comparison.md"]
