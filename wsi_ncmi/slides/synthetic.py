"""Synthetic whole-slide images for tests, the demo and benchmarks: the slide files.

Formats (``format=``), each read by OpenSlide:

- ``"tiff"``: a pyramidal, tiled, JPEG-compressed BigTIFF (OpenSlide vendor
  ``generic-tiff``) with its µm/px in the TIFF resolution tags;
- ``"svs"``: an Aperio SVS (vendor ``aperio``): classic TIFF whose first ImageDescription
  starts ``Aperio Image Library`` and carries ``|MPP = …``, with a stripped thumbnail as the
  second directory, as Aperio scanners write it;
- ``"dicom"``: a DICOM WSI series (vendor ``dicom``), one ``.dcm`` file per level in the
  slide's own folder, written by ``wsidicomizer`` (optional extra ``wsi-ncmi[dicom]``).

Each level is downsampled from level 0 by one of ``downsamples`` (any list: 2 and 4 steps,
missing levels), tiled in ``tile`` px and JPEG-compressed at ``quality``. What the slide
shows (tissue, lesions, stain) comes from :mod:`wsi_ncmi.slides.synthetic_tissue`; the
layout returned answers "where is the tissue / lesion" for tests.

:func:`damage_slide` turns a written slide into a bad file of one of :data:`DAMAGE_KINDS`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .synthetic_tissue import (  # noqa: F401  (re-exported: the public synthetic API)
    LESION_KINDS,
    SlideLayout,
    Stain,
    make_layout,
    render_tile,
)

FORMATS = ("tiff", "svs", "dicom")
SUFFIXES = {"tiff": ".tif", "svs": ".svs", "dicom": ".dcm"}
DAMAGE_KINDS = ("truncated", "not_a_slide", "corrupt_tiles")
# µm/px used to render slides whose µm/px is not given (and so not recorded).
DEFAULT_RENDER_MPP = 0.25
_APERIO = "Aperio Image Library v12.0.15"


def pyramid_levels(width: int, height: int, downsamples: Sequence[int]) -> list[int]:
    """The downsamples a slide of ``width`` × ``height`` level-0 px gets: those whose
    level keeps at least 64 px on its smaller side (at least level 0)."""
    return [d for d in downsamples if min(width, height) // d >= 64] or [1]


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
    *,
    format: str = "tiff",
    record_mpp: bool = True,
    stain: Stain | None = None,
    lesion_um: float | None = None,
    fragments: int | None = None,
    tissue_scale: float = 1.0,
) -> SlideLayout:
    """Write a synthetic slide to ``path`` and return its layout.

    ``width``/``height`` are level-0 px; ``mpp`` is the true level-0 µm/px (nuclei, lumens
    and lesions are drawn to scale in µm). ``record_mpp=False`` writes no µm/px into the
    file; ``mpp=None`` is the same at :data:`DEFAULT_RENDER_MPP`. Levels whose smaller side
    would fall below 64 px are dropped (:func:`pyramid_levels`). ``lesion`` is a kind from
    ``LESION_KINDS``: one lesion of largest diameter ``lesion_um`` µm if that is given,
    else lesion regions covering about ``lesion_share`` of the tissue. ``stain`` recolours
    every level; ``fragments``/``tissue_scale``: see :func:`make_layout`. For
    ``format="dicom"``, ``path`` is the level-0 ``.dcm`` file; the other levels are written
    next to it as ``<stem>_level<i>.dcm`` (give each DICOM slide its own folder). Memory
    use is a few tiles, whatever the size (DICOM: a temporary uncompressed copy on disk).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if mpp is None:
        mpp, record_mpp = DEFAULT_RENDER_MPP, False
    if format == "dicom" and not record_mpp:
        raise ValueError(f"{path}: a DICOM WSI always records its µm/px")
    lesion_px = None if lesion_um is None else lesion_um / mpp
    layout = make_layout(width, height, seed, lesion, lesion_share, lesion_px=lesion_px,
                         fragments=fragments, tissue_scale=tissue_scale)
    levels = pyramid_levels(width, height, downsamples)
    render = _Renderer(layout, mpp, seed, tile, stain)
    path = Path(path)
    if format == "tiff":
        _write_tiff(path, render, levels, quality, mpp if record_mpp else None)
    elif format == "svs":
        _write_svs(path, render, levels, quality, mpp if record_mpp else None)
    else:
        _write_dicom(path, render, levels, quality, mpp, seed)
    return layout


