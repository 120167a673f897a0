"""Attention heatmaps on synthetic slides with a planted lesion, through the real pipeline:
tile → extract (tiny seeded encoder) → train → heatmap, and ``eval --heatmaps``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from cli import run_cli

from wsi_ncmi.formats.featurefile import read_features, tile_geometry
from wsi_ncmi.model.encoders import save_seeded_checkpoint
from wsi_ncmi.model.inference import load_fold, run_model
from wsi_ncmi.slides.overview import read_thumbnail
from wsi_ncmi.slides.synthetic import make_layout, write_synthetic_slide
from wsi_ncmi.stages.evaluate import evaluate_run
from wsi_ncmi.stages.extract import ExtractConfig, extract_slides
from wsi_ncmi.stages.jobs import jobs_from_paths
from wsi_ncmi.stages.tile import TileConfig, tile_slides
from wsi_ncmi.stages.train import train_run
from wsi_ncmi.stats.attention import (
    attention_geojson,
    attention_percentiles,
    attention_ranks,
    attention_raster,
)

W, H = 2048, 1536  # level-0 px at 0.25 µm/px: 0.5 × 0.38 mm
N_SLIDES = 16
TILE0 = 128  # 64 px tiles at 0.5 µm/px
PARTS = ["train"] * 10 + ["val"] * 2 + ["test"] * 4


def seed_of(i: int) -> int:
    return 100 + i


def lesion_of(i: int) -> str | None:
    return "dense" if i % 2 else None


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    """16 slides (odd: dense lesion = class 'lesion', even: none), tiled at 0.5 µm/px in
    64 px tiles, encoded by a seeded tiny ResNet, and a CE run trained on 10 of them."""
    root = tmp_path_factory.mktemp("heat")
    slides = root / "slides"
    slides.mkdir()
    rows = []
    for i in range(N_SLIDES):
        sid = f"s{i:02d}"
        write_synthetic_slide(slides / f"{sid}.tif", W, H, seed=seed_of(i), lesion=lesion_of(i),
                              downsamples=(1, 4, 16))
        rows.append({"slide_id": sid, "path": f"{sid}.tif",
                     "label": "lesion" if lesion_of(i) else "normal",
                     "patient_id": f"p{i:02d}", "split": PARTS[i]})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    ws = root / "ws"
    jobs = jobs_from_paths(sorted(slides.glob("*.tif")))
    assert tile_slides(jobs, ws, TileConfig(target_mpp=0.5, tile_size=64)).ok
    ckpt = root / "encoder.safetensors"
    save_seeded_checkpoint("test_resnet", ckpt, seed=3)
    assert extract_slides(jobs, ws, ExtractConfig(encoder="test_resnet", weights=ckpt,
                                                 device="cpu", workers=0)).ok
    features = ws / "features" / "test_resnet"
    config = {"task": {"name": "lesion", "label_column": "label",
                       "classes": ["normal", "lesion"]},
              "split": {"method": "column", "column": "split"},
              # the recipe this localisation check was calibrated with, spelled out so that a
              # change of the training defaults does not move its threshold
              "model": {"embed_dim": 16, "attn_dim": 8, "dropout": 0.0},
              "loss": {"name": "ce"},
              "optim": {"epochs": 40, "batch_size": 4, "lr": 1e-2, "patience": 40,
                        "weight_decay": 1e-4, "max_tiles": None},
              "data": {"eval_batch_size": 16}, "device": "cpu", "seed": 0}
    run = train_run(config, root / "run", features, manifest)
    return {"root": root, "slides": slides, "manifest": manifest, "features": features,
            "run": run}


def lesion_share_per_tile(i: int, coords: np.ndarray) -> np.ndarray:
    """Share of each tile's area on the planted lesion (level-0 ground truth)."""
    _, lesion = make_layout(W, H, seed=seed_of(i), lesion=lesion_of(i)).masks(1)
    return np.array([lesion[y:y + TILE0, x:x + TILE0].mean() for x, y in coords])


