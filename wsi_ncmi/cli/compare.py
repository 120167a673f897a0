"""``wsi-ncmi compare``: evaluated runs side by side, with paired bootstrap differences."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import VerboseOption, fail, setup_logging


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(metavar="RUNS",
                                               help="Two or more evaluated run folders.")],
    split: Annotated[str, typer.Option(help="Evaluated split to compare: train | val | test.")
                     ] = "test",
    head: Annotated[str, typer.Option(help="linear_probe | centroid | classifier.")
                    ] = "linear_probe",
    out: Annotated[Path, typer.Option(help="Folder for comparison.csv, differences.csv and "
                                      "comparison.md.")] = Path("comparison"),
    n_boot: Annotated[int, typer.Option(help="Paired bootstrap resamples (count).")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed (integer).")] = 0,
    verbose: VerboseOption = False,
) -> None:
    """Runs side by side on one head, with paired bootstrap differences in macro-F1 and AUC."""
    from ..errors import InputError
    from ..stages.compare import compare_runs

    setup_logging(verbose)
    try:
        result = compare_runs(runs, out, split, head, n_boot, seed)
    except InputError as exc:
        fail(exc)
    typer.echo(result.text)
    typer.echo(f"wrote {', '.join(map(str, result.paths))}")
