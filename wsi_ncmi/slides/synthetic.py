"""Synthetic whole-slide images for tests, the demo and benchmarks.

A slide is a pyramidal, tiled, JPEG-compressed BigTIFF that OpenSlide reads as a generic TIFF,
with its µm/px in the TIFF resolution tags (OpenSlide reports ``openslide.mpp-x``). It shows a
white background and a few irregular tissue regions with holes, textured with pink stroma and
purple nuclei. A ``lesion`` kind plants class-dependent regions over a minority of the tissue:

- ``"dense"``: crowded, large, dark nuclei (a tumour-like pattern);
- ``"glands"``: pale regions with round white lumens rimmed by nuclei.

Every level is rendered tile by tile from a coarse layout (smooth fields in a grid of
``LAYOUT_CELLS`` cells across), so a 40 000 × 30 000 slide is written without holding its
level-0 image in memory, and the layout also answers "where is the lesion" for tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

LESION_KINDS = ("dense", "glands")
LAYOUT_CELLS = 256
BACKGROUND = 242
_STROMA = np.array([232, 168, 204], np.float32)
_NUCLEUS = (110, 50, 150)
_DARK_NUCLEUS = (70, 25, 110)
_LUMEN = (250, 246, 250)
# Nuclear area share per region kind, used to colour levels too coarse to draw nuclei.
_COARSE_NUCLEAR_SHARE = {"normal": 0.10, "dense": 0.45, "glands": 0.08}


@dataclass(frozen=True)
class SlideLayout:
    """Smooth fields on a coarse grid; a pixel is tissue where ``tissue > 0.5`` and lesion
    where additionally ``lesion > 0.5``. ``cell`` is the grid spacing in level-0 px."""

    width: int
    height: int
    cell: float
    tissue: np.ndarray
    lesion: np.ndarray
    lesion_kind: str | None

    def fields_at(self, x0: float, y0: float, w: int, h: int, downsample: float):
        """(tissue, lesion) float32 fields (h×w) for the level pixels whose top-left is at
        level-0 (x0, y0), at ``downsample`` level-0 px per pixel."""
        xs = ((x0 + (np.arange(w, dtype=np.float32) + 0.5) * downsample) / self.cell) - 0.5
        ys = ((y0 + (np.arange(h, dtype=np.float32) + 0.5) * downsample) / self.cell) - 0.5
        mx, my = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
        t = cv2.remap(self.tissue, mx, my, cv2.INTER_LINEAR, borderValue=0.0)
        les = cv2.remap(self.lesion, mx, my, cv2.INTER_LINEAR, borderValue=0.0)
        return t, les

    def masks(self, downsample: float) -> tuple[np.ndarray, np.ndarray]:
        """Boolean (tissue, lesion) masks of the whole slide at ``downsample``."""
        w = math.ceil(self.width / downsample)
        h = math.ceil(self.height / downsample)
        t, les = self.fields_at(0, 0, w, h, downsample)
        tissue = t > 0.5
        return tissue, tissue & (les > 0.5)


def make_layout(
    width: int, height: int, seed: int = 0, lesion: str | None = None, lesion_share: float = 0.15
) -> SlideLayout:
    """Random tissue regions with holes (and lesion regions covering about ``lesion_share``
    of the tissue) for a ``width`` × ``height`` level-0 slide."""
    if lesion is not None and lesion not in LESION_KINDS:
        raise ValueError(f"lesion must be one of {LESION_KINDS} or None, got {lesion!r}")
    rng = np.random.default_rng(seed)
    cell = width / LAYOUT_CELLS
    gw, gh = LAYOUT_CELLS, max(8, math.ceil(height / cell))
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)

    tissue = np.zeros((gh, gw), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = rng.uniform(0.2, 0.8) * gw, rng.uniform(0.25, 0.75) * gh
        rx, ry = rng.uniform(0.10, 0.22) * gw, rng.uniform(0.12, 0.3) * gh
        tissue += _blob(xx, yy, cx, cy, rx, ry, rng.uniform(0, math.pi))
    tissue += _smooth_noise(rng, gh, gw, 8) * 0.3
    inside = np.argwhere(tissue > 1.0)
    for _ in range(int(rng.integers(2, 6))):
        if len(inside) == 0:
            break
        cy, cx = inside[rng.integers(len(inside))]
        r = rng.uniform(0.015, 0.035) * gw
        tissue -= 1.6 * _blob(xx, yy, cx, cy, r, r * rng.uniform(0.6, 1.4), 0.0)

    lesion_field = np.zeros_like(tissue)
    if lesion is not None:
        lesion_field = _lesion_field(rng, tissue, xx, yy, lesion_share)
    return SlideLayout(width, height, cell, tissue, lesion_field, lesion)


def write_synthetic_slide(
    path: str | Path,
    width: int = 4096,
    height: int = 3072,
    mpp: float | None = 0.25,
    seed: int = 0,
    lesion: str | None = None,
    downsamples: Sequence[int] = (1, 4, 16, 64),
    tile: int = 256,
    quality: int = 85,
    lesion_share: float = 0.15,
) -> SlideLayout:
    """Write a synthetic slide to ``path`` and return its layout.

    ``width``/``height`` are level-0 px; ``mpp`` is level-0 µm/px (``None`` writes no
    resolution, i.e. a slide without µm/px); levels whose smaller side would fall below 64 px
    are dropped. ``lesion_share``: about this share of the tissue is lesion. Memory use is a
    few tiles, whatever the size.
    """
    import tifffile

    layout = make_layout(width, height, seed, lesion, lesion_share)
    levels = [d for d in downsamples if min(width, height) // d >= 64] or [1]
    noise = np.random.default_rng(seed + 7919).normal(0, 1, (2 * tile, 2 * tile, 3)).astype(
        np.float32
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, d in enumerate(levels):
            w, h = math.ceil(width / d), math.ceil(height / d)
            level_mpp = None if mpp is None else mpp * d
            extra = {}
            if mpp is not None:
                extra = {"resolution": (1e4 / level_mpp,) * 2, "resolutionunit": "CENTIMETER"}
            tw.write(
                _tiles(layout, d, w, h, tile, level_mpp or 0.25 * d, seed, noise),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="jpeg",
                compressionargs={"level": quality},
                photometric="rgb",
                subfiletype=1 if i else 0,
                metadata=None,
                **extra,
            )
    return layout


def _tiles(layout, d, w, h, tile, level_mpp, seed, noise) -> Iterator[np.ndarray]:
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            rng = np.random.default_rng((seed, d, tx, ty))
            yield _render_tile(layout, tx * d, ty * d, tile, d, level_mpp, rng, noise)


def _render_tile(layout, x0, y0, size, d, level_mpp, rng, noise) -> np.ndarray:
    t, les = layout.fields_at(x0, y0, size, size, d)
    tissue = t > 0.5
    ox, oy = rng.integers(0, size, 2)
    grain = noise[oy:oy + size, ox:ox + size]
    if not tissue.any():
        return np.clip(BACKGROUND + 2 * grain, 0, 255).astype(np.uint8)
    lesion = tissue & (les > 0.5)
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUND
    img[tissue] = _STROMA
    if level_mpp > 2.0:
        _coarse_texture(img, tissue, lesion, layout.lesion_kind)
    else:
        _draw_nuclei(img, tissue, lesion, layout.lesion_kind, level_mpp, rng)
    img += np.where(tissue[..., None], 8.0, 2.0) * grain
    return np.clip(img, 0, 255).astype(np.uint8)


def _coarse_texture(img, tissue, lesion, kind) -> None:
    nucleus = np.array(_NUCLEUS, np.float32)
    img[tissue] = _mix(_STROMA, nucleus, _COARSE_NUCLEAR_SHARE["normal"])
    if kind is not None and lesion.any():
        img[lesion] = _mix(_STROMA, np.array(_DARK_NUCLEUS, np.float32),
                           _COARSE_NUCLEAR_SHARE[kind])
        if kind == "glands":
            img[lesion] = _mix(img[lesion][0], np.array(_LUMEN, np.float32), 0.4)


def _draw_nuclei(img, tissue, lesion, kind, level_mpp, rng) -> None:
    """Draw nuclei (and lumens) as antialiased discs; sizes and densities in µm."""
    size = img.shape[0]
    area_um2 = (size * level_mpp) ** 2
    specs = [("normal", tissue & ~lesion, 1 / 250, 3.0, _NUCLEUS)]
    if kind == "dense":
        specs.append(("dense", lesion, 1 / 70, 4.5, _DARK_NUCLEUS))
    elif kind == "glands":
        specs.append(("lumen", lesion, 1 / 900, 11.0, _LUMEN))
        specs.append(("rim", lesion, 1 / 200, 3.0, _NUCLEUS))
    for _, region, density, radius_um, colour in specs:
        n = rng.poisson(area_um2 * density)
        pts = rng.integers(0, size, (n, 2))
        keep = region[pts[:, 1], pts[:, 0]]
        radius = max(1, round(radius_um / level_mpp))
        for x, y in pts[keep]:
            r = max(1, int(radius * rng.uniform(0.7, 1.3)))
            cv2.circle(img, (int(x), int(y)), r, colour, -1, cv2.LINE_AA)
            if colour == _LUMEN:
                cv2.circle(img, (int(x), int(y)), r, _NUCLEUS, max(1, r // 5), cv2.LINE_AA)
    img[~tissue] = BACKGROUND


def _lesion_field(rng, tissue, xx, yy, share) -> np.ndarray:
    """Blobs centred in tissue, grown until they cover about ``share`` of the tissue."""
    field = np.zeros_like(tissue)
    inside = np.argwhere(tissue > 0.9)
    if len(inside) == 0:
        return field
    tissue_area = float((tissue > 0.5).sum())
    centres = [inside[rng.integers(len(inside))] for _ in range(int(rng.integers(2, 4)))]
    radius = 0.01 * xx.shape[1]
    while radius < xx.shape[1]:
        field = sum(_blob(xx, yy, cx, cy, radius, radius * 0.8, 0.3) for cy, cx in centres)
        covered = float(((field > 0.5) & (tissue > 0.5)).sum())
        if covered >= share * tissue_area:
            break
        radius *= 1.15
    return field.astype(np.float32)


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
