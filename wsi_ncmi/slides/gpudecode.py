"""Compressed tiles for a batched JPEG decode on a device (nvJPEG through torchvision on CUDA).

A reader process can hand over, instead of pixels, a :class:`CompressedRun`: the complete JPEG
streams of the native tiles a run of output tiles touches (tables merged, colour space stated:
:func:`~wsi_ncmi.slides.jpegstream.complete_stream`) and where each output tile's pixels come
from. The process that owns the device decodes every stream of a batch in one
``torchvision.io.decode_jpeg(list, device=...)`` call and assembles the tiles there
(:func:`decode_runs`), so only compressed bytes cross process and host–device boundaries.

Only runs read at whole-pixel level offsets in one OpenSlide area (≤ 4096 px a side) are
planned, where OpenSlide copies native tiles; :func:`plan_run` returns None for others, which
the caller reads on the CPU. Tiles come back at the level's read size: resizing to the
encoder's input is the caller's (the CPU path resizes with cv2 INTER_AREA).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .jpegtiff import DirectTileReader, JpegTiffSlide
from .reading import ReadSpec

_AREA = 4096  # OpenSlide's largest single painted area (px)


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


def decode_runs(runs: list[CompressedRun], device: str = "cpu"):
    """Decode all streams of ``runs`` in one batched call on ``device`` and assemble their
    tiles: a uint8 tensor N×side×side×3 on ``device``, N the runs' tiles in order. All runs
    must share one side. Raises RuntimeError when a stream does not decode."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    sides = {run.side for run in runs}
    if len(sides) > 1:
        raise ValueError(f"runs of different tile sides {sorted(sides)}")
    side = sides.pop() if sides else 0
    data = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for run in runs for s in run.streams]
    decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device) if data else []
    out = torch.full((sum(run.n_tiles for run in runs), side, side, 3), 255, dtype=torch.uint8,
                     device=device)
    first_tile = first_stream = 0
    for run in runs:
        for k, s, dy, dx, sy, sx, h, w in run.pieces.tolist():
            src = decoded[first_stream + s][:, sy:sy + h, sx:sx + w]
            out[first_tile + k, dy:dy + h, dx:dx + w] = src.permute(1, 2, 0)
        first_tile += run.n_tiles
        first_stream += len(run.streams)
    return out


def read_run_compressed(reader: DirectTileReader, coords: np.ndarray) -> CompressedRun | None:
    """A run of tiles as compressed native tiles for a batched device decode
    (:func:`plan_run`), or None where only a CPU read gives OpenSlide's pixels. Raises
    :class:`~wsi_ncmi.slides.jpegtiff.TileDecodeError` on a damaged tile."""
    return plan_run(reader.open(), reader.spec, coords)
