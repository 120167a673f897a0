"""Helpers shared by the commands: logging set-up and how a batch ends."""

from __future__ import annotations

import logging
import sys

import typer

from ..errors import InputError


def setup_logging(verbose: bool = False) -> None:
    """Plain timestamped lines on stderr; DEBUG with ``--verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def fail(exc: InputError) -> None:
    """Print a one-line error and exit with status 2 (bad usage or input)."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def finish_batch(summary) -> None:
    """Print a batch summary; exit 1 when any slide failed (after all were attempted)."""
    typer.echo(summary.text(), err=True)
    if not summary.ok:
        raise typer.Exit(1)
