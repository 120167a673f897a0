"""The demo: the whole pipeline on a generated cohort, NCMI against cross-entropy.

A small synthetic cohort (3 classes; a class is a planted lesion pattern covering a minority of
the tissue, so the aggregator must attend to the right tiles) goes through the real stages:
tile → extract (``resnet50_trunc``) → train twice (NCMI and CE, same seed and budget) → eval
on the patient-grouped test split → compare → heatmaps. Every number printed is read back from
the files the stages wrote.

No pretrained weights can be downloaded in the sandboxes this is tested in, so by default the
encoder gets a locally created, seeded random initialisation (said loudly); pass real weights
with ``weights`` to see what pretrained features do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..formats.featurefile import features_dir
from ..model.encoders import save_seeded_checkpoint
from ..model.heads import HEADS
from ..slides.synthetic import write_synthetic_slide
from .compare import compare_runs
from .evaluate import evaluate_run
from .extract import ExtractConfig, extract_slides
from .jobs import jobs_from_manifest
from .tile import TileConfig, tile_slides
from .train import train_run

log = logging.getLogger("wsi_ncmi")

CLASSES = {"normal": None, "dense_lesion": "dense", "gland_lesion": "glands"}
LOSSES = ("ncmi", "ce")
TABLE_METRICS = ("macro_f1", "auc_macro", "balanced_accuracy")


@dataclass(frozen=True)
class DemoConfig:
    """``n_slides`` slides of ``width`` × ``height`` px at ``slide_mpp`` µm/px, two per patient;
    tiles of ``tile_size`` px at ``tile_mpp`` µm/px; ``epochs`` per training run."""

    out: Path = Path("demo_out")
    n_slides: int = 40
    seed: int = 0
    width: int = 5120
    height: int = 3840
    slide_mpp: float = 0.5
    tile_mpp: float = 1.0
    tile_size: int = 224
    epochs: int = 40
    lesion_share: float = 0.08
    n_boot: int = 1000
    weights: Path | None = None
    heatmaps: int = 3


def make_cohort(folder: Path, n_slides: int, seed: int, width: int, height: int,
                mpp: float, lesion_share: float) -> Path:
    """Write the slides and ``manifest.csv`` (slide_id, path, label, patient_id, split);
    patients own two slides of their class and are split 50/20/30 (train/val/test) per
    class. ``lesion_share``: share of a lesion slide's tissue that is lesion."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(CLASSES)
    n_patients = max(len(names) * 3, n_slides // 2)
    patient_class = [names[i % len(names)] for i in range(n_patients)]
    split_of = _patient_splits(patient_class, rng)
    rows = []
    for i in range(n_slides):
        patient = i % n_patients
        label = patient_class[patient]
        slide_id = f"demo_{i:03d}"
        path = folder / f"{slide_id}.tif"
        if not path.exists():
            write_synthetic_slide(path, width, height, mpp=mpp, seed=seed * 1000 + i,
                                  lesion=CLASSES[label], downsamples=(1, 4, 16),
                                  lesion_share=lesion_share)
        rows.append({"slide_id": slide_id, "path": path.name, "label": label,
                     "patient_id": f"P{patient:03d}", "split": split_of[patient]})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _patient_splits(patient_class: list[str], rng: np.random.Generator) -> list[str]:
    split = [""] * len(patient_class)
    for name in dict.fromkeys(patient_class):
        members = [i for i, c in enumerate(patient_class) if c == name]
        rng.shuffle(members)
        n_val = max(1, round(0.2 * len(members)))
        n_test = max(1, round(0.3 * len(members)))
        for k, i in enumerate(members):
            split[i] = "val" if k < n_val else "test" if k < n_val + n_test else "train"
    return split


def run_demo(config: DemoConfig) -> dict:
    """Run every stage; return the table rows and the paths of the outputs."""
    out = config.out
    manifest = make_cohort(out / "slides", config.n_slides, config.seed, config.width,
                           config.height, config.slide_mpp, config.lesion_share)
    jobs = jobs_from_manifest(manifest, out / "slides")
    ws = out / "workspace"
    _check(tile_slides(jobs, ws, TileConfig(target_mpp=config.tile_mpp,
                                           tile_size=config.tile_size)))
    weights = config.weights
    if weights is None:
        weights = out / "encoder" / "resnet50_trunc_seeded.safetensors"
        save_seeded_checkpoint("resnet50_trunc", weights, seed=config.seed)
        log.warning("encoder: resnet50_trunc with a locally created, seeded RANDOM "
                    "initialisation (%s) — no pretrained weights can be downloaded here; "
                    "pass --weights for real ones", weights)
    _check(extract_slides(jobs, ws, ExtractConfig(encoder="resnet50_trunc", weights=weights)))
    features = features_dir(ws, "resnet50_trunc")
    runs = {}
    for loss in LOSSES:
        runs[loss] = out / "runs" / loss
        train_run(_train_config(loss, config), runs[loss], features, manifest,
                  command=f"demo train {loss}")
        evaluate_run(runs[loss], "test", n_boot=config.n_boot, seed=config.seed,
                     heatmaps=config.heatmaps, slide_root=out / "slides")
    comparison = compare_runs([runs[k] for k in LOSSES], out / "comparison", "test",
                              "linear_probe", config.n_boot, config.seed)
    heatmaps = sorted((runs["ncmi"] / "eval" / "test" / "heatmaps").glob("*.png"))
    return {"rows": table_rows(runs), "runs": runs, "comparison": comparison,
            "heatmaps": heatmaps}


def _train_config(loss: str, config: DemoConfig) -> dict:
    return {
        "task": {"name": "demo_3class", "classes": list(CLASSES)},
        "split": {"method": "column", "column": "split"},
        "model": {"embed_dim": 64, "attn_dim": 64},
        "loss": {"name": loss},
        "optim": {"epochs": config.epochs, "batch_size": 4, "lr": 5e-4,
                  "patience": config.epochs},
        "device": "auto",
        "seed": config.seed,
    }


def table_rows(runs: dict[str, Path]) -> list[dict]:
    """One row per (loss, head) from each run's ``eval/test/metrics.json``."""
    rows = []
    for loss, run in runs.items():
        metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
        for head in HEADS:
            if head not in metrics["heads"]:
                continue
            m = metrics["heads"][head]
            rows.append({"loss": loss, "head": head, "n_slides": metrics["n_slides"],
                         **{k: (m[k]["value"], m[k]["ci95"]) for k in TABLE_METRICS},
                         **{k: metrics["ncmi"][k] for k in ("ncmi", "cmi", "gamma")}})
    return rows


def format_table(rows: list[dict]) -> str:
    """The demo's table as aligned text: metric [95 % CI] per loss and head, then NCMI terms."""
    head = f"{'loss':<5} {'head':<13} " + " ".join(f"{k:<22}" for k in TABLE_METRICS)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = " ".join(f"{_ci(*r[k]):<22}" for k in TABLE_METRICS)
        lines.append(f"{r['loss']:<5} {r['head']:<13} {cells}")
    lines.append("")
    seen = set()
    for r in rows:
        if r["loss"] not in seen:
            seen.add(r["loss"])
            lines.append(f"{r['loss']}: NCMI {r['ncmi']:.4g}  CMI {r['cmi']:.4g}  "
                         f"Γ {r['gamma']:.4g}  (test split, {r['n_slides']} slides)")
    return "\n".join(lines)


def _ci(value, ci) -> str:
    if value is None:
        return "n/a"
    lo, hi = ci if ci else (None, None)
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{value:.3f}"


def _check(summary) -> None:
    if not summary.ok:
        raise InputError(f"demo: {summary.stage} failed for {len(summary.failed)} slide(s): "
                         + "; ".join(f"{k}: {v}" for k, v in summary.failed.items()))
