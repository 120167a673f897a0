"""Helpers shared by the commands: logging set-up and how a batch ends."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError

# Options shared by the per-slide commands (tile, extract, predict).
Inputs = Annotated[list[str] | None, typer.Argument(
    metavar="SLIDES", help="Slide files, folders (searched recursively) or glob patterns.")]
ManifestOption = Annotated[Path | None, typer.Option(
    "--manifest", help="CSV with slide_id, path (relative to --slide-root) and optional mpp "
    "(µm/px); replaces INPUTS.")]
SlideRootOption = Annotated[Path | None, typer.Option(
    "--slide-root", help="Folder the manifest's paths are relative to (default: the "
    "manifest's folder).")]
ShardOption = Annotated[str | None, typer.Option(
    "--shard", help="Process only shard I of N (I/N, 0-based), partitioned by slide id.")]
# Every command's --verbose: a flag (no value, no --no-verbose), the same words everywhere.
VerboseOption = Annotated[bool, typer.Option(
    "--verbose", help="Also log wsi-ncmi's debug lines (tracebacks of failed slides, "
    "skipped steps); other libraries stay at warnings.")]

#: the project's logger; every module logs to it or to a child of it
PROJECT_LOGGER = "wsi_ncmi"


def setup_logging(verbose: bool = False) -> None:
    """Plain timestamped lines on the current stderr (replacing earlier handlers, so a command
    run in-process writes where that run's stderr is). The project's logger logs at INFO, at
    DEBUG with ``--verbose``; every other logger stays at WARNING, so ``--verbose`` does not
    bring matplotlib's font search or PIL's PNG chunks."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger(PROJECT_LOGGER).setLevel(logging.DEBUG if verbose else logging.INFO)


def fail(exc: InputError) -> None:
    """Print a one-line error and exit with status 2 (bad usage or input)."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def finish_batch(summary) -> None:
    """Print a batch summary; exit 1 when any slide failed (after all were attempted)."""
    typer.echo(summary.text(), err=True)
    if not summary.ok:
        raise typer.Exit(1)

