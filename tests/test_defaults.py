"""One source of defaults: the Snakemake workflow and the command line tile a cohort the same
way. ``pipelines/config.yaml`` leaves every command setting null (= the command's default,
read from the command line itself), and the command line's defaults are the library's."""

from __future__ import annotations

import inspect
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml
from cli import run_cli

from wsi_ncmi.cli.defaults import command_defaults
from wsi_ncmi.slides.synthetic import write_synthetic_slide
from wsi_ncmi.slides.tissue import TissueSettings
from wsi_ncmi.stages.compare import compare_runs
from wsi_ncmi.stages.evaluate import evaluate_run
from wsi_ncmi.stages.extract import ExtractConfig
from wsi_ncmi.stages.predict import PredictConfig
from wsi_ncmi.stages.tile import TileConfig

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
COMMAND_SECTIONS = ("tile", "extract", "eval", "compare", "predict")


def workflow_defaults() -> dict:
    return yaml.safe_load((PIPELINES / "config.yaml").read_text())


@pytest.mark.parametrize("command", COMMAND_SECTIONS)
def test_the_workflow_config_leaves_every_command_setting_to_the_command(command):
    section = workflow_defaults()[command]
    options = command_defaults(command)
    assert set(section) <= set(options), f"{command}: not options: {set(section) - set(options)}"
    assert {k: v for k, v in section.items() if v is not None} == {}


def _signature_defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_command_line_defaults_are_the_library_defaults():
    tile, tissue = TileConfig(), TissueSettings()
    assert {k: command_defaults("tile")[k] for k in
            ("mpp", "tile_size", "overlap", "min_tissue", "level_tolerance", "seg_mpp",
             "fallback_mpp")} == {
        "mpp": tile.target_mpp, "tile_size": tile.tile_size, "overlap": tile.overlap,
        "min_tissue": tile.min_tissue, "level_tolerance": tile.level_tolerance,
        "seg_mpp": tissue.seg_mpp, "fallback_mpp": tile.fallback_mpp}
    extract = command_defaults("extract")
    assert extract["workers"] is None  # None = ExtractConfig's cores-dependent default
    for f in fields(ExtractConfig):
        if f.name in extract and f.name != "workers":
            assert extract[f.name] == f.default, f.name
    predict = command_defaults("predict")
    for f in fields(PredictConfig):
        if f.name == "review":  # --review/--no-review, --review-mpp, --review-max-mb
            assert predict["review"] is (f.default is not None)
            assert predict["review_mpp"] == f.default.finest_mpp
            assert round(predict["review_max_mb"] * 2**20) == f.default.max_bytes
        elif f.name in predict:
            assert predict[f.name] == f.default, f.name
    for command, function in (("eval", evaluate_run), ("compare", compare_runs)):
        options = command_defaults(command)
        for name, default in _signature_defaults(function).items():
            if name == "review":  # a flag on the command line, the settings or None in the library
                assert options[name] is (default is not None), f"{command} --{name}"
            elif name in options:
                assert options[name] == default, f"{command} --{name}"


def test_workflow_and_command_line_tile_a_slide_the_same_way(tmp_path):
    pytest.importorskip("snakemake")
    slides = tmp_path / "slides"
    slides.mkdir()
    write_synthetic_slide(slides / "s0.tif", 2048, 1536, mpp=0.25, seed=0, lesion="dense",
                          downsamples=(1, 4, 16))
    pd.DataFrame({"slide_id": ["s0"], "path": ["s0.tif"], "label": ["a"],
                  "patient_id": ["p0"]}).to_csv(tmp_path / "manifest.csv", index=False)
    (tmp_path / "cohort.yaml").write_text(yaml.safe_dump({
        "manifest": "manifest.csv", "slide_root": "slides", "workspace": "snake",
        "train": {"loss_config": None}}))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(PIPELINES / "Snakefile"), "tiles",
         "--configfile", "cohort.yaml", "--cores", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_cli("tile", slides / "s0.tif", "--out", tmp_path / "cli")

    def tiling(workspace: Path) -> dict:
        with h5py.File(tmp_path / workspace / "tiles" / "s0.h5") as f:
            attrs = dict(f["coords"].attrs)
            return {k: attrs[k] for k in ("settings_key", "seg_mpp", "target_mpp",
                                          "tile_size", "n_tiles")}

    assert tiling(Path("snake")) == tiling(Path("cli"))
