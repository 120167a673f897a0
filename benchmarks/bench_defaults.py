"""Do the training defaults underfit? Defaults against a tuned recipe, per cohort and loss.

For every cohort of ``study_cohorts.COHORTS`` (synthetic bags of different D, bag size,
witness rate and class count, and one cohort of features extracted from generated slides) and
every loss of ``--losses``:

1. ``tune``: ``wsi-ncmi tune`` (the library call) with the loss's space
   ``configs/tune_<loss>.yaml`` and ``--trials`` trials: the same budget for every loss;
   selection on the validation split only, the test split never read. Its ``best.yaml`` is
   copied to ``--results/tuned/<cohort>/<loss>.yaml``, committed, which ``runs`` reads when
   ``--work`` has no tune (a new machine trains ``tuned`` without tuning again).
2. ``runs``: train each recipe of ``--recipes`` with ``--seeds`` (``train --seeds``: the same
   split for every seed) and evaluate every seed on the test split (``eval``). Recipes:
   ``defaults`` (the code's current defaults: no override, so ``lr: auto``, which trains
   each lr of the grid; ``bench_lr.py --auto`` assembles it from the ``lr-study`` runs
   instead), ``old_defaults`` (the defaults of
   wsi-ncmi ≤ 0.1, spelled out in :data:`OLD_DEFAULTS`), ``tuned`` (the tune's best.yaml) and
   the candidates of :data:`CANDIDATES`.
3. ``screen``: train each candidate recipe with one seed and read its best validation
   macro-F1 (the checkpoint train keeps), against the tune's best validation value: how the
   defaults were chosen, on validation data only.
4. ``table``: per cohort, ``results/defaults/<cohort>.csv`` and ``.md``: per loss, head and
   recipe, the test macro-F1 and AUC as means over seeds with 95 % intervals over the test
   slides (patients), the mean validation macro-F1, and the seed-paired difference to the
   tuned recipe with its interval (``compare`` on the multi-seed folders); ``summary.md``
   (own heads, every recipe) and ``goal.md`` (defaults − tuned per loss, head and cohort,
   against the 0.03 goal, and per recipe its misses over the cells it ran in).

Every step skips what is already there (a tune study resumes), so the script can be killed and
rerun. ``--work`` holds the data and runs (not committed); ``--results`` the tables.

    python benchmarks/bench_defaults.py all --trials 8 --seeds 0,1,2
    python benchmarks/bench_defaults.py screen --recipes cand_a,cand_b
    python benchmarks/bench_defaults.py runs --recipes defaults
    python benchmarks/bench_defaults.py runs --recipes lr-study --losses ce,opl
    python benchmarks/bench_defaults.py table
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from study_cohorts import COHORTS, cohort_task, eval_batch_size  # noqa: E402
from study_recipes import ASSEMBLED_ONLY, CANDIDATES, LR_RECIPES, OLD_DEFAULTS  # noqa: E402
from study_tables import goal_table, markdown, screen_table, summary  # noqa: E402

from wsi_ncmi.formats.config import deep_merge, load_yaml  # noqa: E402
from wsi_ncmi.formats.seedruns import is_multi_seed, seed_runs  # noqa: E402
from wsi_ncmi.stages.compare import compare_runs  # noqa: E402
from wsi_ncmi.stages.multiseed import evaluate_seeds, train_seeds  # noqa: E402
from wsi_ncmi.stages.tune import tune_study  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
#: the head each loss validates with during training (and tune selects on)
OWN_HEAD = {"ncmi": "centroid", "supcon": "centroid"}
TUNE_SETTINGS = {"startup_trials": 4, "prune_after_trials": 3}
#: what ``compare`` returns changed (2: the interval over seeds too): older caches are redone
COMPARE_CACHE_VERSION = 2

log = logging.getLogger("bench_defaults")


def own_head(loss: str) -> str:
    return OWN_HEAD.get(loss, "classifier")


def base_config(cohort: str, cohort_cfg: dict, loss: str) -> dict:
    """The cohort's task and split, the loss, CPU; the cohort's evaluation batch
    (:func:`study_cohorts.eval_batch_size`: all tiles, masked, so the same outputs at any
    batch size up to float rounding)."""
    return deep_merge(cohort_cfg, {"loss": {"name": loss}, "device": "cpu",
                                   "data": {"cache_max_gb": 4.0,
                                            "eval_batch_size": eval_batch_size(cohort)}})


def space_file(work: Path, loss: str) -> Path:
    """The loss's space ``configs/tune_<loss>.yaml`` with this study's ``tune`` settings
    (fewer random start-up trials: the budget here is small)."""
    path = work / "spaces" / f"tune_{loss}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = ", ".join(f"{k}: {v}" for k, v in TUNE_SETTINGS.items())
    path.write_text(f"include: {REPO / 'configs' / f'tune_{loss}.yaml'}\n"
                    f"tune: {{{settings}}}\n")
    return path


class Timer:
    """Wall time per step, appended to ``work/timing.csv``."""

    def __init__(self, work: Path) -> None:
        self.path = work / "timing.csv"

    def record(self, step: str, cohort: str, loss: str, seconds: float) -> None:
        new = not self.path.is_file()
        with self.path.open("a") as f:
            if new:
                f.write("step,cohort,loss,seconds,when\n")
            f.write(f"{step},{cohort},{loss},{seconds:.1f},{time.strftime('%H:%M:%S')}\n")
        log.info("%s %s %s: %.0f s", step, cohort, loss, seconds)


def tuned_copy(results: Path, cohort: str, loss: str) -> Path:
    """Where ``tune`` copies its ``best.yaml`` under ``--results`` (committed): with it the
    tuned recipe trains on a new machine without tuning again."""
    return results / "tuned" / cohort / f"{loss}.yaml"


def tune_cell(work: Path, results: Path, cohort: str, loss: str, trials: int,
              timer: Timer) -> Path:
    """Tune (or resume the tune of) ``loss`` on ``cohort``; its best.yaml, also copied to
    :func:`tuned_copy`."""
    features, manifest, cfg = cohort_task(cohort, work / "cohorts")
    out = work / "tune" / cohort / loss
    t0 = time.perf_counter()
    tune_study(base_config(cohort, cfg, loss), out, features, manifest, space_file(work, loss),
               trials, seed=0)
    timer.record("tune", cohort, loss, time.perf_counter() - t0)
    copy = tuned_copy(results, cohort, loss)
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "best.yaml", copy)
    return out / "best.yaml"


def recipe_config(work: Path, cohort: str, loss: str, recipe: str,
                  results: Path | None = None) -> dict:
    """The training config of ``recipe`` for ``loss`` on ``cohort``; ``tuned`` reads the
    tune's best.yaml in ``work``, else its copy under ``results`` (:func:`tuned_copy`)."""
    _, _, cfg = cohort_task(cohort, work / "cohorts")
    base = base_config(cohort, cfg, loss)
    if recipe == "defaults":
        return base
    if recipe == "old_defaults":
        old = deep_merge(OLD_DEFAULTS, {"loss": {"name": loss}})
        if loss != "ncmi":
            old["loss"].pop("ncmi")
        return deep_merge(base, old)
    if recipe == "tuned":
        best_file = work / "tune" / cohort / loss / "best.yaml"
        if not best_file.is_file() and results is not None:
            best_file = tuned_copy(results, cohort, loss)
        best = load_yaml(best_file)
        return deep_merge(base, {k: v for k, v in best.items() if k not in ("data", "seed")})
    recipe_cfg = deep_merge(CANDIDATES[recipe], {})
    if loss != "ncmi":
        recipe_cfg.get("loss", {}).pop("ncmi", None)
    return deep_merge(base, recipe_cfg)


