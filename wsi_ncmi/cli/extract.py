"""``wsi-ncmi extract``: tiles → frozen-encoder features in HDF5."""

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
def extract(
    inputs: Inputs = None,
    out: Annotated[Path, typer.Option("--out", help="Workspace folder holding tiles/; "
                                      "writes features/<encoder>/.")] = Path("workspace"),
    encoder: Annotated[str, typer.Option(help="resnet50_trunc | uni | a timm model name | "
                                         "hf-hub:<org>/<repo>.")] = "resnet50_trunc",
    weights: Annotated[Path | None, typer.Option(
        help="Encoder weights: .safetensors or a PyTorch state dict (loaded weights_only).")
    ] = None,
    random_weights: Annotated[bool, typer.Option(
        help="Use random weights (for tests only; flagged in every feature file).")] = False,
    download: Annotated[bool, typer.Option(
        help="Allow fetching hub weights over the network (default: local cache only).")
    ] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(
        help="Compute precision: auto (bf16 on CUDA and on CPUs with native bf16, else fp32) "
        "| fp32 | bf16 | fp16.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass (count).")] = 64,
    workers: Annotated[int | None, typer.Option(
        help="Reader processes (count; 0 reads in the main process). Default: cores − 1, "
        "at most 8.")] = None,
    fp16_storage: Annotated[bool, typer.Option(
        help="Store features as float16 (half the disk; values rounded to ~3 digits).")
    ] = False,
    max_bad_tiles: Annotated[float, typer.Option(
        help="Share of tiles (0–1) that may fail to decode before the slide fails.")] = 0.05,
    reader: Annotated[str, typer.Option(
        help="Tile reader: auto (direct JPEG decoding for JPEG-tiled TIFF/SVS, else OpenSlide) "
        "| direct | openslide. Same pixels either way; the one used is recorded.")] = "auto",
    input_size: Annotated[str | None, typer.Option(
        help="Side in px tiles are resized to for the encoder: N, or native (the tile as "
        "cut). Default: the encoder's own input size (224 for resnet50_trunc, uni and the "
        "ImageNet ViTs). Recorded in every feature file; changing it re-extracts.")] = None,
    tiles: Annotated[Path | None, typer.Option(
        help="Folder of tile files (ours, CLAM's or TRIDENT's), default WORKSPACE/tiles.")
    ] = None,
    manifest: ManifestOption = None,
    slide_root: SlideRootOption = None,
    shard: ShardOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Run a frozen encoder over every tile; stream features to one HDF5 per slide."""
    from ..errors import InputError
    from ..stages.extract import ExtractConfig, extract_slides
    from ..stages.jobs import select_jobs

    setup_logging(verbose)
    try:
        jobs = select_jobs(inputs, manifest, slide_root)
        defaults = ExtractConfig()
        config = ExtractConfig(
            encoder=encoder, weights=weights, random_weights=random_weights, download=download,
            device=device, batch_size=batch_size,
            workers=defaults.workers if workers is None else workers,
            fp16_storage=fp16_storage, max_bad_tiles=max_bad_tiles, precision=precision,
            reader=reader,
            input_size=int(input_size) if input_size and input_size.isdigit() else input_size)
        summary = extract_slides(jobs, out, config, shard, tiles)
    except InputError as exc:
        fail(exc)
    finish_batch(summary)
