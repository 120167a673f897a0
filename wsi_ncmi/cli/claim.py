"""``wsi-ncmi claim``: one loss against the best baseline, every loss tuned with one budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import VerboseOption, fail, setup_logging


@app.command()
def claim(
    runs: Annotated[Path, typer.Argument(
        metavar="RUNS", help="Folder of multi-seed runs, one per loss: RUNS/<loss>/ (train "
        "--seeds with the loss's best.yaml, then eval).")],
    tune: Annotated[Path, typer.Option(
        help="Folder of tune folders, one per loss: TUNE/<loss>/trials.csv.")],
    loss: Annotated[str, typer.Option(help="The claimed loss (e.g. ncmi).")] = "ncmi",
    losses: Annotated[str | None, typer.Option(
        help="Comma-separated losses to include (default: every folder in RUNS).")] = None,
    split: Annotated[str, typer.Option(help="Evaluated split: train | val | test.")] = "test",
    head: Annotated[list[str] | None, typer.Option(
        help="own | linear_probe | centroid | classifier; repeat for several (default: own "
        "and linear_probe). own = each loss's validation head.")] = None,
    fold: Annotated[int, typer.Option(
        help="Outer fold the tunes searched on (kfold/logo splits: only its test slides are "
        "scored).")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for claim.csv and claim.md.")
                   ] = Path("claim"),
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples of patients (count).")
                      ] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed (integer).")] = 0,
    verbose: VerboseOption = False,
) -> None:
    """The claimed loss against the baseline with the best validation score: test macro-F1
    and AUC of every loss over seeds, and the seed-paired difference."""
    from ..errors import InputError
    from ..model.lossnames import LOSS_NAMES
    from ..stages.claim import claim_table

    setup_logging(verbose)
    try:
        if not Path(runs).is_dir():
            raise InputError(f"{runs}: folder of runs not found")
        names = ([n.strip() for n in losses.split(",") if n.strip()] if losses else
                 sorted(p.name for p in Path(runs).iterdir() if p.is_dir()))
        unknown = [n for n in names if n not in LOSS_NAMES]
        if unknown:
            raise InputError(f"{runs}: {', '.join(map(repr, unknown))} is not a loss "
                             f"(expected some of {', '.join(LOSS_NAMES)})")
        result = claim_table({n: Path(runs) / n for n in names},
                             {n: Path(tune) / n for n in names}, loss, out, split,
                             head or ["own", "linear_probe"], fold, n_boot, seed)
    except InputError as exc:
        fail(exc)
    typer.echo(result.text)
    typer.echo(f"wrote {', '.join(map(str, result.paths))}")
