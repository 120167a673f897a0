"""Provenance fingerprints: quick vs full SHA-256 on a large file, and against tiling time.

Writes (once, then reuses) a ~1 GB file of random bytes — every block really written, no
sparse holes — and times ``fingerprint_file`` in ``quick`` and ``sha256`` mode, each with the
file evicted from the page cache (cold: ``posix_fadvise(DONTNEED)``, as for a slide freshly
read from a network share; Linux only) and cached (warm). Prints medians and the full/quick
ratio. With ``--tile``, also times the tile stage on a generated slide (the one
``bench_tile.py`` uses) and prints what each fingerprint of that slide adds to it, in %.

    python benchmarks/bench_fingerprint.py [--size-gb 1.0 --runs 3 --tile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import big_slide, machine  # noqa: E402

from wsi_ncmi.checksums import fingerprint_file  # noqa: E402

CHUNK = 64 << 20


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    """A file of ``size`` random bytes (bytes), written in full and synced; reused if present."""
    if path.exists() and path.stat().st_size == size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(rng.bytes(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())
    print(f"wrote {path} ({size / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f} s")
    return path


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (clean pages only; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(path: Path, mode: str, cold: bool, runs: int) -> float:
    """Median seconds of ``runs`` fingerprints of ``path`` in ``mode``."""
    times = []
    for _ in range(runs):
        if cold:
            evict(path)
        else:
            fingerprint_file(path, mode, quickhash=True)
        t0 = time.perf_counter()
        fingerprint_file(path, mode, quickhash=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def tile_seconds(slide: Path) -> float:
    from wsi_ncmi.stages.tile import TileConfig, tile_slide

    with tempfile.TemporaryDirectory() as ws:
        t0 = time.perf_counter()
        tile_slide(slide, "bench", Path(ws), TileConfig(target_mpp=0.5, tile_size=256))
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of the random file, GB")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per setting (median)")
    ap.add_argument("--cache", type=Path, default=Path("bench_out"), help="folder for the files")
    ap.add_argument("--tile", action="store_true", help="also compare with the tile stage's "
                    "time on a generated 40000 x 30000 px slide")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    size = int(args.size_gb * 1e9)
    path = random_file(args.cache / f"random_{size}.bin", size)
    results = {(mode, cold): timed(path, mode, cold, args.runs)
               for mode in ("quick", "sha256") for cold in (True, False)}
    for cold in (True, False):
        quick, full = results[("quick", cold)], results[("sha256", cold)]
        cache = "cold (evicted)" if cold else "warm (cached)"
        print(f"{size / 1e9:.2f} GB random file, {cache}: quick {quick * 1e3:.2f} ms, "
              f"sha256 {full:.2f} s ({size / full / 1e9:.2f} GB/s); ratio sha256/quick "
              f"{full / quick:.0f}")
    if args.tile:
        slide = big_slide(args.cache, 40000, 30000).resolve()
        tile = statistics.median(tile_seconds(slide) for _ in range(args.runs))
        quick = timed(slide, "quick", True, args.runs)
        full = timed(slide, "sha256", True, args.runs)
        mb = slide.stat().st_size / 1e6
        print(f"slide {slide.name} ({mb:.0f} MB): tile stage {tile:.2f} s; cold quick "
              f"fingerprint {quick * 1e3:.1f} ms = {100 * quick / tile:.2f} % of tiling; cold "
              f"sha256 {full:.2f} s = {100 * full / tile:.1f} % of tiling")


if __name__ == "__main__":
    main()
