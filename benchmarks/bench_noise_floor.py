"""How many goal cells would a recipe miss against itself? The noise floor of the goal table.

The goal table (``bench_defaults.py table``, ``goal.md``) marks a cell a miss when the
defaults' test macro-F1 is more than 0.03 below the tuned recipe's, as a mean over 3 seeds
paired by seed and patient. Part of every Δ is noise: other seeds, a finite test split. Here
the tuned recipe is trained again with other seeds (``--seeds``, default 3,4,5: run
``tuned_reseed``, the same config and split) and compared with its own seeds 0,1,2 exactly as
the goal table compares the defaults (seed 3 paired with seed 0, 4 with 1, 5 with 2; the same
bootstrap over test patients, 300 replicates): Δ's expectation is 0, so its misses are what
the goal table counts when two recipes are equally good.

Steps: ``runs`` trains and evaluates ``tuned_reseed`` where ``tuned`` is evaluated (skipping
what is done); ``table`` writes ``--results/noise_floor.md``: Δ per cohort, loss and head, and
per head the misses, mean Δ, mean shortfall and worst Δ beside the defaults' on the same
cells, each with both of ``compare``'s intervals.

    python benchmarks/bench_noise_floor.py runs --losses ce,ncmi
    python benchmarks/bench_noise_floor.py table
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_defaults import (  # noqa: E402
    Timer,
    add_study_paths,
    is_evaluated,
    own_head,
    recipe_config,
)
from study_cohorts import HELD_OUT, LEARNABLE, cohort_task  # noqa: E402
from study_tables import GOAL, cells_by, miss_stats  # noqa: E402

from wsi_ncmi.formats.config import LOSS_LR  # noqa: E402
from wsi_ncmi.formats.seedruns import is_multi_seed, seed_dir, seed_runs  # noqa: E402
from wsi_ncmi.model.fit import TrainingDiverged  # noqa: E402
from wsi_ncmi.stages.compare import check_comparable, load_evaluated, paired_inputs  # noqa: E402
from wsi_ncmi.stages.multiseed import evaluate_seeds, train_seeds  # noqa: E402
from wsi_ncmi.stats.bootstrap import seed_paired_difference  # noqa: E402

RESEED = "tuned_reseed"
DIVERGED = "diverged.txt"
N_BOOT = 300  # as bench_defaults.py's tables

log = logging.getLogger("bench_noise_floor")


def reseed_cell(work: Path, results: Path, cohort: str, loss: str, seeds: list[int],
                timer: Timer) -> Path | None:
    """Train and evaluate the tuned recipe with ``seeds`` (skipped when done; None where the
    cohort has no evaluated ``tuned`` run for the loss, or where a seed's training diverged:
    then ``tuned_reseed/diverged.txt`` says where, and the cell has no Δ)."""
    folder = work / "runs" / cohort / loss
    if not is_evaluated(folder / "tuned"):
        return None
    out = folder / RESEED
    if (out / DIVERGED).is_file():
        return None
    if is_multi_seed(out) and is_evaluated(out):
        return out
    features, manifest, _ = cohort_task(cohort, work / "cohorts")
    t0 = time.perf_counter()
    try:
        train_seeds(recipe_config(work, cohort, loss, "tuned", results), out, features,
                    manifest, seeds)
    except TrainingDiverged as exc:
        failed = [s for s in seeds if not (seed_dir(out, s) / "fold_0" / "model.json").is_file()]
        (out / DIVERGED).write_text(f"seed {failed[0]}: {exc}\n")
        log.warning("%s/%s: the tuned recipe diverged at seed %s (%s)", cohort, loss,
                    failed[0], exc)
        return None
    evaluate_seeds(out, "test", n_boot=N_BOOT, seed=0, device="cpu")
    timer.record(f"runs:{RESEED}", cohort, loss, time.perf_counter() - t0)
    return out


def paired_delta(folder: Path, head: str, a: str, b: str) -> dict:
    """Macro-F1 of run ``b`` − run ``a`` of a cohort's loss folder on test with ``head``, the
    i-th seed of each paired (:func:`~wsi_ncmi.stats.bootstrap.seed_paired_difference`, as
    ``compare`` on runs of the same seeds): the value and both intervals."""
    groups = {name: [load_evaluated(run, "test", head, f"{name} (seed {s})")
                     for s, run in seed_runs(folder / name).items()]
              for name in (a, b)}
    check_comparable([e for g in groups.values() for e in g])
    y, scores, units = paired_inputs(groups)
    d = seed_paired_difference(y, scores[a], scores[b], units, N_BOOT, 0)["macro_f1"]
    return {"diff": d["diff"], "ci_low": d["ci95"][0], "ci_high": d["ci95"][1],
            "seeds_low": d["ci95_seeds"][0], "seeds_high": d["ci95_seeds"][1]}


def delta_rows(work: Path, cohorts: list[str]) -> pd.DataFrame:
    """Per cohort, loss and head with the three runs: the reseeded tuned recipe's Δ to tuned
    and the defaults' (columns prefixed ``defaults_``); a diverged reseed gets a row without
    Δ."""
    rows = []
    for cohort in cohorts:
        for loss in LOSS_LR:
            folder = work / "runs" / cohort / loss
            if (folder / RESEED / DIVERGED).is_file():
                rows.append({"cohort": cohort, "loss": loss, "head": own_head(loss),
                             "diff": None, "diverged": (folder / RESEED / DIVERGED)
                             .read_text().split(":")[0]})
                continue
            if not all(is_evaluated(folder / r) for r in ("tuned", RESEED, "defaults")):
                continue
            for head in (own_head(loss), "linear_probe"):
                defaults = paired_delta(folder, head, "tuned", "defaults")
                rows.append({"cohort": cohort, "loss": loss, "head": head,
                             **paired_delta(folder, head, "tuned", RESEED),
                             **{f"defaults_{k}": v for k, v in defaults.items()}})
    return pd.DataFrame(rows)


def _cell(r) -> str:
    """One cohort's reseed Δ with both intervals (``r``: a row of :func:`delta_rows`)."""
    if pd.isna(r.diff):
        return f"diverged ({r.diverged})"
    return (("✗ " if r.diff < GOAL else "") + f"{r.diff:+.3f} [{r.ci_low:+.3f}, "
            f"{r.ci_high:+.3f}] [{r.seeds_low:+.3f}, {r.seeds_high:+.3f}]")


