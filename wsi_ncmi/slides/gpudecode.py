"""Compressed tiles for a batched JPEG decode on a device (nvJPEG through torchvision on CUDA).

A reader process can hand over, instead of pixels, a :class:`CompressedRun`: the complete JPEG
streams of the native tiles a run of output tiles touches (tables merged, colour space stated:
:func:`~wsi_ncmi.slides.jpegstream.complete_stream`) and where each output tile's pixels come
from. The process that owns the device decodes every stream of a batch in one
``torchvision.io.decode_jpeg(list, device=...)`` call and assembles the tiles there
(:func:`decode_runs`), so only compressed bytes cross process and host–device boundaries.

Only runs read at whole-pixel level offsets in one OpenSlide area (≤ 4096 px a side) are
planned, where OpenSlide copies native tiles; :func:`plan_run` returns None for others, which
the caller reads on the CPU. Tiles come back at the level's read size; :func:`resize_area`
resizes them on the device with cv2 INTER_AREA's weights (the CPU path's resize) as two
matrix products.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .jpegtiff import DirectTileReader, JpegTiffSlide
from .reading import ReadSpec

_AREA = 4096  # OpenSlide's largest single painted area (px)
DEVICE_CACHE_BYTES = 256 * 2**20  # decoded native tiles kept on the device per slide


@dataclass(frozen=True)
class CompressedRun:
    """``streams``: complete JPEG streams of the native tiles used. ``pieces``: n×8 int64
    rows (output tile, stream, dst y, dst x, src y, src x, height, width) copying a
    rectangle of a decoded stream into an output tile. ``n_tiles`` output tiles of ``side``
    px; pixels no piece covers are white (outside the level, or a missing tile)."""

    streams: tuple[bytes, ...]
    pieces: np.ndarray
    n_tiles: int
    side: int


def plan_run(slide: JpegTiffSlide, spec: ReadSpec, coords: np.ndarray) -> CompressedRun | None:
    """The compressed form of ``read_run(coords)`` (same tiles, before resizing), or None
    when the run's region does not start on a whole level pixel or spans several areas."""
    lv = slide.layout.levels[spec.level]
    x0, y0 = int(coords[0, 0]), int(coords[0, 1])
    width = round((coords[-1, 0] - coords[0, 0]) / spec.downsample) + spec.read_size
    left, top = x0 / lv.downsample, y0 / lv.downsample
    if (x0 < 0 or y0 < 0 or width > _AREA or spec.read_size > _AREA
            or left != int(left) or top != int(top)):
        return None
    streams, index, pieces = [], {}, []
    for k, x in enumerate(coords[:, 0]):
        tile_left = int(left) + round((x - x0) / spec.downsample)
        for piece in _pieces(lv, int(top), tile_left, spec.read_size):
            col, row = piece[0], piece[1]
            if (col, row) not in index:
                stream = slide.jpeg_stream(spec.level, col, row)
                if stream is None:
                    continue
                index[(col, row)] = len(streams)
                streams.append(stream)
            pieces.append((k, index[(col, row)], *piece[2:]))
    return CompressedRun(tuple(streams), np.asarray(pieces, np.int64).reshape(-1, 8),
                         len(coords), spec.read_size)


