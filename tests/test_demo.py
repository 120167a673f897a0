"""The demo end to end at a reduced size: every number it prints is the one on disk."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys


def test_demo_table_matches_metrics_files(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "wsi_ncmi", "demo", "--out", str(out), "--slides", "12",
         "--epochs", "4", "--n-boot", "100", "--slide-width-mm", "1.2", "1.4"],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "seeded RANDOM initialisation" in proc.stderr
    rows = re.findall(r"^(ncmi|ce)\s+(linear_probe|centroid|classifier)\s+(.+)$",
                      proc.stdout, re.M)
    assert {(loss, head) for loss, head, _ in rows} >= {
        ("ncmi", "linear_probe"), ("ncmi", "centroid"), ("ce", "linear_probe"),
        ("ce", "centroid"), ("ce", "classifier")}
    for loss, head, cells in rows:
        metrics = json.loads((out / "runs" / loss / "eval" / "test" / "metrics.json").read_text())
        printed = re.findall(r"(n/a|[\d.]+ \[[\d.]+, [\d.]+\]|[\d.]+)", cells)
        for key, text in zip(("macro_f1", "auc_macro", "balanced_accuracy"), printed,
                             strict=True):
            m = metrics["heads"][head][key]
            if m["value"] is None:
                assert text == "n/a"
                continue
            value, lo, hi = (float(v) for v in re.findall(r"[\d.]+", text))
            assert value == round(m["value"], 3) and lo == round(m["ci95"][0], 3)
            assert hi == round(m["ci95"][1], 3)
    for loss in ("ncmi", "ce"):
        ncmi = json.loads((out / "runs" / loss / "eval" / "test" / "metrics.json").read_text())
        line = re.search(rf"^{loss}: NCMI (\S+)\s+CMI (\S+)\s+Γ (\S+)", proc.stdout, re.M)
        assert line, proc.stdout
        assert float(line.group(1)) == float(f"{ncmi['ncmi']['ncmi']:.4g}")
        assert float(line.group(3)) == float(f"{ncmi['ncmi']['gamma']:.4g}")
    assert (out / "comparison" / "comparison.md").is_file()
    assert list((out / "workspace" / "previews").glob("*.png"))
    for loss in ("ncmi", "ce"):
        heatmaps = list((out / "runs" / loss / "eval" / "test" / "heatmaps").glob("*.png"))
        assert heatmaps and all(f"{loss} heatmap {p}" in proc.stdout for p in heatmaps)
    # the next steps the demo prints, run as printed: predict, then verify with every slide
    commands = re.findall(r"^  (wsi-ncmi (?:predict|verify) .+)$", proc.stdout, re.M)
    assert [c.split()[1] for c in commands] == ["predict", "verify"], proc.stdout
    for command in commands:
        step = subprocess.run([sys.executable, "-m", "wsi_ncmi", *shlex.split(command)[1:]],
                              capture_output=True, text=True)
        assert step.returncode == 0, step.stderr[-3000:]
    assert (out / "predict" / "predictions.csv").is_file()
    assert "not checked" not in step.stderr and "0 problem(s)" in step.stderr
