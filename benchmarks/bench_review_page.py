"""The review page's size on disk and its load times in headless Chromium.

Builds ``--slides`` synthetic slides (tiled by the tile stage, Deep Zoom pyramids at
``--finest-mpp``), writes their review page and a 100-row page (the same pyramids reused, ids
distinct), then opens each from ``file://`` ``--runs`` times in a fresh tab and prints the
browser's Navigation Timing (DOMContentLoaded and load, ms after navigation start), the rows
shown, and the time from opening a slide (a click) to drawing the last image tile its view
needs (the page's performance marks ``review:open`` and ``review:tiles-drawn``). Slides are kept in
``--work`` and reused. ``--screenshot PATH`` saves the page with a flagged slide open.

    python benchmarks/bench_review_page.py [--slides 40 --runs 5]
    python benchmarks/bench_review_page.py --screenshot docs/images/review_page.png
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from common import machine  # noqa: E402
from review_fixtures import CLASSES, review_inputs  # noqa: E402

from wsi_ncmi.stats.reviewpage import write_review  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMING = """() => { const n = performance.getEntriesByType("navigation")[0];
  return [n.domContentLoadedEventEnd, n.loadEventEnd,
          document.querySelectorAll("#slides tbody tr").length]; }"""
# From opening a slide to drawing the last tile its view needs (the page's performance marks).
OPEN_TIMING = """() => performance.getEntriesByName("review:tiles-drawn").pop().startTime
  - performance.getEntriesByName("review:open").pop().startTime"""


def folder_size(path: Path) -> tuple[int, int, int]:
    """(bytes of the files, bytes on disk as ``du`` counts them, number of files)."""
    files = [p for p in path.rglob("*") if p.is_file()]
    du = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return sum(p.stat().st_size for p in files), int(du.stdout.split()[0]) * 1024, len(files)


def measure(browser, url: str, runs: int, open_slide: bool) -> dict:
    """Median timings over ``runs`` fresh tabs (ms)."""
    dcl, load, open_ms, rows, jpeg_before_open, n_tiles = [], [], [], 0, 0, 0
    for _ in range(runs):
        tab = browser.new_page(viewport={"width": 1366, "height": 768}, bypass_csp=True)
        tiles: list[str] = []
        tab.on("requestfinished", lambda r, t=tiles: t.append(r.url) if ".jpeg" in r.url else 0)
        tab.goto(url)
        tab.wait_for_load_state("load")
        d, ld, rows = tab.evaluate(TIMING)
        dcl.append(d)
        load.append(ld)
        jpeg_before_open += len(tiles)
        if open_slide:
            tab.locator("#slides tbody tr").first.click()
            tab.wait_for_timeout(30)
            tab.locator("#view[data-idle='1']").wait_for(state="attached", timeout=30000)
            open_ms.append(tab.evaluate(OPEN_TIMING))
            n_tiles = len(tiles)
        tab.close()
    out = {"DOMContentLoaded ms": round(statistics.median(dcl)),
           "load ms": round(statistics.median(load)), "rows": rows,
           "image requests before a slide is opened": jpeg_before_open}
    if open_ms:
        out["open first slide: to last tile drawn ms"] = round(statistics.median(open_ms))
        out["tiles loaded for its view"] = n_tiles
    return out


def screenshot(browser, url: str, path: Path) -> None:
    tab = browser.new_page(viewport={"width": 1366, "height": 768})
    tab.goto(url)
    tab.locator("#slides tbody tr").first.click()
    tab.wait_for_timeout(100)
    tab.locator("#view[data-idle='1']").wait_for(state="attached", timeout=30000)
    path.parent.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(path))
    tab.close()
    print(f"screenshot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slides", type=int, default=40)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--height", type=int, default=1536)
    ap.add_argument("--finest-mpp", type=float, default=0.25)
    ap.add_argument("--tile-mpp", type=float, default=0.5, help="tiling µm/px (64 px tiles)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsi-ncmi-bench-review"))
    ap.add_argument("--chromium", default=shutil.which("chromium"))
    ap.add_argument("--screenshot", type=Path)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    review, slides, pyramids = review_inputs(args.work, args.slides, width=args.width,
                                             height=args.height, finest_mpp=args.finest_mpp,
                                             tile_mpp=args.tile_mpp)
    print(f"slides, tiles and pyramids: {time.perf_counter() - t0:.1f} s "
          f"({args.slides} slides of {args.width} × {args.height} px at 0.25 µm/px, "
          f"tiles at {args.tile_mpp} µm/px, pyramids to {args.finest_mpp} µm/px)")
    per = sorted(p.bytes for p in pyramids)
    print(f"pyramid bytes per slide: min {per[0]:,} median {per[len(per) // 2]:,} "
          f"max {per[-1]:,}; tiles per slide median "
          f"{sorted(p.n_tiles for p in pyramids)[len(per) // 2]}")
    t0 = time.perf_counter()
    page = write_review(review, slides, CLASSES, f"{args.slides}-slide synthetic run",
                        notes={"head": "linear probe", "review threshold": "0.8"})
    print(f"write_review: {time.perf_counter() - t0:.2f} s")
    size, disk, n_files = folder_size(review)
    data, _, _ = folder_size(review / "data")
    print(f"review folder: {size / 2**20:.1f} MiB in {n_files} files "
          f"({disk / 2**20:.1f} MiB on disk by du); data scripts {data / 2**10:.0f} KiB")
    hundred = args.work / "review100"
    shutil.rmtree(hundred, ignore_errors=True)
    shutil.copytree(review / "slides", hundred / "slides")
    rows = [replace(slides[i % len(slides)], slide_id=f"R{i:03d}") for i in range(100)]
    page100 = write_review(hundred, rows, CLASSES, "100-slide synthetic run")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        print(f"chromium {browser.version}, viewport 1366 × 768, {args.runs} runs, medians:")
        for name, url in ((f"{args.slides} slides", page.as_uri()),
                          ("100 rows", page100.as_uri())):
            print(f"  {name}: {measure(browser, url, args.runs, open_slide=True)}")
        if args.screenshot:
            screenshot(browser, page.as_uri(), args.screenshot)
        browser.close()


if __name__ == "__main__":
    main()
