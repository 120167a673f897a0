"""Drawing a model's attention over a slide: ranks, percentiles, the PNG and the GeoJSON.

For one slide the model's attention α (one weight per tile, in feature-file row order, summing
to 1) is drawn over a thumbnail of the slide and exported for QuPath:

- the PNG: the thumbnail with every tile's square, at its level-0 coordinates scaled to the
  thumbnail, filled with a colour of the ``turbo`` map by the tile's attention *percentile
  within the slide* (0 = least, 100 = most attended; CLAM's convention, which stays readable
  whether attention is spread or peaked), blended at :data:`OVERLAY_ALPHA` over the tissue; a
  colour bar; and a title.
- the GeoJSON: a FeatureCollection of tile squares (level-0 px polygons, closed rings) that
  QuPath (≥ 0.4, *File → Import objects*) reads as detections, each with the measurements
  ``attention`` (α, sums to 1 over the slide), ``attention_rank`` (1 = highest; ties by
  feature-file row) and ``attention_percentile`` (%).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_path

OVERLAY_ALPHA = 0.55
COLORMAP = "turbo"
DPI = 150


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
