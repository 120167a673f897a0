"""The demo: the whole pipeline on a generated heterogeneous cohort, NCMI against CE.

A small synthetic cohort (:func:`~wsi_ncmi.slides.cohort_presets.demo`: 3 classes, each a
lesion pattern over part of the tissue, so the aggregator must attend to the right tiles; 3
centres with their own µm/px, formats, pyramids, tile sizes, JPEG qualities and stains; slides
of different sizes; two slides per patient) goes through the real stages: tile → extract
(``resnet50_trunc``) → train twice (NCMI and CE, same seed and budget) → eval on the
patient-grouped test split → compare → heatmaps. Two more slides, from a fourth centre the
model never saw, are written beside the cohort for the ``predict`` command the demo prints
last. Every number printed is read back from the files the stages wrote.

No pretrained weights can be downloaded in the sandboxes this is tested in, so by default the
encoder gets a locally created, seeded random initialisation (said loudly); pass real weights
with ``weights`` to see what pretrained features do.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InputError
from ..formats.featurefile import features_dir
from ..model.encoders import save_seeded_checkpoint
from ..model.heads import HEADS
from ..slides.cohort import write_cohort
from ..slides.cohort_presets import demo as demo_cohort
from ..slides.synthetic import Stain, write_synthetic_slide
from .compare import compare_runs
from .evaluate import evaluate_run
from .extract import ExtractConfig, extract_slides
from .jobs import jobs_from_manifest
from .tile import TileConfig, tile_slides
from .train import train_run

log = logging.getLogger("wsi_ncmi")

CLASSES = ("normal", "dense_lesion", "gland_lesion")
LOSSES = ("ncmi", "ce")
TABLE_METRICS = ("macro_f1", "auc_macro", "balanced_accuracy")
#: the slides ``predict`` is shown on: a centre the cohort lacks (µm/px, stain, format)
NEW_SLIDES = (("new_c3_s0", "dense"), ("new_c3_s1", None))


@dataclass(frozen=True)
class DemoConfig:
    """``n_slides`` slides (two per patient) ``width_mm`` wide (range, mm), written by
    ``workers`` processes; tiles of ``tile_size`` px at ``tile_mpp`` µm/px; ``epochs`` per
    training run; ``heatmaps`` most confident test slides drawn per run."""

    out: Path = Path("demo_out")
    n_slides: int = 40
    seed: int = 0
    width_mm: tuple[float, float] = (1.0, 1.5)
    tile_mpp: float = 2.0
    tile_size: int = 112
    epochs: int = 40
    n_boot: int = 1000
    weights: Path | None = None
    heatmaps: int = 3
    workers: int = 2


def run_demo(config: DemoConfig) -> dict:
    """Run every stage; return the table rows and the paths of the outputs."""
    out = config.out
    # 30 % of the patients in the test split: more test slides, narrower intervals
    spec = replace(demo_cohort(patients=max(len(CLASSES) * 3, config.n_slides // 2),
                               width_mm=config.width_mm), split_shares=(0.5, 0.2, 0.3))
    log.info("demo: writing %d slides from %d centres into %s (reused when already there)",
             spec.patients * spec.slides_per_patient, len(spec.centres), out / "slides")
    cohort = write_cohort(spec, out / "slides", seed=config.seed, workers=config.workers)
    write_new_slides(out / "new_slides", config)
    manifest = cohort.manifest
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
    # tiles of 224 µm as cut (112 px): a quarter of the encoder's work at its 224-px input
    _check(extract_slides(jobs, ws, ExtractConfig(encoder="resnet50_trunc", weights=weights,
                                                  input_size="native")))
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
    heatmaps = {loss: sorted((run / "eval" / "test" / "heatmaps").glob("*.png"))
                for loss, run in runs.items()}
    return {"rows": table_rows(runs), "runs": runs, "comparison": comparison,
            "heatmaps": heatmaps, "predict": predict_command(out),
            "verify": shlex.join(["wsi-ncmi", "verify", str(out), "--slide-root",
                                  str(out / "slides"), "--slide-root", str(out / "new_slides")])}


def write_new_slides(folder: Path, config: DemoConfig) -> None:
    """The slides :func:`predict_command` names: a centre the cohort lacks (0.4712 µm/px,
    its own stain, SVS), one with a dense lesion and one without."""
    folder.mkdir(parents=True, exist_ok=True)
    width = round(config.width_mm[0] * 1000 / 0.4712)
    for i, (name, lesion) in enumerate(NEW_SLIDES):
        path = folder / f"{name}.svs"
        if not path.is_file():
            write_synthetic_slide(path, width, round(width * 0.75), mpp=0.4712,
                                  seed=config.seed + 9000 + i, lesion=lesion,
                                  lesion_um=600.0 if lesion else None, format="svs",
                                  stain=Stain(1.1, 0.9, gain=(0.98, 1.0, 1.03)),
                                  downsamples=(1, 4, 16))


def predict_command(out: Path) -> str:
    """The ``wsi-ncmi predict`` command to try on the demo's model and new slides."""
    return shlex.join(["wsi-ncmi", "predict", "--model", str(out / "runs" / "ncmi"),
                       str(out / "new_slides"), "--out", str(out / "predict")])


def _train_config(loss: str, config: DemoConfig) -> dict:
    """Small model and batches for the demo's ~20 training slides; the lr is the default,
    ``auto``: each loss's own, chosen per fold on the validation slides (a common lr would
    favour one loss, docs/training.md)."""
    return {
        "task": {"name": "demo_3class", "classes": list(CLASSES)},
        "split": {"method": "column", "column": "split"},
        "model": {"embed_dim": 64, "attn_dim": 64},
        "loss": {"name": loss},
        "optim": {"epochs": config.epochs, "batch_size": 4, "patience": config.epochs},
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
        raise InputError(f"demo: {summary.stage} failed for {len(summary.failures)} slide(s): "
                         + "; ".join(f"{f.slide_id}: {f.reason}" for f in summary.failures))
