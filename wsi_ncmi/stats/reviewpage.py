"""The review folder: a static page to review predictions on zoomable slides.

``write_review`` writes a folder that opens from disk (``file://``) or any static web server
and loads nothing from the network (its Content-Security-Policy allows only its own files).
Data are JavaScript files loaded by ``<script>`` tags, since browsers refuse ``fetch`` of
``file://`` JSON. The table loads only ``data/index.js``; a slide's data and image tiles load
when the slide is opened.

Files (paths relative to the folder):

- ``index.html``: the page; its ``<title>`` is the run's title, HTML-escaped.
- ``assets/review.css``, ``assets/review.js`` (table, filters, slide panel),
  ``assets/viewer.js`` (the tile viewer), ``assets/icon.svg``: copied from the package, the
  project's own code.
- ``data/index.js``: ``window.WSI_REVIEW = {...}`` with
  ``format`` (``"wsi-ncmi review"``), ``version`` (1), ``title``, ``notes`` (list of
  [name, value] pairs shown under the title), ``classes`` (class names, in probability
  order), ``has_truth`` (true when any slide has a true label), ``colormap`` (256
  ``#rrggbb`` colours of matplotlib's ``turbo``, the PNG heatmaps' map, for percentiles
  0–100), ``top_k`` and ``slides``: one object per slide, in the caller's order, with
  ``id``, ``predicted`` (class name), ``probabilities`` (one per class, in ``classes``
  order, sum 1), ``review`` (true when flagged for review), ``truth`` (the true label; the
  key is absent when unknown, so an unlabelled run carries no label), ``n_tiles``,
  ``pyramid`` (whether a zoomable image exists) and ``data`` (the slide's data script).
- ``data/slide_<n>.js`` (``n`` = the slide's position, four digits; ids never become file
  names here): ``WSIReview.receive({...})`` with ``index`` (n), ``id``, ``level0``
  ([width, height] px), ``mpp`` (level-0 µm/px or null), ``pyramid`` (null, or ``url``
  of the ``<name>_files/`` folder, ``width``/``height`` of its full size in px,
  ``tile_size``, ``overlap``, ``format``, ``levels``, ``downsample``: level-0 px per
  full-size px), ``tiles`` (``x``, ``y``, ``side``: level-0 px of each tile's top-left
  and side; ``attention``: α per tile, sums to 1 over the slide; ``percentile``: rank
  within the slide, 100 = most attended, as in the PNG heatmaps), ``top`` (indices of
  the ``top_k`` most attended tiles, most first), ``tissue`` (regions, each a list of
  rings, exterior first then holes, each ring a flat [x0, y0, x1, y1, ...] list of level-0
  px) and ``links`` (``label``, ``href`` relative to the folder, e.g. the GeoJSON files).
- Pyramids (written by :func:`wsi_ncmi.slides.deepzoom.write_pyramid`, not by this
  module): ``<name>.dzi`` + ``<name>_files/`` inside the folder, e.g. ``slides/<id>.dzi``.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from ..slides.deepzoom import read_dzi
from .attention import COLORMAP, attention_percentiles, attention_ranks

ASSETS = ("review.css", "review.js", "viewer.js", "icon.svg")
FORMAT_NAME = "wsi-ncmi review"
FORMAT_VERSION = 1
DEFAULT_TOP_K = 8


@dataclass(frozen=True)
class ReviewSlide:
    """One slide of the review page, as plain data.

    ``probabilities``: class name → probability (0–1, one per class). ``review``: flagged
    for review. ``level0_size``: (width, height) px. ``true_label``: None when unknown
    (nothing about labels is written then). ``dzi``: the pyramid's ``.dzi`` path relative
    to the review folder and inside it, or None (no image: overlay and outline only).
    ``mpp``: level-0 µm/px for the scale bar, or None. ``tiles``: (N×3) level-0 px (x, y,
    side) of each tile's square; ``attention``: (N,) α per tile in the same order.
    ``tissue``: regions, each a list of rings (exterior first, then holes), each ring a
    sequence of level-0 (x, y). ``links``: label → file (absolute, or relative to the
    current folder), linked from the page relative to the review folder.
    """

    slide_id: str
    predicted_class: str
    probabilities: Mapping[str, float]
    review: bool
    level0_size: tuple[int, int]
    true_label: str | None = None
    dzi: str | Path | None = None
    mpp: float | None = None
    tiles: Sequence[Sequence[int]] | np.ndarray = ()
    attention: Sequence[float] | np.ndarray = ()
    tissue: Sequence[Sequence[Sequence[Sequence[float]]]] = ()
    links: Mapping[str, str | Path] = field(default_factory=dict)


def write_review(
    out_dir: str | Path,
    slides: Sequence[ReviewSlide],
    classes: Sequence[str],
    title: str,
    *,
    notes: Mapping[str, str] | None = None,
    top_k: int = DEFAULT_TOP_K,
) -> Path:
    """Write the review page into ``out_dir`` (see the module docstring) and return the
    path of its ``index.html``.

    ``classes``: class names in probability order; ``notes``: facts shown under the title
    (run, head, review threshold…). Data scripts of an earlier page in ``out_dir`` are
    replaced; pyramids are left alone. Bad input is an :class:`InputError` naming the
    slide.
    """
    out_dir = Path(out_dir)
    classes = [str(c) for c in classes]
    if not classes or len(set(classes)) != len(classes):
        raise InputError(f"review page: classes must be distinct and non-empty, got {classes}")
    ids = [s.slide_id for s in slides]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"review page: slide id(s) listed twice: {', '.join(dup[:5])}")
    records = [_slide_record(out_dir, n, s, classes, top_k) for n, s in enumerate(slides)]
    _copy_assets(out_dir)
    data_dir = out_dir / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    rows = []
    for n, (slide, record) in enumerate(zip(slides, records, strict=True)):
        script = f"data/slide_{n:04d}.js"
        (out_dir / script).write_text(f"WSIReview.receive({_json(record)});\n")
        rows.append(_row(slide, classes, record, script))
    index = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "title": title,
             "notes": [[str(k), str(v)] for k, v in (notes or {}).items()],
             "classes": classes, "has_truth": any(s.true_label is not None for s in slides),
             "colormap": colormap_hex(), "top_k": top_k, "slides": rows}
    with atomic_path(data_dir / "index.js") as tmp:
        tmp.write_text(f"window.WSI_REVIEW = {_json(index)};\n")
    template = resources.files(__package__).joinpath("review_assets", "index.html").read_text()
    page = string.Template(template).substitute(title=html.escape(title))
    with atomic_path(out_dir / "index.html") as tmp:
        tmp.write_text(page)
    return out_dir / "index.html"


def polygons_from_geojson(path: str | Path) -> list[list[list[tuple[float, float]]]]:
    """Tissue regions from a GeoJSON FeatureCollection of Polygons/MultiPolygons (as the
    tile stage writes ``tissue/<id>.geojson``): a list of regions, each a list of rings
    (exterior first), each ring a list of (x, y)."""
    path = Path(path)
    try:
        features = json.loads(path.read_text())["features"]
        regions = []
        for feature in features:
            geom = feature["geometry"]
            polys = geom["coordinates"] if geom["type"] == "MultiPolygon" else (
                [geom["coordinates"]] if geom["type"] == "Polygon" else [])
            regions += [[[(float(x), float(y)) for x, y, *_ in ring] for ring in poly]
                        for poly in polys]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a GeoJSON FeatureCollection of polygons "
                         f"({' '.join(str(exc).split()) or type(exc).__name__})") from None
    return regions


def colormap_hex(n: int = 256) -> list[str]:
    """``n`` colours of the heatmaps' colour map, low to high, as ``#rrggbb``."""
    from matplotlib import colormaps

    rgb = np.round(colormaps[COLORMAP](np.linspace(0, 1, n))[:, :3] * 255).astype(int)
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb]


