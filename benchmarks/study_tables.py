"""The defaults study's tables (``bench_defaults.py table``): per cohort, the summary of every
recipe, the goal table (defaults − tuned against the 0.03 goal) and the validation screen."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from study_cohorts import COHORTS, SUPERSEDED
from study_recipes import CANDIDATES


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or pd.isna(x) else f"{x:.{digits}f}"


def markdown(table: pd.DataFrame, cohort: str) -> str:
    lines = [f"# {cohort}: defaults vs tuned", "", COHORTS[cohort].describe(), "",
             "Test macro-F1 and AUC: mean over seeds [95 % interval over test slides]; "
             "validation macro-F1: mean over seeds of the kept checkpoint's; Δ: recipe − "
             "tuned, seed-paired [95 % interval].", "",
             "| loss | head | recipe | seeds | val macro-F1 | test macro-F1 | test AUC | "
             "Δ macro-F1 vs tuned |", "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        delta = ("–" if r.diff_vs_tuned is None or pd.isna(r.diff_vs_tuned) else
                 f"{r.diff_vs_tuned:+.3f} [{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}]"
                 + (" (the tuned recipe itself)" if r.same_config_as_tuned else ""))
        lines.append(f"| {r.loss} | {r.head} | {r.recipe} | {r.n_seeds} | "
                     f"{_f(r.val_macro_f1)} | {_f(r.macro_f1)} [{_f(r.macro_f1_ci_low)}, "
                     f"{_f(r.macro_f1_ci_high)}] | {_f(r.auc)} [{_f(r.auc_ci_low)}, "
                     f"{_f(r.auc_ci_high)}] | {delta} |")
    return "\n".join(lines) + "\n"


def summary(tables: list[pd.DataFrame]) -> str:
    """One line per cohort and loss (own head): each recipe's test macro-F1 and its Δ to
    tuned."""
    rows = pd.concat(tables)
    rows = rows[rows["head"] != "linear_probe"]
    recipes = [r for r in ("tuned", "old_defaults", "defaults", *CANDIDATES)
               if r in set(rows["recipe"])]
    head = ["cohort", "loss (head)", *(f"{r}" for r in recipes)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (cohort, loss), group in rows.groupby(["cohort", "loss"], sort=False):
        cells = cells_by(group, "recipe", recipes, lambda x: f"{x.macro_f1:.3f}" + (
            "" if x.recipe == "tuned" else f" (Δ {_delta(x)})"))
        lines.append(f"| {cohort} | {loss} ({group['head'].iloc[0]}) | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines) + "\n"


def cells_by(group: pd.DataFrame, column: str, keys: list[str], cell) -> list[str]:
    """``cell(row)`` for the row of ``group`` whose ``column`` is each of ``keys``; – if none."""
    by = dict(zip(group[column], group.itertuples(), strict=True))
    return [cell(by[k]) if k in by else "–" for k in keys]


def _delta(x) -> str:
    return f"{x.diff_vs_tuned:+.3f} [{x.diff_ci_low:+.3f}, {x.diff_ci_high:+.3f}]"


GOAL = -0.03  # issue #17: the defaults within 0.03 macro-F1 of the tuned optimum


def miss_stats(d: pd.Series) -> str:
    """Δs (recipe − tuned) against :data:`GOAL` as table cells: how many, how many miss, the
    mean Δ, the mean shortfall below the goal (max(0, GOAL − Δ)) and the worst Δ."""
    return (f"{len(d)} | {int((d < GOAL).sum())} | {d.mean():+.3f} | "
            f"{(GOAL - d).clip(lower=0).mean():.4f} | {d.min():+.3f}")


def goal_counts(rows: pd.DataFrame) -> str:
    """Per recipe other than ``tuned`` (``rows``: the cohort tables' rows, own heads and the
    linear probe): over the cells it ran in, how many miss :data:`GOAL`, the mean Δ, the mean
    shortfall below the goal (max(0, GOAL − Δ)) and the worst Δ; beside a candidate, the
    defaults' on the same cells."""
    rows = rows[rows["diff_vs_tuned"].notna()]
    heads = {"own head": rows["head"] != "linear_probe", "linear probe":
             rows["head"] == "linear_probe"}
    cols = "cells | misses | mean Δ | mean shortfall | worst Δ"
    lines = [f"| recipe | head | {cols} | defaults on these cells: {cols} |",
             "|" + "---|" * 12]

    defaults = rows[rows["recipe"] == "defaults"].set_index(["cohort", "loss", "head"])
    for recipe in [r for r in ("defaults", *CANDIDATES) if r in set(rows["recipe"])]:
        for name, mask in heads.items():
            own = rows[mask & (rows["recipe"] == recipe)].set_index(["cohort", "loss", "head"])
            if own.empty:
                continue
            base = defaults["diff_vs_tuned"].reindex(own.index).dropna()
            beside = miss_stats(base) if recipe != "defaults" and len(base) else " | ".join("–" * 5)
            lines.append(f"| {recipe} | {name} | {miss_stats(own['diff_vs_tuned'])} | {beside} |")
    return "\n".join(lines) + "\n"


