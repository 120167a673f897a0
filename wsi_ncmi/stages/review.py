"""The review page of ``predict`` and ``eval --review``: a slide's files → one static folder.

The page (HTML, scripts, data layout) is :mod:`wsi_ncmi.stats.reviewpage`; pyramids are
:func:`wsi_ncmi.slides.deepzoom.write_pyramid`. This module gathers what each slide's view
needs from the files the pipeline already wrote (feature file: tile squares; tile file:
level-0 size and µm/px; tissue GeoJSON: outline) and keeps the review folder self-contained,
so that it can be copied alone. Besides ``index.html``, ``assets/``, ``data/`` and the
pyramids ``slides/<id>.dzi`` + ``slides/<id>_files/``, it holds the files the page links to:

- ``attention/<id>.geojson``: the tile squares with their attention, for QuPath;
- ``tissue/<id>.geojson``: the tissue outline, where the tile stage's one is found;
- ``heatmaps/<id>.png``: the heatmap PNG, where one was drawn.

Linked files are hard links to the workspace's files where the file system allows it (no
extra disk), copies otherwise; all three folders are remade at every page build, so they
follow reruns and hold no slide the page does not list.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_json
from ..errors import InputError
from ..formats.featurefile import bag_path, tile_geometry
from ..formats.ids import id_path
from ..formats.runfolder import fold_dir
from ..formats.tilefile import read_tile_file
from ..slides.deepzoom import DEFAULT_MAX_BYTES, write_pyramid
from ..stats.attention import attention_geojson
from ..stats.reviewpage import ReviewSlide, polygons_from_geojson, write_review

log = logging.getLogger("wsi_ncmi")

DEFAULT_REVIEW_THRESHOLD = 0.8
SLIDES = "slides"
LINKED = ("attention", "tissue", "heatmaps")
#: the smallest per-slide budget accepted: room for a few 254-px JPEG tiles
MIN_BYTES = 2**20 // 4


@dataclass(frozen=True)
class ReviewSettings:
    """The review page's pyramids: ``finest_mpp``, the finest level's µm/px (a resolution
    cap; slides scanned coarser keep their level 0); ``max_bytes``, the bytes one slide's
    pyramid may take (coarser levels are kept when the finer ones would not fit)."""

    finest_mpp: float = 1.0
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if not self.finest_mpp > 0:
            raise InputError(f"--review-mpp {self.finest_mpp}: must be a positive µm/px")
        if not self.max_bytes >= MIN_BYTES:
            raise InputError(f"--review-max-mb {self.max_bytes / 2**20:g}: must be at least "
                             f"{MIN_BYTES / 2**20:g} MiB")


@dataclass(frozen=True)
class SlideFiles:
    """A slide's files in a workspace: the feature file (required: tile squares in attention
    order) and, where they exist, the tile file, the tissue outline, the heatmap PNG and its
    attention GeoJSON."""

    features: Path
    tiles: Path | None = None
    tissue: Path | None = None
    heatmap: Path | None = None
    attention: Path | None = None


def needs_review(probabilities: Iterable[float], threshold: float) -> bool:
    """The review flag: the top class probability (0–1) is below ``threshold``."""
    return bool(max(probabilities) < threshold)


def pyramid_path(review_dir: Path, slide_id: str) -> Path:
    """``review_dir/slides/<id>.dzi``."""
    return id_path(Path(review_dir) / SLIDES, slide_id, ".dzi")


def write_slide_pyramid(slide_path: Path, review_dir: Path, slide_id: str,
                        settings: ReviewSettings, mpp: float | None) -> dict:
    """Write the slide's pyramid into ``review_dir/slides/``; return what a prediction record
    keeps of it: ``settings``, ``dzi`` (relative to ``review_dir``), ``bytes``, ``limited_by``
    (``level 0`` | ``resolution cap`` | ``byte budget``), ``mpp`` (µm/px of its finest level,
    None when unknown), ``downsample`` (level-0 px per finest-level px) and ``level0``
    ([width, height] px). ``mpp``: the slide's level-0 µm/px when already resolved (else its
    metadata's)."""
    dzi = pyramid_path(review_dir, slide_id)
    p = write_pyramid(slide_path, dzi.parent, dzi.stem, finest_mpp=settings.finest_mpp,
                      max_bytes=settings.max_bytes, mpp=mpp)
    return {"settings": asdict(settings), "dzi": dzi.relative_to(review_dir).as_posix(),
            "bytes": p.bytes, "limited_by": p.limited_by, "mpp": p.mpp,
            "downsample": p.downsample, "level0": list(p.level0_size)}


