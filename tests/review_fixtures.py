"""Inputs for the review page from real synthetic slides, for tests and the benchmark.

Each slide is generated, tiled by the real tile stage (tile squares and the tissue GeoJSON)
and given a Deep Zoom pyramid; its attention is higher on tiles whose centre lies on the
planted lesion (plus noise), and its probabilities are a seeded random draw that favours the
true class (the lesion kind).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsi_ncmi.formats.tilefile import read_tile_file
from wsi_ncmi.slides.deepzoom import Pyramid, write_pyramid
from wsi_ncmi.slides.synthetic import make_layout, write_synthetic_slide
from wsi_ncmi.stages.tile import TileConfig, tile_slide
from wsi_ncmi.stats.reviewpage import ReviewSlide, polygons_from_geojson

CLASSES = ["dense", "glands"]
MPP = 0.25
REVIEW_THRESHOLD = 0.8


def review_inputs(root: Path, n: int, *, width: int = 2048, height: int = 1536,
                  finest_mpp: float = MPP, tile_mpp: float = 1.0, tile_size: int = 64,
                  seed: int = 0) -> tuple[Path, list[ReviewSlide], list[Pyramid]]:
    """``n`` slides under ``root`` (slides reused when present); returns the review folder
    ``root/review`` (pyramids in its ``slides/``), the labelled slides and their pyramids."""
    review = root / "review"
    rng = np.random.default_rng(seed)
    slides, pyramids = [], []
    for i in range(n):
        sid, kind = f"S{i:03d}", CLASSES[i % len(CLASSES)]
        path = root / "slides" / f"{sid}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            write_synthetic_slide(path, width, height, mpp=MPP, seed=seed + i, lesion=kind,
                                  downsamples=(1, 4, 16))
        workspace = root / "workspace"
        tile_file = workspace / "tiles" / f"{sid}.h5"
        if not tile_file.is_file():
            tile_slide(path, sid, workspace, TileConfig(target_mpp=tile_mpp, tile_size=tile_size))
        grid = read_tile_file(tile_file)
        side = int(grid.size_level0)
        attention = _lesion_attention(make_layout(width, height, seed + i, kind), grid.coords,
                                      side, rng)
        pyramids.append(write_pyramid(path, review / "slides", sid, finest_mpp=finest_mpp))
        proba = rng.dirichlet([2.5 if c == kind else 1.0 for c in CLASSES])
        tissue = workspace / "tissue" / f"{sid}.geojson"
        slides.append(ReviewSlide(
            slide_id=sid, predicted_class=CLASSES[int(proba.argmax())],
            probabilities=dict(zip(CLASSES, proba.tolist(), strict=True)),
            review=bool(proba.max() < REVIEW_THRESHOLD), level0_size=(width, height),
            true_label=kind, dzi=f"slides/{sid}.dzi", mpp=MPP,
            tiles=np.c_[grid.coords, np.full(len(grid.coords), side)], attention=attention,
            tissue=polygons_from_geojson(tissue),
            links={"tissue outline (GeoJSON)": tissue}))
    return review, slides, pyramids


def _lesion_attention(layout, coords: np.ndarray, side: int, rng) -> np.ndarray:
    down = 16
    _, lesion = layout.masks(down)
    cx = np.clip((coords[:, 0] + side // 2) // down, 0, lesion.shape[1] - 1)
    cy = np.clip((coords[:, 1] + side // 2) // down, 0, lesion.shape[0] - 1)
    logits = 3.0 * lesion[cy, cx] + rng.normal(0, 0.5, len(coords))
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()
