"""The tile grid in level-0 pixels, and each tile's tissue fraction."""

from __future__ import annotations

import numpy as np


def grid_coords(width0: int, height0: int, size0: int, stride0: int) -> np.ndarray:
    """Top-left (x, y) of every tile lying wholly inside a ``width0`` × ``height0`` level-0
    image, for tiles of ``size0`` level-0 px every ``stride0`` px.

    Row-major order (y, then x). Returns an (N×2) int64 array.
    """
    if size0 <= 0 or stride0 <= 0:
        raise ValueError("size0 and stride0 must be positive")
    xs = np.arange(0, width0 - size0 + 1, stride0, dtype=np.int64)
    ys = np.arange(0, height0 - size0 + 1, stride0, dtype=np.int64)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def stride_level0(size0: int, tile_size: int, overlap: int) -> int:
    """Level-0 step between tiles that overlap by ``overlap`` px at the output resolution."""
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, {tile_size}), got {overlap}")
    return max(1, round(size0 * (tile_size - overlap) / tile_size))


def tissue_fractions(
    mask: np.ndarray, scale: tuple[float, float], coords: np.ndarray, size0: int
) -> np.ndarray:
    """Share of each tile covered by tissue, in [0, 1].

    ``mask`` is a boolean overview (h×w) where one pixel covers ``scale`` = (sx, sy) level-0
    px. A tile's rectangle is snapped to whole overview pixels (at least one), so the
    fraction is exact to within one overview pixel of border. Returns (N,) float32.
    """
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    sx, sy = scale
    x0 = np.clip(np.round(coords[:, 0] / sx).astype(np.int64), 0, w - 1)
    y0 = np.clip(np.round(coords[:, 1] / sy).astype(np.int64), 0, h - 1)
    x1 = np.clip(np.maximum(x0 + 1, np.round((coords[:, 0] + size0) / sx).astype(np.int64)), 1, w)
    y1 = np.clip(np.maximum(y0 + 1, np.round((coords[:, 1] + size0) / sy).astype(np.int64)), 1, h)
    covered = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return (covered / ((x1 - x0) * (y1 - y0))).astype(np.float32)