def tile_file_facts(tile_file: Path | None) -> tuple[tuple[int, int] | None, float | None]:
    """(level-0 (width, height) px, level-0 µm/px) recorded in a tile file of ours; None for
    what it does not say (CLAM/TRIDENT files, no file)."""
    if tile_file is None or not tile_file.is_file():
        return None, None
    attrs = read_tile_file(tile_file).attrs
    size = ((int(attrs["slide_width"]), int(attrs["slide_height"]))
            if "slide_width" in attrs and "slide_height" in attrs else None)
    mpp = ((float(attrs["slide_mpp_x"]) + float(attrs["slide_mpp_y"])) / 2
           if "slide_mpp_x" in attrs and "slide_mpp_y" in attrs else None)
    return size, mpp


def review_slide(review_dir: Path, slide_id: str, probabilities: Mapping[str, float],
                 attention: np.ndarray, files: SlideFiles, threshold: float, *,
                 true_label: str | None = None, pyramid: dict | None = None) -> ReviewSlide:
    """One slide of the page: the prediction (``probabilities``: class → 0–1), ``attention``
    (N,) in feature-file row order, the flag by ``threshold``, and its files placed into
    ``review_dir`` (see the module docstring). ``pyramid``: what
    :func:`write_slide_pyramid` returned, or None to use the one in ``review_dir`` if any.
    Level-0 size: the tile file's, else the pyramid's, else the tiles' extent."""
    coords, side = tile_geometry(files.features, ())
    attention = np.asarray(attention, dtype=np.float64)
    if len(coords) != len(attention):
        raise InputError(f"{files.features}: {len(coords)} tile(s) but {len(attention)} "
                         f"attention value(s) for slide {slide_id}")
    size, mpp = tile_file_facts(files.tiles)
    dzi = pyramid_path(review_dir, slide_id)
    if size is None and pyramid is not None:
        size = tuple(pyramid["level0"])
    if size is None:
        size = (int(coords[:, 0].max()) + side, int(coords[:, 1].max()) + side)
    if mpp is None and pyramid is not None and pyramid["mpp"] is not None:
        mpp = pyramid["mpp"] / pyramid["downsample"]
    best = max(probabilities, key=lambda c: probabilities[c])
    return ReviewSlide(
        slide_id=slide_id, predicted_class=best, probabilities=dict(probabilities),
        review=needs_review(probabilities.values(), threshold), level0_size=size,
        true_label=true_label,
        dzi=dzi.relative_to(review_dir).as_posix() if dzi.is_file() else None, mpp=mpp,
        tiles=np.c_[coords, np.full(len(coords), side)], attention=attention,
        tissue=(polygons_from_geojson(files.tissue)
                if files.tissue is not None and files.tissue.is_file() else ()),
        links=_place_links(review_dir, slide_id, files, coords, side, attention))


