"""Slide ids that try to leave their folder (``../../escape``, ``sub/dir``) are refused by every
command before any file is touched, and the rest of the batch goes on (predict: in
tests/test_predict.py, which has a trained run)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from cli import run_cli

from wsi_ncmi.model.encoders import save_seeded_checkpoint
from wsi_ncmi.slides.synthetic import write_synthetic_slide

HOSTILE = ["../../escape", "sub/dir"]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """``root/data/slides/ok.tif`` and a manifest naming it three times: as ``ok`` and under
    the hostile ids. Everything a command writes must stay under ``root/data``."""
    root = tmp_path_factory.mktemp("hostile")
    folder = root / "data" / "slides"
    folder.mkdir(parents=True)
    write_synthetic_slide(folder / "ok.tif", 1024, 768, seed=1, lesion="dense",
                          downsamples=(1, 4))
    pd.DataFrame({"slide_id": ["ok", *HOSTILE], "path": ["ok.tif"] * 3, "label": ["a"] * 3,
                  "patient_id": ["p0", "p1", "p2"]}).to_csv(root / "data" / "manifest.csv",
                                                            index=False)
    save_seeded_checkpoint("test_resnet", root / "data" / "enc.safetensors", seed=0)
    return root


def assert_only_under_data(root: Path) -> None:
    outside = {p for p in files_under(root) if not p.startswith("data/")}
    assert not outside, outside
    assert not any(part in ("sub", "escape", "escape.json", "escape.h5")
                   for p in files_under(root / "data") for part in Path(p).parts)


@pytest.mark.parametrize("command", ["tile", "extract"])
def test_per_slide_commands_refuse_hostile_ids(slides, command):
    data = slides / "data"
    ws = data / f"ws_{command}"
    args = ["--manifest", data / "manifest.csv", "--out", ws]
    if command == "extract":
        run_cli("tile", *args, check=False)
        args += ["--encoder", "test_resnet", "--weights", data / "enc.safetensors",
                 "--workers", "0"]
    result = run_cli(command, *args, check=False)
    assert_only_under_data(slides)
    assert result.returncode == 1
    for sid in HOSTILE:
        assert f"FAILED {sid!r}: " in result.stderr and "not safe as a file name" in result.stderr
    assert {p.name for p in (ws / "ledger" / command).glob("*.json")} == {"ok.json"}


def write_bag(path: Path, rng: np.random.Generator) -> None:
    with h5py.File(path, "w") as f:
        f["features"] = rng.standard_normal((12, 4)).astype(np.float32)
        f["coords"] = np.arange(24, dtype=np.int64).reshape(-1, 2) * 64


def test_train_never_reads_a_feature_file_outside_its_folder(tmp_path):
    rng = np.random.default_rng(0)
    features = tmp_path / "features"
    features.mkdir()
    rows = []
    for i in range(8):
        write_bag(features / f"s{i}.h5", rng)
        rows.append({"slide_id": f"s{i}", "label": "ab"[i % 2], "patient_id": f"p{i}",
                     "split": "train" if i < 6 else "test"})
    write_bag(tmp_path / "outside.h5", rng)  # what ../outside would reach
    rows.append({"slide_id": "../outside", "label": "a", "patient_id": "px", "split": "train"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    result = run_cli("train", "--features", features, "--manifest", tmp_path / "m.csv",
                     "--out", tmp_path / "run", "--loss", "ce", check=False)
    assert result.returncode == 2
    assert "'../outside' is not safe as a file name" in result.output
    assert not (tmp_path / "run").exists()


def test_eval_and_heatmap_refuse_a_hostile_id_before_writing(tmp_path):
    rng = np.random.default_rng(1)
    features = tmp_path / "features"
    features.mkdir()
    rows = []
    for i in range(8):
        write_bag(features / f"s{i}.h5", rng)
        rows.append({"slide_id": f"s{i}", "path": f"s{i}.tif", "label": "ab"[i % 2],
                     "patient_id": f"p{i}", "split": ["train", "train", "val", "test"][i % 4]})
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    run = tmp_path / "run"
    run_cli("train", "--features", features, "--manifest", manifest, "--out", run, "--loss",
            "ce", "--config", _tiny_config(tmp_path))
    splits = json.loads((run / "splits.json").read_text())
    splits["folds"][0]["test"].append("../outside")
    (run / "splits.json").write_text(json.dumps(splits))
    pd.DataFrame([*rows, {"slide_id": "../outside", "path": "x.tif", "label": "a",
                          "patient_id": "px", "split": "test"}]).to_csv(manifest, index=False)
    before = files_under(tmp_path)
    result = run_cli("eval", run, "--heatmaps", "3", check=False)
    assert result.returncode == 2 and "'../outside' is not safe" in result.output
    result = run_cli("heatmap", run, "../outside", "--slide", tmp_path / "x.tif", check=False)
    assert result.returncode == 2 and "'../outside' is not safe" in result.output
    assert files_under(tmp_path) == before


def _tiny_config(folder: Path) -> Path:
    path = folder / "tiny.yaml"
    path.write_text("model: {embed_dim: 4, attn_dim: 4}\noptim: {epochs: 2, batch_size: 2}\n"
                    "device: cpu\n")
    return path