def expand_recipes(recipes: list[str]) -> list[str]:
    """``recipes`` with ``lr-study`` replaced by the recipes of the lr study, the defaults at
    each of its lrs (:data:`study_recipes.LR_RECIPES`): the runs ``bench_lr.py`` reads, and
    assembles ``lr: auto`` from."""
    study = list(LR_RECIPES.values())
    return [x for r in recipes for x in (study if r == "lr-study" else [r])]


def is_evaluated(run: Path) -> bool:
    """Whether a multi-seed run has its test evaluation (what the study's tables read)."""
    return (run / "eval" / "test" / "seeds.csv").is_file()


def run_cell(work: Path, results: Path, cohort: str, loss: str, recipe: str, seeds: list[int],
             n_boot: int, timer: Timer) -> Path:
    """Train ``recipe`` with ``seeds`` and evaluate every seed on test (skipped when done)."""
    features, manifest, _ = cohort_task(cohort, work / "cohorts")
    out = work / "runs" / cohort / loss / recipe
    if is_multi_seed(out) and is_evaluated(out):
        return out
    if recipe in ASSEMBLED_ONLY:
        raise SystemExit(f"{recipe} is assembled, not trained (study_recipes.py says by what)")
    t0 = time.perf_counter()
    train_seeds(recipe_config(work, cohort, loss, recipe, results), out, features, manifest,
                seeds)
    evaluate_seeds(out, "test", n_boot=n_boot, seed=0, device="cpu")
    timer.record(f"runs:{recipe}", cohort, loss, time.perf_counter() - t0)
    return out


