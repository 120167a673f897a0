"""The extract stage: encoders, weights, the region reader, and end-to-end runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from cli import run_cli

from wsi_ncmi.formats.featurefile import read_features
from wsi_ncmi.formats.tilefile import read_tile_file
from wsi_ncmi.model.encoders import (
    EncoderError,
    file_sha256,
    get_spec,
    load_encoder,
    save_seeded_checkpoint,
)
from wsi_ncmi.slides.reading import ReadSpec, TileReader, region_runs
from wsi_ncmi.slides.synthetic import write_synthetic_slide

SMALL = "test_resnet"  # a tiny timm architecture keeps CPU tests fast


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    save_seeded_checkpoint(SMALL, path, seed=3)
    return path


@pytest.fixture(scope="module")
def workspace(slide_dir, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    run_cli("tile", slide_dir, "--out", ws, "--mpp", "1.0", "--tile-size", "224")
    return ws


def test_registry_and_specs():
    spec = get_spec("resnet50_trunc")
    assert spec.truncate_after_layer3 and spec.input_size == 224  # as CLAM and TRIDENT feed it
    assert spec.mean == (0.485, 0.456, 0.406)
    assert get_spec("vit_small_patch16_224.augreg_in21k").input_size == 224
    assert get_spec("resnet50.tv_in1k").input_size == 224  # timm's config, size not fixed
    assert get_spec(SMALL).input_size == 160
    with pytest.raises(EncoderError, match="unknown encoder"):
        get_spec("no_such_model")


def test_resnet50_trunc_is_1024d_and_loads_a_full_resnet_checkpoint(tmp_path):
    import timm

    full = timm.create_model("resnet50", pretrained=False)  # with layer4 and fc, as published
    path = tmp_path / "resnet50.pth"
    torch.save(full.state_dict(), path)
    enc = load_encoder("resnet50_trunc", weights=path)
    assert enc.dim == 1024 and enc.weights_source == "file"
    assert enc.weights_sha256 == file_sha256(path)
    torch.testing.assert_close(enc.model.conv1.weight, full.conv1.weight)
    torch.testing.assert_close(enc.model.layer3[0].conv1.weight, full.layer3[0].conv1.weight)


def test_weights_file_round_trip_and_sha(checkpoint):
    enc = load_encoder(SMALL, weights=checkpoint)
    assert enc.weights_sha256 == file_sha256(checkpoint)
    from safetensors.torch import load_file

    saved = load_file(str(checkpoint))
    for k, v in enc.model.state_dict().items():
        torch.testing.assert_close(v, saved[k])


def test_wrong_weights_are_refused(checkpoint):
    with pytest.raises(EncoderError, match="not weights of 'resnet50_trunc'"):
        load_encoder("resnet50_trunc", weights=checkpoint)
    with pytest.raises(EncoderError, match="exclude each other"):
        load_encoder(SMALL, weights=checkpoint, random_weights=True)


def test_offline_by_default_no_network_call(tmp_path):
    """Without --download, hub weights come from the local cache only: an empty cache gives
    a clear error and no socket is ever opened."""
    code = f"""
import socket, os
os.environ['HF_HOME'] = {str(tmp_path)!r}
calls = []
def refuse(*a, **k):
    calls.append(a)
    raise OSError('network used')
socket.socket.connect = refuse
socket.create_connection = refuse
from wsi_ncmi.model.encoders import load_encoder, EncoderError
try:
    load_encoder('resnet50_trunc')
except EncoderError as e:
    assert 'local Hugging Face cache' in str(e) and '--download' in str(e), e
else:
    raise SystemExit('expected an error')
assert not calls, calls
print('OFFLINE-OK')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "OFFLINE-OK" in out.stdout, out.stderr


def test_region_reads_equal_single_tile_reads(slide_path):
    coords = np.array([[512 * i, 1024] for i in range(6)] + [[0, 1536], [512, 1536]])
    runs = region_runs(coords, 1.0, 512, max_tiles=4)
    assert runs == [(0, 4), (4, 6), (6, 8)]
    for spec in (ReadSpec(0, 512, 1.0, 256), ReadSpec(1, 128, 4.0, 128)):
        reader = TileReader(slide_path, spec)
        for a, b in runs:
            tiles, ok = reader.read_run(coords[a:b])
            assert ok.all() and tiles.shape == (b - a, spec.out_size, spec.out_size, 3)
            for k in range(b - a):
                np.testing.assert_array_equal(tiles[k], reader.read_tile(*coords[a + k]))
        reader.close()