def goal_table(tables: list[pd.DataFrame]) -> str:
    """Per loss and head (rows) and cohort (columns, less the :data:`SUPERSEDED` ones): the
    defaults' test macro-F1 minus the tuned recipe's, seed-paired, with its interval, marked
    against :data:`GOAL`; then :func:`goal_counts` of every recipe."""
    every = pd.concat(tables)
    every = every[~every["cohort"].isin(list(SUPERSEDED))]
    rows = every[every["recipe"] == "defaults"]
    cohorts = list(dict.fromkeys(rows["cohort"]))
    lines = ["| loss (head) | " + " | ".join(cohorts) + " |", "|" + "---|" * (1 + len(cohorts))]
    for (loss, head), group in rows.groupby(["loss", "head"], sort=False):
        cells = cells_by(group, "cohort", cohorts, lambda x: "= (the tune kept them)"
                       if x.same_config_as_tuned else (
            "✓" if x.diff_ci_low >= GOAL else "~" if x.diff_vs_tuned >= GOAL else "✗")
            + f" {_delta(x)}")
        lines.append(f"| {loss} ({head}) | " + " | ".join(cells) + " |")
    return ("Test macro-F1, defaults − tuned (seed-paired, 95 % interval over test patients). "
            f"✓: the interval excludes a loss of more than {-GOAL:.2f}; ~: the mean is within "
            f"{-GOAL:.2f} but the interval is not; ✗: the mean misses by more than "
            f"{-GOAL:.2f}; =: the tune's best trial was the defaults themselves (its first "
            "trial), so the two are one recipe. Left out, at chance for every recipe: "
            + "; ".join(f"{old} (replaced by {new}: the same with a stronger signal)"
                        for old, new in SUPERSEDED.items())
            + ".\n\n" + "\n".join(lines) + "\n\nOver the cells each recipe ran in (a "
            "miss: Δ below the goal):\n\n" + goal_counts(every))


def screen_table(work: Path) -> str:
    """The screen's validation macro-F1 per cohort × loss (rows) and recipe (columns), the
    tune's best beside it, and per recipe the mean and the worst gap to the tune's best."""
    rows = [json.loads(line) for line in (work / "screen.jsonl").read_text().splitlines()]
    table = pd.DataFrame(rows).drop_duplicates(["cohort", "loss", "recipe"], keep="last")
    table["gap"] = table["val_macro_f1"] - table["tuned_val_macro_f1"]
    recipes = [r for r in ("defaults", *CANDIDATES) if r in set(table["recipe"])]
    lines = ["| cohort | loss | tuned (best trial) | " + " | ".join(recipes) + " |",
             "|" + "---|" * (3 + len(recipes))]
    for (cohort, loss), group in table.groupby(["cohort", "loss"], sort=False):
        by = group.set_index("recipe")
        cells = [f"{by.loc[r, 'val_macro_f1']:.3f} ({by.loc[r, 'gap']:+.3f})"
                 if r in by.index else "–" for r in recipes]
        lines.append(f"| {cohort} | {loss} | {_f(group['tuned_val_macro_f1'].iloc[0])} | "
                     + " | ".join(cells) + " |")
    gaps = table.pivot(index=["cohort", "loss"], columns="recipe", values="gap")
    lines.append("| mean gap | | | " + " | ".join(
        f"{gaps[r].mean():+.3f} ({gaps[r].notna().sum()} cells)" for r in recipes) + " |")
    lines.append("| worst gap | | | " + " | ".join(f"{gaps[r].min():+.3f}" for r in recipes)
                 + " |")
    return ("Validation macro-F1 of one seed (seed 0) per candidate recipe (gap to the tune's "
            "best trial), the split's validation slides only.\n\n" + "\n".join(lines) + "\n")
