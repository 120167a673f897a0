"""Feature-extraction throughput against this machine's own limits, per tile reader, in one run.

On a generated slide (``common.big_slide``), with the same tiles for all:

1. raw encoder rate: the model alone on random tiles already in memory, the extract stage's
   precision for the device (bf16 autocast on CUDA; bf16 or fp32 on a CPU), channels-last,
   inference mode;
2. per reader (``--readers``: the direct JPEG reader and OpenSlide by default): the raw
   tile-read rate (the reader processes alone, no model) and the end-to-end ``extract`` rate
   (read + decode + encode + write HDF5), and end-to-end over the encoder rate (1.0 =
   extraction runs at the speed of the encoder);
3. native-tile decodes per distinct native tile read (``--decode-workers``): items go to
   reader processes round-robin and each keeps its own cache, so a native tile that items of
   two processes share is decoded twice; counted by replaying the loader's items in-process,
   for the CPU path and for the device path (one batched decode per encoder batch, with the
   main process's cache of decoded native tiles; decoded here on the CPU);
4. peak resident memory of the main process and of the largest reader process.

    python benchmarks/bench_extract.py [--encoder resnet50_trunc --max-tiles 400 --device auto]
    python benchmarks/bench_extract.py --tile-size 112 --min-tissue 0 --max-tiles 0 \\
        --readers direct --fp16-storage          # every grid tile (~95 000): peak memory
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import big_slide, machine, peak_rss_mb  # noqa: E402

from wsi_ncmi.formats.tilefile import read_tile_file, write_tile_file  # noqa: E402
from wsi_ncmi.model.device import select_device  # noqa: E402
from wsi_ncmi.model.encoders import load_encoder  # noqa: E402
from wsi_ncmi.slides.access import open_slide  # noqa: E402
from wsi_ncmi.slides.gpudecode import (  # noqa: E402
    DecodedTiles,
    decode_runs,
    read_run_compressed,
)
from wsi_ncmi.slides.jpegtiff import JpegTiffSlide  # noqa: E402
from wsi_ncmi.slides.readers import open_reader  # noqa: E402
from wsi_ncmi.slides.reading import ReadSpec, region_runs  # noqa: E402
from wsi_ncmi.stages.extract import (  # noqa: E402
    ExtractConfig,
    decode_path,
    extract_slide,
    input_setting,
    precision_of,
)
from wsi_ncmi.stages.tile import TileConfig, tile_slide  # noqa: E402
from wsi_ncmi.stages.tileloader import CompressedItem, pack_runs, tile_loader  # noqa: E402


def read_rate(slide: Path, coords: np.ndarray, spec: ReadSpec, config: ExtractConfig) -> float:
    """Tiles per second of the loader alone (items as the extract stage makes them)."""
    loader, _ = tile_loader(slide, coords, spec, config.reader, config.workers,
                            config.batch_size, config.region_tiles, pin_memory=False,
                            compressed=decode_path(config) == "device")
    t0 = time.perf_counter()
    n = sum(len(item.idx) if isinstance(item, CompressedItem) else len(item[0])
            for item in loader)
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


def decodes_per_native_tile(slide: Path, coords: np.ndarray, spec: ReadSpec,
                            config: ExtractConfig, workers: int) -> tuple[float, float]:
    """(CPU path, device path): native-tile decodes per distinct native tile in one pass,
    replaying the loader's items with ``workers`` round-robin reader processes."""
    share = len(coords) // (4 * max(1, workers))
    item = max(2 * config.region_tiles, min(config.batch_size, share))
    items = pack_runs(region_runs(coords, spec.downsample, spec.read_size,
                                  config.region_tiles), item)
    readers = [open_reader(slide, spec, "direct") for _ in range(workers)]
    decoded: list[tuple] = []
    real = JpegTiffSlide._decode
    JpegTiffSlide._decode = lambda self, *key: decoded.append(key) or real(self, *key)
    try:
        for i, runs in enumerate(items):
            for a, b in runs:
                readers[i % workers].read_run(coords[a:b])
    finally:
        JpegTiffSlide._decode = real
    cache, batch, filled = DecodedTiles(), [], 0
    for runs in items:  # the main process's batches of the device path, decoded on the CPU
        batch += [plan for a, b in runs if (plan := read_run_compressed(readers[0], coords[a:b]))]
        filled += sum(b - a for a, b in runs)
        if filled >= config.batch_size:
            decode_runs(batch, "cpu", cache)
            batch, filled = [], 0
    if batch:
        decode_runs(batch, "cpu", cache)
    for reader in readers:
        reader.close()
    distinct = len(set(decoded))
    return len(decoded) / max(1, distinct), cache.decoded / max(1, distinct)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=40000)
    ap.add_argument("--height", type=int, default=30000)
    ap.add_argument("--encoder", default="resnet50_trunc")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--max-tiles", type=int, default=400,
                    help="use the first N tiles of the slide (0: all; the same for every rate)")
    ap.add_argument("--mpp", type=float, default=0.5, help="tile µm/px")
    ap.add_argument("--tile-size", type=int, default=256, help="px")
    ap.add_argument("--overlap", type=int, default=0, help="px")
    ap.add_argument("--min-tissue", type=float, default=0.25,
                    help="0 keeps every grid tile (to make a 100 000-tile slide)")
    ap.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    ap.add_argument("--input-size", default=None, help="N | native (default: the encoder's)")
    ap.add_argument("--decode", default="auto", help="auto | cpu | device")
    ap.add_argument("--readers", default="direct,openslide", help="comma-separated")
    ap.add_argument("--decode-workers", default="1,15",
                    help="reader-process counts for the decode count (empty: skip it)")
    ap.add_argument("--fp16-storage", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true", help="only the raw rates")
    ap.add_argument("--cache", type=Path, default=Path("bench_out"))
    args = ap.parse_args()
    slide = big_slide(args.cache, args.width, args.height).resolve()
    device = select_device(args.device)
    size = args.input_size
    base = ExtractConfig(encoder=args.encoder, random_weights=True, device=args.device,
                         batch_size=args.batch_size, precision=args.precision,
                         workers=ExtractConfig().workers if args.workers is None else args.workers,
                         input_size=int(size) if size and size.isdigit() else size,
                         decode=args.decode, fp16_storage=args.fp16_storage)
    encoder = load_encoder(args.encoder, random_weights=True)
    encoder.model.to(device, memory_format=torch.channels_last)
    precision = precision_of(encoder, device, base)
    print(f"machine: {machine()}; device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        t0 = time.perf_counter()
        tile_slide(slide, "bench", ws, TileConfig(target_mpp=args.mpp, tile_size=args.tile_size,
                                                  overlap=args.overlap,
                                                  min_tissue=args.min_tissue))
        print(f"tiled in {time.perf_counter() - t0:.1f} s")
        tiles = ws / "tiles" / "bench.h5"
        if args.max_tiles:
            full = read_tile_file(tiles)
            coords = full.coords[: args.max_tiles]
            write_tile_file(tiles, coords, full.tissue_fraction[: len(coords)], full.attrs)
        grid = read_tile_file(tiles)
        side = input_setting(encoder, base) or grid.tile_size
        handle = open_slide(slide)
        spec = ReadSpec(grid.level, grid.read_size, float(handle.level_downsamples[grid.level]),
                        side)
        handle.close()
        n = len(grid.coords)
        print(f"{n} tiles of {grid.read_size} px at level {grid.level} → {side} px, encoder "
              f"{args.encoder} ({encoder.dim}-d, {precision}), batch {base.batch_size}, "
              f"{base.workers} reader process(es), tiles decoded on the {decode_path(base)}, "
              f"features stored as {'float16' if base.fp16_storage else 'float32'}")
        r_enc = encoder_rate(encoder, device, precision, base.batch_size, side, min(n, 2048))
        print(f"raw encoder rate      {r_enc:9.1f} tiles/s")
        rates = {}
        for name in args.readers.split(","):
            config = replace(base, reader=name)
            r_read = read_rate(slide, grid.coords, spec, config)
            r_e2e = float("nan")
            if not args.skip_e2e:
                t0 = time.perf_counter()
                extract_slide(slide, tiles, ws / f"{name}.h5", encoder, config, device)
                r_e2e = n / (time.perf_counter() - t0)
            rates[name] = (r_read, r_e2e)
            print(f"{name:9s} raw read {r_read:9.1f} tiles/s, end-to-end {r_e2e:9.1f} tiles/s, "
                  f"end-to-end / encoder {r_e2e / r_enc:.2f}")
        for workers in [int(w) for w in args.decode_workers.split(",") if w]:
            cpu, dev = decodes_per_native_tile(slide, grid.coords[:4000], spec, base, workers)
            print(f"decodes per native tile, {workers} reader process(es): CPU path {cpu:.2f}, "
                  f"device path {dev:.2f} (first {min(n, 4000)} tiles)")
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: main process {peak_rss_mb():.0f} MiB, largest reader process "
          f"{children:.0f} MiB")
    print(f"extract: encoder {r_enc:.1f} tiles/s; " + "; ".join(
        f"{k} end-to-end {e:.1f} ({e / r_enc:.2f} of the encoder), read {r:.1f}"
        for k, (r, e) in rates.items()))


if __name__ == "__main__":
    main()
