"""The whole pipeline on a cohort that looks like a real one: five centres with their own µm/px
(0.226–0.27, some slides without it), formats (SVS, generic TIFF, DICOM when wsidicomizer is
installed), pyramids, tile sizes, JPEG qualities and stains, slides of different sizes, and bad
files mixed in. tile → extract → train (NCMI and CE, leave one centre out) → eval → predict on
a slide from an unseen centre → verify."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli import run_cli

from wsi_ncmi.model.encoders import save_seeded_checkpoint
from wsi_ncmi.slides.cohort import Cohort, write_cohort
from wsi_ncmi.slides.cohort_presets import camelyon_like
from wsi_ncmi.slides.synthetic import Stain, write_synthetic_slide

HAS_DICOM = importlib.util.find_spec("wsidicomizer") is not None
CLASSES = "[negative, itc, micro, macro]"


def run_pipeline(cohort: Cohort, root: Path, mpp: float, tile_size: int, epochs: int) -> dict:
    """Run every stage through the CLI; return what the checks and the summary need."""
    t0 = time.perf_counter()
    ws, manifest = root / "ws", cohort.manifest
    save_seeded_checkpoint("test_resnet", root / "enc.safetensors", seed=0)
    tiled = run_cli("tile", "--manifest", manifest, "--out", ws, "--mpp", mpp, "--tile-size",
                    tile_size, check=False)
    extracted = run_cli("extract", "--manifest", manifest, "--out", ws, "--encoder",
                        "test_resnet", "--weights", root / "enc.safetensors", check=False)
    failed = {p.stem for p in (ws / "ledger" / "extract").glob("*.json")
              if json.loads(p.read_text())["status"] == "failed"}
    good = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    good = good[~good["slide_id"].isin(failed)]
    good.to_csv(root / "good.csv", index=False)
    (root / "train.yaml").write_text(
        f"task: {{classes: {CLASSES}}}\nmodel: {{embed_dim: 16, attn_dim: 16}}\n"
        f"optim: {{epochs: {epochs}, batch_size: 4, lr: 0.002}}\ndevice: cpu\n")
    metrics = {}
    for loss in ("ncmi", "ce"):
        run = root / "runs" / loss
        run_cli("train", "--features", ws / "features" / "test_resnet", "--manifest",
                root / "good.csv", "--config", root / "train.yaml", "--group-column", "group",
                "--loss", loss, "--out", run)
        run_cli("eval", run, "--n-boot", "50", "--device", "cpu")
        metrics[loss] = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    unseen = root / "unseen"
    unseen.mkdir()
    write_synthetic_slide(unseen / "n5_p900_s0.svs", 2600, 1900, mpp=0.2325, seed=99,
                          lesion="dense", lesion_um=150, format="svs",
                          stain=Stain(1.1, 0.9, gain=(0.98, 1.0, 1.03)), downsamples=(1, 2, 8))
    run_cli("predict", "--model", root / "runs" / "ncmi", unseen, "--out", root / "pred",
            "--all-folds", "--device", "cpu")
    return {"tile": tiled, "extract": extracted, "failed": failed, "good": good, "ws": ws,
            "metrics": metrics, "seconds": time.perf_counter() - t0}


def summary(cohort: Cohort, result: dict) -> str:
    n_tiles = sum(json.loads(p.read_text()).get("n_tiles", 0)
                  for p in (result["ws"] / "ledger" / "extract").glob("*.json"))
    lines = [f"{len(cohort.slides)} slides ({len(result['good'])} usable, bad: "
             f"{', '.join(sorted(result['failed']))}), {n_tiles} tiles, "
             f"{result['seconds']:.0f} s"]
    for loss, m in result["metrics"].items():
        lines += [f"{loss} {head}: macro-F1 {h['macro_f1']['value']:.3f} "
                  f"{h['macro_f1']['ci95']}, AUC {h['auc_macro']['value']:.3f}"
                  for head, h in m["heads"].items()]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Cohort, dict]:
    root = tmp_path_factory.mktemp("heterogeneous")
    spec = camelyon_like(patients=20, slides_per_patient=1, size_scale=0.1,
                         width_mm=(0.5, 0.8), dicom=HAS_DICOM)
    cohort = write_cohort(spec, root / "cohort", seed=0)
    return cohort, run_pipeline(cohort, root, mpp=1.0, tile_size=64, epochs=6)


def test_bad_files_fail_alone(small):
    cohort, result = small
    bad = {t["slide_id"] for t in cohort.slides if t["damage"]}
    assert result["tile"].returncode == 1 and result["extract"].returncode == 1
    assert result["failed"] == bad
    for t in cohort.slides:
        if t["damage"] in ("truncated", "not_a_slide"):
            assert f"FAILED {t['slide_id']!r}" in result["tile"].stderr
    assert len(result["good"]) == 20


def test_features_agree_on_settings_and_record_each_slides_facts(small):
    _, result = small
    record = json.loads((result["ws"].parent / "runs" / "ncmi" / "features.json").read_text())
    settings, facts = record["settings"], record["facts"]
    assert settings["tiling"]["seg_mpp"] == 16.0 and settings["tiling"]["target_mpp"] == 1.0
    assert facts["n_slides"] == 20 and len(facts["levels_read"]) >= 2
    assert facts["resized_slides"] >= 1
    assert facts["input_mpp"]["min"] < facts["input_mpp"]["max"] <= 1.0 * 1.05
    assert facts["slide_width"][0] < facts["slide_width"][1]


def test_leave_one_centre_out_evaluates_every_slide_once(small):
    _, result = small
    for loss, metrics in result["metrics"].items():
        assert metrics["n_folds"] == 5 and metrics["n_slides"] == 20
        expected = {"linear_probe", "centroid"} | ({"classifier"} if loss == "ce" else set())
        assert set(metrics["heads"]) == expected
        for head in metrics["heads"].values():
            assert 0.0 <= head["macro_f1"]["value"] <= 1.0


def test_predict_on_a_slide_from_an_unseen_centre_and_verify(small):
    cohort, result = small
    pred = pd.read_csv(result["ws"].parent / "pred" / "predictions.csv")
    assert pred["slide_id"].tolist() == ["n5_p900_s0"] and pred["folds"].item() == "0;1;2;3;4"
    probs = pred[[c for c in pred.columns if c.startswith("prob_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0)
    verified = run_cli("verify", result["ws"].parent, "--slide-root", cohort.folder.parent)
    assert "0 problem(s)" in verified.stderr
    print("\n" + summary(cohort, result))


@pytest.mark.slow
def test_larger_heterogeneous_cohort(tmp_path):
    spec = camelyon_like(patients=40, slides_per_patient=2, size_scale=0.25,
                         width_mm=(1.0, 2.0), dicom=HAS_DICOM)
    cohort = write_cohort(spec, tmp_path / "cohort", seed=1, workers=2)
    result = run_pipeline(cohort, tmp_path, mpp=0.5, tile_size=128, epochs=30)
    assert result["failed"] == {t["slide_id"] for t in cohort.slides if t["damage"]}
    print("\n" + summary(cohort, result))
