"""The claim target (``snakemake … claim``) on the project's own generated cohorts, small.

Three cohorts from the slide generator stand in for the real ones: ``camelyon_like`` (4 classes
by metastasis size, 5 centres with their own µm/px, formats, pyramids and stains),
``bracs_like`` (3 classes by lesion pattern, one scanner) and ``bracs7_like`` (BRACS's 7
subtypes: the group's lesion pattern, and its size within a group). Each is written, then the
workflow runs its target ``claim`` with the local profile: tile and extract every slide (one
job each, ``resnet50_trunc`` under a seeded random initialisation: no pretrained weights can be
downloaded here), tune every loss with the same budget, train each loss's best config with
every seed, evaluate, and write the claim table. The table, the wall time and the machine go to
``benchmarks/results/claims/<cohort>.md``.

Deliberately small, so that it runs on a 2-core machine: ``--slides`` slides of one patient
each, about 1 mm wide (lesions and CAMELYON's size thresholds scaled down to fit), a
``column`` split (train/val/test 50/25/25 % per class), ``--trials`` trials per loss, and the
tune's validation split used as it is even when it has fewer than 10 patients per class
(``min_val_patients`` lowered in a space file that includes ``configs/tune_<loss>.yaml``).
The real claims use the cohort configs under ``configs/`` and the default ``tune`` settings.

    python benchmarks/bench_claims.py --cohorts camelyon_like,bracs_like,bracs7_like --trials 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from wsi_ncmi.formats.config import deep_merge, load_yaml  # noqa: E402
from wsi_ncmi.model.encoders import save_seeded_checkpoint  # noqa: E402
from wsi_ncmi.slides.cohort import write_cohort  # noqa: E402
from wsi_ncmi.slides.cohort_presets import bracs7_like, bracs_like, camelyon_like  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TASKS = {"camelyon_like": "camelyon17_4class.yaml", "bracs_like": "bracs_3class.yaml",
         "bracs7_like": "bracs_7class.yaml"}
TUNE_SETTINGS = {"startup_trials": 2, "prune_after_trials": 2}


def make_spec(name: str, slides: int):
    shares = (0.5, 0.25, 0.25)
    if name == "camelyon_like":  # lesion thresholds scaled by 0.1: macro 240–360 µm
        spec = camelyon_like(patients=slides, slides_per_patient=1, size_scale=0.1,
                             width_mm=(0.9, 1.2), dicom=False, bad_files=())
    elif name == "bracs_like":
        spec = bracs_like(patients=slides, lesion_um=(150.0, 300.0), width_mm=(0.8, 1.2))
    else:  # lesion sizes scaled to the slides: small 100–170 µm, large 250–360 µm
        spec = bracs7_like(patients=slides, small_um=(100.0, 170.0), large_um=(250.0, 360.0),
                           width_mm=(0.9, 1.2))
    return replace(spec, split_shares=shares)


def write_configs(folder: Path, name: str, args: argparse.Namespace, losses: list[str]) -> Path:
    """The task config (the cohort's own, on the generated split), the search spaces and the
    workflow config; returns the workflow config."""
    task = deep_merge(load_yaml(REPO / "configs" / TASKS[name]),
                      {"split": {"method": "column", "column": "split"}, "device": "cpu"})
    (folder / "task.yaml").write_text(yaml.safe_dump(task))
    spaces = folder / "spaces"
    spaces.mkdir(exist_ok=True)
    for loss in losses:
        (spaces / f"tune_{loss}.yaml").write_text(yaml.safe_dump(
            {"include": str(REPO / "configs" / f"tune_{loss}.yaml"),
             "tune": {**TUNE_SETTINGS, "min_val_patients": args.min_val_patients}}))
    workflow = {
        "manifest": "slides/manifest.csv", "slide_root": "slides", "workspace": "ws",
        "tile": {"mpp": 1.0, "tile_size": 224},
        "extract": {"encoder": "resnet50_trunc", "weights": "encoder.safetensors",
                    "device": "cpu"},
        "train": {"configs": ["task.yaml"],
                  "loss_config": str(REPO / "configs" / "train_{loss}.yaml"),
                  "losses": ["ncmi", "ce"]},
        "tune": {"trials": args.trials, "space": "spaces/tune_{loss}.yaml"},
        "claim": {"losses": losses, "seeds": [int(s) for s in args.seeds.split(",")]},
        "eval": {"n_boot": args.n_boot, "device": "cpu"},
        "compare": {"n_boot": args.n_boot},
    }
    path = folder / "claim.yaml"
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    return path


def run_claim(name: str, args: argparse.Namespace, losses: list[str]) -> None:
    folder = args.work / name
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cohort = write_cohort(make_spec(name, args.slides), folder / "slides", seed=0)
    if not (folder / "encoder.safetensors").is_file():
        save_seeded_checkpoint("resnet50_trunc", folder / "encoder.safetensors", seed=0)
    config = write_configs(folder, name, args, losses)
    t_cohort = time.perf_counter() - t0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "pipelines" / "Snakefile"),
           "claim", "--profile", str(REPO / "pipelines" / "profiles" / "local"),
           "--cores", str(args.cores), "--configfile", str(config),
           "--rerun-triggers", "mtime"]  # a resumed study keeps its tiles, features, tunes
    n_slides = len(cohort.manifest.read_text().splitlines()) - 1
    print(f"{name}: {n_slides} slides written in {t_cohort:.0f} s; running "
          f"{' '.join(cmd[2:])}", flush=True)
    t1 = time.perf_counter()
    with (folder / "snakemake.log").open("w") as log:
        proc = subprocess.run(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t1
    if proc.returncode != 0:
        raise SystemExit(f"{name}: snakemake failed ({proc.returncode}); see "
                         f"{folder / 'snakemake.log'}")
    out = args.results
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / "ws" / "claim" / "claim.csv", out / f"{name}.csv")
    header = (f"<!-- bench_claims.py --cohorts {name} --slides {args.slides} --trials "
              f"{args.trials} --seeds {args.seeds}: snakemake claim took {wall / 60:.1f} min "
              f"on {machine()} (--cores {args.cores}), cohort writing {t_cohort:.0f} s -->\n")
    (out / f"{name}.md").write_text(header + (folder / "ws" / "claim" / "claim.md").read_text())
    print(f"{name}: claim target {wall / 60:.1f} min; table in {out / (name + '.md')}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", default="camelyon_like,bracs_like,bracs7_like")
    parser.add_argument("--slides", type=int, default=56, help="slides (= patients) per cohort")
    parser.add_argument("--min-val-patients", type=int, default=2,
                        help="tune on the validation split when each class has this many")
    parser.add_argument("--trials", type=int, default=4, help="tune trials per loss")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--losses", default="ncmi,ce,label_smoothing,focal,cmi_ce,opl,"
                        "squentropy,square,supcon")
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--work", type=Path,
                        default=Path.home() / ".cache" / "wsi-ncmi" / "bench" / "claims")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" /
                        "claims")
    args = parser.parse_args()
    for name in args.cohorts.split(","):
        run_claim(name, args, args.losses.split(","))


if __name__ == "__main__":
    main()