@contextmanager
def page_lock(review_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock (``.<folder name>.lock`` beside ``review_dir``) while a page
    is built, so shards of one workspace finishing together write one page after the
    other."""
    review_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(review_dir.parent / f".{review_dir.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def clear_links(review_dir: Path) -> None:
    """Remove the linked-file folders before a page build places them anew."""
    for name in LINKED:
        shutil.rmtree(review_dir / name, ignore_errors=True)


def write_page(review_dir: Path, slides: Sequence[ReviewSlide], classes: Sequence[str],
               title: str, notes: Mapping[str, str]) -> list[Path]:
    """Write the page; return its ``index.html`` and ``data/index.js`` (for provenance)."""
    index = write_review(review_dir, slides, classes, title, notes=notes)
    return [index, review_dir / "data" / "index.js"]


@dataclass(frozen=True)
class EvalSlides:
    """What ``eval`` scored: ``rows`` (fold, slide id, linear-probe probabilities in
    ``classes`` order, true label), the run and its feature files, the slide files
    (``slide_paths``, from the manifest) and the folder of ``--heatmaps`` PNGs."""

    run_dir: Path
    split: str
    classes: list[str]
    rows: Sequence[tuple[int, str, np.ndarray, str]]
    features_dir: Path
    slide_paths: Mapping[str, Path]
    heatmaps_dir: Path


def write_eval_review(review_dir: Path, scored: EvalSlides, settings: ReviewSettings,
                      device: str) -> list[Path]:
    """The review page of an evaluated split, true labels beside predictions. A slide scored
    by several folds shows the mean of their probabilities and attention; attention comes
    from the fold that scored it. The slide files give the pyramids: a missing or unreadable
    one leaves the slide without an image (logged). The tile workspace (``features_dir`` =
    ``WORKSPACE/features/<encoder>``) gives tile files and tissue outlines where they exist.
    Pyramids are rewritten at every call. Returns the files to record."""
    from ..model.inference import load_fold, run_model

    features_dir, folds_used = scored.features_dir, sorted({row[0] for row in scored.rows})
    attention: dict[tuple[int, str], np.ndarray] = {}
    for fold in folds_used:
        ids = [sid for k, sid, _, _ in scored.rows if k == fold]
        out = run_model(load_fold(fold_dir(scored.run_dir, fold), device), features_dir, ids)
        attention.update({(fold, sid): a.astype(np.float64)
                          for sid, a in zip(ids, out["attention"], strict=True)})
    rows: dict[str, list[tuple[int, np.ndarray, str]]] = {}
    for fold, sid, proba, truth in scored.rows:
        rows.setdefault(sid, []).append((fold, np.asarray(proba, dtype=np.float64), truth))
    workspace = features_dir.parent.parent if features_dir.parent.name == "features" else None
    shutil.rmtree(review_dir / SLIDES, ignore_errors=True)
    clear_links(review_dir)
    slides = []
    for sid in sorted(rows):
        folds = rows[sid]
        proba = np.mean([p for _, p, _ in folds], axis=0)
        files = SlideFiles(
            features=bag_path(features_dir, sid),
            tiles=id_path(workspace / "tiles", sid, ".h5") if workspace else None,
            tissue=id_path(workspace / "tissue", sid, ".geojson") if workspace else None,
            heatmap=id_path(scored.heatmaps_dir, sid, ".png"))
        pyramid = _eval_pyramid(scored.slide_paths.get(sid), review_dir, sid, settings, files)
        slides.append(review_slide(
            review_dir, sid, dict(zip(scored.classes, proba.tolist(), strict=True)),
            np.mean([attention[(k, sid)] for k, _, _ in folds], axis=0), files,
            DEFAULT_REVIEW_THRESHOLD, true_label=folds[0][2], pyramid=pyramid))
    notes = {"run": str(scored.run_dir), "split": scored.split, "head": "linear probe",
             "folds": ", ".join(map(str, folds_used)),
             "review threshold": f"{DEFAULT_REVIEW_THRESHOLD:g}"}
    if any(len(f) > 1 for f in rows.values()):
        notes["slides in several folds"] = "mean of those folds' probabilities and attention"
    return write_page(review_dir, slides, scored.classes,
                      f"{scored.run_dir.name} · {scored.split} · linear probe", notes)


def _eval_pyramid(slide_path: Path | None, review_dir: Path, slide_id: str,
                  settings: ReviewSettings, files: SlideFiles) -> dict | None:
    if slide_path is None or not slide_path.is_file():
        log.warning("review page: slide %s shown without its image: slide file %s not found",
                    slide_id, slide_path)
        return None
    try:
        return write_slide_pyramid(slide_path, review_dir, slide_id, settings,
                                   tile_file_facts(files.tiles)[1])
    except InputError as exc:
        log.warning("review page: slide %s shown without its image: %s", slide_id, exc)
        return None


def _place_links(review_dir: Path, slide_id: str, files: SlideFiles, coords: np.ndarray,
                 side: int, attention: np.ndarray) -> dict[str, Path]:
    """Put the slide's linked files into the review folder; return label → placed file.
    The attention GeoJSON is written from ``attention`` when the workspace has none."""
    links = {}
    target = id_path(review_dir / "attention", slide_id, ".geojson")
    if files.attention is not None and files.attention.is_file():
        _place(files.attention, target)
    else:
        write_json(target, attention_geojson(coords, side, attention, slide_id))
    links["attention tiles (GeoJSON, QuPath)"] = target
    for label, source, folder, suffix in (
            ("tissue outline (GeoJSON)", files.tissue, "tissue", ".geojson"),
            ("heatmap (PNG)", files.heatmap, "heatmaps", ".png")):
        if source is not None and source.is_file():
            links[label] = _place(source, id_path(review_dir / folder, slide_id, suffix))
    return links


def _place(source: Path, target: Path) -> Path:
    """``target`` as a hard link to ``source``, or a copy where links cannot be made."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target
