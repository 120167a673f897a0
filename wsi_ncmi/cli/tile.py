"""``wsi-ncmi tile``: slides → tile coordinates, previews and tissue polygons."""

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
def tile(
    inputs: Inputs = None,
    out: Annotated[Path, typer.Option("--out", help="Workspace folder; writes tiles/, "
                                      "previews/, tissue/, ledger/.")] = Path("workspace"),
    mpp: Annotated[float, typer.Option(help="Target resolution of tiles, µm/px.")] = 0.5,
    tile_size: Annotated[int, typer.Option(help="Tile side, px at the target µm/px.")] = 256,
    overlap: Annotated[int, typer.Option(help="Overlap of adjacent tiles, px at the "
                                         "target µm/px.")] = 0,
    min_tissue: Annotated[float, typer.Option(help="Minimum tissue fraction of a kept tile "
                                              "(0–1, share of its area).")] = 0.25,
    level_tolerance: Annotated[float, typer.Option(help="Relative µm/px difference within "
                                                   "which a pyramid level is read as is "
                                                   "(0.05 = 5 %).")] = 0.05,
    seg_mpp: Annotated[float, typer.Option(help="Resolution of the overview used for tissue "
                                           "segmentation, µm/px.")] = 16.0,
    fallback_mpp: Annotated[float | None, typer.Option(
        help="Level-0 µm/px for slides whose metadata has none (used only for those).")] = None,
    manifest: ManifestOption = None,
    slide_root: SlideRootOption = None,
    shard: ShardOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Find tissue and lay a tile grid at a true µm/px; one HDF5 per slide."""
    from ..errors import InputError
    from ..slides.tissue import TissueSettings
    from ..stages.jobs import select_jobs
    from ..stages.tile import TileConfig, tile_slides

    setup_logging(verbose)
    try:
        jobs = select_jobs(inputs, manifest, slide_root)
        config = TileConfig(target_mpp=mpp, tile_size=tile_size, overlap=overlap,
                            min_tissue=min_tissue, level_tolerance=level_tolerance,
                            fallback_mpp=fallback_mpp, tissue=TissueSettings(seg_mpp=seg_mpp))
        summary = tile_slides(jobs, out, config, shard)
    except InputError as exc:
        fail(exc)
    finish_batch(summary)
