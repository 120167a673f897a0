"""The review page of a real ``wsi-ncmi predict`` run: its size on disk and load times.

Trains a tiny model through the real pipeline (8 synthetic slides, normal vs dense lesion, tiled
at 1 µm/px in 32 px tiles, features from the seeded test encoder, NCMI on the CPU), generates
``--slides`` new slides (no lesion, dense lesion, glands: the last kind the model never saw),
runs ``wsi-ncmi predict`` on them as a user would (a subprocess, review page on, at
``--review-mpp``), then prints the review folder's size and the page's load timings in
headless Chromium (:func:`bench_review_page.measure`). ``--page INDEX_HTML`` measures an
existing page instead (e.g. the demo's). ``--screenshot PATH`` saves the page with the first
row (flagged first) open. Slides, run and predictions are kept in ``--work`` and reused (a
rerun with another ``--review-mpp`` redoes only the heatmaps and pyramids).

    python benchmarks/bench_predict_review.py [--slides 40 --review-mpp 1.0]
    python benchmarks/bench_predict_review.py --review-mpp 0.25 \\
        --screenshot docs/images/review_page.png
    python benchmarks/bench_predict_review.py --page DEMO/predict/review/index.html \\
        --screenshot docs/images/review_page.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from bench_review_page import CHROMIUM_ARGS, folder_size, measure, screenshot  # noqa: E402
from common import machine  # noqa: E402

from wsi_ncmi.model.encoders import save_seeded_checkpoint  # noqa: E402
from wsi_ncmi.slides.synthetic import write_synthetic_slide  # noqa: E402
from wsi_ncmi.stages.extract import ExtractConfig, extract_slides  # noqa: E402
from wsi_ncmi.stages.jobs import jobs_from_paths  # noqa: E402
from wsi_ncmi.stages.tile import TileConfig, tile_slides  # noqa: E402
from wsi_ncmi.stages.train import train_run  # noqa: E402

CLASSES = ["normal", "lesion"]
KINDS = (None, "dense", "glands")


def slide(path: Path, width: int, height: int, seed: int, lesion: str | None) -> Path:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_slide(path, width, height, seed=seed, lesion=lesion,
                              downsamples=(1, 4, 16))
    return path


def trained_run(work: Path, width: int, height: int) -> tuple[Path, Path]:
    """(run folder, encoder weights), trained once."""
    run, ckpt = work / "run", work / "encoder.safetensors"
    if (run / "features.json").is_file():
        return run, ckpt
    rows, paths = [], []
    for i in range(8):
        sid = f"t{i}"
        paths.append(slide(work / "train_slides" / f"{sid}.tif", width, height, 300 + i,
                           "dense" if i % 2 else None))
        rows.append({"slide_id": sid, "path": f"{sid}.tif", "label": CLASSES[i % 2],
                     "patient_id": f"p{i}", "split": "val" if i >= 6 else "train"})
    manifest = work / "train_slides" / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    ws, jobs = work / "train_ws", jobs_from_paths(paths)
    assert tile_slides(jobs, ws, TileConfig(target_mpp=1.0, tile_size=32, min_tissue=0.5)).ok
    save_seeded_checkpoint("test_resnet", ckpt, seed=3)
    assert extract_slides(jobs, ws, ExtractConfig(encoder="test_resnet", weights=ckpt,
                                                 device="cpu", workers=0)).ok
    config = {"task": {"name": "lesion", "label_column": "label", "classes": CLASSES},
              "split": {"method": "column", "column": "split"},
              "model": {"embed_dim": 8, "attn_dim": 8}, "loss": {"name": "ncmi"},
              "optim": {"epochs": 8, "batch_size": 3, "lr": 5e-3}, "device": "cpu", "seed": 0}
    return train_run(config, run, ws / "features" / "test_resnet", manifest), ckpt


def predict_page(args) -> Path:
    t0 = time.perf_counter()
    run, ckpt = trained_run(args.work, args.width, args.height)
    new = [slide(args.work / "new_slides" / f"n{i:03d}.tif", args.width, args.height, 500 + i,
                 KINDS[i % len(KINDS)]) for i in range(args.slides)]
    print(f"training cohort and {len(new)} new slides ready: {time.perf_counter() - t0:.1f} s "
          f"({args.width} × {args.height} px at 0.25 µm/px)")
    out = args.work / "predict"
    command = [sys.executable, "-m", "wsi_ncmi", "predict", "--model", str(run), "--out",
               str(out), "--weights", str(ckpt), "--device", "cpu", "--workers", "0",
               "--review-mpp", str(args.review_mpp), *map(str, new)]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    print(f"wsi-ncmi predict ({len(new)} slides, review images to {args.review_mpp:g} µm/px): "
          f"{time.perf_counter() - t0:.1f} s")
    return out / "review" / "index.html"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slides", type=int, default=40)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--height", type=int, default=3072)
    ap.add_argument("--review-mpp", type=float, default=1.0)
    ap.add_argument("--page", type=Path, help="measure this existing review page instead")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsi-ncmi-bench-predict-review"))
    ap.add_argument("--chromium", default=shutil.which("chromium"))
    ap.add_argument("--screenshot", type=Path)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    print(f"machine: {machine()}")
    page = args.page or predict_page(args)
    review = page.parent
    size, disk, n_files = folder_size(review)
    part = {name: folder_size(review / name)[0] if (review / name).is_dir() else 0
            for name in ("slides", "data", "attention", "tissue", "heatmaps")}
    linked = part["attention"] + part["tissue"] + part["heatmaps"]
    print(f"review folder {review}: {size / 2**20:.1f} MiB in {n_files} files "
          f"({disk / 2**20:.1f} MiB by du); pyramids {part['slides'] / 2**20:.1f} MiB, data "
          f"scripts {part['data'] / 2**10:.0f} KiB, linked GeoJSON/PNG {linked / 2**20:.1f} MiB "
          "(hard links to the workspace's files where possible: no extra disk)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        print(f"chromium {browser.version}, viewport 1366 × 768, {args.runs} runs, medians:")
        print(f"  {measure(browser, page.as_uri(), args.runs, open_slide=True)}")
        if args.screenshot:
            screenshot(browser, page.as_uri(), args.screenshot)
        browser.close()


if __name__ == "__main__":
    main()
