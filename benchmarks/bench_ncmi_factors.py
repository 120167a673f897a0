"""What decides NCMI vs CE? One NCMI setting changed at a time from NCMI's tuned recipe.

Needs ``bench_defaults.py`` to have tuned NCMI (and trained CE's tuned recipe) on the cohorts.
For each cohort, start from NCMI's ``best.yaml`` and change one factor at a time
(:data:`VARIANTS`: centroid mode, centroid initialisation, temperature, EMA decay, ratio, the
q-step schedule); train each variant with ``--seeds`` on the same split and evaluate it on
test. The table gives, per variant, the validation macro-F1 (mean over seeds of the kept
checkpoint's: what selection sees) and the test macro-F1 of the centroid head and the linear
probe (mean over seeds, 95 % interval over test slides shared by the seeds), beside CE's tuned
recipe (its classifier) from ``bench_defaults.py``. Decisions read the validation column only.

    python benchmarks/bench_ncmi_factors.py --cohorts easy_c2_d64,real_c3_d1024 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_defaults import REPO, Timer, is_evaluated, recipe_config  # noqa: E402
from study_cohorts import COHORTS, cohort_task  # noqa: E402

from wsi_ncmi.formats.config import deep_merge  # noqa: E402
from wsi_ncmi.formats.seedruns import is_multi_seed, seed_runs  # noqa: E402
from wsi_ncmi.stages.compare import load_evaluated  # noqa: E402
from wsi_ncmi.stages.multiseed import evaluate_seeds, train_seeds  # noqa: E402
from wsi_ncmi.stats.bootstrap import resampling_units, seed_mean_metrics  # noqa: E402

#: one factor changed from the tuned NCMI recipe (None: the tuned value itself)
VARIANTS: dict[str, dict | None] = {
    "tuned": None,
    "mode=learned": {"centroid_mode": "learned"},
    "mode=fixed": {"centroid_mode": "fixed"},
    "init=onehot": {"centroid_init": "onehot"},
    "init=data": {"centroid_init": "data"},
    "T=0.1": {"temperature": 0.1},
    "T=0.5": {"temperature": 0.5},
    "ema=0.9": {"ema_decay": 0.9},
    "ema=0.99": {"ema_decay": 0.99},
    "ratio=batch": {"ratio": "batch"},
    "qstep=old": {"centroid_lr": 0.5, "centroid_momentum": 0.9, "centroid_warmup": 0.1},
}
log = logging.getLogger("bench_ncmi_factors")


def variant_runs(work: Path, cohort: str, name: str, change: dict | None, seeds: list[int],
                 n_boot: int, timer: Timer) -> Path | None:
    """Train and evaluate one variant; None when it equals the tuned recipe (then the tuned
    runs of bench_defaults stand for it)."""
    base = recipe_config(work, cohort, "ncmi", "tuned")
    if change is None:
        return work / "runs" / cohort / "ncmi" / "tuned"
    if all(base["loss"]["ncmi"].get(k) == v for k, v in change.items()):
        return None
    out = work / "factors" / cohort / name
    if not is_evaluated(out):
        features, manifest, _ = cohort_task(cohort, work / "cohorts")
        t0 = time.perf_counter()
        train_seeds(deep_merge(base, {"loss": {"ncmi": change}}), out, features, manifest,
                    seeds)
        evaluate_seeds(out, "test", n_boot=n_boot, seed=0, device="cpu")
        timer.record(f"factor:{name}", cohort, "ncmi", time.perf_counter() - t0)
    return out


def summarise(run: Path, head: str, n_boot: int) -> dict:
    """Validation macro-F1 (mean over seeds) and the test macro-F1 of ``head`` over seeds."""
    runs = seed_runs(run)
    val = [json.loads((r / "fold_0" / "model.json").read_text())["best_val_macro_f1"]
           for r in runs.values()]
    evals = [load_evaluated(r, "test", head, str(s)) for s, r in runs.items()]
    order = evals[0].rows.index
    classes = evals[0].metrics["classes"]
    y = evals[0].rows["true_label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    scores = [e.rows.loc[order, [f"score_{c}" for c in classes]].to_numpy(float)
              for e in evals]
    m = seed_mean_metrics(y, scores, resampling_units(list(order),
                                                      evals[0].rows["patient_id"].tolist()),
                          n_boot, 0)["macro_f1"]
    return {"n_seeds": len(runs), "val_macro_f1": float(np.mean(val)),
            "val_sd": float(np.std(val, ddof=1)) if len(val) > 1 else None,
            f"{head}_f1": m["value"], f"{head}_lo": m["ci95"][0], f"{head}_hi": m["ci95"][1]}


def cohort_rows(work: Path, cohort: str, seeds: list[int], n_boot: int,
                timer: Timer) -> list[dict]:
    tuned = recipe_config(work, cohort, "ncmi", "tuned")["loss"]["ncmi"]
    rows = []
    for name, change in VARIANTS.items():
        run = variant_runs(work, cohort, name, change, seeds, n_boot, timer)
        if run is None:
            continue
        row = {"cohort": cohort, "variant": name,
               "settings": json.dumps({k: tuned[k] for k in ("centroid_mode", "centroid_init",
                                                             "temperature", "ema_decay",
                                                             "ratio", "centroid_lr",
                                                             "centroid_warmup")} | (change or {}))}
        for head in ("centroid", "linear_probe"):
            row.update(summarise(run, head, n_boot))
        rows.append(row)
    ce = work / "runs" / cohort / "ce" / "tuned"
    if is_multi_seed(ce):
        row = {"cohort": cohort, "variant": "CE tuned (classifier)", "settings": ""}
        row.update(summarise(ce, "classifier", n_boot))
        row.update({k: v for k, v in summarise(ce, "linear_probe", n_boot).items()
                    if k.startswith("linear_probe")})
        rows.append(row)
    return rows


def markdown(table: pd.DataFrame) -> str:
    lines = ["| cohort | variant | seeds | val macro-F1 (mean ± sd) | test macro-F1, centroid "
             "head (CE: classifier) | test macro-F1, linear probe |", "|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        own = "classifier" if r["variant"].startswith("CE") else "centroid"
        sd = "" if r["val_sd"] is None or pd.isna(r["val_sd"]) else f" ± {r['val_sd']:.3f}"
        lines.append(f"| {r['cohort']} | {r['variant']} | {r['n_seeds']} | "
                     f"{r['val_macro_f1']:.3f}{sd} | {r[own + '_f1']:.3f} "
                     f"[{r[own + '_lo']:.3f}, {r[own + '_hi']:.3f}] | "
                     f"{r['linear_probe_f1']:.3f} [{r['linear_probe_lo']:.3f}, "
                     f"{r['linear_probe_hi']:.3f}] |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", default=",".join(COHORTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--work", type=Path,
                        default=Path.home() / ".cache" / "wsi-ncmi" / "bench" / "defaults")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" /
                        "ncmi_factors")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("wsi_ncmi").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    keep = set(args.variants.split(","))
    for name in [v for v in VARIANTS if v not in keep]:
        VARIANTS.pop(name)
    seeds = [int(s) for s in args.seeds.split(",")]
    timer = Timer(args.work)
    rows = [r for c in args.cohorts.split(",")
            for r in cohort_rows(args.work, c, seeds, args.n_boot, timer)]
    table = pd.DataFrame(rows)
    args.results.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.results / "factors.csv", index=False, float_format="%.4f")
    (args.results / "factors.md").write_text(markdown(table))
    print(markdown(table))


if __name__ == "__main__":
    main()
