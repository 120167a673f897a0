"""NCMI against CE in the defaults study's runs: seed-paired, on the same head.

For each learnable cohort (and the held-out large-bag one, ``study_cohorts.HELD_OUT``) and
recipe pair of :data:`RECIPES` that both losses ran, ``compare`` (300 bootstrap resamples of
test patients shared by the seeds) of ``ce/<recipe>`` against ``ncmi/<recipe>`` on the
linear-probe and centroid heads, which both losses have: NCMI − CE test macro-F1, its 95 %
intervals (over patients; over seeds and patients), and the seeds NCMI won; then each loss's
own head (NCMI: centroid, CE: classifier), mean over seeds, which are not comparable pairwise.
Writes ``--results/ncmi_vs_ce.md``.

    python benchmarks/bench_ncmi_vs_ce.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from bench_defaults import add_study_paths, compared, first_config, is_evaluated  # noqa: E402
from study_cohorts import HELD_OUT, LEARNABLE  # noqa: E402
from study_recipes import LR_RECIPES  # noqa: E402

from wsi_ncmi.formats.config import LR_GRID  # noqa: E402

#: label → (NCMI's recipe, CE's recipe): tuned; the defaults at the common lr 1e-3 (before the
#: per-loss lr); each loss at its single default lr of the day before ``lr: auto`` (NCMI 1e-2,
#: CE 1e-3; CE's ``LOSS_LR`` is 3e-4 since the grid's fourth lr); ``lr: auto`` over the first
#: three lrs (``cand_auto_3lr``); the defaults (``lr: auto`` over ``LR_GRID``)
RECIPES = {"tuned": ("tuned", "tuned"),
           "defaults_lr1e3": ("defaults_lr1e3", "defaults_lr1e3"),
           "loss_lr": (LR_RECIPES[1e-2], LR_RECIPES[1e-3]),
           "auto_3lr": ("cand_auto_3lr", "cand_auto_3lr"),
           "defaults": ("defaults", "defaults")}
HEADS = ("linear_probe", "centroid")


def lr_label(run: Path) -> str:
    """The lr a multi-seed run trained with, or ``auto``."""
    lr = first_config(run)["optim"]["lr"]
    return lr if isinstance(lr, str) else f"{lr:.2g}"


def pair_rows(work: Path, cohort: str, recipe: str) -> list[str]:
    """One markdown row per shared head: NCMI − CE with interval and seeds won."""
    runs = work / "runs" / cohort
    ncmi, ce = (runs / loss / r for loss, r in zip(("ncmi", "ce"), RECIPES[recipe],
                                                  strict=True))
    if not all(is_evaluated(r) for r in (ncmi, ce)):
        return []
    lrs = f"{lr_label(ncmi)} / {lr_label(ce)}"
    lines = []
    for head in HEADS:
        rows, pairs = compared([ce, ncmi], work / "compare_pairs" / cohort / recipe / head,
                               head, 300)
        d = pairs[0]["macro_f1"]  # b − a = NCMI − CE
        own = {loss: r["macro_f1"]["value"] for loss, r in zip(("ce", "ncmi"), rows,
                                                                strict=True)}
        lo, hi = d["ci95_seeds"]
        lines.append(f"| {cohort} | {recipe} | {lrs} | {head.replace('_', ' ')} | "
                     f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] "
                     f"[{lo:+.3f}, {hi:+.3f}] | "
                     f"{d['b_better']}/{d['n_seeds']} | {own['ncmi']:.3f} / {own['ce']:.3f} |")
    return lines


def own_heads(work: Path, cohort: str, recipe: str) -> str | None:
    """'NCMI centroid / CE classifier' test macro-F1, means over seeds."""
    values = []
    for (loss, head), name in zip((("ncmi", "centroid"), ("ce", "classifier")),
                                  RECIPES[recipe], strict=True):
        path = work / "runs" / cohort / loss / name / "eval" / "test" / "seeds.csv"
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
             "on the same head [95 % interval, 300 resamples of test patients] [95 % interval "
             "over seeds and patients: the one for which loss is better]; won: seeds in "
             "which NCMI scored higher. `defaults_lr1e3`: the defaults at the common lr 1e-3; "
             "`loss_lr`: each loss at its single default lr before `lr: auto` (NCMI 1e-2, CE "
             "1e-3); `auto_3lr`: `lr: auto` over 1e-3, 3e-3, 1e-2; `defaults`: `lr: auto` "
             f"(per fold, the best of {', '.join(f'{lr:g}' for lr in LR_GRID)} on "
             "validation). The lr column is read from the runs.", "",
             "| cohort | recipe | lr (NCMI / CE) | head | Δ macro-F1 (NCMI − CE) | NCMI won | "
             "NCMI / CE |", "|---|---|---|---|---|---|---|"]
    own = ["", "Own heads (NCMI centroid / CE classifier), test macro-F1, means over seeds:", "",
           "| cohort | " + " | ".join(RECIPES) + " |", "|---|" + "---|" * len(RECIPES)]
    for cohort in (*LEARNABLE, *HELD_OUT):
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
