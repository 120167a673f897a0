"""Tile reading speed: the direct JPEG-TIFF reader against OpenSlide, same tiles, one process.

Reads a grid of tiles (``--tile`` px at ``--level``, row-major, in runs of ``--run`` adjacent
tiles as extraction reads them) with the direct reader and with the OpenSlide reader,
alternating passes and keeping each reader's best (the machine is shared), and compares every
tile. Without SLIDE it generates a ``--width`` × ``--height`` slide (generic TIFF, YCbCr JPEG
256-px tiles); ``--svs`` first rewrites the slide as an Aperio-style SVS (240-px RGB JPEG tiles
with shared tables, Aperio's component ids). Prints, last:

    read: direct X tiles/s, openslide Y tiles/s, ratio R, max pixel difference D

    python benchmarks/bench_read.py [SLIDE] [--svs] [--level 0 --tile 256 --tiles 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import big_slide, machine  # noqa: E402

from wsi_ncmi.slides.access import open_slide  # noqa: E402
from wsi_ncmi.slides.readers import open_reader  # noqa: E402
from wsi_ncmi.slides.reading import ReadSpec, region_runs  # noqa: E402

CACHE = Path.home() / ".cache" / "wsi-ncmi" / "bench"


def tile_grid(slide_path: Path, level: int, tile: int, limit: int) -> tuple[np.ndarray, float]:
    """Level-0 coordinates of up to ``limit`` whole tiles (row-major from the slide's middle
    rows, where the tissue is) and the level's downsample."""
    slide = open_slide(slide_path)
    w, h = slide.level_dimensions[level]
    ds = float(slide.level_downsamples[level])
    slide.close()
    rows = [y for y in range(0, h - tile + 1, tile)]
    cols = [x for x in range(0, w - tile + 1, tile)]
    start = max(0, len(rows) // 2 - limit // max(1, len(cols)) // 2)
    coords = [(round(x * ds), round(y * ds)) for y in rows[start:] for x in cols][:limit]
    return np.asarray(coords, np.int64), ds


def read_all(reader, coords: np.ndarray, runs: list) -> tuple[np.ndarray, float]:
    """(all tiles, seconds) reading ``runs`` of ``coords`` with ``reader``."""
    t0 = time.perf_counter()
    tiles = [reader.read_run(coords[a:b])[0] for a, b in runs]
    seconds = time.perf_counter() - t0
    reader.close()
    return np.concatenate(tiles), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", nargs="?", type=Path)
    parser.add_argument("--svs", action="store_true", help="rewrite as Aperio-style SVS first")
    parser.add_argument("--width", type=int, default=20000)
    parser.add_argument("--height", type=int, default=15000)
    parser.add_argument("--level", type=int, default=0)
    parser.add_argument("--tile", type=int, default=256, help="read size at the level, px")
    parser.add_argument("--tiles", type=int, default=2000, help="most tiles read per pass")
    parser.add_argument("--run", type=int, default=8, help="adjacent tiles per region read")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()

    path = args.slide or big_slide(CACHE, args.width, args.height)
    if args.svs:
        from wsi_ncmi.slides.aperio import write_aperio_like

        svs = CACHE / f"{path.stem}_aperio.svs"
        if not svs.exists():
            t0 = time.perf_counter()
            write_aperio_like(path, svs)
            print(f"wrote {svs.name} in {time.perf_counter() - t0:.1f} s")
        path = svs
    coords, ds = tile_grid(path, args.level, args.tile, args.tiles)
    spec = ReadSpec(args.level, args.tile, ds, args.tile)
    runs = region_runs(coords, ds, args.tile, args.run)
    direct = open_reader(path, spec, "direct")
    ref = open_reader(path, spec, "openslide")
    print(f"{path.name}: {direct.layout.vendor}, level {args.level} (downsample {ds:g}), "
          f"{len(coords)} tiles of {args.tile} px in {len(runs)} runs; {machine()}")
    best = {"direct": float("inf"), "openslide": float("inf")}
    diff = 0
    for _ in range(args.passes):
        got, best_d = read_all(direct, coords, runs)
        want, best_o = read_all(ref, coords, runs)
        best["direct"] = min(best["direct"], best_d)
        best["openslide"] = min(best["openslide"], best_o)
        diff = max(diff, int(np.abs(got.astype(np.int16) - want).max()))
    rate = {k: len(coords) / v for k, v in best.items()}
    print(f"read: direct {rate['direct']:.0f} tiles/s, openslide {rate['openslide']:.0f} "
          f"tiles/s, ratio {rate['direct'] / rate['openslide']:.2f}, max pixel difference {diff}")


if __name__ == "__main__":
    main()
