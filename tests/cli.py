"""The one way tests run the ``wsi-ncmi`` command line: the real typer application, in this
process (fast: torch is imported once). Tests about processes themselves (a kill mid-run,
what a fresh interpreter imports) start ``CLI`` as a subprocess instead."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from typer.testing import CliRunner

from wsi_ncmi.cli import app

#: the command line as a subprocess (``python -m wsi_ncmi``)
CLI = [sys.executable, "-m", "wsi_ncmi"]


@dataclass
class CliResult:
    """Exit status and what the command printed (``output``: both streams)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args, check: bool = True) -> CliResult:
    """Run ``wsi-ncmi ARGS…``; with ``check``, fail with its output on a non-zero exit."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    out = CliResult(result.exit_code, result.stdout, result.stderr)
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out
