"""``wsi-ncmi tune``: a hyper-parameter search for one loss on validation data only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import VerboseOption, fail, setup_logging


@app.command()
def tune(
    features: Annotated[Path, typer.Option(
        help="Folder of feature files <slide_id>.h5 (only train and val slides are read).")],
    manifest: Annotated[Path, typer.Option(
        help="CSV with slide_id, patient_id, the label column and the split (column) or "
        "what the config's split method needs.")],
    loss: Annotated[str, typer.Option(help="The loss to tune: ncmi | ce | label_smoothing | "
                                      "focal | cmi_ce | opl | squentropy | square | supcon.")],
    trials: Annotated[int, typer.Option(
        help="Finished trials the study should hold (count); a study that has fewer gets "
        "more, one that has them only writes the report.")],
    out: Annotated[Path, typer.Option("--out", help="Tune folder: study.journal, best.yaml, "
                                      "trials.csv, search.png.")],
    config: Annotated[list[Path] | None, typer.Option(
        help="Base YAML config (task, split, and whatever is not searched); repeat to "
        "deep-merge several (later files win).")] = None,
    space: Annotated[Path | None, typer.Option(
        help="Search-space file (default: configs/tune_<loss>.yaml in the current folder).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the TPE sampler (integer).")] = 0,
    worker: Annotated[int, typer.Option(
        help="This worker's number when several share the study (integer; seeds apart).")
    ] = 0,
    fold: Annotated[int | None, typer.Option(
        help="Outer fold to tune on for kfold/logo splits (default 0; its test part is "
        "held out).")] = None,
    stale_after: Annotated[float, typer.Option(
        help="Minutes without a heartbeat after which another machine's running trial is "
        "taken as stopped and retried.")] = 60.0,
    verbose: VerboseOption = False,
) -> None:
    """Search one loss's settings and recipe with Optuna, selecting on validation macro-F1;
    the test split is never read."""
    from ..errors import InputError
    from ..formats.config import load_config
    from ..stages.tune import tune_study

    setup_logging(verbose)
    try:
        config_files = list(config or [])
        space_file = space if space is not None else Path("configs") / f"tune_{loss}.yaml"
        result = tune_study(load_config(config_files, {"loss": {"name": loss}}), out,
                            features, manifest, space_file, trials, seed=seed,
                            worker=worker, fold=fold, stale_after_s=60.0 * stale_after,
                            config_files=config_files)
    except InputError as exc:
        fail(exc)
    if result.best is None:
        typer.echo(f"{result.finished} finished trials, none complete; see {out}", err=True)
    else:
        number, value = result.best
        typer.echo(f"best of {result.finished} trials: trial {number}, validation macro-F1 "
                   f"{value:.4f}; config in {out / 'best.yaml'}", err=True)
