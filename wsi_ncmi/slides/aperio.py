"""Aperio-style SVS files made from any slide, for tests and benchmarks.

The layout is Aperio's as OpenSlide's aperio driver expects it: an ImageDescription starting
"Aperio Image Library" with ``|MPP = …``, the full-resolution level tiled first, a stripped
thumbnail second, then the reduced levels, tiled. Tiles are abbreviated JPEG streams sharing
one JPEGTables tag. With ``photometric="rgb"`` (Aperio's usual) the JPEG data are RGB with
component ids 0, 1, 2 and no Adobe marker, so only the TIFF photometric tag says they are not
YCbCr — the quirk OpenSlide handles by forcing the colour space; ``"ycbcr"`` writes 4:2:0
YCbCr tiles instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .access import open_slide, rgba_to_rgb
from .jpegstream import EOI, SOI, header_segments

_TABLE_MARKERS = (0xDB, 0xC4)  # DQT, DHT
_DROPPED_MARKERS = (0xE0, 0xEE)  # APP0 (JFIF), APP14 (Adobe)
_SOF0 = 0xC0


def write_aperio_like(source: str | Path, out: str | Path, tile: int = 240, quality: int = 80,
                      photometric: str = "rgb", mpp: float = 0.25) -> Path:
    """Write the pyramid of ``source`` (any slide OpenSlide reads; levels kept as they are)
    to ``out`` as an Aperio-style SVS with ``tile``-px JPEG tiles; return ``out``."""
    import tifffile

    if photometric not in ("rgb", "ycbcr"):
        raise ValueError(f"photometric must be 'rgb' or 'ycbcr', got {photometric!r}")
    rgb = photometric == "rgb"
    slide = open_slide(source)
    out = Path(out)
    try:
        dims = [tuple(d) for d in slide.level_dimensions]
        w0, h0 = dims[0]
        description = (f"Aperio Image Library v12.0.15 \r\n{w0}x{h0} [0,0 {w0}x{h0}] "
                       f"({tile}x{tile}) JPEG/RGB Q={quality}|AppMag = 40|MPP = {mpp}")
        with tifffile.TiffWriter(out, bigtiff=False) as tw:
            for level, (w, h) in enumerate(dims):
                tables, tiles = _encoded_level(slide, level, w, h, tile, quality, rgb)
                tw.write(tiles, shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                         compression="jpeg", photometric="rgb", jpegtables=tables,
                         subsampling=(1, 1) if rgb else (2, 2),
                         compressionargs={"outcolorspace": "RGB" if rgb else "YCBCR"},
                         description=description if level == 0 else None,
                         subfiletype=0 if level == 0 else 1, metadata=None)
                if level == 0:
                    tw.write(_thumbnail(slide), photometric="rgb", metadata=None,
                             description=f"Aperio Image Library v12.0.15 \r\n{w0}x{h0} -> "
                                         "thumbnail")
    finally:
        slide.close()
    return out


def _encoded_level(slide, level, w, h, tile, quality, rgb) -> tuple[bytes, Iterator[bytes]]:
    """(JPEGTables value, iterator of abbreviated tile streams in row-major order)."""
    ds = slide.level_downsamples[level]
    positions = [(x, y) for y in range(0, h, tile) for x in range(0, w, tile)]

    def encode(x: int, y: int) -> tuple[bytes, bytes]:
        region = slide.read_region((round(x * ds), round(y * ds)), level, (tile, tile))
        return split_tables(encode_tile(rgba_to_rgb(np.asarray(region)), quality, rgb), rgb)

    tables, first = encode(*positions[0])

    def tiles() -> Iterator[bytes]:
        yield first
        for x, y in positions[1:]:
            t, data = encode(x, y)
            if t != tables:
                raise ValueError("JPEG tables differ between tiles")
            yield data

    return tables, tiles()


def encode_tile(pixels: np.ndarray, quality: int, rgb: bool) -> bytes:
    """A complete JPEG stream of ``pixels`` (h×w×3 uint8): RGB data (4:4:4, no colour
    transform) when ``rgb``, else YCbCr 4:2:0."""
    import imagecodecs

    if rgb:
        return imagecodecs.jpeg8_encode(pixels, level=quality, colorspace="RGB",
                                        outcolorspace="RGB", subsampling="444")
    return imagecodecs.jpeg8_encode(pixels, level=quality, colorspace="RGB",
                                    outcolorspace="YCBCR", subsampling="420")


def split_tables(stream: bytes, aperio_ids: bool) -> tuple[bytes, bytes]:
    """(tables-only stream, abbreviated stream without tables or APP0/APP14 markers). With
    ``aperio_ids`` the component ids become 0, 1, 2, as Aperio writes them."""
    segments, scan = header_segments(stream)
    tables = b"".join(s for s in segments if s[1] in _TABLE_MARKERS)
    rest = [s for s in segments if s[1] not in _TABLE_MARKERS + _DROPPED_MARKERS]
    if aperio_ids:
        rest = [_renumber_frame(s) if s[1] == _SOF0 else s for s in rest]
        scan = _renumber_scan(scan)
    return SOI + tables + EOI, SOI + b"".join(rest) + scan


def _renumber_frame(segment: bytes) -> bytes:
    out = bytearray(segment)
    for k in range(out[9]):
        out[10 + 3 * k] = k
    return bytes(out)


def _renumber_scan(scan: bytes) -> bytes:
    out = bytearray(scan)
    for k in range(out[4]):
        out[5 + 2 * k] = k
    return bytes(out)


def _thumbnail(slide) -> np.ndarray:
    w, h = slide.level_dimensions[-1]
    return rgba_to_rgb(np.asarray(slide.read_region((0, 0), slide.level_count - 1, (w, h))))
