"""The one-line errors a user meets when a command gets the wrong folder: every command that
reads a run says the same thing, and names the run folders when given their parent; a missing
feature file names the option that sets where features are looked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli import run_cli

TASK = {"name": "t", "label_column": "label", "classes": ["a", "b"]}


def fake_run(folder: Path, features_dir: Path) -> Path:
    """The two files that make a folder a run (enough for the checks made before any model
    is loaded)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"task": TASK, "data": {"features_dir": str(features_dir),
                                "manifest": str(folder / "manifest.csv")}}))
    (folder / "splits.json").write_text(json.dumps(
        {"method": "column", "folds": [{"fold": 0, "train": ["s1"], "val": [], "test": ["s2"]}]}))
    return folder


@pytest.fixture
def runs(tmp_path) -> Path:
    for name in ("ncmi", "ce"):
        fake_run(tmp_path / "runs" / name, tmp_path / "features")
    return tmp_path / "runs"


@pytest.mark.parametrize("command", ["predict", "eval", "heatmap", "compare"])
def test_a_folder_of_runs_is_named_as_such_by_every_command(runs, tmp_path, command):
    slide = tmp_path / "s2.tif"
    slide.write_bytes(b"")
    args = {"predict": ["predict", "--model", runs, slide, "--out", tmp_path / "out"],
            "eval": ["eval", runs],
            "heatmap": ["heatmap", runs, "s2", "--slide", slide],
            "compare": ["compare", runs, runs / "ce", "--out", tmp_path / "cmp"]}[command]
    out = run_cli(*args, check=False)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"error: {runs} is not a run folder but holds run folders "
                                  f"ce, ncmi: pass one of them, e.g. {runs / 'ce'}")


def test_a_folder_that_is_no_run_gets_the_same_line_everywhere(tmp_path):
    (tmp_path / "empty").mkdir()
    lines = {run_cli(*args, check=False).stderr.strip() for args in (
        ["eval", tmp_path / "empty"],
        ["predict", "--model", tmp_path / "empty", tmp_path, "--out", tmp_path / "o"],
        ["heatmap", tmp_path / "empty", "s2", "--slide", tmp_path / "s2.tif"])}
    assert len(lines) == 1
    assert lines.pop() == (f"error: {tmp_path / 'empty'}: not a run folder (no config.yaml "
                           "nor splits.json; is it a folder written by `wsi-ncmi train`?)")


@pytest.mark.parametrize("given", [False, True])
def test_heatmap_without_features_names_the_option(tmp_path, given):
    run = fake_run(tmp_path / "run", tmp_path / "recorded_features")
    extra = ["--features-dir", tmp_path / "elsewhere"] if given else []
    out = run_cli("heatmap", run, "s2", "--slide", tmp_path / "s2.tif", *extra, check=False)
    assert out.returncode == 2
    folder = tmp_path / ("elsewhere" if given else "recorded_features")
    assert out.stderr.startswith(f"error: {folder / 's2.h5'}: feature file not found")
    assert "pass --features-dir FOLDER holding s2.h5" in out.stderr
    assert ("from --features-dir" if given else "data.features_dir of RUN/config.yaml") \
        in out.stderr
