"""``wsi-ncmi verify``: re-check provenance records against the files on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import VerboseOption, fail, setup_logging


@app.command()
def verify(
    target: Annotated[Path, typer.Argument(
        metavar="DIR_OR_RECORD", help="A provenance record (.json), or a folder whose records "
        "(*.json there and in provenance/) are all checked.")],
    verbose: VerboseOption = False,
) -> None:
    """Re-fingerprint every input and output of a record; exit 1 if any drifted or is missing."""
    from ..errors import InputError
    from ..stages.provenance import find_records, read_record, verify_record

    setup_logging(verbose)
    try:
        records = find_records(target)
        results = []
        for path in records:
            record = read_record(path)
            n_files = len(record.get("inputs", [])) + len(record.get("outputs", []))
            results.append((path, n_files, verify_record(path)))
    except InputError as exc:
        fail(exc)
    problems = 0
    for path, n_files, found in results:
        for line in found:
            typer.echo(f"{path}: {line}")
        problems += len(found)
        status = "ok" if not found else f"{len(found)} problem(s)"
        typer.echo(f"{path}: {n_files} file(s) checked, {status}", err=True)
    if problems:
        raise typer.Exit(1)
