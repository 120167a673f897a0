"""``wsi-ncmi heatmap``: where a trained model looked on one slide (PNG + QuPath GeoJSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import VerboseOption, fail, setup_logging


@app.command()
def heatmap(
    run: Annotated[Path, typer.Argument(metavar="RUN",
                                        help="Run folder written by `wsi-ncmi train`.")],
    slide_id: Annotated[str, typer.Argument(
        metavar="SLIDE_ID", help="Slide id (its feature file is <slide_id>.h5).")],
    slide: Annotated[Path, typer.Option(help="The slide file (drawn as the thumbnail).")],
    fold: Annotated[int | None, typer.Option(
        help="Fold number whose model to use (default: the fold whose test part holds the "
        "slide; fold 0 of a single-fold run).")] = None,
    head: Annotated[str, typer.Option(
        help="Head whose prediction the title shows: linear_probe | centroid | classifier.")
    ] = "linear_probe",
    features_dir: Annotated[Path | None, typer.Option(
        help="Folder of <slide_id>.h5 feature files (default: data.features_dir of "
        "RUN/config.yaml).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for <slide_id>.png and .geojson (default: "
        "RUN/heatmaps/fold_<k>).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    verbose: VerboseOption = False,
) -> None:
    """Attention per tile over the slide thumbnail (PNG) and as QuPath detections (GeoJSON)."""
    from ..errors import InputError
    from ..model.device import select_device
    from ..stages.heatmap import run_heatmap

    setup_logging(verbose)
    try:
        dev = str(select_device(device))
        paths = run_heatmap(run, slide_id, slide, fold=fold, features_dir=features_dir,
                            out_dir=out, head=head, device=dev)
    except InputError as exc:
        fail(exc)
    typer.echo(f"wrote {', '.join(map(str, paths))}")