def test_attention_sits_on_the_planted_lesion(cohort):
    """On every held-out lesion slide the model attends to lesion tiles: their mean
    attention is many times that of the other tiles, and the most attended tiles are lesion
    tiles. (Before training the ratio is about 1.)"""
    test_lesion = [i for i in range(N_SLIDES) if PARTS[i] == "test" and lesion_of(i)]
    loaded = load_fold(cohort["run"] / "fold_0")
    out = run_model(loaded, cohort["features"], [f"s{i:02d}" for i in test_lesion])
    for i, attention in zip(test_lesion, out["attention"], strict=True):
        _, coords, _ = read_features(cohort["features"] / f"s{i:02d}.h5")
        share = lesion_share_per_tile(i, coords)
        on = share > 0
        assert on.sum() >= 3 and (~on).sum() >= 10
        ratio = attention[on].mean() / attention[~on].mean()
        assert ratio > 5, f"s{i:02d}: lesion/other attention ratio {ratio:.2f}"
        top = np.argsort(-attention)[: max(3, int((share > 0.5).sum()))]
        assert on[top].mean() >= 0.8, f"s{i:02d}: top tiles on lesion {on[top].mean():.0%}"


def test_heatmap_command_renders_hot_tiles_on_the_lesion(cohort, tmp_path):
    """`wsi-ncmi heatmap`: the GeoJSON carries the model's attention for every tile square at
    its level-0 place, and in the rendered raster the hottest pixels lie on the lesion."""
    i = next(i for i in range(N_SLIDES) if PARTS[i] == "test" and lesion_of(i))
    sid = f"s{i:02d}"
    run_cli("heatmap", cohort["run"], sid, "--slide", cohort["slides"] / f"{sid}.tif",
            "--out", tmp_path, "--device", "cpu")
    png = matplotlib.image.imread(tmp_path / f"{sid}.png")
    assert png.ndim == 3 and png.shape[0] > 200 and png.shape[1] > 200
    gj = json.loads((tmp_path / f"{sid}.geojson").read_text())
    _, coords, _ = read_features(cohort["features"] / f"{sid}.h5")
    attention = run_model(load_fold(cohort["run"] / "fold_0"), cohort["features"],
                          [sid])["attention"][0]
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(coords)
    for feat, (x, y), a in zip(gj["features"], coords, attention, strict=True):
        assert feat["properties"]["objectType"] == "detection"
        ring = feat["geometry"]["coordinates"][0]
        assert ring == [[x, y], [x + TILE0, y], [x + TILE0, y + TILE0], [x, y + TILE0], [x, y]]
        assert feat["properties"]["measurements"]["attention"] == pytest.approx(a, rel=1e-6)
    ranks = [f["properties"]["measurements"]["attention_rank"] for f in gj["features"]]
    assert sorted(ranks) == list(range(1, len(coords) + 1))
    assert sum(f["properties"]["measurements"]["attention"] for f in gj["features"]) == \
        pytest.approx(1.0, abs=1e-4)

    thumbnail, scale = read_thumbnail(cohort["slides"] / f"{sid}.tif")
    raster = attention_raster(coords, TILE0, attention_percentiles(attention),
                              thumbnail.shape[:2], scale)
    tissue, lesion = make_layout(W, H, seed=seed_of(i), lesion="dense").masks(scale[0])
    h, w = raster.shape
    lesion, tissue = lesion[:h, :w], tissue[:h, :w]
    hot = raster >= 90
    assert hot.sum() > 0
    base = lesion[np.isfinite(raster)].mean()
    assert lesion[hot].mean() > max(0.5, 2 * base), (lesion[hot].mean(), base)
    assert tissue[np.isfinite(raster)].mean() > 0.5  # tile squares lie on tissue


def test_ranks_percentiles_and_raster_geometry():
    attention = np.array([0.1, 0.4, 0.2, 0.3])
    np.testing.assert_array_equal(attention_ranks(attention), [4, 1, 3, 2])
    np.testing.assert_allclose(attention_percentiles(attention), [0, 100, 100 / 3, 200 / 3])
    coords = np.array([[0, 0], [100, 0], [0, 100], [100, 100]])
    raster = attention_raster(coords, 100, attention, (25, 30), (10.0, 10.0))
    assert raster[0, 0] == pytest.approx(0.1) and raster[9, 10] == pytest.approx(0.4)
    assert raster[10, 0] == pytest.approx(0.2) and raster[19, 19] == pytest.approx(0.3)
    assert np.isnan(raster[:, 20:]).all() and np.isnan(raster[20:]).all()
    gj = attention_geojson(coords, 100, attention, "x")
    assert [f["properties"]["measurements"]["attention_rank"] for f in gj["features"]] == \
        [4, 1, 3, 2]


