"""Read JPEG-tiled TIFF slides (Aperio SVS, generic pyramidal TIFF, Philips TIFF) without
OpenSlide, with
OpenSlide's pixels, at the speed of the JPEG decoder.

OpenSlide spends ~1.6 ms per 256-px JPEG tile, much of it compositing. Here tifffile gives
the tile index and the shared JPEG tables once, each native tile is read with one ``pread``
and decoded by libjpeg-turbo (imagecodecs) with the colour space forced from the photometric
tag, as OpenSlide forces it, and regions are painted from native tiles as OpenSlide paints
them:

- level geometry is OpenSlide's own (dimensions, downsamples), asked when the slide is
  inspected; a level-0 location maps to the level as ``x / downsample``, regions wider than
  4096 px are cut where OpenSlide cuts them, negative locations are shifted as it shifts them;
- at whole-pixel level offsets native tiles are copied; at fractional ones the region is
  resampled exactly as OpenSlide's cairo/pixman path does (:mod:`wsi_ncmi.slides.subpixel`);
- level pixels outside the level (OpenSlide's size, which for Philips is smaller than the
  TIFF page), and missing (zero-length) tiles of a generic or Philips TIFF, are transparent,
  composited onto white like :func:`wsi_ncmi.slide.rgba_to_rgb` does;
- a native tile that fails to decode fails the read (:class:`TileDecodeError`). OpenSlide
  also fails on libjpeg warnings, which imagecodecs does not report; a tile damaged by
  truncation or overwriting is caught here by its missing SOI/EOI markers.

Decoded native tiles are kept in a small LRU (bytes-bounded), so a native tile shared by
adjacent reads is decoded once. Everything else — other OpenSlide drivers (MRXS, NDPI, DICOM,
Ventana's overlapping tiles…), JPEG 2000, LZW or uncompressed levels, odd layouts — is named by
:func:`can_read_direct` with the reason, and read through OpenSlide instead
(:func:`wsi_ncmi.reading.open_reader`).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .access import open_slide
from .jpegstream import complete_stream, tile_damage
from .reading import ReadFailed, ReadSpec, TileReader
from .subpixel import resample

DIRECT_VENDORS = ("generic-tiff", "aperio", "philips")
CACHE_BYTES = 32 * 2**20  # decoded native tiles kept per reader (per worker process)
_JPEG = 7
_YCBCR = {2: False, 6: True}  # TIFF photometric RGB, YCbCr
_CHUNK = 4096  # OpenSlide paints regions in squares of at most this side (px)


class TileDecodeError(Exception):
    """A native tile could not be read or decoded; the message names the slide and tile."""


@dataclass(frozen=True)
class JpegLevel:
    """One pyramid level: OpenSlide's size (px) and downsample, the native tile size (px) and
    grid (tiles across, down), whether the JPEG data are YCbCr (else RGB), the JPEGTables
    value, and per tile (row-major) the file offset and byte count (0 = missing tile)."""

    width: int
    height: int
    downsample: float
    tile_w: int
    tile_h: int
    tiles_across: int
    tiles_down: int
    ycbcr: bool
    tables: bytes | None
    offsets: np.ndarray
    counts: np.ndarray


@dataclass(frozen=True)
class JpegTiffLayout:
    """What the direct reader needs of a slide; small and picklable for worker processes."""

    path: Path
    vendor: str
    levels: tuple[JpegLevel, ...]


def can_read_direct(path: str | Path) -> str | None:
    """Why the direct reader cannot read ``path`` (one line), or None when it can.
    A file OpenSlide cannot open raises :class:`~wsi_ncmi.errors.SlideError`."""
    found = inspect_slide(path)
    return found if isinstance(found, str) else None


def inspect_slide(path: str | Path) -> JpegTiffLayout | str:
    """The slide's layout, or the reason it is not a JPEG-tiled TIFF read the way OpenSlide
    reads it. Opens the slide once with OpenSlide (for its driver and level geometry) and
    once with tifffile (for the tiles)."""
    import tifffile

    path = Path(path)
    slide = open_slide(path)
    try:
        vendor = slide.properties.get("openslide.vendor", "unknown")
        dims = [tuple(int(v) for v in d) for d in slide.level_dimensions]
        downsamples = [float(d) for d in slide.level_downsamples]
    finally:
        slide.close()
    if vendor not in DIRECT_VENDORS:
        return (f"OpenSlide reads it with its {vendor} driver; direct reading covers "
                f"{', '.join(DIRECT_VENDORS)}")
    try:
        with tifffile.TiffFile(path) as tf:
            pages = _level_pages(list(tf.pages), vendor)
            if isinstance(pages, str):
                return pages
            sizes = [(p.imagewidth, p.imagelength) for p in pages]
            if len(sizes) != len(dims) or not all(
                    (w, h) == (lw, lh) or (vendor == "philips" and w >= lw and h >= lh)
                    for (w, h), (lw, lh) in zip(sizes, dims, strict=True)):
                return "its TIFF levels differ from the levels OpenSlide reports"
            levels = []
            for i, (page, size, ds) in enumerate(zip(pages, dims, downsamples, strict=True)):
                level = _jpeg_level(page, size, ds, vendor)
                if isinstance(level, str):
                    return f"level {i} {level}"
                levels.append(level)
    except (tifffile.TiffFileError, OSError, ValueError, KeyError) as exc:
        return f"tifffile cannot parse it ({' '.join(str(exc).split())})"
    return JpegTiffLayout(path, vendor, tuple(levels))


def _level_pages(pages: list, vendor: str) -> list | str:
    """The pages OpenSlide takes as levels, in its order: Aperio and Philips take every tiled
    page in file order; generic TIFF the first page and tiled reduced-resolution pages, by
    width."""
    if vendor in ("aperio", "philips"):
        return [p for p in pages if p.is_tiled]
    levels = [p for i, p in enumerate(pages) if p.is_tiled and (i == 0 or p.subfiletype & 1)]
    widths = [p.imagewidth for p in levels]
    if len(set(widths)) != len(widths):
        return "has pyramid levels of equal width (OpenSlide's order is undefined)"
    return sorted(levels, key=lambda p: -p.imagewidth)


def _jpeg_level(page, size: tuple[int, int], downsample: float, vendor: str) -> JpegLevel | str:
    """The level read from a TIFF page, or why the page is not plain 8-bit JPEG tiles."""
    if int(page.compression) != _JPEG:
        return f"is compressed with {_name(page.compression)}, not JPEG"
    if int(page.planarconfig) != 1 or page.samplesperpixel != 3 or page.bitspersample != 8:
        return "is not 8-bit RGB with interleaved samples"
    if int(page.photometric) not in _YCBCR:
        return f"has photometric {_name(page.photometric)}, not RGB or YCbCr"
    counts = np.asarray(page.databytecounts, np.int64)
    across = -(-page.imagewidth // page.tilewidth)
    down = -(-page.imagelength // page.tilelength)
    level = JpegLevel(size[0], size[1], downsample, page.tilewidth, page.tilelength, across,
                      down, _YCBCR[int(page.photometric)], page.jpegtables,
                      np.asarray(page.dataoffsets, np.int64), counts)
    if len(counts) != across * down:
        return "has a tile count that does not match its size"
    if vendor == "aperio" and (counts == 0).any():
        return "has zero-length tiles, which OpenSlide paints from another level"
    return level


def _name(value) -> str:
    return getattr(value, "name", str(value))


class JpegTiffSlide:
    """Regions and native tiles of one slide. The file is opened on the first read, so each
    process that unpickles an instance gets its own handle."""

    def __init__(self, layout: JpegTiffLayout, cache_bytes: int = CACHE_BYTES):
        self.layout = layout
        self.cache_bytes = cache_bytes
        self._fd: int | None = None
        self._cache: OrderedDict = OrderedDict()
        self._cached = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._cache.clear()
        self._cached = 0

    def raw_tile(self, level: int, col: int, row: int) -> bytes | None:
        """The stored bytes of native tile (col, row), or None for a missing tile."""
        lv = self.layout.levels[level]
        index = row * lv.tiles_across + col
        count = int(lv.counts[index])
        if count == 0:
            return None
        if self._fd is None:
            self._fd = os.open(self.layout.path, os.O_RDONLY)
        data = os.pread(self._fd, count, int(lv.offsets[index]))
        if len(data) != count:
            raise TileDecodeError(self._where(level, col, row, "file ends inside the tile"))
        return data

    def jpeg_stream(self, level: int, col: int, row: int) -> bytes | None:
        """Native tile (col, row) as a complete JPEG stream (tables merged, colour space
        stated) for any decoder, e.g. a batched GPU decode; None for a missing tile."""
        data = self.raw_tile(level, col, row)
        if data is None:
            return None
        lv = self.layout.levels[level]
        try:
            return complete_stream(data, lv.tables, lv.ycbcr)
        except ValueError as exc:
            raise TileDecodeError(self._where(level, col, row, str(exc))) from None

    def tile(self, level: int, col: int, row: int) -> np.ndarray | None:
        """Native tile (col, row) decoded (tile_h×tile_w×3 uint8), or None when missing."""
        key = (level, col, row)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        pixels = self._decode(level, col, row)
        size = 0 if pixels is None else pixels.nbytes
        self._cache[key] = pixels
        self._cached += size
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= 0 if old is None else old.nbytes
        return pixels

    def read_region(self, location: tuple[int, int], level: int,
                    size: tuple[int, int]) -> np.ndarray:
        """What ``rgba_to_rgb(openslide.read_region(location, level, size))`` returns:
        h×w×3 uint8 for level-0 ``location`` (x, y) and ``size`` (w, h) in level px."""
        (x, y), (w, h) = location, size
        out = np.full((h, w, 3), 255, np.uint8)
        ds = self.layout.levels[level].downsample
        for r in range(-(-h // _CHUNK)):
            for c in range(-(-w // _CHUNK)):
                sx, sy = int(x + c * _CHUNK * ds), int(y + r * _CHUNK * ds)
                block = out[r * _CHUNK:(r + 1) * _CHUNK, c * _CHUNK:(c + 1) * _CHUNK]
                self._paint_area(block, sx, sy, level)
        return out

    def _paint_area(self, dest: np.ndarray, x: int, y: int, level: int) -> None:
        """Paint one OpenSlide area into ``dest`` (white), from level-0 (x, y)."""
        ds = self.layout.levels[level].downsample
        tx = int(-x / ds) if x < 0 else 0
        ty = int(-y / ds) if y < 0 else 0
        dest = dest[ty:, tx:]
        h, w = dest.shape[:2]
        if w <= 0 or h <= 0:
            return
        fx, fy = max(x, 0) / ds, max(y, 0) / ds
        if fx == math.floor(fx) and fy == math.floor(fy):
            for pixels, dst, src in self._pieces(level, int(fy), int(fx), h, w):
                dest[dst] = pixels[src]
            return
        vx, vy = round(fx * 65536), round(fy * 65536)  # cairo's fixed point, ties to even
        col0, row0 = vx >> 16, vy >> 16
        rgb = np.zeros((h + 1, w + 1, 3), np.uint8)
        opaque = np.zeros((h + 1, w + 1), bool)
        for pixels, dst, src in self._pieces(level, row0, col0, h + 1, w + 1):
            rgb[dst] = pixels[src]
            opaque[dst] = True
        lv = self.layout.levels[level]
        col_cut = (np.arange(col0 + 1, col0 + w + 1) % lv.tile_w) == 0
        row_cut = (np.arange(row0 + 1, row0 + h + 1) % lv.tile_h) == 0
        dest[:] = resample(rgb, opaque, vx & 0xFFFF, vy & 0xFFFF, col_cut, row_cut)

    def _pieces(self, level: int, top: int, left: int, h: int, w: int):
        """(decoded tile, destination slices, source slices) for each painted native tile
        under level pixels [top, top+h) × [left, left+w), clipped to the level."""
        lv = self.layout.levels[level]
        top0, left0 = max(top, 0), max(left, 0)
        bottom, right = min(top + h, lv.height), min(left + w, lv.width)
        if bottom <= top0 or right <= left0:
            return
        for row in range(top0 // lv.tile_h, -(-bottom // lv.tile_h)):
            for col in range(left0 // lv.tile_w, -(-right // lv.tile_w)):
                pixels = self.tile(level, col, row)
                if pixels is None:
                    continue
                y0, x0 = row * lv.tile_h, col * lv.tile_w
                a, b = max(top, y0), min(bottom, y0 + lv.tile_h)
                c, d = max(left, x0), min(right, x0 + lv.tile_w)
                yield (pixels, (slice(a - top, b - top), slice(c - left, d - left)),
                       (slice(a - y0, b - y0), slice(c - x0, d - x0)))

    def _decode(self, level: int, col: int, row: int) -> np.ndarray | None:
        import imagecodecs

        data = self.raw_tile(level, col, row)
        if data is None:
            return None
        damage = tile_damage(data)
        if damage:
            raise TileDecodeError(self._where(level, col, row, damage))
        lv = self.layout.levels[level]
        try:
            pixels = imagecodecs.jpeg8_decode(
                data, tables=lv.tables, colorspace="YCBCR" if lv.ycbcr else "RGB",
                outcolorspace="RGB")
        except imagecodecs.Jpeg8Error as exc:
            raise TileDecodeError(self._where(level, col, row, str(exc))) from None
        if pixels.shape != (lv.tile_h, lv.tile_w, 3):
            raise TileDecodeError(self._where(
                level, col, row, f"decodes to {pixels.shape}, expected "
                f"{(lv.tile_h, lv.tile_w, 3)}"))
        return pixels

    def _where(self, level: int, col: int, row: int, why: str) -> str:
        return f"{self.layout.path}: level {level} tile ({col}, {row}): {why}"


class DirectTileReader(TileReader):
    """:class:`~wsi_ncmi.reading.TileReader` (same runs, cutting, resizing and retry/skip
    policy) over :class:`JpegTiffSlide` instead of OpenSlide."""

    name = "direct"

    def __init__(self, layout: JpegTiffLayout, spec: ReadSpec, cache_bytes: int = CACHE_BYTES):
        super().__init__(layout.path, spec)
        self.layout = layout
        self.cache_bytes = cache_bytes

    def open(self) -> JpegTiffSlide:
        """The slide this reader reads (opened on first use, once per process)."""
        if self._slide is None:
            self._slide = JpegTiffSlide(self.layout, self.cache_bytes)
        return self._slide

    def _read(self, location, size) -> np.ndarray:
        self.open()
        try:
            return self._slide.read_region(location, self.spec.level, size)
        except (TileDecodeError, OSError):
            self.close()  # as with OpenSlide: a fresh handle (and cache) for the retry
            raise ReadFailed from None
