"""No output carries a slide's label: on a BRACS-style tree, where the folder path itself holds
the group and subtype (``train/Group_MT/Type_IC/BRACS_7.svs``), nothing that tile, extract,
train, eval, heatmap and predict write — provenance records and ledgers included — contains
such a folder name, and ``verify --slide-root`` still checks every slide."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from cli import run_cli

from wsi_ncmi.model.encoders import save_seeded_checkpoint
from wsi_ncmi.slides.synthetic import write_synthetic_slide

REPO = Path(__file__).resolve().parents[1]
# split → (group, subtype) of each slide; the lesion makes the groups tell apart a little
TREE = {"train": [("BT", "N"), ("BT", "UDH"), ("AT", "FEA"), ("AT", "ADH"), ("MT", "DCIS"),
                  ("MT", "IC")],
        "val": [("BT", "PB"), ("AT", "ADH"), ("MT", "IC")],
        "test": [("BT", "N"), ("AT", "FEA"), ("MT", "DCIS")]}
LESION = {"BT": None, "AT": "glands", "MT": "dense"}


@pytest.fixture(scope="module")
def bracs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bracs")
    n = 0
    for split, slides in TREE.items():
        for group, subtype in slides:
            folder = root / "BRACS_WSI" / split / f"Group_{group}" / f"Type_{subtype}"
            folder.mkdir(parents=True, exist_ok=True)
            write_synthetic_slide(folder / f"BRACS_{n}.svs", 1200, 900, mpp=0.25, seed=n,
                                  lesion=LESION[group], lesion_um=120 if LESION[group] else None,
                                  format="svs", downsamples=(1, 4))
            n += 1
    return root


def outputs_with_labels(folder: Path) -> list[str]:
    """Files under ``folder`` whose bytes (HDF5 attributes included) name a BRACS folder."""
    return [str(p) for p in folder.rglob("*") if p.is_file()
            and (b"Group_" in p.read_bytes() or b"Type_" in p.read_bytes())]


def test_no_output_names_a_label_folder(bracs, tmp_path):
    tree, out = bracs / "BRACS_WSI", tmp_path / "out"
    manifest = tmp_path / "bracs.csv"
    run_cli("manifest", "bracs", tree, "--out", manifest)
    df = pd.read_csv(manifest)
    assert df["path"].str.contains("Group_").all()  # the input does carry labels
    ws, run = out / "ws", out / "run"
    common = ["--manifest", manifest, "--slide-root", tree, "--out", ws]
    run_cli("tile", *common, "--mpp", "1.0", "--tile-size", "32")
    save_seeded_checkpoint("test_resnet", tmp_path / "enc.safetensors", seed=0)
    run_cli("extract", *common, "--encoder", "test_resnet", "--weights",
            tmp_path / "enc.safetensors", "--workers", "0")
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("model: {embed_dim: 8, attn_dim: 8}\noptim: {epochs: 3, batch_size: 3}\n"
                    "device: cpu\n")
    run_cli("train", "--features", ws / "features" / "test_resnet", "--manifest", manifest,
            "--config", REPO / "configs" / "bracs_3class.yaml", "--config", tiny, "--out", run)
    run_cli("eval", run, "--n-boot", "20", "--heatmaps", "2", "--slide-root", tree)
    slide = next(tree.glob("test/Group_MT/Type_*/*.svs"))
    run_cli("heatmap", run, slide.stem, "--slide", slide, "--out", out / "heatmap")
    run_cli("predict", "--model", run, slide, tree / "test" / "Group_BT", "--out",
            out / "predict", "--workers", "0")
    assert outputs_with_labels(out) == []
    verified = run_cli("verify", out, "--slide-root", tree)
    assert "not checked" not in verified.stderr and "0 problem(s)" in verified.stderr
    unchecked = run_cli("verify", out)
    assert "pass --slide-root DIR to check them" in unchecked.stderr
