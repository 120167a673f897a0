"""Synthetic tissue: where the tissue and lesions lie on a slide, and how a tile of it looks.

A slide shows a white background and a few irregular tissue fragments with holes, textured
with pink stroma and purple nuclei. Lesions are planted in one of two ways:

- by share: smooth blobs covering about ``lesion_share`` of the tissue (the original mode);
- by size: one lesion of a given largest diameter (level-0 px), an ellipse with a lobed
  boundary, always surrounded by tissue, so its size in µm can decide a class.

Lesion kinds (what the lesion looks like):

- ``"dense"``: crowded, large, dark nuclei (an invasive-tumour / metastasis pattern);
- ``"glands"``: pale regions with round white lumens rimmed by nuclei (benign glands);
- ``"crowded"``: small, closely packed lumens with dark rims and many nuclei (atypia).

A :class:`Stain` recolours a rendered tile the way a centre's staining and scanner would.
Every level is rendered tile by tile from a coarse layout (smooth fields in a grid of
``LAYOUT_CELLS`` cells across) plus exact lesion shapes in level-0 px, so a 40 000 × 30 000
slide is rendered without holding its level-0 image in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

LESION_KINDS = ("dense", "glands", "crowded")
LAYOUT_CELLS = 256
BACKGROUND = 242
_STROMA = np.array([232, 168, 204], np.float32)
_NUCLEUS = (110, 50, 150)
_DARK_NUCLEUS = (70, 25, 110)
_LUMEN = (250, 246, 250)
# Nuclear area share per region kind, used to colour levels too coarse to draw nuclei, and
# the lumen share mixed in for gland kinds.
_COARSE_NUCLEAR_SHARE = {"normal": 0.10, "dense": 0.45, "glands": 0.08, "crowded": 0.25}
_COARSE_LUMEN_SHARE = {"glands": 0.4, "crowded": 0.3}
# Per lesion kind: (what, density per µm², radius µm, colour) of the discs drawn in it.
_LESION_DISCS = {
    "dense": (("nucleus", 1 / 70, 4.5, _DARK_NUCLEUS),),
    "glands": (("lumen", 1 / 900, 11.0, _LUMEN), ("nucleus", 1 / 200, 3.0, _NUCLEUS)),
    "crowded": (("lumen", 1 / 260, 6.0, _LUMEN), ("nucleus", 1 / 90, 3.5, _DARK_NUCLEUS)),
}
# Ruifrok & Johnston (2001) optical-density vectors (R, G, B) of haematoxylin and eosin.
_H_REF = (0.650, 0.704, 0.286)
_E_REF = (0.072, 0.990, 0.105)
# Optical density of each 8-bit value against the slide's white (the empty glass).
_OD_OF_VALUE = -np.log(np.maximum(np.arange(256, dtype=np.float32), 1) / BACKGROUND
                       ).reshape(1, 256)


@dataclass(frozen=True)
class Stain:
    """A centre's staining and scanning colour, applied to RGB in optical density
    (OD = -ln(I / I0), I0 = ``BACKGROUND``: the empty glass keeps OD 0). The OD is unmixed
    into haematoxylin, eosin and a residual with the reference stain vectors; the H and E
    amounts are scaled by ``hematoxylin``/``eosin``; the result is remixed with the
    centre's vectors (reference + ``h_shift``/``e_shift``, renormalised); intensities are
    then multiplied by the scanner's per-channel ``gain`` (R, G, B: white balance). The
    default is the identity."""

    hematoxylin: float = 1.0
    eosin: float = 1.0
    h_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    e_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def od_matrix(self) -> np.ndarray:
        """3×3 matrix M with OD_out = OD_in @ M (row vectors of R, G, B optical density)."""
        ref = _stain_basis(np.array(_H_REF), np.array(_E_REF))
        own = _stain_basis(np.add(_H_REF, self.h_shift), np.add(_E_REF, self.e_shift))
        return (np.linalg.inv(ref) @ np.diag([self.hematoxylin, self.eosin, 1.0]) @ own
                ).astype(np.float32)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """Recolour RGB of shape (h, w, 3), values in [0, 255] (rounded down to integers);
        returns float32 of that shape."""
        od = cv2.LUT(np.clip(rgb, 0, 255).astype(np.uint8), _OD_OF_VALUE)
        out = cv2.exp(cv2.transform(od, -self.od_matrix().T))
        return out * (BACKGROUND * np.asarray(self.gain, np.float32))

    def jittered(self, rng: np.random.Generator, amount: float) -> Stain:
        """This stain with H, E amounts and gains varied by up to ± ``amount`` (relative;
        gains by a quarter of it): slide-to-slide variation within a centre."""
        def vary(v: float, a: float) -> float:
            return float(v * (1 + rng.uniform(-a, a)))
        return replace(self, hematoxylin=vary(self.hematoxylin, amount),
                       eosin=vary(self.eosin, amount),
                       gain=tuple(vary(g, amount / 4) for g in self.gain))


@dataclass(frozen=True)
class LesionShape:
    """One lesion in level-0 px: an ellipse centred at (``cx``, ``cy``) with semi-axes
    ``rx`` ≥ ``ry`` turned by ``angle`` (rad), whose boundary radius is modulated by
    ``1 + wobble · sin(lobes · θ + phase)``."""

    cx: float
    cy: float
    rx: float
    ry: float
    angle: float
    wobble: float
    lobes: int
    phase: float

    def inside(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Boolean (len(ys), len(xs)) mask of the level-0 points (xs[j], ys[i])."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = xs[None, :] - self.cx, ys[:, None] - self.cy
        u, v = (dx * c + dy * s) / self.rx, (-dx * s + dy * c) / self.ry
        edge = 1 + self.wobble * np.sin(self.lobes * np.arctan2(v, u) + self.phase)
        return np.hypot(u, v) < edge

    def reach(self) -> float:
        """Radius (level-0 px) of a circle around the centre that holds the lesion."""
        return self.rx * (1 + self.wobble)

    def diameter(self) -> float:
        """Largest diameter in level-0 px (the farthest pair of boundary points)."""
        t = np.linspace(0, 2 * math.pi, 720, endpoint=False)
        r = 1 + self.wobble * np.sin(self.lobes * t + self.phase)
        u, v = r * np.cos(t) * self.rx, r * np.sin(t) * self.ry
        pts = np.stack([u, v], 1)
        return float(np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).max())


@dataclass(frozen=True)
class SlideLayout:
    """Smooth fields on a coarse grid plus exact lesion shapes; a pixel is tissue where
    ``tissue > 0.5`` and lesion where additionally ``lesion > 0.5`` or it lies in one of
    ``shapes``. ``cell`` is the grid spacing in level-0 px."""

    width: int
    height: int
    cell: float
    tissue: np.ndarray
    lesion: np.ndarray
    lesion_kind: str | None
    shapes: tuple[LesionShape, ...] = field(default=())

    def fields_at(self, x0: float, y0: float, w: int, h: int, downsample: float):
        """(tissue, lesion) float32 fields (h×w) for the level pixels whose top-left is at
        level-0 (x0, y0), at ``downsample`` level-0 px per pixel."""
        d = np.float32(downsample)
        px = np.float32(x0) + (np.arange(w, dtype=np.float32) + 0.5) * d
        py = np.float32(y0) + (np.arange(h, dtype=np.float32) + 0.5) * d
        mx, my = np.meshgrid(px / self.cell - 0.5, py / self.cell - 0.5)
        t = cv2.remap(self.tissue, mx, my, cv2.INTER_LINEAR, borderValue=0.0)
        les = cv2.remap(self.lesion, mx, my, cv2.INTER_LINEAR, borderValue=0.0)
        for shape in self.shapes:
            r = shape.reach()
            cols = slice(*np.searchsorted(px, (shape.cx - r, shape.cx + r)))
            rows = slice(*np.searchsorted(py, (shape.cy - r, shape.cy + r)))
            if cols.start < cols.stop and rows.start < rows.stop:
                les[rows, cols][shape.inside(px[cols], py[rows])] = 1.0
        return t, les

    def masks(self, downsample: float) -> tuple[np.ndarray, np.ndarray]:
        """Boolean (tissue, lesion) masks of the whole slide at ``downsample``."""
        w = math.ceil(self.width / downsample)
        h = math.ceil(self.height / downsample)
        t, les = self.fields_at(0, 0, w, h, downsample)
        tissue = t > 0.5
        return tissue, tissue & (les > 0.5)

    def lesion_extent(self) -> tuple[float, float]:
        """(largest diameter in level-0 px, area in level-0 px²) of the planted lesion
        shapes as rendered (inside tissue), measured on a raster of ~400 px across them;
        (0, 0) without shapes."""
        if not self.shapes:
            return 0.0, 0.0
        x0 = min(s.cx - s.reach() for s in self.shapes)
        y0 = min(s.cy - s.reach() for s in self.shapes)
        x1 = max(s.cx + s.reach() for s in self.shapes)
        y1 = max(s.cy + s.reach() for s in self.shapes)
        step = max(x1 - x0, y1 - y0) / 400
        t, les = self.fields_at(x0, y0, math.ceil((x1 - x0) / step),
                                math.ceil((y1 - y0) / step), step)
        mask = (t > 0.5) & (les > 0.5)
        if not mask.any():
            return 0.0, 0.0
        hull = cv2.convexHull(np.argwhere(mask)[:, ::-1].astype(np.float32))[:, 0]
        span = np.sqrt(((hull[:, None] - hull[None]) ** 2).sum(-1)).max() + 1
        return float(span * step), float(mask.sum() * step * step)


def make_layout(
    width: int,
    height: int,
    seed: int = 0,
    lesion: str | None = None,
    lesion_share: float = 0.15,
    *,
    lesion_px: float | None = None,
    fragments: int | None = None,
    tissue_scale: float = 1.0,
) -> SlideLayout:
    """Random tissue fragments with holes for a ``width`` × ``height`` level-0 slide, and a
    lesion of kind ``lesion``: one lesion of largest diameter ``lesion_px`` (level-0 px) if
    given, else blobs covering about ``lesion_share`` of the tissue.

    ``fragments``: number of tissue pieces (default 2–4 at random); ``tissue_scale``
    multiplies their radii (about 0.1–0.2 of the slide's width at 1).
    """
    if lesion is not None and lesion not in LESION_KINDS:
        raise ValueError(f"lesion must be one of {LESION_KINDS} or None, got {lesion!r}")
    rng = np.random.default_rng(seed)
    cell = width / LAYOUT_CELLS
    gw, gh = LAYOUT_CELLS, max(8, math.ceil(height / cell))
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)

    tissue = np.zeros((gh, gw), np.float32)
    for _ in range(int(rng.integers(2, 5)) if fragments is None else fragments):
        cx, cy = rng.uniform(0.2, 0.8) * gw, rng.uniform(0.25, 0.75) * gh
        rx = rng.uniform(0.10, 0.22) * gw * tissue_scale
        ry = rng.uniform(0.12, 0.3) * gh * tissue_scale
        tissue += _blob(xx, yy, cx, cy, rx, ry, rng.uniform(0, math.pi))
    tissue += _smooth_noise(rng, gh, gw, 8) * 0.3
    inside = np.argwhere(tissue > 1.0)
    for _ in range(int(rng.integers(2, 6))):
        if len(inside) == 0:
            break
        cy, cx = inside[rng.integers(len(inside))]
        r = rng.uniform(0.015, 0.035) * gw * tissue_scale
        tissue -= 1.6 * _blob(xx, yy, cx, cy, r, r * rng.uniform(0.6, 1.4), 0.0)

    lesion_field = np.zeros_like(tissue)
    shapes: tuple[LesionShape, ...] = ()
    if lesion is not None and lesion_px is not None:
        shape = _place_lesion(rng, tissue, cell, lesion_px)
        r = shape.reach() / cell
        cushion = _blob(xx, yy, shape.cx / cell - 0.5, shape.cy / cell - 0.5, 1.3 * r + 2,
                        1.3 * r + 2, 0.0)
        tissue = np.maximum(tissue, cushion + _smooth_noise(rng, gh, gw, 8) * 0.3)
        shapes = (shape,)
    elif lesion is not None:
        lesion_field = _lesion_field(rng, tissue, xx, yy, lesion_share)
    return SlideLayout(width, height, cell, tissue, lesion_field, lesion, shapes)


def render_tile(layout: SlideLayout, x0: float, y0: float, size: int, downsample: float,
                level_mpp: float, rng: np.random.Generator, noise: np.ndarray,
                stain: Stain | None = None) -> np.ndarray:
    """A ``size`` × ``size`` RGB uint8 tile whose top-left is at level-0 (``x0``, ``y0``), at
    ``downsample`` level-0 px per pixel and ``level_mpp`` µm/px (nuclei are drawn in µm).
    ``noise``: float32 (≥ 2·size, ≥ 2·size, 3) grain, cropped at random."""
    t, les = layout.fields_at(x0, y0, size, size, downsample)
    tissue = t > 0.5
    ox, oy = rng.integers(0, noise.shape[0] - size, 2)
    grain = noise[oy:oy + size, ox:ox + size]
    if not tissue.any():
        img = BACKGROUND + 2 * grain
    else:
        lesion = tissue & (les > 0.5)
        img = np.where(tissue[..., None], _STROMA, np.float32(BACKGROUND))
        if level_mpp > 2.0:
            _coarse_texture(img, tissue, lesion, layout.lesion_kind)
        else:
            _draw_nuclei(img, tissue, lesion, layout.lesion_kind, level_mpp, rng)
        img += np.where(tissue[..., None], np.float32(8), np.float32(2)) * grain
    if stain is not None:
        img = stain.apply(img)
    return np.clip(img, 0, 255).astype(np.uint8)


def _coarse_texture(img, tissue, lesion, kind) -> None:
    nucleus = np.array(_NUCLEUS, np.float32)
    img[tissue] = _mix(_STROMA, nucleus, _COARSE_NUCLEAR_SHARE["normal"])
    if kind is not None and lesion.any():
        colour = _mix(_STROMA, np.array(_DARK_NUCLEUS, np.float32), _COARSE_NUCLEAR_SHARE[kind])
        if kind in _COARSE_LUMEN_SHARE:
            colour = _mix(colour, np.array(_LUMEN, np.float32), _COARSE_LUMEN_SHARE[kind])
        img[lesion] = colour


def _draw_nuclei(img, tissue, lesion, kind, level_mpp, rng) -> None:
    """Draw nuclei (and lumens) as antialiased discs; sizes and densities in µm."""
    size = img.shape[0]
    area_um2 = (size * level_mpp) ** 2
    specs = [(tissue & ~lesion, "nucleus", 1 / 250, 3.0, _NUCLEUS)]
    if kind is not None:
        specs += [(lesion, *disc) for disc in _LESION_DISCS[kind]]
    for region, what, density, radius_um, colour in specs:
        n = rng.poisson(area_um2 * density)
        pts = rng.integers(0, size, (n, 2))
        keep = region[pts[:, 1], pts[:, 0]]
        radius = max(1, round(radius_um / level_mpp))
        for x, y in pts[keep]:
            r = max(1, int(radius * rng.uniform(0.7, 1.3)))
            cv2.circle(img, (int(x), int(y)), r, colour, -1, cv2.LINE_AA)
            if what == "lumen":
                cv2.circle(img, (int(x), int(y)), r, _NUCLEUS, max(1, r // 5), cv2.LINE_AA)
    img[~tissue] = BACKGROUND


def _place_lesion(rng, tissue, cell, diameter_px) -> LesionShape:
    """A lesion of largest diameter ``diameter_px`` centred where the tissue is deep enough
    to hold it (else where it is deepest)."""
    wobble = rng.uniform(0.04, 0.12)
    shape = LesionShape(0.0, 0.0, 1.0, rng.uniform(0.55, 0.95), rng.uniform(0, math.pi),
                        wobble, int(rng.integers(3, 7)), rng.uniform(0, 2 * math.pi))
    scale = diameter_px / shape.diameter()
    padded = np.pad((tissue > 0.5).astype(np.uint8), 1)  # the slide's edge is not tissue
    depth = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    need = scale * shape.reach() / cell + 1
    deep = np.argwhere(depth >= need)
    if len(deep):
        cy, cx = deep[rng.integers(len(deep))]
    else:
        cy, cx = np.unravel_index(int(depth.argmax()), depth.shape)
    return replace(shape, cx=(cx + 0.5) * cell, cy=(cy + 0.5) * cell, rx=scale,
                   ry=shape.ry * scale)


def _lesion_field(rng, tissue, xx, yy, share) -> np.ndarray:
    """Blobs centred in tissue, grown until they cover about ``share`` of the tissue."""
    field_ = np.zeros_like(tissue)
    inside = np.argwhere(tissue > 0.9)
    if len(inside) == 0:
        return field_
    tissue_area = float((tissue > 0.5).sum())
    centres = [inside[rng.integers(len(inside))] for _ in range(int(rng.integers(2, 4)))]
    radius = 0.01 * xx.shape[1]
    while radius < xx.shape[1]:
        field_ = sum(_blob(xx, yy, cx, cy, radius, radius * 0.8, 0.3) for cy, cx in centres)
        covered = float(((field_ > 0.5) & (tissue > 0.5)).sum())
        if covered >= share * tissue_area:
            break
        radius *= 1.15
    return field_.astype(np.float32)


def _stain_basis(h: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Rows: unit H, unit E and their unit cross product (the residual channel)."""
    h, e = h / np.linalg.norm(h), e / np.linalg.norm(e)
    r = np.cross(h, e)
    return np.stack([h, e, r / np.linalg.norm(r)])


def _blob(xx, yy, cx, cy, rx, ry, angle) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    u = ((xx - cx) * c + (yy - cy) * s) / rx
    v = (-(xx - cx) * s + (yy - cy) * c) / ry
    return np.exp(-(u * u + v * v) ** 1.5).astype(np.float32) * 1.6


def _smooth_noise(rng, h, w, period) -> np.ndarray:
    coarse = rng.normal(0, 1, (max(2, h // period), max(2, w // period))).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _mix(a, b, share) -> np.ndarray:
    return (1 - share) * np.asarray(a, np.float32) + share * np.asarray(b, np.float32)
