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
        metavar="DIR_OR_RECORD", help="A provenance record (.json), or a folder: every record "
        "in it and below it is checked (a workspace, a run folder, the demo's output).")],
    slide_root: Annotated[list[Path] | None, typer.Option(
        metavar="DIR", help="Folder under which the records' slides are found by file name "
        "(records keep no slide folders: they can carry labels); repeat for several; without "
        "it slides are not checked.")] = None,
    verbose: VerboseOption = False,
) -> None:
    """Re-fingerprint every file of the records; exit 1 if any drifted or is missing."""
    from ..errors import InputError
    from ..stages.verify import SlideRoots, find_records, verify_record

    setup_logging(verbose)
    try:
        roots = SlideRoots(slide_root or ())
        results = [verify_record(path, roots) for path in find_records(target)]
    except InputError as exc:
        fail(exc)
    problems = 0
    for result in results:
        for line in result.problems:
            typer.echo(f"{result.record}: {line}")
        problems += len(result.problems)
        status = "ok" if not result.problems else f"{len(result.problems)} problem(s)"
        unchecked = f", {len(result.unchecked)} slide(s) not checked" if result.unchecked else ""
        checked = result.n_files - len(result.unchecked)
        typer.echo(f"{result.record}: {checked} file(s) checked, {status}{unchecked}", err=True)
    if any(r.unchecked for r in results) and not slide_root:
        typer.echo("slides are found by name: pass --slide-root DIR to check them", err=True)
    typer.echo(f"{len(results)} record(s), {problems} problem(s)", err=True)
    if problems:
        raise typer.Exit(1)
