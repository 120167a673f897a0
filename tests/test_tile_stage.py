"""The tile stage end to end on generated slides, through the HDF5 contract."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
from cli import CLI, run_cli

from wsi_ncmi.formats.tilefile import read_tile_file
from wsi_ncmi.slides.synthetic import make_layout, write_synthetic_slide
from wsi_ncmi.stages.jobs import in_shard
from wsi_ncmi.stages.ledger import Ledger


@pytest.fixture(scope="module")
def tiled(slide_dir, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    run_cli("tile", slide_dir, "--out", ws, "--mpp", "0.5", "--tile-size", "256")
    return ws


def test_tile_file_contract(tiled, slide_dir):
    for i in range(3):
        grid = read_tile_file(tiled / "tiles" / f"slide_{i}.h5")
        a = grid.attrs
        assert grid.source_format == "wsi-ncmi"
        assert grid.coords.dtype == np.int64 and grid.coords.shape[1] == 2
        assert len(grid.coords) == a["n_tiles"] == len(grid.tissue_fraction) > 10
        assert (a["patch_level"], a["patch_size"], a["patch_size_level0"], a["tile_size"]) == (
            0, 512, 512, 256)  # 0.25 µm/px slide, levels 1/4/16: no 0.5 level → read and halve
        assert a["target_mpp"] == 0.5 and a["effective_mpp"] == pytest.approx(0.5)
        assert (a["slide_width"], a["slide_height"]) == (4096, 3072)
        assert a["slide_file"] == f"slide_{i}.tif" and a["mpp_source"] == "metadata"
        assert (grid.tissue_fraction >= 0.25).all() and (grid.tissue_fraction <= 1).all()
        order = grid.coords[:, 1] * 10**6 + grid.coords[:, 0]
        assert (np.diff(order) > 0).all(), "tiles must be in row-major order"
        assert (grid.coords % 512 == 0).all()
        assert (grid.coords[:, 0] + 512 <= 4096).all() and (grid.coords[:, 1] + 512 <= 3072).all()


def test_tiles_sit_on_tissue(tiled, slide_dir):
    """Re-read tiles at the recorded level and size: they show tissue, the rest of the grid
    is mostly background."""
    grid = read_tile_file(tiled / "tiles" / "slide_1.h5")
    layout = make_layout(4096, 3072, seed=1, lesion="dense")
    tissue, _ = layout.masks(1)
    for x, y in grid.coords:
        share = tissue[y:y + 512, x:x + 512].mean()
        assert share > 0.15, f"tile at {(x, y)} has {share:.0%} tissue"
    slide = openslide.OpenSlide(str(slide_dir / "slide_1.tif"))
    x, y = grid.coords[len(grid.coords) // 2]
    region = np.asarray(slide.read_region((int(x), int(y)), 0, (512, 512)))[..., :3]
    assert region.mean() < 235  # stained tissue, not white background


def test_previews_and_geojson(tiled):
    import cv2

    png = cv2.imread(str(tiled / "previews" / "slide_0.png"))
    assert png is not None and max(png.shape[:2]) >= 1024
    gj = json.loads((tiled / "tissue" / "slide_0.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and gj["features"]
    for feat in gj["features"]:
        assert feat["geometry"]["type"] == "Polygon"
        assert feat["properties"]["classification"]["name"] == "Tissue"
        for ring in feat["geometry"]["coordinates"]:
            assert ring[0] == ring[-1] and len(ring) >= 4
            xy = np.array(ring)
            assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= 4096
            assert xy[:, 1].min() >= 0 and xy[:, 1].max() <= 3072


def test_segmentation_matches_planted_tissue_and_keeps_holes(tmp_path):
    """On a 4 × 3 mm slide the mask agrees with the generator's tissue, and holes of
    ≥ 0.01 mm² come back as GeoJSON holes."""
    from wsi_ncmi.slides.access import open_slide, slide_info
    from wsi_ncmi.slides.tissue import TissueSettings, find_tissue

    path = tmp_path / "big.tif"
    layout = write_synthetic_slide(path, 16384, 12288, seed=4)
    slide = open_slide(path)
    tissue = find_tissue(slide, slide_info(slide, path), TissueSettings())
    truth, _ = layout.masks(tissue.scale[0])
    truth = truth[: tissue.mask.shape[0], : tissue.mask.shape[1]]
    iou = (truth & tissue.mask).sum() / (truth | tissue.mask).sum()
    assert iou > 0.85, iou
    assert sum(len(rings) - 1 for rings in tissue.polygons) >= 1


def test_ledger_and_rerun_skips_complete(tiled, slide_dir):
    mtimes = {p: p.stat().st_mtime_ns for p in (tiled / "tiles").glob("*.h5")}
    proc = run_cli("tile", slide_dir, "--out", tiled)
    assert "3 already complete" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    rec = json.loads((tiled / "ledger" / "tile" / "slide_2.json").read_text())
    assert rec["status"] == "done" and rec["n_tiles"] > 0
    assert rec["outputs"]["tiles"] == "tiles/slide_2.h5"


def test_changed_settings_are_not_reused(tiled, slide_dir, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(tiled, ws)
    proc = run_cli("tile", slide_dir, "--out", ws, "--tile-size", "224")
    assert "3 done" in proc.stderr
    assert read_tile_file(ws / "tiles" / "slide_0.h5").tile_size == 224


def test_truncated_tile_file_is_redone(tiled, slide_dir, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(tiled, ws)
    target = ws / "tiles" / "slide_0.h5"
    target.write_bytes(target.read_bytes()[:300])
    proc = run_cli("tile", slide_dir, "--out", ws)
    assert "1 done, 2 already complete" in proc.stderr
    assert len(read_tile_file(target).coords) > 10


def test_bad_inputs_are_reported_and_the_batch_goes_on(slide_dir, tmp_path):
    bad = tmp_path / "in"
    bad.mkdir()
    shutil.copy(slide_dir / "slide_0.tif", bad / "good.tif")
    data = (slide_dir / "slide_1.tif").read_bytes()
    (bad / "truncated.tif").write_bytes(data[: len(data) // 3])
    (bad / "notes.svs").write_text("this is not a slide")
    write_synthetic_slide(bad / "nompp.tif", 1024, 768, mpp=None, downsamples=(1, 4))
    write_synthetic_slide(bad / "blank.tif", 1024, 768, seed=5, downsamples=(1, 4))
    _blank_out(bad / "blank.tif")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(slide_dir / "slide_2.tif", other / "good.tif")  # same id as in/good.tif
    shutil.copy(slide_dir / "slide_2.tif", other / "bad id.tif")
    ws = tmp_path / "ws"
    proc = run_cli("tile", bad, other, "--out", ws, check=False)
    assert proc.returncode == 1
    ledger = {p.stem: json.loads(p.read_text()) for p in (ws / "ledger" / "tile").glob("*.json")}
    assert ledger["truncated"]["status"] == "failed"
    assert "truncated.tif" in ledger["truncated"]["reason"]
    assert "not a slide" in ledger["notes"]["reason"]
    assert "no µm/px" in ledger["nompp"]["reason"]
    assert "duplicate slide id" in ledger["good"]["reason"]
    assert "bad id" not in ledger  # an unsafe id never becomes a file name…
    assert "FAILED 'bad id':" in proc.stderr and "not safe as a file name" in proc.stderr
    assert ledger["blank"]["status"] == "done" and ledger["blank"]["n_tiles"] == 0
    assert "no tissue" in ledger["blank"]["reason"]
    assert all("\n" not in r.get("reason", "") for r in ledger.values())
    # …and both inputs claiming the id "good" are counted as failed
    assert proc.stderr.count("FAILED 'good':") == 2
    assert "2 done" not in proc.stderr and "6 failed" in proc.stderr
    assert not (ws / "tiles" / "truncated.h5").exists()
    # The missing µm/px is recovered with an explicit fallback; other slides are reused.
    proc = run_cli("tile", bad / "nompp.tif", "--out", ws, "--fallback-mpp", "0.25")
    assert read_tile_file(ws / "tiles" / "nompp.h5").attrs["mpp_source"] == "fallback"


def _blank_out(path: Path) -> None:
    """Overwrite a slide with an all-background one of the same geometry."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        shapes = [p.shape for p in tf.pages]
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, shape in enumerate(shapes):
            tw.write(np.full(shape, 242, np.uint8), tile=(256, 256), compression="jpeg",
                     photometric="rgb", subfiletype=1 if i else 0,
                     resolution=(1e4 / (0.25 * 4**i),) * 2, resolutionunit="CENTIMETER")