def test_features_match_a_direct_model_call(workspace, slide_dir, checkpoint):
    run_cli("extract", slide_dir, "--out", workspace, "--encoder", SMALL, "--weights",
            checkpoint, "--workers", "1", "--batch-size", "7", "--precision", "fp32")
    feats, coords, attrs = read_features(workspace / "features" / SMALL / "slide_1.h5")
    grid = read_tile_file(workspace / "tiles" / "slide_1.h5")
    np.testing.assert_array_equal(coords, grid.coords)
    assert attrs["weights_sha256"] == file_sha256(checkpoint)
    assert attrs["encoder"] == SMALL and not attrs["random_weights"]
    assert attrs["input_mpp"] == pytest.approx(1.0) and attrs["tile_size"] == 224
    pre = json.loads(attrs["preprocessing"])
    assert pre["input_size"] == 160 and attrs["resize"] == "cv2.INTER_AREA"  # SMALL's own
    assert attrs["decode"] == "cpu"
    enc = load_encoder(SMALL, weights=checkpoint)
    reader = TileReader(slide_dir / "slide_1.tif",
                        ReadSpec(grid.level, grid.read_size, 4.0 ** grid.level, 160))
    tiles = np.stack([reader.read_tile(x, y) for x, y in coords[:5]])
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        direct = enc.model(x).numpy()
    np.testing.assert_allclose(feats[:5], direct, rtol=1e-4, atol=1e-5)
    assert np.isfinite(feats).all() and feats.shape == (len(grid.coords), enc.dim)


def test_rerun_skips_complete_and_redoes_truncated(workspace, slide_dir, checkpoint):
    args = ["extract", slide_dir, "--out", workspace, "--encoder", SMALL, "--weights",
            checkpoint, "--workers", "0", "--precision", "fp32"]
    run_cli(*args)
    folder = workspace / "features" / SMALL
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.h5")}
    target = folder / "slide_2.h5"
    target.write_bytes(target.read_bytes()[:2048])
    proc = run_cli(*args)
    assert "1 done, 2 already complete" in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.h5")
            if p.name != "slide_2.h5"} == {k: v for k, v in mtimes.items() if k != "slide_2.h5"}
    assert read_features(target)[0].shape[0] > 0


def test_corrupt_tile_is_skipped_then_fails_past_threshold(slide_dir, tmp_path, checkpoint):
    import tifffile

    src = tmp_path / "bad.tif"
    shutil.copy(slide_dir / "slide_0.tif", src)
    ws = tmp_path / "ws"
    run_cli("tile", src, "--out", ws, "--mpp", "0.25", "--tile-size", "256")
    x, y = read_tile_file(ws / "tiles" / "bad.h5").coords[3]
    with tifffile.TiffFile(src) as tf:
        page = tf.pages[0]
        index = (y // 256) * (page.imagewidth // 256) + (x // 256)
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(src, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * count)
    base = ["extract", src, "--out", ws, "--encoder", SMALL, "--weights", checkpoint,
            "--workers", "0"]
    proc = run_cli(*base, "--max-bad-tiles", "0", check=False)
    assert proc.returncode == 1 and "failed to decode" in proc.stderr
    assert not (ws / "features" / SMALL / "bad.h5").exists()
    run_cli(*base, "--max-bad-tiles", "0.5")
    rec = json.loads((ws / "ledger" / "extract" / "bad.json").read_text())
    assert rec["status"] == "done" and rec["n_bad_tiles"] == 1
    feats, coords, _ = read_features(ws / "features" / SMALL / "bad.h5")
    assert [x, y] not in coords.tolist() and len(feats) == len(coords)


def test_clam_and_trident_coordinate_files(workspace, slide_dir, checkpoint, tmp_path):
    ours = read_tile_file(workspace / "tiles" / "slide_0.h5")
    clam, trident = tmp_path / "clam", tmp_path / "trident"
    for folder, attrs in [
        (clam, {"patch_level": ours.level, "patch_size": ours.read_size,
                "downsample": [4.0, 4.0], "name": "slide_0"}),
        (trident, {"patch_size": 224, "patch_size_level0": ours.size_level0, "overlap": 0,
                   "level0_magnification": 40, "target_magnification": 10}),
    ]:
        folder.mkdir()
        with h5py.File(folder / "slide_0.h5", "w") as f:
            ds = f.create_dataset("coords", data=ours.coords)
            for k, v in attrs.items():
                ds.attrs[k] = v
    ref = read_features(workspace / "features" / SMALL / "slide_0.h5")[0]  # fp32
    for folder, fmt in [(clam, "clam"), (trident, "trident")]:
        ws = tmp_path / f"ws_{fmt}"
        run_cli("extract", slide_dir / "slide_0.tif", "--out", ws, "--tiles", folder,
                "--encoder", SMALL, "--weights", checkpoint, "--workers", "0",
                "--precision", "fp32")
        feats, coords, attrs = read_features(ws / "features" / SMALL / "slide_0.h5")
        assert attrs["tile_format"] == fmt
        np.testing.assert_array_equal(coords, ours.coords)
        np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)


