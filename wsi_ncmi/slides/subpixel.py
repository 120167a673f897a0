"""OpenSlide's pixels for a region that starts between level pixels, reproduced bit for bit.

``read_region`` maps a level-0 location to the level as ``x / downsample``. When that is not
a whole number (most reads below level 0 of a real slide, whose downsamples are like
4.00012), OpenSlide (4.0, with the cairo 1.18 and pixman 0.46 it bundles) paints each native
tile translated by the fraction, onto a transparent region, with the SATURATE operator. That
path runs in pixman's float pipeline:

- a tile pixel becomes ``v * (1/255)`` in float32 (premultiplied ARGB; alpha 1 inside the
  level, 0 in a tile's padding beyond the level edge and wherever no tile is painted);
- cairo's GOOD filter at scale 1 is pixman's BILINEAR: the sample point of region pixel ``i``
  is ``x + i`` (16.16 fixed point, rounded to nearest), its taps are the two level pixels
  around it, weights from the 16-bit fraction, summed in float32 in pixman's order, with
  taps outside the tile being painted counting as transparent;
- SATURATE adds a tile onto what earlier tiles left (``s * min(1, (1 - da) / sa) + d``, then
  8-bit ``min(255, floor(256 f))``); tiles are painted bottom row first, right to left, so a
  region pixel whose taps straddle a tile border gets the tiles' shares one after another;
- openslide-python un-premultiplies (``255 * c // a``, kept to 8 bits) and
  :func:`wsi_ncmi.slide.rgba_to_rgb` composites onto white.

:func:`resample` follows those steps. Pixels whose four taps lie in one tile are done for the
whole region at once; only the rows and columns on tile borders are painted tile by tile.
"""

from __future__ import annotations

import numpy as np

from ..slide import rgba_to_rgb

F32 = np.float32
INV255 = F32(1) / F32(255)
_TINY = np.finfo(F32).tiny
# Paint order of the (row, column) quadrants of a 2×2 tap block: bottom-right tile first.
_ORDER = ((1, 1), (1, 0), (0, 1), (0, 0))


def resample(window: np.ndarray, opaque: np.ndarray, frac_x: int, frac_y: int,
             col_cut: np.ndarray, row_cut: np.ndarray) -> np.ndarray:
    """RGB (h×w×3 uint8) of a region whose pixel (i, j) samples between window pixels
    (i, j) and (i + 1, j + 1).

    ``window``: (h+1)×(w+1)×3 uint8 level pixels; ``opaque``: (h+1)×(w+1) bool, False where
    no painted tile covers the level pixel. ``frac_x``/``frac_y``: the sample fraction in
    1/65536 px (0–65535). ``col_cut[i]`` (length w): window columns i and i+1 lie in
    different native tiles; ``row_cut`` likewise for rows (length h).
    """
    wx, wy = F32(frac_x) / F32(65536), F32(frac_y) / F32(65536)
    weights = ((1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy)
    src = np.empty(window.shape[:2] + (4,), F32)
    np.multiply(window, INV255, out=src[..., :3], casting="unsafe")
    src[..., 3] = F32(255) * INV255
    src[~opaque] = 0
    h, w = len(row_cut), len(col_cut)
    taps = (src[:-1, :-1], src[:-1, 1:], src[1:, :-1], src[1:, 1:])
    s = taps[0] * weights[0]
    for tap, weight in zip(taps[1:], weights[1:]):
        s += tap * weight
    out = _saturate(s, np.zeros((h, w, 4), np.uint8))
    jj, ii = np.nonzero(row_cut[:, None] | col_cut[None, :])
    if len(jj):
        out[jj, ii] = _paint_seams(src, jj, ii, row_cut[jj], col_cut[ii], weights)
    return _to_rgb(out)


def _paint_seams(src, jj, ii, row_cut, col_cut, weights) -> np.ndarray:
    """Premultiplied RGBA (n×4 uint8) of border pixels, painting their tiles in order."""
    taps = [src[jj + a, ii + b] for a in (0, 1) for b in (0, 1)]
    quadrant = [((a == 1) & row_cut, (b == 1) & col_cut) for a in (0, 1) for b in (0, 1)]
    dest = np.zeros((len(jj), 4), np.uint8)
    for qa, qb in _ORDER:
        s = None
        for tap, weight, (ra, cb) in zip(taps, weights, quadrant):
            inside = ((ra == bool(qa)) & (cb == bool(qb)))[:, None]
            term = np.where(inside, tap * weight, F32(0))
            s = term if s is None else s + term
        dest = _saturate(s, dest)
    return dest


def _saturate(s: np.ndarray, dest: np.ndarray) -> np.ndarray:
    """pixman's float SATURATE of premultiplied ``s`` (…×4 float32) onto 8-bit ``dest``."""
    d = dest * INV255
    sa = s[..., 3:4]
    with np.errstate(divide="ignore", invalid="ignore"):
        fa = np.where((-_TINY < sa) & (sa < _TINY), F32(1),
                      np.clip((F32(1) - d[..., 3:4]) / sa, F32(0), F32(1)))
    f = np.minimum(F32(1), s * fa + d)
    return np.minimum(f * F32(256), F32(255)).astype(np.uint8)


def _to_rgb(premultiplied: np.ndarray) -> np.ndarray:
    """openslide-python's un-premultiplication, then compositing onto white."""
    a = premultiplied[..., 3:4]
    if a.min() == 255:
        return np.ascontiguousarray(premultiplied[..., :3])
    c = premultiplied[..., :3].astype(np.int32)
    a32 = a.astype(np.int32)
    rgb = np.where(a32 == 255, c, (255 * c // np.maximum(a32, 1)) & 0xFF)
    return rgba_to_rgb(np.concatenate([rgb, a32], -1).astype(np.uint8))