def test_manifest_mpp_override_and_slide_root(slide_dir, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide_id,path,mpp\nA,slide_0.tif,0.5\nB,slide_1.tif,\n")
    ws = tmp_path / "ws"
    run_cli("tile", "--manifest", manifest, "--slide-root", slide_dir, "--out", ws)
    a, b = (read_tile_file(ws / "tiles" / f"{s}.h5") for s in "AB")
    assert a.attrs["mpp_source"] == "manifest" and a.attrs["patch_size"] == 256
    assert b.attrs["mpp_source"] == "metadata" and b.attrs["patch_size"] == 512


def test_shards_partition_the_batch(slide_dir, tmp_path):
    ws = tmp_path / "ws"
    for i in range(2):
        run_cli("tile", slide_dir, "--out", ws, "--shard", f"{i}/2")
    ids = sorted(p.stem for p in (ws / "tiles").glob("*.h5"))
    assert ids == ["slide_0", "slide_1", "slide_2"]
    assert all(in_shard(s, 0, 2) != in_shard(s, 1, 2) for s in ids)
    merged = (ws / "ledger" / "tile.csv").read_text().splitlines()
    assert len(merged) == 1 + 3  # the merged ledger holds both shards' slides


def test_killed_batch_resumes(tmp_path):
    src = tmp_path / "slides"
    src.mkdir()
    for i in range(6):
        write_synthetic_slide(src / f"s{i}.tif", 8192, 6144, seed=10 + i, downsamples=(1, 4, 16))
    ws = tmp_path / "ws"
    proc = subprocess.Popen([*CLI, "tile", str(src), "--out", str(ws)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = ws / "ledger" / "tile"
    deadline = time.time() + 60
    while time.time() < deadline:
        records = list(ledger.glob("*.json")) if ledger.exists() else []
        if any('"done"' in p.read_text() for p in records):
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.stem for p in (ws / "tiles").glob("*.h5")}
    assert 1 <= len(finished) < 6, "the kill should land mid-batch"
    for p in (ws / "tiles").glob("*.h5"):
        with h5py.File(p) as f:  # whatever is published is whole
            assert f["coords"].shape[0] == f["coords"].attrs["n_tiles"]
    before = {s: (ws / "tiles" / f"{s}.h5").stat().st_mtime_ns for s in finished}
    out = run_cli("tile", src, "--out", ws)
    assert f"{len(finished)} already complete" in out.stderr
    assert {s: (ws / "tiles" / f"{s}.h5").stat().st_mtime_ns for s in finished} == before
    assert len(list((ws / "tiles").glob("*.h5"))) == 6
    assert not list(ws.rglob("*.tmp-*")), "stale temporary files must be cleaned"


def test_help_and_tile_do_not_import_torch(tmp_path):
    code = ("import sys; from typer.testing import CliRunner; from wsi_ncmi.cli import app; "
            "r = CliRunner().invoke(app, ['tile', '--help']); assert r.exit_code == 0; "
            "assert 'µm/px' in r.output; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_ledger_record_cleans_what_a_killed_writer_left(tmp_path):
    # a kill can land while a record is being written (its temporary file stays); the next
    # write of that slide's record, which a resumed run always makes, removes it
    ledger = Ledger(tmp_path, "tile")
    ledger.write("s1", {"status": "running"})
    stale = ledger.path("s1").with_name(".s1.json.tmp-99999")
    stale.write_text("{half")
    ledger.write("s1", {"status": "done"})
    assert not stale.exists() and ledger.get("s1")["status"] == "done"
    assert [p.name for p in ledger.folder.iterdir()] == ["s1.json"]
