"""``wsi-ncmi predict``: a trained run on new slides (tile → extract → aggregate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import (
    Inputs,
    ManifestOption,
    ShardOption,
    SlideRootOption,
    VerboseOption,
    fail,
    finish_batch,
    setup_logging,
)


@app.command()
def predict(
    model: Annotated[Path, typer.Option(help="Run folder written by `wsi-ncmi train`.")],
    out: Annotated[Path, typer.Option("--out", help="Workspace folder: predictions.csv, "
                                      "heatmaps/, and the tiles/features reruns reuse.")],
    inputs: Inputs = None,
    fold: Annotated[int | None, typer.Option(
        help="Fold number of the run to use (default: fold 0 of a single-fold run).")] = None,
    all_folds: Annotated[bool, typer.Option(
        help="Use every fold and average their probabilities.")] = False,
    head: Annotated[str, typer.Option(
        help="linear_probe (calibrated probabilities) | centroid (softmax(−KL/T), T fitted "
        "on the validation slides) | classifier (CE-family runs; often over-confident).")
    ] = "linear_probe",
    weights: Annotated[Path | None, typer.Option(
        help="Encoder weights file; its sha256 must equal the one the model was trained "
        "with (default: the local Hugging Face cache).")] = None,
    download: Annotated[bool, typer.Option(
        help="Allow fetching the encoder's hub weights over the network (default: local "
        "cache only).")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    review_threshold: Annotated[float, typer.Option(
        help="Flag a slide for review when its top class probability is below this "
        "(probability, 0–1).")] = 0.8,
    fallback_mpp: Annotated[float | None, typer.Option(
        help="Level-0 µm/px for slides whose metadata has none (used only for those).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Tile-reader processes for extraction (count; 0 reads in the main process). "
        "Default: cores − 1, at most 8.")] = None,
    batch_size: Annotated[int, typer.Option(help="Tiles per encoder forward pass (count).")
                          ] = 64,
    review: Annotated[bool, typer.Option(
        help="Write the review page OUT/review/index.html: the slides, their predictions and "
        "attention on zoomable images (default: on).")] = True,
    review_mpp: Annotated[float, typer.Option(
        help="Finest resolution of the review page's images (µm/px; slides scanned coarser "
        "keep their own).")] = 1.0,
    review_max_mb: Annotated[float, typer.Option(
        help="Disk budget of one slide's review image (MiB); finer levels that do not fit are "
        "left out.")] = 64.0,
    manifest: ManifestOption = None,
    slide_root: SlideRootOption = None,
    shard: ShardOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Predict new slides with the run's own tiling and encoder: probabilities and heatmaps."""
    from ..errors import InputError
    from ..formats.runfolder import choose_folds
    from ..stages.jobs import select_jobs
    from ..stages.predict import PredictConfig, predict_slides
    from ..stages.review import ReviewSettings

    setup_logging(verbose)
    try:
        folds = tuple(choose_folds(model, fold, all_folds))
        jobs = select_jobs(inputs, manifest, slide_root)
        config = PredictConfig(run=model, folds=folds,
                               head=head, weights=weights, device=device,
                               review_threshold=review_threshold, fallback_mpp=fallback_mpp,
                               workers=workers, batch_size=batch_size, download=download,
                               review=ReviewSettings(review_mpp, round(review_max_mb * 2**20))
                               if review else None)
        outcome = predict_slides(jobs, out, config, shard)
    except InputError as exc:
        fail(exc)
    typer.echo(f"wrote {outcome.predictions} (per-slide records in {out / 'predictions'}, "
               f"heatmaps in {out / 'heatmaps'})", err=True)
    finish_batch(outcome.summary)