def _slide_record(out_dir: Path, n: int, slide: ReviewSlide, classes: list[str],
                  top_k: int) -> dict:
    """The per-slide data script's content; checks the slide's fields."""
    sid = slide.slide_id
    where = f"review page, slide {sid!r}"
    if not isinstance(sid, str) or not sid:
        raise InputError(f"review page: slide {n} has an empty id")
    _check_call(slide, classes, where)
    width, height = (int(v) for v in slide.level0_size)
    if width < 1 or height < 1:
        raise InputError(f"{where}: level-0 size {slide.level0_size} is not positive")
    tiles = np.asarray(slide.tiles, dtype=np.float64).reshape(-1, 3)
    attention = np.asarray(slide.attention, dtype=np.float64).reshape(-1)
    if len(tiles) != len(attention):
        raise InputError(f"{where}: {len(tiles)} tile(s) but {len(attention)} attention "
                         "value(s)")
    if not (np.isfinite(tiles).all() and np.isfinite(attention).all()) or (attention < 0).any():
        raise InputError(f"{where}: tile coordinates or attention not finite and non-negative")
    if len(tiles) and (tiles[:, 2] <= 0).any():
        raise InputError(f"{where}: a tile side is not positive")
    pct = attention_percentiles(attention) if len(attention) else np.zeros(0)
    top = np.argsort(attention_ranks(attention))[:top_k] if len(attention) else []
    return {"index": n, "id": sid, "level0": [width, height],
            "mpp": None if slide.mpp is None else float(slide.mpp),
            "pyramid": _pyramid(out_dir, slide.dzi, (width, height), where),
            "tiles": {"x": _ints(tiles[:, 0]), "y": _ints(tiles[:, 1]),
                      "side": _ints(tiles[:, 2]),
                      "attention": [float(f"{a:.6g}") for a in attention],
                      "percentile": [round(float(p), 1) for p in pct]},
            "top": [int(i) for i in top],
            "tissue": [[[round(float(v), 1) for point in ring for v in point[:2]]
                        for ring in region] for region in slide.tissue],
            "links": [{"label": str(label), "href": _href(out_dir, Path(target))}
                      for label, target in slide.links.items()]}