def test_empty_tile_file_gives_an_empty_bag(tmp_path, checkpoint):
    src = tmp_path / "tiny.tif"
    write_synthetic_slide(src, 1024, 768, seed=1, downsamples=(1, 4))
    ws = tmp_path / "ws"
    run_cli("tile", src, "--out", ws, "--mpp", "2.0")  # a 2048-px tile cannot fit
    run_cli("extract", src, "--out", ws, "--encoder", SMALL, "--weights", checkpoint)
    feats, coords, _ = read_features(ws / "features" / SMALL / "tiny.h5")
    assert feats.shape[0] == 0 and coords.shape == (0, 2)


def test_auto_precision_on_cpu_is_bf16_where_native_and_close_to_fp32(workspace, slide_dir,
                                                                      checkpoint, tmp_path):
    from wsi_ncmi.model.device import cpu_has_bf16

    feats = {}
    for precision in ("auto", "fp32"):
        ws = tmp_path / precision
        shutil.copytree(workspace / "tiles", ws / "tiles")
        run_cli("extract", slide_dir / "slide_1.tif", "--out", ws, "--encoder", SMALL,
                "--weights", checkpoint, "--workers", "0", "--device", "cpu",
                "--precision", precision)
        feats[precision], _, attrs = read_features(ws / "features" / SMALL / "slide_1.h5")
        assert attrs["precision"] == precision or precision == "auto"
    ref, feats = feats["fp32"], feats["auto"]
    auto_attrs = read_features(tmp_path / "auto" / "features" / SMALL / "slide_1.h5")[2]
    assert auto_attrs["precision"] == ("bf16" if cpu_has_bf16() else "fp32")
    assert np.linalg.norm(feats - ref) / np.linalg.norm(ref) < 0.02


def test_input_size_is_a_recorded_setting(workspace, slide_dir, checkpoint, tmp_path):
    """``--input-size native`` feeds the tile as cut and N resizes it to N px: the side is in
    the feature file and in its settings key, so a change re-extracts and a repeat does not;
    predict's encoder repeats the recorded side; a bad value is a one-line error."""
    from wsi_ncmi.model.encoders import load_recorded_encoder

    ws = tmp_path / "ws"
    shutil.copytree(workspace / "tiles", ws / "tiles")
    base = ["extract", slide_dir / "slide_0.tif", "--out", ws, "--encoder", SMALL,
            "--weights", checkpoint, "--workers", "0", "--precision", "fp32"]
    path = ws / "features" / SMALL / "slide_0.h5"
    grid = read_tile_file(ws / "tiles" / "slide_0.h5")
    enc = load_encoder(SMALL, weights=checkpoint)
    keys = {}
    for choice, side in (("native", 224), ("96", 96)):
        assert "1 done" in run_cli(*base, "--input-size", choice).stderr
        feats, coords, attrs = read_features(path)
        pre = json.loads(attrs["preprocessing"])
        assert pre["input_size"] == side
        assert attrs["resize"] == ("none" if side == grid.read_size else "cv2.INTER_AREA")
        keys[choice] = attrs["extract_key"]
        reader = TileReader(slide_dir / "slide_0.tif",
                            ReadSpec(grid.level, grid.read_size, 4.0 ** grid.level, side))
        x = torch.from_numpy(np.stack([reader.read_tile(*c) for c in coords[:3]]))
        x = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) \
            / torch.tensor(pre["std"]).view(1, 3, 1, 1)
        with torch.inference_mode():
            np.testing.assert_allclose(feats[:3], enc.model(x).numpy(), rtol=1e-4, atol=1e-5)
    assert keys["native"] != keys["96"]
    assert "1 already complete" in run_cli(*base, "--input-size", "96").stderr
    settings = {"encoder": SMALL, "weights_sha256": file_sha256(checkpoint),
                "preprocessing": json.loads(attrs["preprocessing"]),
                "tiling": json.loads(attrs["tiling"])}
    assert load_recorded_encoder(settings, checkpoint).spec.input_size == 96
    proc = run_cli(*base, "--input-size", "huge", check=False)
    assert proc.returncode == 2 and "--input-size 'huge'" in proc.stderr
