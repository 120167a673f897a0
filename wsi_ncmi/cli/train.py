"""``wsi-ncmi train``: feature files + manifest → a run folder with one model per fold."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import VerboseOption, fail, setup_logging


@app.command()
def train(
    features: Annotated[Path, typer.Option(
        help="Folder of feature files <slide_id>.h5 (WORKSPACE/features/<encoder>/; ours, "
        "CLAM's or TRIDENT's).")],
    manifest: Annotated[Path, typer.Option(
        help="CSV with slide_id, patient_id and the label column (optional split, group).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder to write (reuses its "
                                      "splits.json when present).")],
    loss: Annotated[str | None, typer.Option(
        help="ncmi | ce | label_smoothing | focal | cmi_ce | opl | squentropy | square | "
        "supcon (default: the config's loss.name, else ncmi).")] = None,
    config: Annotated[list[Path] | None, typer.Option(
        metavar="YAML", help="YAML config; repeat to deep-merge several (later files win).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (integer; default: the "
                                             "config's, else 0).")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="Train once per seed, e.g. 0,1,2,3,4, into OUT/seed_<s>/ on the same splits "
        "(made with split.seed, else the config's seed); excludes --seed.")] = None,
    folds: Annotated[int | None, typer.Option(
        help="Patient-grouped stratified K-fold cross-validation with this many folds "
        "(count).")] = None,
    split_column: Annotated[str | None, typer.Option(
        help="Manifest column holding train/val/test (one fold).")] = None,
    group_column: Annotated[str | None, typer.Option(
        help="Leave-one-group-out over this manifest column (centre, scanner).")] = None,
    verbose: VerboseOption = False,
) -> None:
    """Train the attention-MIL aggregator with the chosen loss on every fold."""
    from ..errors import InputError
    from ..formats.config import load_config
    from ..formats.seedruns import parse_seeds
    from ..stages.multiseed import train_seeds
    from ..stages.train import train_run

    setup_logging(verbose)
    try:
        chosen = [name for name, value in (("--folds", folds), ("--split-column", split_column),
                                           ("--group-column", group_column))
                  if value is not None]
        if len(chosen) > 1:
            raise InputError(f"choose one split: {' or '.join(chosen)}")
        if seed is not None and seeds is not None:
            raise InputError("choose --seed or --seeds")
        overrides: dict = {}
        if loss is not None:
            overrides["loss"] = {"name": loss}
        if seed is not None:
            overrides["seed"] = seed
        if folds is not None:
            overrides["split"] = {"method": "kfold", "k": folds}
        elif split_column is not None:
            overrides["split"] = {"method": "column", "column": split_column}
        elif group_column is not None:
            overrides["split"] = {"method": "logo", "group_column": group_column}
        config_files = list(config or [])
        raw = load_config(config_files, overrides)
        if seeds is not None:
            run = train_seeds(raw, out, features, manifest, parse_seeds(seeds),
                              config_files=config_files)
        else:
            run = train_run(raw, out, features, manifest, config_files=config_files)
    except InputError as exc:
        fail(exc)
    typer.echo(f"run written to {run}", err=True)