def damage_slide(path: str | Path, kind: str, layout: SlideLayout | None = None,
                 seed: int = 0, tiles: int = 3) -> list[tuple[int, int]]:
    """Turn the slide file at ``path`` into a bad file of ``kind``:

    - ``"truncated"``: cut to its first 40 % of bytes (an interrupted copy);
    - ``"not_a_slide"``: replaced by a short HTML error page (a failed download);
    - ``"corrupt_tiles"``: the first 64 bytes of ``tiles`` level-0 tissue tiles (chosen
      with ``seed`` where ``layout`` says there is tissue) overwritten with zeros, so those
      tiles fail to decode while the file still opens (TIFF and SVS only).

    Returns the level-0 (x, y) of the corrupted tiles (empty for the other kinds).
    """
    path = Path(path)
    if kind == "truncated":
        os.truncate(path, int(path.stat().st_size * 0.4))
    elif kind == "not_a_slide":
        path.write_text("<html><head><title>403 Forbidden</title></head>\n"
                        "<body><h1>Forbidden</h1></body></html>\n")
    elif kind == "corrupt_tiles":
        return _corrupt_tiles(path, layout, seed, tiles)
    else:
        raise ValueError(f"damage kind must be one of {DAMAGE_KINDS}, got {kind!r}")
    return []


class _Renderer:
    """Renders the tiles of one slide's levels, each seeded by its level and position (so
    the same arguments give the same pixels in every format)."""

    def __init__(self, layout: SlideLayout, mpp: float, seed: int, tile: int,
                 stain: Stain | None):
        self.layout, self.mpp, self.seed, self.tile, self.stain = layout, mpp, seed, tile, stain
        self.noise = np.random.default_rng(seed + 7919).normal(
            0, 1, (2 * tile, 2 * tile, 3)).astype(np.float32)

    def shape(self, d: int) -> tuple[int, int, int]:
        """(height, width, 3) of the level at downsample ``d``."""
        return math.ceil(self.layout.height / d), math.ceil(self.layout.width / d), 3

    def tiles(self, d: int) -> Iterator[np.ndarray]:
        """The level's tiles in row-major order, each ``tile`` × ``tile`` × 3 uint8."""
        h, w, _ = self.shape(d)
        for ty in range(0, h, self.tile):
            for tx in range(0, w, self.tile):
                rng = np.random.default_rng((self.seed, d, tx, ty))
                yield render_tile(self.layout, tx * d, ty * d, self.tile, d, self.mpp * d,
                                  rng, self.noise, self.stain)

    def image(self, d: int) -> np.ndarray:
        """The whole level at downsample ``d`` as one array (for small thumbnails)."""
        h, w, _ = self.shape(d)
        out = np.empty((math.ceil(h / self.tile) * self.tile,
                        math.ceil(w / self.tile) * self.tile, 3), np.uint8)
        cols = out.shape[1] // self.tile
        for i, t in enumerate(self.tiles(d)):
            y, x = divmod(i, cols)
            out[y * self.tile:(y + 1) * self.tile, x * self.tile:(x + 1) * self.tile] = t
        return out[:h, :w]


def _write_tiff(path: Path, render: _Renderer, levels: list[int], quality: int,
                mpp: float | None, compression: str | None = "jpeg") -> None:
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, d in enumerate(levels):
            extra = {}
            if mpp is not None:
                extra = {"resolution": (1e4 / (mpp * d),) * 2, "resolutionunit": "CENTIMETER"}
            if compression == "jpeg":
                extra["compressionargs"] = {"level": quality}
            tw.write(render.tiles(d), shape=render.shape(d), dtype=np.uint8,
                     tile=(render.tile, render.tile), compression=compression,
                     photometric="rgb", subfiletype=1 if i else 0, metadata=None, **extra)