def screen_cell(work: Path, cohort: str, loss: str, recipe: str, timer: Timer) -> dict:
    """One seed of ``recipe``; its best validation macro-F1 against the tune's best."""
    from wsi_ncmi.stages.train import train_run

    features, manifest, _ = cohort_task(cohort, work / "cohorts")
    out = work / "screen" / cohort / loss / recipe
    if not (out / "fold_0" / "model.json").is_file():
        t0 = time.perf_counter()
        train_run(recipe_config(work, cohort, loss, recipe), out, features, manifest)
        timer.record(f"screen:{recipe}", cohort, loss, time.perf_counter() - t0)
    meta = json.loads((out / "fold_0" / "model.json").read_text())
    return {"cohort": cohort, "loss": loss, "recipe": recipe,
            "val_macro_f1": meta["best_val_macro_f1"], "epochs_run": meta["epochs_run"],
            "tuned_val_macro_f1": tuned_value(work, cohort, loss)}


def tuned_value(work: Path, cohort: str, loss: str) -> float | None:
    trials = work / "tune" / cohort / loss / "trials.csv"
    if not trials.is_file():
        return None
    values = pd.read_csv(trials)["value"].dropna()
    return float(values.max()) if len(values) else None


def first_config(run: Path) -> dict:
    """A multi-seed run's first seed's resolved config."""
    return load_yaml(next(iter(seed_runs(run).values())) / "config.yaml")


def validation_f1(run: Path) -> float:
    """Mean over seeds of the kept checkpoint's validation macro-F1."""
    return float(pd.Series([json.loads((r / "fold_0" / "model.json").read_text())
                            ["best_val_macro_f1"] for r in seed_runs(run).values()]).mean())


def compared(runs: list[Path], out: Path, head: str,
             n_boot: int) -> tuple[list[dict], list[dict]]:
    """``compare`` of multi-seed runs on test with ``head``: its rows (in the order of
    ``runs``) and pairs, read back from ``out/table_cache.json`` when the same runs,
    evaluations and ``n_boot`` were compared before (a table over many losses is rebuilt in
    seconds)."""
    key = {"runs": [str(r) for r in runs], "n_boot": n_boot, "version": COMPARE_CACHE_VERSION,
           "evals": [(r / "eval" / "test" / "seeds.csv").stat().st_mtime for r in runs]}
    cache = out / "table_cache.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved["key"] == json.loads(json.dumps(key)):
            return saved["rows"], saved["pairs"]
    cmp = compare_runs(runs, out, "test", head, n_boot, 0)
    cache.write_text(json.dumps({"key": key, "rows": cmp.rows, "pairs": cmp.pairs},
                                default=float))
    return cmp.rows, cmp.pairs


