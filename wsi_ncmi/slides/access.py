"""Slide access through OpenSlide, and the slide's own µm/px.

µm/px precedence (highest first): a per-slide override (the manifest's ``mpp`` column), the
slide's metadata, a fallback the user asked for. Neither → :class:`SlideError`.

Metadata sources, in order: OpenSlide's normalised ``openslide.mpp-x/y`` (Aperio ``MPP``,
Hamamatsu, MIRAX, Leica, Philips, Ventana… as OpenSlide exposes them), then the TIFF
resolution tags ``tiff.XResolution``/``tiff.YResolution`` with ``tiff.ResolutionUnit`` of
centimeter or inch (generic TIFFs written by scanners and converters).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SlideError

#: file extensions of the slide formats OpenSlide reads (lower case)
SLIDE_EXTENSIONS = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
    ".czi", ".dcm",
)

# A µm/px outside this range is a unit mistake (e.g. a resolution tag in dpi with no unit),
# not a microscope: 0.05 µm/px is beyond any optical scanner, 100 µm/px is a thumbnail.
MPP_PLAUSIBLE = (0.05, 100.0)

_UNIT_TO_UM = {"centimeter": 1e4, "inch": 25400.0}


@dataclass(frozen=True)
class SlideInfo:
    """What the tiler needs to know about an open slide.

    ``dimensions`` and ``level_dimensions`` are (width, height) in pixels; ``level_downsamples``
    are relative to level 0; ``mpp_x``/``mpp_y`` are µm per level-0 pixel.
    """

    path: Path
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp_x: float
    mpp_y: float
    mpp_source: str
    vendor: str

    @property
    def mpp(self) -> float:
        """Level-0 µm/px (mean of x and y; scanners report square pixels)."""
        return (self.mpp_x + self.mpp_y) / 2


def open_slide(path: str | Path):
    """Open ``path`` with OpenSlide; raise :class:`SlideError` with a one-line reason otherwise."""
    import openslide

    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: file not found")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideError(f"{path}: not a slide OpenSlide can read (unsupported format)") from None
    except openslide.OpenSlideError as exc:
        raise SlideError(f"{path}: unreadable slide ({_one_line(exc)})") from None
    except OSError as exc:
        raise SlideError(f"{path}: cannot open ({_one_line(exc)})") from None


def metadata_mpp(properties: Mapping[str, str]) -> tuple[float, float] | None:
    """Level-0 (µm/px x, µm/px y) from slide properties, or None when they carry none."""
    x, y = properties.get("openslide.mpp-x"), properties.get("openslide.mpp-y")
    if x is not None and y is not None:
        pair = _positive_pair(x, y)
        if pair:
            return pair
    unit = properties.get("tiff.ResolutionUnit", "").lower()
    if unit in _UNIT_TO_UM:
        rx, ry = properties.get("tiff.XResolution"), properties.get("tiff.YResolution")
        res = _positive_pair(rx, ry) if rx is not None and ry is not None else None
        if res:
            return _UNIT_TO_UM[unit] / res[0], _UNIT_TO_UM[unit] / res[1]
    return None


def resolve_mpp(
    path: Path,
    properties: Mapping[str, str],
    override: float | None = None,
    fallback: float | None = None,
) -> tuple[float, float, str]:
    """(mpp_x, mpp_y, source) by the precedence override > metadata > fallback.

    ``source`` is ``"manifest"``, ``"metadata"`` or ``"fallback"``. Raises :class:`SlideError`
    when no source gives a plausible value.
    """
    if override is not None:
        _check_plausible(path, override, "manifest mpp")
        return override, override, "manifest"
    meta = metadata_mpp(properties)
    if meta is not None:
        for value in meta:
            _check_plausible(path, value, "metadata µm/px")
        return meta[0], meta[1], "metadata"
    if fallback is not None:
        _check_plausible(path, fallback, "--fallback-mpp")
        return fallback, fallback, "fallback"
    raise SlideError(
        f"{path}: no µm/px in the slide's metadata; give an 'mpp' column in the manifest "
        "or pass --fallback-mpp if you know the scanner's resolution"
    )


def slide_info(
    slide, path: Path, mpp_override: float | None = None, fallback_mpp: float | None = None
) -> SlideInfo:
    """Collect :class:`SlideInfo` from an open OpenSlide handle."""
    mpp_x, mpp_y, source = resolve_mpp(path, slide.properties, mpp_override, fallback_mpp)
    return SlideInfo(
        path=path,
        dimensions=tuple(slide.dimensions),
        level_dimensions=tuple(tuple(d) for d in slide.level_dimensions),
        level_downsamples=tuple(float(d) for d in slide.level_downsamples),
        mpp_x=mpp_x,
        mpp_y=mpp_y,
        mpp_source=source,
        vendor=slide.properties.get("openslide.vendor", "unknown"),
    )


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite OpenSlide's (non-premultiplied) RGBA onto white: transparent = background."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    out = rgb.astype(np.uint16) * alpha // 255 + (255 - alpha.astype(np.uint16))
    return out.astype(np.uint8)


def _positive_pair(a: str, b: str) -> tuple[float, float] | None:
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return None
    return (fa, fb) if fa > 0 and fb > 0 else None


def _check_plausible(path: Path, value: float, what: str) -> None:
    lo, hi = MPP_PLAUSIBLE
    if not lo <= value <= hi:
        raise SlideError(f"{path}: {what} {value:g} is outside the plausible {lo}–{hi} µm/px")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