def _write_svs(path: Path, render: _Renderer, levels: list[int], quality: int,
               mpp: float | None) -> None:
    import tifffile

    h0, w0, _ = render.shape(1)
    t = render.tile
    fields = f"|AppMag = {40 if render.mpp < 0.35 else 20}|StripeWidth = 2040|ScanScope ID = SS1"
    if mpp is not None:
        fields += f"|MPP = {mpp:.4f}"
    head = f"{_APERIO}\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({t}x{t})"
    big = w0 * h0 * 3 > 2**31  # classic TIFF offsets stop at 4 GiB; JPEG keeps far below
    thumb_d = max(1, math.ceil(max(w0, h0) / 1024))
    with tifffile.TiffWriter(path, bigtiff=big) as tw:
        for i, d in enumerate(levels):
            h, w, _ = render.shape(d)
            scaled = f" -> {w}x{h}" if i else ""
            desc = f"{head}{scaled} JPEG/RGB Q={quality}{fields if i == 0 else ''}"
            tw.write(render.tiles(d), shape=render.shape(d), dtype=np.uint8, tile=(t, t),
                     compression="jpeg", compressionargs={"level": quality}, photometric="rgb",
                     description=desc, metadata=None)
            if i == 0:
                thumb = render.image(thumb_d)
                tw.write(thumb, compression="jpeg", compressionargs={"level": 90},
                         photometric="rgb", metadata=None, rowsperstrip=16,
                         description=f"{_APERIO}\r\n{w0}x{h0} -> "
                                     f"{thumb.shape[1]}x{thumb.shape[0]} - {fields}")


def _write_dicom(path: Path, render: _Renderer, levels: list[int], quality: int, mpp: float,
                 seed: int) -> None:
    """Render an uncompressed temporary TIFF, convert it with wsidicomizer through its OpenSlide
    source (tifffile-based sources drop levels when the steps between levels differ) to
    JPEG at ``quality`` in tiles of the renderer's size, and name the files after ``path``."""
    try:
        import pydicom
        from wsidicom.codec import JpegSettings
        from wsidicomizer import WsiDicomizer
        from wsidicomizer.wsidicomizer import SourceIdentifier
    except ImportError:
        raise ImportError("format 'dicom' needs the optional dependency wsidicomizer: "
                          "pip install 'wsi-ncmi[dicom]'") from None

    path.parent.mkdir(parents=True, exist_ok=True)
    uids = iter(range(1, 10**6))
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".dicomizing-") as tmp:
        source = Path(tmp) / "source.tif"
        _write_tiff(source, render, levels, quality, mpp, None)
        files = WsiDicomizer.convert(
            source, Path(tmp) / "out", tile_size=render.tile,
            encoding=JpegSettings(quality=quality), preferred_source=SourceIdentifier.OPENSLIDE,
            include_label=False, include_overview=False, include_thumbnail=False, workers=1,
            uid_generator=lambda: pydicom.uid.generate_uid(entropy_srcs=[str(seed),
                                                                          str(next(uids))]))
        width = {f: pydicom.dcmread(f, stop_before_pixels=True).TotalPixelMatrixColumns
                 for f in files}
        for i, f in enumerate(sorted(files, key=width.get, reverse=True)):
            shutil.move(f, path if i == 0 else path.with_name(f"{path.stem}_level{i}.dcm"))


def _corrupt_tiles(path: Path, layout: SlideLayout | None, seed: int,
                   n: int) -> list[tuple[int, int]]:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        tw, th = page.tilewidth, page.tilelength
        if not tw:
            raise ValueError(f"{path}: corrupt_tiles needs a tiled TIFF or SVS")
        offsets = page.dataoffsets
        cols = math.ceil(page.imagewidth / tw)
    rows = len(offsets) // cols
    candidates = np.arange(len(offsets))
    if layout is not None:
        tissue, _ = layout.masks(tw)
        candidates = np.flatnonzero(tissue[:rows, :cols].ravel()) if tissue.any() else candidates
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(candidates, size=min(n, len(candidates)), replace=False))
    with open(path, "r+b") as f:
        for i in chosen:
            f.seek(offsets[i])
            f.write(bytes(64))
    return [(int(i % cols) * tw, int(i // cols) * th) for i in chosen]
