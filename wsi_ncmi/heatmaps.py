"""Attention heatmaps: where on a slide a trained model looked.

For one slide the model's attention α (one weight per tile, in feature-file row order, summing
to 1) is drawn over a thumbnail of the slide and exported for QuPath:

- ``<slide_id>.png``: the thumbnail (long side at most :data:`THUMB_MAX_SIDE` px) with every
  tile's square, at its level-0 coordinates scaled to the thumbnail, filled with a colour of
  the ``turbo`` map by the tile's attention *percentile within the slide* (0 = least, 100 =
  most attended; CLAM's convention, which stays readable whether attention is spread or
  peaked), blended at :data:`OVERLAY_ALPHA` over the tissue; a colour bar; and a title with
  the slide id, the predicted class, its probability and the head that gave it.
- ``<slide_id>.geojson``: a FeatureCollection of tile squares (level-0 px polygons, closed
  rings) that QuPath (≥ 0.4, *File → Import objects*) reads as detections, each with the
  measurements ``attention`` (α, sums to 1 over the slide), ``attention_rank`` (1 = highest;
  ties by feature-file row) and ``attention_percentile`` (%).

Tile squares need the tile side in level-0 px: the feature file's ``patch_size_level0``
attribute (ours, TRIDENT's), else CLAM's ``patch_size`` × the downsample of ``patch_level``,
else the spacing of the coordinate grid (non-overlapping tiles).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import atomic_path, write_json
from .errors import InputError

if TYPE_CHECKING:
    from .evaluation import FoldResult, RunData

log = logging.getLogger("wsi_ncmi")

THUMB_MAX_SIDE = 2048
OVERLAY_ALPHA = 0.55
COLORMAP = "turbo"
DPI = 150
HEAD_LABELS = {"linear_probe": "linear probe", "centroid": "centroid head",
               "classifier": "classifier"}


@dataclass(frozen=True)
class SlideCall:
    """The prediction shown in a heatmap's title: class name, its probability (0–1) and the
    head that produced it."""

    predicted_class: str
    probability: float
    head: str

    def caption(self, slide_id: str) -> str:
        """The heatmap's title line."""
        return (f"{slide_id}: predicted {self.predicted_class} "
                f"(p = {self.probability:.2f}, {HEAD_LABELS.get(self.head, self.head)})")


def attention_ranks(attention: np.ndarray) -> np.ndarray:
    """(N,) int64 rank of each tile, 1 = highest attention; ties in row order."""
    order = np.argsort(-np.asarray(attention, dtype=np.float64), kind="stable")
    ranks = np.empty(len(order), np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def attention_percentiles(attention: np.ndarray) -> np.ndarray:
    """(N,) float64 percentile of each tile within the slide: 100 for rank 1, 0 for rank N
    (100 for a single tile)."""
    n = len(attention)
    if n == 1:
        return np.array([100.0])
    return 100.0 * (n - attention_ranks(attention)) / (n - 1)


def attention_geojson(coords: np.ndarray, size0: int, attention: np.ndarray,
                      slide_id: str) -> dict:
    """QuPath-importable FeatureCollection of tile squares (level-0 px) with their attention
    (see module docstring); ``coords`` (N×2) are level-0 top-left (x, y)."""
    ranks, pct = attention_ranks(attention), attention_percentiles(attention)
    features = []
    for i, (x, y) in enumerate(np.asarray(coords, dtype=np.int64)):
        x, y = int(x), int(y)
        ring = [[x, y], [x + size0, y], [x + size0, y + size0], [x, y + size0], [x, y]]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "detection",
                "name": f"tile {i}",
                "measurements": {"attention": float(attention[i]),
                                 "attention_rank": int(ranks[i]),
                                 "attention_percentile": round(float(pct[i]), 3)},
                "slide_id": slide_id, "row": i,
            },
        })
    return {"type": "FeatureCollection", "features": features}


def read_thumbnail(slide_path: Path, max_side: int = THUMB_MAX_SIDE
                   ) -> tuple[np.ndarray, tuple[float, float]]:
    """RGB thumbnail (h×w×3 uint8, long side ≤ ``max_side`` px) read from the coarsest pyramid
    level at least as fine as needed, in bands (bounded memory); and the level-0 px per
    thumbnail px along (x, y)."""
    from .slide import open_slide, slide_info
    from .tissue import read_overview

    slide = open_slide(slide_path)
    try:
        # read_overview picks the level by µm/px; any positive µm/px gives the same choice and
        # output size (both scale with it), so a slide without one is read at 1 µm/px.
        info = slide_info(slide, Path(slide_path), fallback_mpp=1.0)
        downsample = max(1.0, max(info.dimensions) / max_side)
        return read_overview(slide, info, info.mpp * downsample)
    finally:
        slide.close()


