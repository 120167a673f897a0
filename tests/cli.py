"""Running the real ``wsi-ncmi`` command line in a subprocess, for tests."""

from __future__ import annotations

import subprocess
import sys

CLI = [sys.executable, "-m", "wsi_ncmi"]


def run_cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``wsi-ncmi ARGS…``; with ``check``, fail with its output on a non-zero exit."""
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
