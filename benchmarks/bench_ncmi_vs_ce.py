"""NCMI against CE in the defaults study's runs: seed-paired, on the same head.

For each learnable cohort and recipe of :data:`RECIPES` that both losses ran, ``compare``
(300 bootstrap resamples of test patients shared by the seeds) of ``ce/<recipe>`` against
``ncmi/<recipe>`` on the linear-probe and centroid heads, which both losses have: NCMI − CE
test macro-F1, its 95 % interval, and the seeds NCMI won; then each loss's own head (NCMI:
centroid, CE: classifier), mean over seeds, which are not comparable pairwise. Writes
``--results/ncmi_vs_ce.md``.

    python benchmarks/bench_ncmi_vs_ce.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from bench_defaults import add_study_paths, compared  # noqa: E402
from bench_lr import run_lr  # noqa: E402
from study_cohorts import LEARNABLE  # noqa: E402

#: tuned; the defaults before the per-loss lr (1e-3 for both); the defaults (each its own lr)
RECIPES = ("tuned", "defaults_lr1e3", "defaults")
HEADS = ("linear_probe", "centroid")


def pair_rows(work: Path, cohort: str, recipe: str) -> list[str]:
    """One markdown row per shared head: NCMI − CE with interval and seeds won."""
    runs = work / "runs" / cohort
    if not all((runs / loss / recipe / "eval" / "test" / "seeds.csv").is_file()
               for loss in ("ce", "ncmi")):
        return []
    lrs = f"{run_lr(runs / 'ncmi' / recipe):.2g} / {run_lr(runs / 'ce' / recipe):.2g}"
    lines = []
    for head in HEADS:
        rows, pairs = compared([runs / "ce" / recipe, runs / "ncmi" / recipe],
                               work / "compare_pairs" / cohort / recipe / head, head, 300)
        d = pairs[0]["macro_f1"]  # b − a = NCMI − CE
        own = {loss: r["macro_f1"]["value"] for loss, r in zip(("ce", "ncmi"), rows,
                                                                strict=True)}
        lines.append(f"| {cohort} | {recipe} | {lrs} | {head.replace('_', ' ')} | "
                     f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | "
                     f"{d['b_better']}/{d['n_seeds']} | {own['ncmi']:.3f} / {own['ce']:.3f} |")
    return lines


def own_heads(work: Path, cohort: str, recipe: str) -> str | None:
    """'NCMI centroid / CE classifier' test macro-F1, means over seeds."""
    values = []
    for loss, head in (("ncmi", "centroid"), ("ce", "classifier")):
        path = work / "runs" / cohort / loss / recipe / "eval" / "test" / "seeds.csv"
        if not path.is_file():
            return None
        table = pd.read_csv(path)
        chosen = table[table["head"] == head]["macro_f1"]
        if chosen.empty:
            return None
        values.append(chosen.mean())
    return f"{values[0]:.3f} / {values[1]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_paths(parser)
    args = parser.parse_args()
    lines = ["# NCMI against CE on the cohorts where training learns (seed-paired)", "",
             "From the runs of `bench_defaults.py` (seeds 0, 1, 2; the same split for both "
             "losses), `python benchmarks/bench_ncmi_vs_ce.py`. Δ = NCMI − CE test macro-F1 "
             "on the same head [95 % interval, 300 resamples of test patients]; won: seeds in "
             "which NCMI scored higher. `defaults_lr1e3`: the defaults before the per-loss "
             "lr; `defaults`: each loss at its own (the lr column, read from the runs).", "",
             "| cohort | recipe | lr (NCMI / CE) | head | Δ macro-F1 (NCMI − CE) | NCMI won | "
             "NCMI / CE |", "|---|---|---|---|---|---|---|"]
    own = ["", "Own heads (NCMI centroid / CE classifier), test macro-F1, means over seeds:", "",
           "| cohort | " + " | ".join(RECIPES) + " |", "|---|" + "---|" * len(RECIPES)]
    for cohort in LEARNABLE:
        for recipe in RECIPES:
            lines += pair_rows(args.work, cohort, recipe)
        own.append(f"| {cohort} | " + " | ".join(own_heads(args.work, cohort, r) or "–"
                                                  for r in RECIPES) + " |")
    text = "\n".join(lines + own) + "\n"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ncmi_vs_ce.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
