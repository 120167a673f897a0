"""Tiling speed and memory on a generated ~40 000 × 30 000 slide.

Prints seconds per slide (median of ``--runs`` fresh runs, each in its own process, split into
imports and the slide's own work), peak RSS, and two ratios against this machine: the slide's
work over the raw OpenSlide read of the overview level it segments, and peak memory over the
1 GiB budget. Python start-up and imports are a fixed cost per process; a batch pays them once.

    python benchmarks/bench_tile.py [--width 40000 --height 30000 --runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import big_slide, machine, peak_rss_mb  # noqa: E402

CHILD = """
import json, sys, time
from pathlib import Path
from common import peak_rss_mb
t0 = time.perf_counter()
from wsi_ncmi.stages.tile import TileConfig, tile_slide
t1 = time.perf_counter()
r = tile_slide(Path(sys.argv[1]), "bench", Path(sys.argv[2]),
               TileConfig(target_mpp=0.5, tile_size=256))
t2 = time.perf_counter()
print(json.dumps({"seconds": t2 - t0, "imports": t1 - t0, "work": t2 - t1, "rss": peak_rss_mb(),
                  "n_tiles": r["n_tiles"], "level": r["level"]}))
"""


def raw_overview_read(slide_path: Path) -> float:
    """Seconds to read, with OpenSlide alone, the level the tiler segments."""
    from wsi_ncmi.slides.access import open_slide, slide_info
    from wsi_ncmi.slides.overview import read_overview
    from wsi_ncmi.slides.tissue import TissueSettings

    seg_mpp = TissueSettings().seg_mpp
    slide = open_slide(slide_path)
    info = slide_info(slide, slide_path)
    mpps = [info.mpp * d for d in info.level_downsamples]
    level = max((i for i, m in enumerate(mpps) if m <= seg_mpp * 1.01), key=lambda i: mpps[i])
    t0 = time.perf_counter()
    slide.read_region((0, 0), level, info.level_dimensions[level])
    raw = time.perf_counter() - t0
    t0 = time.perf_counter()
    read_overview(slide, info, seg_mpp)
    slide.close()
    print(f"overview level {level}: raw read {raw:.3f} s, banded read+resize "
          f"{time.perf_counter() - t0:.3f} s")
    return raw


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=40000)
    ap.add_argument("--height", type=int, default=30000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path("bench_out"))
    args = ap.parse_args()
    slide = big_slide(args.cache, args.width, args.height).resolve()
    print(f"machine: {machine()}")
    raw = raw_overview_read(slide)
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as ws:
            out = subprocess.run([sys.executable, "-c", CHILD, str(slide), ws], check=True,
                                 capture_output=True, text=True, cwd=Path(__file__).parent)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    secs = statistics.median(r["seconds"] for r in runs)
    work = statistics.median(r["work"] for r in runs)
    imports = statistics.median(r["imports"] for r in runs)
    rss = max(r["rss"] for r in runs)
    print(f"slide {args.width}x{args.height} px: {runs[0]['n_tiles']} tiles of 256 px at "
          f"0.5 µm/px (read level {runs[0]['level']})")
    print(f"tile stage: median {secs:.2f} s/slide over {args.runs} runs "
          f"(min {min(r['seconds'] for r in runs):.2f}, max {max(r['seconds'] for r in runs):.2f})")
    print(f"  of which imports {imports:.2f} s (once per process), the slide's work {work:.2f} s")
    print(f"ratio slide work / raw overview read: {work / raw:.1f}")
    print(f"peak RSS {rss:.0f} MiB; ratio to the 1 GiB budget: {rss / 1024:.2f}")
    print(f"(this process: {peak_rss_mb():.0f} MiB)")


if __name__ == "__main__":
    main()