def attention_raster(coords: np.ndarray, size0: int, values: np.ndarray,
                     shape: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """(h×w) float32 image of per-tile ``values`` painted on their squares at thumbnail
    ``scale`` (level-0 px per px along x, y); NaN where no tile lies. Where tiles overlap the
    higher value shows. Square edges are rounded, so adjacent tiles share an edge."""
    h, w = shape
    raster = np.full((h, w), np.nan, np.float32)
    sx, sy = scale
    for i in np.argsort(values, kind="stable"):
        x, y = coords[i]
        x0, x1 = round(x / sx), round((x + size0) / sx)
        y0, y1 = round(y / sy), round((y + size0) / sy)
        raster[max(0, y0):min(h, max(y1, y0 + 1)), max(0, x0):min(w, max(x1, x0 + 1))] = values[i]
    return raster


def render_heatmap(path: Path, thumbnail: np.ndarray, percentiles: np.ndarray,
                   title: str) -> Path:
    """Write the PNG: ``thumbnail`` (h×w×3 uint8) with the ``percentiles`` raster (h×w, %,
    NaN = no tile) blended over it, a colour bar and ``title``."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    cmap = colormaps[COLORMAP]
    tiled = np.isfinite(percentiles)
    colours = cmap(np.nan_to_num(percentiles) / 100.0)[..., :3] * 255.0
    image = thumbnail.astype(np.float32)
    image[tiled] = (1 - OVERLAY_ALPHA) * image[tiled] + OVERLAY_ALPHA * colours[tiled]
    h, w = thumbnail.shape[:2]
    width_in = 9.0
    fig = Figure(figsize=(width_in + 1.4, max(2.5, width_in * h / w + 0.8)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(np.clip(image, 0, 255).astype(np.uint8), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    fig.colorbar(ScalarMappable(Normalize(0, 100), cmap), ax=ax, fraction=0.035, pad=0.02,
                 label="attention percentile within the slide (%)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def tile_geometry(features_file: Path, level_downsamples: Sequence[float]
                  ) -> tuple[np.ndarray, int]:
    """The tiles of a feature file: level-0 top-left (x, y) of each row (N×2 int64, only the
    ``coords`` dataset is read) and the tile side in level-0 px (see module docstring);
    :class:`InputError` naming the file when either cannot be told."""
    import h5py

    attrs: dict = {}
    try:
        with h5py.File(features_file, "r") as f:
            coords = np.asarray(f["coords"][:], dtype=np.int64).reshape(-1, 2)
            for holder in (f["coords"], f):
                attrs.update({k: v for k, v in holder.attrs.items() if k not in attrs})
    except (OSError, KeyError) as exc:
        raise InputError(f"{features_file}: no readable coords ({' '.join(str(exc).split())})"
                         ) from None
    return coords, _tile_side(features_file, coords, attrs, level_downsamples)


def _tile_side(features_file: Path, coords: np.ndarray, attrs: dict,
               level_downsamples: Sequence[float]) -> int:
    if "patch_size_level0" in attrs and int(attrs["patch_size_level0"]) > 0:
        return int(attrs["patch_size_level0"])
    if "patch_size" in attrs and "patch_level" in attrs:
        level = int(attrs["patch_level"])
        if 0 <= level < len(level_downsamples):
            return round(int(attrs["patch_size"]) * level_downsamples[level])
    diffs = [np.diff(np.unique(coords[:, k])) for k in (0, 1)]
    steps = np.concatenate([d[d > 0] for d in diffs])
    if len(steps) == 0:
        raise InputError(f"{features_file}: no tile size recorded (patch_size_level0) and a "
                         "single tile position: cannot draw its square")
    return int(steps.min())


def write_heatmap(out_dir: Path, slide_id: str, slide_path: Path, features_file: Path,
                  attention: np.ndarray, call: SlideCall) -> list[Path]:
    """Write ``out_dir/<slide_id>.png`` and ``.geojson`` for one slide; return their paths.

    ``attention`` (N,) is in the row order of ``features_file``, whose ``coords`` place the
    tiles; ``call`` is the prediction named in the title.
    """
    from .slide import open_slide

    slide = open_slide(slide_path)
    try:
        downsamples = tuple(float(d) for d in slide.level_downsamples)
        width, height = slide.dimensions
    finally:
        slide.close()
    coords, size0 = tile_geometry(features_file, downsamples)
    attention = np.asarray(attention, dtype=np.float64)
    if len(coords) != len(attention) or len(coords) == 0:
        raise InputError(f"{features_file}: {len(coords)} tile(s) but {len(attention)} "
                         "attention value(s)")
    outside = (coords[:, 0] >= width) | (coords[:, 1] >= height) | (coords < 0).any(1)
    if outside.any():
        raise InputError(f"{features_file}: {int(outside.sum())} tile(s) lie outside "
                         f"{slide_path.name} ({width} × {height} px): wrong slide?")
    thumbnail, scale = read_thumbnail(slide_path)
    raster = attention_raster(coords, size0, attention_percentiles(attention),
                              thumbnail.shape[:2], scale)
    png = render_heatmap(out_dir / f"{slide_id}.png", thumbnail, raster, call.caption(slide_id))
    geojson = out_dir / f"{slide_id}.geojson"
    write_json(geojson, attention_geojson(coords, size0, attention, slide_id))
    return [png, geojson]


def run_heatmap(run_dir: Path, slide_id: str, slide_path: Path, *, fold: int | None = None,
                features_dir: Path | None = None, out_dir: Path | None = None,
                head: str = "linear_probe", device: str = "cpu") -> list[Path]:
    """Heatmap of one slide by one fold of a trained run (the ``wsi-ncmi heatmap`` command).

    ``fold``: default the fold whose test part holds the slide (an out-of-fold view), else
    fold 0 of a single-fold run. ``features_dir``: default ``data.features_dir`` of
    ``RUN/config.yaml``. ``out_dir``: default ``RUN/heatmaps/fold_<k>``. The title shows
    ``head``'s prediction (:mod:`wsi_ncmi.prediction`). Returns the PNG and GeoJSON paths.
    """
    from .bags import feature_path
    from .prediction import load_predictor, run_config

    run_dir = Path(run_dir)
    k = fold if fold is not None else default_fold(run_dir, slide_id)
    if features_dir is None:
        recorded = (run_config(run_dir).get("data") or {}).get("features_dir")
        if not recorded:
            raise InputError(f"{run_dir / 'config.yaml'}: no data.features_dir; pass "
                             "--features-dir")
        features_dir = Path(recorded)
    predictor = load_predictor(run_dir, [k], head, device)
    result = predictor.predict(Path(features_dir), [slide_id])
    proba = result["proba"][0]
    best = int(proba.argmax())
    call = SlideCall(predictor.classes[best], float(proba[best]), head)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "heatmaps" / f"fold_{k}"
    return write_heatmap(out_dir, slide_id, Path(slide_path),
                         feature_path(Path(features_dir), slide_id), result["attention"][0],
                         call)


def default_fold(run_dir: Path, slide_id: str) -> int:
    """The fold whose test part holds ``slide_id``; else 0 for a single-fold run;
    :class:`InputError` otherwise (the caller must choose)."""
    from .prediction import run_folds

    folds = run_folds(run_dir)
    for entry in folds:
        if slide_id in entry.get("test", []):
            return int(entry["fold"])
    if len(folds) == 1:
        return int(folds[0]["fold"])
    raise InputError(f"{run_dir}: slide {slide_id} is in no fold's test part and the run has "
                     f"{len(folds)} folds; choose one with --fold")


def eval_heatmaps(run_dir: Path, results: Sequence[FoldResult], data: RunData, k: int,
                  slide_root: Path | None, out_dir: Path, device: str,
                  head: str = "linear_probe") -> list[Path]:
    """Heatmaps of the ``k`` evaluated slides that ``head`` predicts most confidently (highest
    top probability; ties by slide id), each drawn by the fold that scored it.

    ``results``: one :class:`~wsi_ncmi.evaluation.FoldResult` per fold; ``data``: the
    run's :class:`~wsi_ncmi.evaluation.RunData`. Slide files are the manifest's ``path`` column,
    relative to ``slide_root`` (default: the manifest's folder); a slide whose file cannot be
    found or read is skipped with a logged reason. Returns the files written.
    """
    from .bags import feature_path
    from .inference import load_fold, run_model
    from .manifests import load_manifest

    ranked = sorted(((-float(r.scores[head][i].max()), sid, j, i)
                     for j, r in enumerate(results) for i, sid in enumerate(r.slide_ids)))
    chosen = ranked[:k]
    df = load_manifest(data.manifest)
    if "path" not in df.columns:
        log.warning("eval --heatmaps: %s has no 'path' column; no heatmaps drawn", data.manifest)
        return []
    root = Path(slide_root) if slide_root is not None else Path(data.manifest).parent
    paths = dict(zip(df["slide_id"], df["path"], strict=True))
    written: list[Path] = []
    models: dict[int, object] = {}
    for neg_p, sid, j, i in chosen:
        result = results[j]
        slide_path = root / str(paths.get(sid, ""))
        if sid not in paths or not slide_path.is_file():
            log.warning("eval --heatmaps: slide %s skipped: slide file %s not found", sid,
                        slide_path)
            continue
        if result.fold not in models:
            models[result.fold] = load_fold(run_dir / f"fold_{result.fold}", device)
        attention = run_model(models[result.fold], data.features_dir, [sid])["attention"][0]
        call = SlideCall(data.classes[int(result.scores[head][i].argmax())], -neg_p, head)
        try:
            written += write_heatmap(out_dir, sid, slide_path,
                                     feature_path(data.features_dir, sid), attention, call)
        except InputError as exc:
            log.warning("eval --heatmaps: slide %s skipped: %s", sid, exc)
    return written
