"""``compare``: evaluated runs side by side, with paired bootstrap differences.

Reads each run's ``eval/<split>/metrics.json`` and ``predictions.csv`` (written by
:func:`wsi_ncmi.stages.evaluate.evaluate_run`) for one head. Runs are compared only on identical
evaluated slides with identical true labels; otherwise the comparison is refused with the
reason. For each pair (A, B) in the order given, B − A in every scalar metric on the same
bootstrap resamples of patients (slides when no patient ids), so the interval reflects the
difference, not the two runs' separate uncertainties.

Writes ``comparison.csv`` (one row per run), ``differences.csv`` (one row per pair and metric),
``comparison.md`` and a ``provenance.json`` record to the output folder.
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
from ..model.heads import HEADS
from ..stats.bootstrap import paired_difference, resampling_units
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


def compare_runs(run_dirs: Sequence[Path], out_dir: Path, split: str = "test",
                 head: str = "linear_probe", n_boot: int = 1000, seed: int = 0) -> Comparison:
    """Compare ≥ 2 evaluated runs on ``split`` with ``head``; write the tables to
    ``out_dir`` and return them. ``n_boot`` resamples and ``seed`` drive the paired
    bootstrap."""
    if head not in HEADS:
        raise InputError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    if len(run_dirs) < 2:
        raise InputError("compare needs at least two runs")
    runs = [load_evaluated(d, split, head, n) for d, n in zip(run_dirs, _run_names(run_dirs),
                                                              strict=True)]
    check_comparable(runs)
    classes = runs[0].metrics["classes"]
    order = runs[0].rows.index
    index = {c: i for i, c in enumerate(classes)}
    y = runs[0].rows["true_label"].map(index).to_numpy(dtype=np.int64)
    scores = {r.name: r.rows.loc[order, [f"score_{c}" for c in classes]].to_numpy(np.float64)
              for r in runs}
    units = resampling_units(list(order), runs[0].rows["patient_id"].tolist())
    rows = [{"run": r.name, "loss": r.metrics.get("loss"),
             **{m: r.metrics["heads"][head][m] for m in SCALARS},
             "ncmi": r.metrics["ncmi"]["ncmi"]} for r in runs]
    pairs = [{"a": a.name, "b": b.name,
              **paired_difference(y, scores[a.name], scores[b.name], units, n_boot, seed)}
             for a, b in combinations(runs, 2)]
    bootstrap = {"n_boot": n_boot, "seed": seed, "unit": units.kind, "n_units": units.n_units}
    text = render_compare_report(rows, pairs, split, head, len(order), bootstrap)
    paths = write_comparison(Path(out_dir), rows, pairs, text)
    write_record(Path(out_dir), command="compare",
                 config={"runs": [str(r) for r in run_dirs], "split": split, "head": head,
                         "n_boot": n_boot, "seed": seed},
                 inputs=[eval_dir(r, split) / n for r in run_dirs
                         for n in ("metrics.json", "predictions.csv")],
                 outputs=paths, seeds={"bootstrap": seed})
    return Comparison(text=text, rows=rows, pairs=pairs, paths=paths)


def write_comparison(out_dir: Path, rows: list[dict], pairs: list[dict], text: str
                     ) -> list[Path]:
    """comparison.csv, differences.csv and comparison.md in ``out_dir``, atomically."""
    table = pd.DataFrame([
        {"run": r["run"], "loss": r["loss"], "ncmi": r["ncmi"],
         **{k: v for m in SCALARS for k, v in ((m, r[m]["value"]), (f"{m}_ci_low",
                                                                     r[m]["ci95"][0]),
                                               (f"{m}_ci_high", r[m]["ci95"][1]))}}
        for r in rows])
    diffs = pd.DataFrame([
        {"run_a": p["a"], "run_b": p["b"], "metric": m, "value_a": p[m]["a"],
         "value_b": p[m]["b"], "diff_b_minus_a": p[m]["diff"], "ci_low": p[m]["ci95"][0],
         "ci_high": p[m]["ci95"][1], "n_boot_valid": p[m]["n_valid"]}
        for p in pairs for m in SCALARS])
    paths = [out_dir / "comparison.csv", out_dir / "differences.csv", out_dir / "comparison.md"]
    for frame, path in zip((table, diffs), paths[:2], strict=False):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    with atomic_path(paths[2]) as tmp:
        tmp.write_text(text)
    return paths
