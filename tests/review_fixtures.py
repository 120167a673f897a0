"""Inputs for the review page from real synthetic slides, for tests and the benchmark, and
the helpers the page's browser tests share (the ``browser`` fixture is in ``conftest.py``).

Each slide is generated, tiled by the real tile stage (tile squares and the tissue GeoJSON)
and given a Deep Zoom pyramid; its attention is higher on tiles whose centre lies on the
planted lesion (plus noise), and its probabilities are a seeded random draw that favours the
true class (the lesion kind).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np

from wsi_ncmi.formats.tilefile import read_tile_file
from wsi_ncmi.slides.deepzoom import Pyramid, write_pyramid
from wsi_ncmi.slides.synthetic import make_layout, write_synthetic_slide
from wsi_ncmi.stages.tile import TileConfig, tile_slide
from wsi_ncmi.stats.reviewpage import ReviewSlide, polygons_from_geojson

CLASSES = ["dense", "glands"]
MPP = 0.25
REVIEW_THRESHOLD = 0.8
#: the synthetic slides' stroma colour (RGB): where the slide image is drawn
STROMA = np.array([232, 168, 204])


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


def _js_json(path: Path, prefix: str) -> dict:
    text = path.read_text()
    assert text.startswith(prefix) and text.endswith(");\n" if prefix.endswith("(") else ";\n")
    return json.loads(text[len(prefix):].rstrip("\n;").removesuffix(")"))


def page_index(review: Path) -> dict:
    """The page's ``data/index.js`` object."""
    return _js_json(review / "data" / "index.js", "window.WSI_REVIEW = ")


def page_slide(review: Path, n: int) -> dict:
    """The data script of the page's slide ``n``."""
    return _js_json(review / "data" / f"slide_{n:04d}.js", "WSIReview.receive(")


def watch(tab) -> tuple[list[str], list[str], list[str]]:
    """(console and page errors, finished request URLs, failed or ≥ 400 URLs) of ``tab``,
    filled as it runs."""
    errors, finished, failed = [], [], []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.on("requestfinished", lambda r: finished.append(r.url))
    tab.on("requestfailed", lambda r: failed.append(r.url))
    tab.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    return errors, finished, failed


def canvas(tab) -> np.ndarray:
    """The slide view as an (h×w×3) RGB int array."""
    png = tab.locator("#view").screenshot()
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].astype(int)


def wait_idle(tab) -> None:
    """Wait for a frame to be drawn, then for its tiles (a selector: the page's
    Content-Security-Policy forbids the eval that a JavaScript predicate would need)."""
    tab.wait_for_timeout(100)
    tab.locator("#view[data-idle='1']").wait_for(state="attached", timeout=15000)


def tile_levels(finished: list[str]) -> set[int]:
    """The pyramid levels of the requested tile URLs."""
    return {int(m) for m in re.findall(r"_files/(\d+)/\d+_\d+\.jpeg", " ".join(finished))}


def check_slide_view(tab, row_text: str, folder: str, finished: list[str]) -> None:
    """Open the slide whose table row holds ``row_text`` and check its view: image tiles
    load from ``folder`` only, the slide image draws (stroma colour), the attention overlay
    toggles with ``o``, and zooming in (keys and wheel) makes the view draw from a deeper
    pyramid level whose tiles it then loads (the gallery's thumbnails may have loaded some
    of that level already: tile URLs alone cannot tell)."""
    tab.locator("#slides tbody tr", has_text=row_text).click()
    wait_idle(tab)
    tiles = [u for u in finished if re.search(r"_files/\d+/\d+_\d+\.jpeg$", u)]
    assert tiles and all(u.startswith(folder) for u in finished), "a request left the folder"
    with_overlay = canvas(tab)
    tab.locator("body").press("o")
    assert not tab.locator("#overlay").is_checked()
    wait_idle(tab)
    slide_only = canvas(tab)
    assert slide_only.std() > 10
    assert (np.abs(slide_only - STROMA).max(-1) < 30).mean() > 0.01, "no tissue drawn"
    assert np.abs(with_overlay - slide_only).mean() > 3, "overlay toggle changed nothing"
    tab.locator("body").press("o")
    fit_level = int(tab.locator("#view").get_attribute("data-level"))
    n_requests = len(finished)
    tab.locator("#view").focus()
    for _ in range(3):
        tab.keyboard.press("+")
    box = tab.locator("#view").bounding_box()
    tab.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    tab.mouse.wheel(0, -200)
    wait_idle(tab)
    level = int(tab.locator("#view").get_attribute("data-level"))
    assert level > fit_level, "zooming in did not reach a deeper level"
    assert level in tile_levels(finished), "the deeper level's tiles were not loaded"
    new = tile_levels(finished[n_requests:])
    assert new and new <= set(range(fit_level + 1, level + 1)), \
        f"zooming in from level {fit_level} to {level} loaded tiles of levels {new}"
