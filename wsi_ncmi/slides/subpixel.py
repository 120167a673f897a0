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

from .access import rgba_to_rgb

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
    one = F32(1)
    weights = ((one - wx) * (one - wy), wx * (one - wy), (one - wx) * wy, wx * wy)
    colour = np.multiply(window, INV255, dtype=F32)
    alpha = opaque * (F32(255) * INV255)
    full = bool(opaque.all())
    if not full:
        colour *= opaque[..., None]
    s = _bilinear(colour, weights)
    # Alpha of a fully painted window is the same sum of weights everywhere.
    sa = _bilinear(alpha[:2, :2], weights) if full else _bilinear(alpha, weights)
    c8, a8 = _onto_transparent(s, sa)
    if full:
        a8 = np.broadcast_to(a8, row_cut.shape + col_cut.shape).copy()
    jj, ii = np.nonzero(row_cut[:, None] | col_cut[None, :])
    if len(jj):
        c8[jj, ii], a8[jj, ii] = _paint_seams(colour, alpha, jj, ii, row_cut[jj], col_cut[ii],
                                              weights)
    return _to_rgb(c8, a8)


def _bilinear(x: np.ndarray, weights) -> np.ndarray:
    """pixman's float bilinear sum over the 2×2 taps of each output pixel, in its order."""
    taps = (x[:-1, :-1], x[:-1, 1:], x[1:, :-1], x[1:, 1:])
    s = taps[0] * weights[0]
    term = np.empty_like(s)
    for tap, weight in zip(taps[1:], weights[1:], strict=True):
        s += np.multiply(tap, weight, out=term)
    return s


def _onto_transparent(s: np.ndarray, sa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_saturate` onto an empty destination (d = 0): the same numbers without the
    destination terms; ``s`` (colour) is overwritten."""
    if sa.min() < F32(1) or sa.max() > F32(1):
        fa = _factor(sa, np.zeros_like(sa))
        if (fa != 1).any():
            s *= fa[..., None]
            sa = sa * fa
    return _to_8bit(s), _to_8bit(sa.copy())


def _paint_seams(colour, alpha, jj, ii, row_cut, col_cut, weights):
    """(n×3 colour, n alpha) premultiplied 8-bit of border pixels, painting their tiles in
    order."""
    offsets = [(a, b) for a in (0, 1) for b in (0, 1)]
    c_taps = [colour[jj + a, ii + b] for a, b in offsets]
    a_taps = [alpha[jj + a, ii + b] for a, b in offsets]
    quadrant = [((a == 1) & row_cut, (b == 1) & col_cut) for a, b in offsets]
    c8 = np.zeros((len(jj), 3), np.uint8)
    a8 = np.zeros(len(jj), np.uint8)
    for qa, qb in _ORDER:
        s = sa = None
        for c, a, weight, (ra, cb) in zip(c_taps, a_taps, weights, quadrant, strict=True):
            inside = (ra == bool(qa)) & (cb == bool(qb))
            term, aterm = np.where(inside[:, None], c * weight, F32(0)), np.where(
                inside, a * weight, F32(0))
            s, sa = (term, aterm) if s is None else (s + term, sa + aterm)
        c8, a8 = _saturate(s, sa, c8, a8)
    return c8, a8


def _factor(sa: np.ndarray, da: np.ndarray) -> np.ndarray:
    """SATURATE's source factor min(1, (1 − da) / sa), 1 where sa is zero."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((-_TINY < sa) & (sa < _TINY), F32(1),
                        np.clip((F32(1) - da) / sa, F32(0), F32(1)))


def _saturate(s, sa, c8, a8):
    """pixman's float SATURATE of premultiplied (``s`` n×3, ``sa`` n) float32 onto 8-bit
    (``c8`` n×3, ``a8`` n)."""
    d, da = c8 * INV255, a8 * INV255
    fa = _factor(sa, da)
    return (_to_8bit(np.minimum(F32(1), s * fa[:, None] + d)),
            _to_8bit(np.minimum(F32(1), sa * fa + da)))


def _to_8bit(f: np.ndarray) -> np.ndarray:
    """pixman's float_to_unorm(min(1, f), 8) for f ≥ 0, in place."""
    f *= F32(256)
    np.minimum(f, F32(255), out=f)
    return f.astype(np.uint8)


def _to_rgb(c8: np.ndarray, a8: np.ndarray) -> np.ndarray:
    """openslide-python's un-premultiplication, then compositing onto white."""
    if a8.min() == 255:
        return c8
    c = c8.astype(np.int32)
    a = a8.astype(np.int32)[..., None]
    rgb = np.where(a == 255, c, (255 * c // np.maximum(a, 1)) & 0xFF)
    return rgba_to_rgb(np.concatenate([rgb, a], -1).astype(np.uint8))
