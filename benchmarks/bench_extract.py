"""Feature-extraction throughput against this machine's own limits, in one run.

On a generated ~40 000 × 30 000 slide, with the same tiles for all three:

1. raw tile-read rate: the reader processes alone (OpenSlide, region reads, no model);
2. raw encoder rate: the model alone on random tiles already in memory, best precision
   for the device (bf16 autocast on CUDA, fp32 on CPU), channels-last, inference mode;
3. end-to-end ``extract`` rate (read + encode + write HDF5);

and the ratio 3 / min(1, 2) (1.0 = extraction runs at the speed of its slowest part).

    python benchmarks/bench_extract.py [--encoder resnet50_trunc --max-tiles 400 --device auto]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import big_slide, machine, peak_rss_mb  # noqa: E402

from wsi_ncmi.formats.tilefile import read_tile_file, write_tile_file  # noqa: E402
from wsi_ncmi.model.device import select_device  # noqa: E402
from wsi_ncmi.model.encoders import load_encoder  # noqa: E402
from wsi_ncmi.slides.reading import ReadSpec  # noqa: E402
from wsi_ncmi.stages.extract import (  # noqa: E402
    ExtractConfig,
    extract_slide,
    precision_of,
    tile_loader,
)
from wsi_ncmi.stages.tile import TileConfig, tile_slide  # noqa: E402


def read_rate(slide, grid, config, side) -> float:
    spec = ReadSpec(grid.level, grid.read_size, 4.0 ** grid.level, side)
    loader, _ = tile_loader(slide, grid.coords, spec, config, pin_memory=False)
    t0 = time.perf_counter()
    n = sum(len(idx) for idx, _, _ in loader)
    return n / (time.perf_counter() - t0)


def encoder_rate(encoder, device, precision, batch_size, side, n_tiles) -> float:
    model = encoder.model
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    x = torch.rand(batch_size, 3, side, side, device=device).contiguous(
        memory_format=torch.channels_last)
    n_batches = max(2, n_tiles // batch_size)
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32,
                                                enabled=amp is not None):
        model(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n_batches):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n_batches * batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=40000)
    ap.add_argument("--height", type=int, default=30000)
    ap.add_argument("--encoder", default="resnet50_trunc")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--max-tiles", type=int, default=400,
                    help="use the first N tiles of the slide (all three rates use the same)")
    ap.add_argument("--mpp", type=float, default=0.5, help="tile µm/px")
    ap.add_argument("--tile-size", type=int, default=256, help="px")
    ap.add_argument("--overlap", type=int, default=0, help="px")
    ap.add_argument("--min-tissue", type=float, default=0.25,
                    help="0 keeps every grid tile (to make a 100 000-tile slide)")
    ap.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    ap.add_argument("--skip-e2e", action="store_true", help="only the two raw rates")
    ap.add_argument("--cache", type=Path, default=Path("bench_out"))
    args = ap.parse_args()
    slide = big_slide(args.cache, args.width, args.height).resolve()
    device = select_device(args.device)
    workers = ExtractConfig().workers if args.workers is None else args.workers
    config = ExtractConfig(encoder=args.encoder, random_weights=True, device=args.device,
                           batch_size=args.batch_size, workers=workers,
                           precision=args.precision)
    encoder = load_encoder(args.encoder, random_weights=True)
    encoder.model.to(device, memory_format=torch.channels_last)
    precision = precision_of(encoder, device, ExtractConfig(precision=args.precision))
    print(f"machine: {machine()}; device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        tile_slide(slide, "bench", ws, TileConfig(target_mpp=args.mpp, tile_size=args.tile_size,
                                                  overlap=args.overlap,
                                                  min_tissue=args.min_tissue))
        full = read_tile_file(ws / "tiles" / "bench.h5")
        tiles = ws / "tiles" / "bench.h5"
        coords = full.coords[: args.max_tiles]
        write_tile_file(tiles, coords, full.tissue_fraction[: len(coords)], full.attrs)
        grid = read_tile_file(tiles)
        side = encoder.spec.input_size or grid.tile_size
        n = len(grid.coords)
        r_read = read_rate(slide, grid, config, side)
        r_enc = encoder_rate(encoder, device, precision, config.batch_size, side, n)
        r_e2e = float("nan")
        if not args.skip_e2e:
            t0 = time.perf_counter()
            extract_slide(slide, tiles, ws / "f.h5", encoder, config, device)
            r_e2e = n / (time.perf_counter() - t0)
    print(f"{n} tiles of {side} px, encoder {args.encoder} ({encoder.dim}-d, {precision}), "
          f"batch {config.batch_size}, {config.workers} reader process(es)")
    print(f"1. raw tile-read rate   {r_read:9.1f} tiles/s")
    print(f"2. raw encoder rate     {r_enc:9.1f} tiles/s")
    print(f"3. end-to-end extract   {r_e2e:9.1f} tiles/s")
    print(f"ratio 3 / min(1, 2) = {r_e2e / min(r_read, r_enc):.2f}")
    print(f"peak RSS of this process {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