def cohort_table(work: Path, cohort: str, losses: list[str], n_boot: int) -> pd.DataFrame:
    """Per loss, head and recipe: test metrics over seeds and the paired difference to
    ``tuned`` (rows of the cohort's table)."""
    rows = []
    for loss in losses:
        folder = work / "runs" / cohort / loss
        recipes = [r for r in ("tuned", "old_defaults", "defaults", *CANDIDATES)
                   if is_multi_seed(folder / r)]
        if "tuned" not in recipes or len(recipes) < 2:
            continue
        configs = {r: first_config(folder / r) for r in recipes}
        for head in (own_head(loss), "linear_probe"):
            by_name, diffs = {}, {}
            # one comparison per recipe against tuned: the table reads no other pair, and
            # comparing all recipes at once costs every pair (quadratic in the recipes)
            for recipe in recipes[1:]:
                cmp_rows, pairs = compared([folder / "tuned", folder / recipe],
                                           work / "compare" / cohort / loss / head / recipe,
                                           head, n_boot)
                by_name.update({r["run"]: r for r in cmp_rows})
                diffs[recipe] = pairs[0]
            for recipe in recipes:
                r = by_name[recipe]
                d = diffs.get(recipe)
                same = recipe != "tuned" and configs[recipe] == configs["tuned"]
                rows.append({
                    "cohort": cohort, "loss": loss, "head": head, "recipe": recipe,
                    "n_seeds": r["n_seeds"], "val_macro_f1": validation_f1(folder / recipe),
                    "macro_f1": r["macro_f1"]["value"],
                    "macro_f1_ci_low": r["macro_f1"]["ci95"][0],
                    "macro_f1_ci_high": r["macro_f1"]["ci95"][1],
                    "macro_f1_seed_sd": r["macro_f1"]["seed_sd"],
                    "auc": r["auc_macro"]["value"], "auc_ci_low": r["auc_macro"]["ci95"][0],
                    "auc_ci_high": r["auc_macro"]["ci95"][1],
                    "diff_vs_tuned": None if d is None else d["macro_f1"]["diff"],
                    "diff_ci_low": None if d is None else d["macro_f1"]["ci95"][0],
                    "diff_ci_high": None if d is None else d["macro_f1"]["ci95"][1],
                    "same_config_as_tuned": same,
                })
    return pd.DataFrame(rows)


def write_tables(work: Path, results: Path, cohorts: list[str], losses: list[str],
                 n_boot: int) -> None:
    results.mkdir(parents=True, exist_ok=True)
    if (work / "screen.jsonl").is_file():
        (results / "screen.md").write_text(screen_table(work))
    tables = []
    for cohort in cohorts:
        table = cohort_table(work, cohort, losses, n_boot)
        if table.empty:
            continue
        tables.append(table)
        table.to_csv(results / f"{cohort}.csv", index=False, float_format="%.4f")
        (results / f"{cohort}.md").write_text(markdown(table, cohort))
        log.info("wrote %s", results / f"{cohort}.md")
    if tables:
        (results / "summary.md").write_text(summary(tables))
        (results / "goal.md").write_text(goal_table(tables))


def add_study_paths(parser: argparse.ArgumentParser) -> None:
    """``--work`` (the study's data and runs, not committed) and ``--results`` (its tables)."""
    parser.add_argument("--work", type=Path,
                        default=Path.home() / ".cache" / "wsi-ncmi" / "bench" / "defaults")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" /
                        "defaults")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("make", "tune", "runs", "screen", "table", "all"))
    parser.add_argument("--cohorts", default=",".join(COHORTS))
    parser.add_argument("--losses", default="ncmi,ce")
    parser.add_argument("--recipes", default="old_defaults,tuned",
                        help="recipes for `runs` / `screen` (comma-separated; `lr-study`: "
                        "the code's defaults at each lr of the grid alone)")
    parser.add_argument("--trials", type=int, default=8, help="tune trials per loss")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds of `runs`")
    parser.add_argument("--n-boot", type=int, default=300)
    add_study_paths(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("wsi_ncmi").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    cohorts, losses = args.cohorts.split(","), args.losses.split(",")
    recipes = expand_recipes(args.recipes.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    timer = Timer(args.work)
    t_all = time.perf_counter()
    for cohort in cohorts:
        if args.step in ("make", "all"):
            t0 = time.perf_counter()
            cohort_task(cohort, args.work / "cohorts")
            timer.record("make", cohort, "-", time.perf_counter() - t0)
        for loss in losses:
            if args.step in ("tune", "all"):
                tune_cell(args.work, args.results, cohort, loss, args.trials, timer)
            if args.step in ("runs", "all"):
                for recipe in recipes:
                    run_cell(args.work, args.results, cohort, loss, recipe, seeds, args.n_boot,
                             timer)
            if args.step == "screen":
                rows = [screen_cell(args.work, cohort, loss, r, timer)
                        for r in recipes]
                with (args.work / "screen.jsonl").open("a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in rows)
    if args.step in ("table", "all"):
        write_tables(args.work, args.results, cohorts, losses, args.n_boot)
    log.info("%s done in %.0f s", args.step, time.perf_counter() - t_all)


if __name__ == "__main__":
    main()