def test_tile_geometry_of_ours_trident_clam_and_bare_files(tmp_path):
    """Tile side in level-0 px: our/TRIDENT's patch_size_level0, CLAM's patch_size at
    patch_level (× that level's downsample), else the grid spacing."""
    coords = np.array([[0, 0], [448, 0], [896, 448]], np.int64)

    def write(name: str, root: dict, on_coords: dict) -> Path:
        path = tmp_path / f"{name}.h5"
        with h5py.File(path, "w") as f:
            f["features"] = np.zeros((1, 3, 4), np.float32)  # CLAM keeps a batch axis
            f["coords"] = coords[None]
            f.attrs.update(root)
            f["coords"].attrs.update(on_coords)
        return path

    downsamples = (1.0, 4.0, 16.0)
    cases = {"ours": ({"patch_size_level0": 448}, {}),
             "trident": ({}, {"patch_size_level0": 448, "patch_size": 224}),
             "clam": ({}, {"patch_level": 1, "patch_size": 112}),
             "bare": ({}, {})}
    for name, (root, on_coords) in cases.items():
        got, size0 = tile_geometry(write(name, root, on_coords), downsamples)
        np.testing.assert_array_equal(got, coords)
        assert size0 == 448, name


def test_eval_heatmaps_for_the_most_confident_test_slides(cohort, tmp_path, caplog):
    """`eval --heatmaps 3` draws the 3 test slides with the highest linear-probe
    probability; a slide whose file is missing is skipped with a logged reason."""
    manifest = pd.read_csv(cohort["manifest"], dtype=str)
    evaluate_run(cohort["run"], "test", n_boot=20, device="cpu")
    pred = pd.read_csv(cohort["run"] / "eval" / "test" / "predictions.csv")
    probe = pred[pred["head"] == "linear_probe"].copy()
    probe["top"] = probe[["score_normal", "score_lesion"]].max(axis=1)
    ranked = probe.sort_values(["top", "slide_id"], ascending=[False, True])["slide_id"]
    top3 = ranked.tolist()[:3]
    missing = top3[1]
    manifest.loc[manifest["slide_id"] == missing, "path"] = "gone.tif"
    edited = tmp_path / "manifest.csv"
    manifest.to_csv(edited, index=False)
    with caplog.at_level(logging.WARNING, logger="wsi_ncmi"):
        out = evaluate_run(cohort["run"], "test", manifest=edited, n_boot=20, device="cpu",
                           heatmaps=3, slide_root=cohort["slides"])
    drawn = sorted(p.stem for p in (out / "heatmaps").glob("*.png"))
    assert drawn == sorted(s for s in top3 if s != missing)
    assert sorted(p.stem for p in (out / "heatmaps").glob("*.geojson")) == drawn
    assert any(missing in r.message and "not found" in r.message for r in caplog.records)


def test_eval_heatmaps_cli_names_each_step_and_where_the_heatmaps_went(cohort, tmp_path):
    """`eval --heatmaps 2 --verbose` logs every step and each heatmap (titled with the true
    class), prints the heatmaps' folder, and brings no matplotlib or PIL debug lines."""
    out = run_cli("eval", cohort["run"], "--heatmaps", 2, "--n-boot", 20, "--device", "cpu",
                  "--slide-root", cohort["slides"], "--verbose")
    folder = cohort["run"] / "eval" / "test"
    for step in ("eval fold 0: running the model on 10 training and 4 test slide(s)",
                 "eval: bootstrap intervals over patients (20 resamples)",
                 f"eval: writing metrics, predictions, plots and the report to {folder}",
                 "heatmap 1/2: ", "heatmap 2/2: ",
                 f"heatmaps: 2 of 2 slide(s) drawn in {folder / 'heatmaps'}"):
        assert step in out.stderr, step
    titles = [line for line in out.stderr.splitlines() if "DEBUG wrote" in line]
    assert len(titles) == 2
    assert all(("true lesion, predicted" in t or "true normal, predicted" in t) for t in titles)
    assert f"heatmaps of the 2 most confident slides in {folder / 'heatmaps'}" in out.stdout
    assert "findfont" not in out.stderr and "STREAM" not in out.stderr
    assert "matplotlib" not in out.stderr and "PIL" not in out.stderr