def _pieces(lv, top: int, left: int, side: int):
    """(col, row, dst y, dst x, src y, src x, h, w) for each native tile under a square."""
    bottom, right = min(top + side, lv.height), min(left + side, lv.width)
    for row in range(top // lv.tile_h, -(-bottom // lv.tile_h)):
        for col in range(left // lv.tile_w, -(-right // lv.tile_w)):
            ty, tx = row * lv.tile_h, col * lv.tile_w
            a, b = max(top, ty), min(bottom, ty + lv.tile_h)
            c, d = max(left, tx), min(right, tx + lv.tile_w)
            if a < b and c < d:
                yield col, row, a - top, c - left, a - ty, c - tx, b - a, d - c


class DecodedTiles:
    """Native tiles decoded on a device, kept between batches (least recently used out first,
    at most ``max_bytes``) and keyed by their complete JPEG stream: rows of tiles that do not
    line up with native tiles share native tiles with the next row, which is usually in the
    next encoder batch. ``decoded`` counts the streams decoded so far."""

    def __init__(self, max_bytes: int = DEVICE_CACHE_BYTES):
        self.max_bytes = max_bytes
        self.decoded = 0
        self._tiles: OrderedDict = OrderedDict()
        self._bytes = 0

    def get(self, streams: list[bytes], device: str) -> list:
        """Decoded tiles (3×h×w uint8 on ``device``) of distinct ``streams``; those not kept
        are decoded in one batched call. Raises RuntimeError when one does not decode."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        missing = [s for s in streams if s not in self._tiles]
        if missing:
            data = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in missing]
            for stream, tile in zip(missing, decode_jpeg(data, mode=ImageReadMode.RGB,
                                                        device=device), strict=True):
                self._tiles[stream] = tile
                self._bytes += tile.numel()
            self.decoded += len(missing)
        out = []
        for stream in streams:
            self._tiles.move_to_end(stream)
            out.append(self._tiles[stream])
        while self._bytes > self.max_bytes and self._tiles:
            self._bytes -= self._tiles.popitem(last=False)[1].numel()
        return out


def decode_runs(runs: list[CompressedRun], device: str = "cpu",
                cache: DecodedTiles | None = None):
    """Decode the streams of ``runs`` in one batched call on ``device`` (a native tile that
    several runs share, or that ``cache`` holds, is decoded once) and assemble their tiles: a
    uint8 tensor N×side×side×3 on ``device``, N the runs' tiles in order. All runs must share
    one side. Raises RuntimeError when a stream does not decode or decodes too small."""
    import torch

    sides = {run.side for run in runs}
    if len(sides) > 1:
        raise ValueError(f"runs of different tile sides {sorted(sides)}")
    side = sides.pop() if sides else 0
    unique: dict[bytes, int] = {}
    where = [[unique.setdefault(s, len(unique)) for s in run.streams] for run in runs]
    decoded = (cache or DecodedTiles(0)).get(list(unique), device) if unique else []
    out = torch.full((sum(run.n_tiles for run in runs), side, side, 3), 255, dtype=torch.uint8,
                     device=device)
    first_tile = 0
    for run, streams in zip(runs, where, strict=True):
        for k, s, dy, dx, sy, sx, h, w in run.pieces.tolist():
            src = decoded[streams[s]][:, sy:sy + h, sx:sx + w]
            out[first_tile + k, dy:dy + h, dx:dx + w] = src.permute(1, 2, 0)
        first_tile += run.n_tiles
    return out


def device_decode_available(device: str) -> bool:
    """Whether ``torchvision.io.decode_jpeg`` decodes on ``device`` (nvJPEG on CUDA): one
    8×8 test image is decoded there, once per device."""
    return _decodes_on(str(device))


@lru_cache(maxsize=8)
def _decodes_on(device: str) -> bool:
    try:
        import torch
        from torchvision.io import decode_jpeg, encode_jpeg

        probe = encode_jpeg(torch.full((3, 8, 8), 128, dtype=torch.uint8))
        return decode_jpeg([probe], device=device)[0].shape == (3, 8, 8)
    except (ImportError, RuntimeError, ValueError, NotImplementedError):
        return False


def resize_area(tiles, side: int):
    """Square uint8 tiles N×s×s×3 (on any device) resized to N×side×side×3 with cv2
    INTER_AREA's weights (:func:`area_weights`), applied in float32 as two matrix products
    and rounded as cv2 rounds (half to even; half up for an exact halving). Equal to
    ``cv2.resize(tile, (side, side), interpolation=cv2.INTER_AREA)`` for downscaling up to
    float summation order (tested: at most 1 level apart); upscaling differs by up to 1 level
    where cv2 uses fixed-point weights."""
    import torch

    n_in = tiles.shape[1]
    if n_in == side:
        return tiles
    weights = torch.from_numpy(area_weights(n_in, side)).to(tiles.device)
    x = weights @ tiles.permute(0, 3, 1, 2).float() @ weights.T
    x = x.add_(0.5).floor_() if n_in == 2 * side else x.round_()
    return x.clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@lru_cache(maxsize=16)
def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """cv2 INTER_AREA's resampling weights along one axis, n_out×n_in float32, read off cv2
    itself: resizing the identity resizes each of its columns, so the result is the matrix
    (the resize is linear and separable on float32 images)."""
    import cv2

    eye = np.eye(n_in, dtype=np.float32)
    return cv2.resize(eye, (n_in, n_out), interpolation=cv2.INTER_AREA)


def read_run_compressed(reader: DirectTileReader, coords: np.ndarray) -> CompressedRun | None:
    """A run of tiles as compressed native tiles for a batched device decode
    (:func:`plan_run`), or None where only a CPU read gives OpenSlide's pixels. Raises
    :class:`~wsi_ncmi.slides.jpegtiff.TileDecodeError` on a damaged tile."""
    return plan_run(reader.open(), reader.spec, coords)
