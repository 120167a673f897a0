"""Whole-slide images at low resolution: the overview segmented for tissue and the thumbnail
under heatmaps. Read in horizontal bands from the coarsest suitable pyramid level, so memory
stays bounded whatever the slide's size."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import SlideError
from .access import SlideInfo, open_slide, rgba_to_rgb, slide_info

# Bytes of RGBA read per OpenSlide call while building an overview (bounded memory).
_BAND_BYTES = 64 * 2**20
#: long side of a heatmap thumbnail, px
THUMB_MAX_SIDE = 2048


def read_overview(slide, info: SlideInfo, seg_mpp: float) -> tuple[np.ndarray, tuple[float, float]]:
    """RGB overview of the whole slide at about ``seg_mpp`` µm/px (never finer than the
    coarsest level), read in horizontal bands so memory stays bounded.

    Returns (image h×w×3 uint8, level-0 px per overview px along x and y).
    """
    mpps = [info.mpp * d for d in info.level_downsamples]
    finer = [i for i, m in enumerate(mpps) if m <= seg_mpp * 1.01]
    level = max(finer, key=lambda i: mpps[i]) if finer else len(mpps) - 1
    lw, lh = info.level_dimensions[level]
    factor = min(1.0, mpps[level] / seg_mpp)
    out_w, out_h = max(1, round(lw * factor)), max(1, round(lh * factor))
    band = max(1, _BAND_BYTES // (4 * lw))
    down = info.level_downsamples[level]
    parts = []
    for r0 in range(0, lh, band):
        r1 = min(lh, r0 + band)
        region = _read(slide, info, (0, round(r0 * down)), level, (lw, r1 - r0))
        d0, d1 = round(r0 * out_h / lh), round(r1 * out_h / lh)
        if d1 > d0:
            parts.append(cv2.resize(region, (out_w, d1 - d0), interpolation=cv2.INTER_AREA))
    image = np.concatenate(parts, axis=0)
    return image, (info.dimensions[0] / out_w, info.dimensions[1] / out_h)


def read_thumbnail(slide_path: Path, max_side: int = THUMB_MAX_SIDE
                   ) -> tuple[np.ndarray, tuple[float, float]]:
    """RGB thumbnail (h×w×3 uint8, long side ≤ ``max_side`` px) read from the coarsest pyramid
    level at least as fine as needed, in bands (bounded memory); and the level-0 px per
    thumbnail px along (x, y)."""
    slide = open_slide(slide_path)
    try:
        # read_overview picks the level by µm/px; any positive µm/px gives the same choice and
        # output size (both scale with it), so a slide without one is read at 1 µm/px.
        info = slide_info(slide, Path(slide_path), fallback_mpp=1.0)
        downsample = max(1.0, max(info.dimensions) / max_side)
        return read_overview(slide, info, info.mpp * downsample)
    finally:
        slide.close()


def _read(slide, info: SlideInfo, location, level, size) -> np.ndarray:
    import openslide

    try:
        rgba = np.asarray(slide.read_region(location, level, size))
    except openslide.OpenSlideError as exc:
        raise SlideError(
            f"{info.path}: unreadable at level {level} ({' '.join(str(exc).split())}); "
            "the file may be truncated or corrupt"
        ) from None
    return rgba_to_rgb(rgba)