def _counts(part: pd.DataFrame, prefix: str = "") -> str:
    """Misses, mean Δ, mean shortfall, worst Δ, sd of Δ, then per interval (patients; seeds
    and patients) how many exclude 0 and how many lie above the goal (a ✓ in goal.md)."""
    d = part[prefix + "diff"]
    cells = [miss_stats(d), f"{d.std():.3f}"]
    for low, high in (("ci_low", "ci_high"), ("seeds_low", "seeds_high")):
        lo, hi = part[prefix + low], part[prefix + high]
        cells += [int(((lo > 0) | (hi < 0)).sum()), int((lo >= GOAL).sum())]
    return " | ".join(map(str, cells))


def noise_table(rows: pd.DataFrame) -> str:
    """The reseed Δ per loss and head (rows) and cohort (columns), then the counts."""
    cohorts = list(dict.fromkeys(rows["cohort"]))
    lines = ["| loss (head) | " + " | ".join(cohorts) + " |", "|" + "---|" * (1 + len(cohorts))]
    for (loss, head), group in rows.groupby(["loss", "head"], sort=False):
        cells = cells_by(group, "cohort", cohorts, _cell)
        lines.append(f"| {loss} ({head}) | " + " | ".join(cells) + " |")
    cols = ("cells | misses | mean Δ | mean shortfall | worst Δ | sd of Δ | patients: "
            "excluding 0 | patients: above −0.03 | seeds and patients: excluding 0 | seeds and "
            "patients: above −0.03")
    lines += ["", f"| head | Δ of | {cols} |", "|" + "---|" * 12]
    for name, mask in (("own head", rows["head"] != "linear_probe"),
                       ("linear probe", rows["head"] == "linear_probe")):
        part = rows[mask & rows["diff"].notna()]
        lines.append(f"| {name} | tuned, other seeds − tuned | {_counts(part)} |")
        lines.append(f"| {name} | defaults − tuned | {_counts(part, 'defaults_')} |")
    return ("The tuned recipe against itself: test macro-F1 of the tuned recipe trained with "
            "seeds 3, 4, 5 minus its seeds 0, 1, 2 (seed 3 paired with 0, 4 with 1, 5 with 2; "
            "95 % intervals, 300 replicates: over test patients as in goal.md, then over "
            "seeds and patients, compare's `ci95_seeds`). Both sides are one recipe, so every "
            "✗ (a Δ below the goal's −0.03) and every interval that excludes 0 is noise. The "
            "counts below set its misses beside the defaults' (goal.md's Δ, recomputed with "
            "both intervals) on the same cells; a cell whose reseeded tuned recipe diverged "
            "has no Δ and is left out of both.\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("runs", "table"))
    parser.add_argument("--cohorts", default=",".join((*LEARNABLE, *HELD_OUT)))
    parser.add_argument("--losses", default=",".join(LOSS_LR))
    parser.add_argument("--seeds", default="3,4,5")
    add_study_paths(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("wsi_ncmi").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    cohorts = args.cohorts.split(",")
    if args.step == "runs":
        timer, seeds = Timer(args.work), [int(s) for s in args.seeds.split(",")]
        for cohort in cohorts:
            for loss in args.losses.split(","):
                reseed_cell(args.work, args.results, cohort, loss, seeds, timer)
        return
    rows = delta_rows(args.work, cohorts)
    (args.results / "noise_floor.md").write_text(noise_table(rows))
    log.info("wrote %s (%d cells)", args.results / "noise_floor.md", len(rows))


if __name__ == "__main__":
    main()