def _check_call(slide: ReviewSlide, classes: list[str], where: str) -> None:
    if set(slide.probabilities) != set(classes):
        raise InputError(f"{where}: probabilities for {sorted(slide.probabilities)}, "
                         f"expected one per class {classes}")
    probs = [float(slide.probabilities[c]) for c in classes]
    if not all(math.isfinite(p) and 0 <= p <= 1 for p in probs):
        raise InputError(f"{where}: probabilities must lie in [0, 1], got {probs}")
    if slide.predicted_class not in classes:
        raise InputError(f"{where}: predicted class {slide.predicted_class!r} not in {classes}")
    if slide.true_label is not None and slide.true_label not in classes:
        raise InputError(f"{where}: true label {slide.true_label!r} not in {classes}")


def _row(slide: ReviewSlide, classes: list[str], record: dict, script: str) -> dict:
    row = {"id": slide.slide_id, "predicted": slide.predicted_class,
           "probabilities": [round(float(slide.probabilities[c]), 4) for c in classes],
           "review": bool(slide.review)}
    if slide.true_label is not None:
        row["truth"] = slide.true_label
    row.update(n_tiles=len(record["tiles"]["x"]), pyramid=record["pyramid"] is not None,
               data=script)
    return row


def _pyramid(out_dir: Path, dzi: str | Path | None, level0: tuple[int, int],
             where: str) -> dict | None:
    """The pyramid record of a ``.dzi`` inside ``out_dir``, checked against the slide's
    level-0 size (its full size must be level 0 shrunk by a power of two, rounding up)."""
    if dzi is None:
        return None
    rel = Path(dzi)
    path = (out_dir / rel).resolve()
    if rel.is_absolute() or not path.is_relative_to(out_dir.resolve()) \
            or rel.suffix != ".dzi":
        raise InputError(f"{where}: pyramid {dzi} must be a .dzi path inside {out_dir}")
    info = read_dzi(path)
    downsample = 2 ** max(0, round(math.log2(level0[0] / info.width)))
    if (math.ceil(level0[0] / downsample), math.ceil(level0[1] / downsample)) != \
            (info.width, info.height):
        raise InputError(f"{path}: {info.width} × {info.height} px is not the slide's "
                         f"{level0[0]} × {level0[1]} px shrunk by a power of two: another "
                         "slide's pyramid?")
    files = rel.with_name(rel.stem + "_files").as_posix()
    return {"url": quote(files) + "/", "width": info.width, "height": info.height,
            "tile_size": info.tile_size, "overlap": info.overlap, "format": info.format,
            "levels": info.levels, "downsample": downsample}


def _href(out_dir: Path, target: Path) -> str:
    rel = os.path.relpath(target.resolve(), out_dir.resolve())
    return quote(Path(rel).as_posix())


def _ints(values: np.ndarray) -> list[int]:
    return [int(round(v)) for v in values]


def _json(obj) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def _copy_assets(out_dir: Path) -> None:
    source = resources.files(__package__).joinpath("review_assets")
    (out_dir / "assets").mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        with atomic_path(out_dir / "assets" / name) as tmp:
            tmp.write_bytes(source.joinpath(name).read_bytes())
