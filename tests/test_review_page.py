"""The review page: Deep Zoom pyramids, the folder writer, and the page in headless Chromium.

Inputs are real: synthetic slides tiled by the tile stage, pyramids from OpenSlide's Deep Zoom
generator. The browser test needs Debian's ``chromium`` and Playwright (the ``dev`` extra) and
is skipped with the reason when either is missing.
"""

from __future__ import annotations

import http.server
import json
import math
import shutil
import threading
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
from review_fixtures import (
    CLASSES,
    MPP,
    canvas,
    check_slide_view,
    page_index,
    page_slide,
    review_inputs,
    wait_idle,
    watch,
)

from wsi_ncmi.errors import InputError
from wsi_ncmi.slides.deepzoom import read_dzi, write_pyramid
from wsi_ncmi.stats.reviewpage import ReviewSlide, polygons_from_geojson, write_review

N_SLIDES = 3
W, H = 2048, 1536
ODD_ID = '<img src=x onerror="alert(1)">&amp;'


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(review folder, labelled slides, pyramids) for three slides at full resolution."""
    return review_inputs(tmp_path_factory.mktemp("review"), N_SLIDES, width=W, height=H)


@pytest.fixture(scope="module")
def page(inputs) -> Path:
    """The page of the three slides plus one unlabelled slide with an HTML-like id and no
    pyramid."""
    review, slides, _ = inputs
    odd = ReviewSlide(ODD_ID, "glands", {"dense": 0.3, "glands": 0.7}, True, (W, H),
                      tiles=[[0, 0, 256], [256, 0, 256]], attention=[0.25, 0.75])
    return write_review(review, [*slides, odd], CLASSES, "Night run <b>42</b>",
                        notes={"head": "linear probe"})


def _copy_pyramids(inputs, dest: Path) -> Path:
    shutil.copytree(inputs[0] / "slides", dest / "slides")
    return dest


# --- pyramids ---------------------------------------------------------------------------


def test_pyramid_is_a_complete_dzi_at_full_resolution(inputs):
    review, _, pyramids = inputs
    p = pyramids[0]
    assert (p.info.width, p.info.height, p.downsample, p.mpp) == (W, H, 1, MPP)
    assert p.limited_by == "level 0" and read_dzi(p.dzi) == p.info
    levels = sorted(int(d.name) for d in p.tiles_dir.iterdir())
    assert levels == list(range(p.info.levels)) and p.info.levels == math.ceil(math.log2(W)) + 1
    for level in levels:
        f = 2 ** (levels[-1] - level)
        cols = math.ceil(math.ceil(W / f) / p.info.tile_size)
        rows = math.ceil(math.ceil(H / f) / p.info.tile_size)
        names = {q.name for q in (p.tiles_dir / str(level)).iterdir()}
        assert names == {f"{c}_{r}.jpeg" for c in range(cols) for r in range(rows)}
    files = [q for q in p.tiles_dir.rglob("*.jpeg")]
    assert len(files) == p.n_tiles
    assert p.bytes == sum(q.stat().st_size for q in files) + p.dzi.stat().st_size


def test_resolution_cap_and_tile_pixels_match_openslide(inputs, tmp_path):
    import openslide

    slide_path = inputs[0].parent / "slides" / "S001.tif"
    p = write_pyramid(slide_path, tmp_path, "s", finest_mpp=0.8)
    assert (p.downsample, p.mpp, p.limited_by) == (4, 1.0, "resolution cap")
    assert (p.info.width, p.info.height) == (W // 4, H // 4)
    assert write_pyramid(slide_path, tmp_path, "t", max_scale=0.1).downsample == 16
    # Tile (1, 1) of the full size starts at full-size px 254 - 1 (overlap) = level-1 px 253.
    tile = cv2.imread(str(p.tiles_dir / str(p.info.levels - 1) / "1_1.jpeg"))[..., ::-1]
    with openslide.OpenSlide(str(slide_path)) as slide:
        assert slide.level_downsamples[1] == 4
        ref = np.asarray(slide.read_region((253 * 4, 253 * 4), 1, tile.shape[1::-1]))[..., :3]
    assert np.abs(tile.astype(int) - ref).mean() < 4.0


def test_byte_budget_is_honoured(inputs, tmp_path):
    slide_path = inputs[0].parent / "slides" / "S000.tif"
    full = inputs[2][0]
    budget = full.bytes // 3
    p = write_pyramid(slide_path, tmp_path, "s", max_bytes=budget)
    files = [q for q in p.tiles_dir.rglob("*") if q.is_file()]
    on_disk = sum(q.stat().st_size for q in files) + p.dzi.stat().st_size
    assert on_disk == p.bytes <= budget and p.limited_by == "byte budget"
    assert p.info.width < W and p.downsample == W // p.info.width
    assert sorted(int(d.name) for d in p.tiles_dir.iterdir()) == list(range(p.info.levels))
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(InputError, match="one-tile overview"):
        write_pyramid(slide_path, tmp_path, "s", max_bytes=1000)


def test_pyramid_refuses_bad_settings(inputs, tmp_path):
    slide_path = inputs[0].parent / "slides" / "S000.tif"
    with pytest.raises(InputError, match="max scale"):
        write_pyramid(slide_path, tmp_path, "s", max_scale=2.0)
    with pytest.raises(InputError, match="plain file name"):
        write_pyramid(slide_path, tmp_path, "../escape")


# --- the folder writer ------------------------------------------------------------------


def test_folder_holds_every_slide_and_its_data(inputs, page):
    review, slides, pyramids = inputs
    out = page.parent
    for name in ("index.html", "assets/review.js", "assets/viewer.js", "assets/review.css"):
        assert (out / name).is_file()
    index = page_index(out)
    assert index["classes"] == CLASSES and index["has_truth"] is True
    assert len(index["colormap"]) == 256
    assert [r["id"] for r in index["slides"]] == [s.slide_id for s in slides] + [ODD_ID]
    for n, (slide, pyramid) in enumerate(zip(slides, pyramids, strict=True)):
        row, data = index["slides"][n], page_slide(out, n)
        assert row["probabilities"] == pytest.approx(
            [slide.probabilities[c] for c in CLASSES], abs=1e-4)
        assert (row["review"], row["truth"], row["predicted"]) == (
            slide.review, slide.true_label, slide.predicted_class)
        tiles = np.asarray(slide.tiles)
        assert data["tiles"]["x"] == tiles[:, 0].tolist()
        assert data["tiles"]["side"] == tiles[:, 2].tolist()
        att = np.asarray(data["tiles"]["attention"])
        assert att.sum() == pytest.approx(1.0, abs=1e-4)
        assert data["top"] == np.argsort(-np.asarray(slide.attention), kind="stable")[:8].tolist()
        assert data["tiles"]["percentile"][data["top"][0]] == 100.0
        assert data["pyramid"]["levels"] == pyramid.info.levels
        assert (out / data["pyramid"]["url"] / "0" / "0_0.jpeg").is_file()
        assert len(data["tissue"]) == len(slide.tissue) and data["tissue"][0][0][:2] == \
            pytest.approx(slide.tissue[0][0][0], abs=0.05)
        target = out / data["links"][0]["href"]
        assert target.resolve() == Path(slide.links["tissue outline (GeoJSON)"]).resolve()
    assert page_slide(out, N_SLIDES)["pyramid"] is None


def test_unlabelled_page_carries_no_label(inputs, tmp_path):
    _, slides, _ = inputs
    out = _copy_pyramids(inputs, tmp_path)
    unlabelled = [ReviewSlide(**{**s.__dict__, "true_label": None}) for s in slides]
    write_review(out, unlabelled, CLASSES, "predict")
    assert page_index(out)["has_truth"] is False
    for path in (out / "data").iterdir():
        assert '"truth"' not in path.read_text()


def test_ids_and_title_are_escaped(page):
    text = page.read_text()
    assert "Night run &lt;b&gt;42&lt;/b&gt;" in text and "<b>42" not in text
    assert "onerror" not in text
    assert page_index(page.parent)["slides"][-1]["id"] == ODD_ID
    assert sorted(p.name for p in (page.parent / "data").iterdir()) == \
        ["index.js"] + [f"slide_{n:04d}.js" for n in range(N_SLIDES + 1)]


def test_rewrite_drops_stale_slide_scripts(inputs, tmp_path):
    _, slides, _ = inputs
    out = _copy_pyramids(inputs, tmp_path)
    write_review(out, slides, CLASSES, "first")
    write_review(out, slides[:1], CLASSES, "second")
    assert sorted(p.name for p in (out / "data").iterdir()) == ["index.js", "slide_0000.js"]


@pytest.mark.parametrize("change, message", [
    ({"attention": [1.0]}, "attention value"),
    ({"probabilities": {"dense": 1.0}}, "one per class"),
    ({"predicted_class": "other"}, "not in"),
    ({"dzi": "../elsewhere.dzi"}, "inside"),
    ({"level0_size": (W * 2, H)}, "shrunk by a power of two"),
])
def test_bad_slides_are_refused(inputs, tmp_path, change, message):
    _, slides, _ = inputs
    out = _copy_pyramids(inputs, tmp_path)
    with pytest.raises(InputError, match=message):
        write_review(out, [ReviewSlide(**{**slides[0].__dict__, **change})], CLASSES, "x")


def test_duplicate_ids_are_refused(inputs, tmp_path):
    _, slides, _ = inputs
    with pytest.raises(InputError, match="listed twice"):
        write_review(_copy_pyramids(inputs, tmp_path), [slides[0], slides[0]], CLASSES, "x")


def test_tissue_polygons_come_back_from_geojson(tmp_path):
    feature = {"type": "Feature", "properties": {},
               "geometry": {"type": "Polygon",
                            "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 0]],
                                            [[2, 2], [3, 2], [3, 3], [2, 2]]]}}
    path = tmp_path / "t.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    regions = polygons_from_geojson(path)
    assert len(regions) == 1 and len(regions[0]) == 2 and regions[0][1][1] == (3.0, 2.0)
    path.write_text("{}")
    with pytest.raises(InputError, match="t.geojson"):
        polygons_from_geojson(path)


# --- the page in a real browser ---------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def served(page):
    """The page's folder on a static server at 127.0.0.1."""
    handler = partial(_QuietHandler, directory=str(page.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("scheme", ["file", "http"])
def test_page_in_chromium(browser, inputs, page, served, scheme, tmp_path_factory):
    url = page.as_uri() if scheme == "file" else served
    tab = browser.new_page(viewport={"width": 1280, "height": 720})
    errors, finished, failed = watch(tab)
    tab.goto(url)
    tab.wait_for_load_state("load")

    rows = tab.locator("#slides tbody tr")
    assert rows.count() == N_SLIDES + 1
    assert not [u for u in finished if ".jpeg" in u or "/slide_" in u], "table loaded images"
    assert tab.locator("#slides tbody td", has_text="onerror").first.text_content() == ODD_ID
    assert tab.locator("#slides img").count() == 0
    slides = inputs[1]
    wrong = [s.slide_id for s in slides if s.true_label != s.predicted_class]
    assert wrong, "the seeded fixture should hold a wrong prediction"
    tab.select_option("#show", "flagged")
    assert rows.count() == sum(s.review for s in slides) + 1
    tab.select_option("#show", "wrong")
    assert rows.count() == len(wrong)
    tab.select_option("#show", "all")
    tab.select_option("#order", "wrong")
    first = [rows.nth(i).locator("td").first.text_content() for i in range(len(wrong))]
    assert sorted(first) == sorted(wrong)

    check_slide_view(tab, "S000", url.rsplit("/", 1)[0] + "/", finished)
    before_drag = canvas(tab)
    box = tab.locator("#view").bounding_box()
    tab.mouse.down()
    tab.mouse.move(box["x"] + box["width"] / 2 - 150, box["y"] + box["height"] / 2, steps=5)
    tab.mouse.up()
    wait_idle(tab)
    assert np.abs(canvas(tab) - before_drag).mean() > 3, "dragging did not pan"
    tab.locator(".thumb").first.click()
    wait_idle(tab)
    assert not failed and not errors, (failed, errors)
    shot = tmp_path_factory.mktemp("artifacts") / f"review_page_{scheme}.png"
    tab.screenshot(path=str(shot))
    print(f"review page screenshot: {shot}")
    tab.close()
