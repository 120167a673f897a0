"""The Snakemake workflow (pipelines/): real local runs on generated slides, a SLURM dry run,
and reruns after a failed slide that redo only what is missing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytest.importorskip("snakemake")

from workflow import LOCAL, PIPELINES, job_counts, snakemake  # noqa: E402

from wsi_ncmi.model.encoders import save_seeded_checkpoint  # noqa: E402
from wsi_ncmi.slides.synthetic import write_synthetic_slide  # noqa: E402

# slide id, file name, label, split, lesion; s2's file name differs from its id and its file
# has no µm/px (the manifest gives it).
SLIDES = [("s0", "s0.tif", "negative", "train", None),
          ("s1", "s1.tif", "positive", "train", "dense"),
          ("s2", "scan_0002.tif", "positive", "test", "glands"),
          ("s3", "s3.tif", "negative", "test", None)]


def write_slide(folder: Path, index: int) -> None:
    sid, name, _, _, lesion = SLIDES[index]
    write_synthetic_slide(folder / name, 1024, 768, mpp=None if sid == "s2" else 0.25,
                          seed=index, lesion=lesion, downsamples=(1, 4))


@pytest.fixture
def cohort(tmp_path) -> Path:
    """A workflow folder: 4 small slides (s3's file is not a slide), a tiny encoder checkpoint,
    a manifest, a 2-epoch training config and the workflow config `cohort.yaml`."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(3):
        write_slide(slides, i)
    (slides / "s3.tif").write_bytes(b"not a slide")
    save_seeded_checkpoint("test_resnet", tmp_path / "encoder.safetensors", seed=3)
    pd.DataFrame({"slide_id": [s[0] for s in SLIDES], "path": [s[1] for s in SLIDES],
                  "label": [s[2] for s in SLIDES], "patient_id": [f"p{s[0]}" for s in SLIDES],
                  "split": [s[3] for s in SLIDES],
                  "mpp": ["", "", "0.25", ""]}).to_csv(tmp_path / "manifest.csv", index=False)
    train = {"task": {"name": "tiny", "classes": ["negative", "positive"]},
             "split": {"method": "column", "column": "split"},
             "model": {"embed_dim": 8, "attn_dim": 8},
             "optim": {"epochs": 2, "batch_size": 2}, "device": "cpu"}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(train))
    config = {"manifest": "manifest.csv", "slide_root": "slides", "workspace": "ws",
              # the slides are 256 × 192 µm: a 16 µm/px overview (the default) is too coarse
              "tile": {"mpp": 1.0, "tile_size": 64, "seg_mpp": 8.0},
              "extract": {"encoder": "test_resnet", "weights": "encoder.safetensors",
                          "device": "cpu"},
              "train": {"configs": ["tiny.yaml"], "loss_config": None,
                        "losses": ["ncmi", "ce"]},
              "eval": {"n_boot": 20, "device": "cpu"}, "compare": {"n_boot": 20}}
    (tmp_path / "cohort.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def mtimes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


def test_failed_slide_fails_alone_and_a_rerun_tiles_only_that_slide(cohort):
    ws = cohort / "ws"
    first = snakemake(cohort, "tiles", "--configfile", "cohort.yaml", *LOCAL)
    assert first.returncode != 0
    assert job_counts(first.stderr)["tile"] == 4
    done = [ws / "tiles" / f"s{i}.h5" for i in range(3)]
    assert all(p.is_file() for p in done) and not (ws / "tiles" / "s3.h5").exists()
    ledger = json.loads((ws / "ledger" / "tile" / "s3.json").read_text())
    assert ledger["status"] == "failed" and "s3.tif" in ledger["reason"]
    assert "s3.tif" in (ws / "logs" / "tile" / "s3.log").read_text()
    # s2 was tiled under its manifest id, at the manifest's µm/px (its file has none)
    s2 = json.loads((ws / "ledger" / "tile" / "s2.json").read_text())
    assert s2["status"] == "done" and s2["source"] == "scan_0002.tif"
    assert s2["mpp_source"] == "manifest" and s2["n_tiles"] > 0

    before = mtimes(done)
    write_slide(cohort / "slides", 3)
    second = snakemake(cohort, "tiles", "--configfile", "cohort.yaml", *LOCAL)
    assert second.returncode == 0, second.stderr[-3000:]
    assert job_counts(second.stderr) == {"tile": 1, "tiles": 1}
    assert mtimes(done) == before
    assert (ws / "tiles" / "s3.h5").is_file()
    third = snakemake(cohort, "tiles", "--configfile", "cohort.yaml", *LOCAL)
    assert third.returncode == 0 and "Nothing to be done" in third.stderr


def test_slurm_dry_run_shows_jobs_and_resources(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    (tmp_path / "encoder.safetensors").write_bytes(b"")
    (tmp_path / "manifest.csv").write_text(
        "slide_id,path,label,patient_id,split\n"
        + "".join(f"s{i},s{i}.svs,{'ab'[i % 2]},p{i},{'train' if i < 2 else 'test'}\n"
                  for i in range(4)))
    (tmp_path / "cohort.yaml").write_text(yaml.safe_dump({
        "manifest": "manifest.csv",
        "extract": {"encoder": "test_resnet", "weights": "encoder.safetensors"},
        "train": {"configs": [], "loss_config": None, "losses": ["ncmi", "ce"]},
        "predict": {"model": "workspace/runs/ncmi"}}))
    # --cores only lifts the dry run's default of one core, which would cap every job's threads
    proc = snakemake(tmp_path, "all", "predict", "-n", "--profile",
                     str(PIPELINES / "profiles" / "slurm"), "--cores", "64",
                     "--configfile", "cohort.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert job_counts(out) == {"all": 1, "cohort": 1, "slide_row": 4, "tile": 4, "extract": 4,
                               "train": 2, "eval": 2, "compare": 1, "predict_slide": 4,
                               "predict": 1}
    blocks = {}
    for block in re.split(r"\n(?=\[[^\n]*\]\n(?:local)?rule )", out):
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if m:
            blocks.setdefault(m[1], []).append(block)
    assert len(blocks["extract"]) == len(blocks["predict_slide"]) == 4
    for block in blocks["extract"] + blocks["predict_slide"]:
        assert re.search(r"resources: .*\bgpu=1\b", block)
        assert re.search(r"resources: .*slurm_partition=gpu\b", block)
        assert "threads: 8" in block and "--workers $(( 8 - 1 ))" in block
    assert all(re.search(r"resources: .*\bruntime=120\b", b) for b in blocks["extract"])
    for block in blocks["tile"] + blocks["train"] + blocks["eval"] + blocks["predict"]:
        assert "gpu=" not in block and "slurm_partition=cpu" in block
    assert "sbatch" not in out


def test_config_problems_are_listed_together(tmp_path):
    proc = snakemake(tmp_path, "-n", "--config", "tile={mpp: 1.0, tile_sise: 64}")
    assert proc.returncode != 0
    assert "config: unknown key tile.tile_sise" in proc.stdout + proc.stderr
    proc = snakemake(tmp_path, "-n", "--config", "eval={split: holdout}",
                     "train={losses: [ncmi, hinge]}")
    assert proc.returncode != 0
    message = re.search(r"^config: .*$", proc.stdout + proc.stderr, re.M)[0]
    for problem in ("manifest is required", "unknown loss 'hinge'",
                    "train config configs/train_ncmi.yaml not found",
                    "eval.split must be one of train, val, test"):
        assert problem in message


@pytest.mark.slow
def test_workflow_end_to_end_with_a_failed_slide_then_fixed(cohort):
    ws = cohort / "ws"
    first = snakemake(cohort, "--configfile", "cohort.yaml", *LOCAL)
    assert first.returncode != 0
    features = [ws / "features" / "test_resnet" / f"s{i}.h5" for i in range(3)]
    assert all(p.is_file() for p in features)
    assert not (ws / "runs").exists()  # training waits for every cohort slide

    before = mtimes(features + [ws / "tiles" / f"s{i}.h5" for i in range(3)])
    write_slide(cohort / "slides", 3)
    second = snakemake(cohort, "--configfile", "cohort.yaml", *LOCAL)
    assert second.returncode == 0, second.stderr[-3000:]
    counts = job_counts(second.stderr)
    assert {k: counts[k] for k in ("tile", "extract", "train", "eval", "compare")} == {
        "tile": 1, "extract": 1, "train": 2, "eval": 2, "compare": 1}
    assert mtimes(list(before)) == before
    for loss in ("ncmi", "ce"):
        predictions = pd.read_csv(ws / "runs" / loss / "eval" / "test" / "predictions.csv")
        assert set(predictions["slide_id"]) == {"s2", "s3"}
        assert json.loads((ws / "runs" / loss / "splits.json").read_text())["folds"][0][
            "train"] == ["s0", "s1"]
    assert len(pd.read_csv(ws / "comparison" / "test" / "comparison.csv")) == 2

    again = snakemake(cohort, "-n", "--configfile", "cohort.yaml", *LOCAL)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # a new, unlabelled cohort in its own workspace, predicted with the NCMI run just trained
    (cohort / "new.csv").write_text("slide_id,path,mpp\ns2,scan_0002.tif,0.25\ns3,s3.tif,\n")
    (cohort / "predict.yaml").write_text(yaml.safe_dump(
        {"manifest": "new.csv", "workspace": "hospital",
         "predict": {"model": "ws/runs/ncmi", "device": "cpu"}}))
    predicted = snakemake(cohort, "predict", "--configfile", "cohort.yaml", "predict.yaml",
                          *LOCAL)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    counts = job_counts(predicted.stderr)
    assert counts["predict_slide"] == 2 and "tile" not in counts and "train" not in counts
    rows = pd.read_csv(cohort / "hospital" / "predict" / "predictions.csv")
    assert list(rows["slide_id"]) == ["s2", "s3"]
    assert rows[["prob_negative", "prob_positive"]].sum(axis=1).round(6).eq(1).all()
    assert (cohort / "hospital" / "predict" / "heatmaps" / "s3.png").is_file()

    # a deleted feature file: asking for the features redoes that slide only
    (ws / "features" / "test_resnet" / "s1.h5").unlink()
    plan = snakemake(cohort, "-n", "features", "--configfile", "cohort.yaml", *LOCAL)
    assert plan.returncode == 0
    assert job_counts(plan.stdout + plan.stderr) == {"extract": 1, "features": 1}
