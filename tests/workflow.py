"""Running the Snakemake workflow (pipelines/) in a subprocess, for tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
# A CPU-only test machine with 2 cores: one thread per job, two GPU-class jobs at once.
LOCAL = ["--profile", str(PIPELINES / "profiles" / "local"), "--cores", "2",
         "--set-threads", "extract=1", "train=1", "eval=1", "predict_slide=1",
         "--resources", "gpu=2"]


def snakemake(workdir: Path, *args: str, env: dict | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Run snakemake in ``workdir`` (relative paths in the configs are relative to it)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(PIPELINES / "Snakefile"), *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout,
                          env=env)


def job_counts(output: str) -> dict[str, int]:
    """Rule → job count from the "Job stats" table Snakemake prints before running."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}
