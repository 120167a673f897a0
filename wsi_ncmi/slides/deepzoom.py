"""Deep Zoom (DZI) pyramids of a slide, for the review page's viewer.

A pyramid is ``OUT/<name>.dzi`` (the XML descriptor: tile side, overlap, format, full size)
and ``OUT/<name>_files/<level>/<col>_<row>.jpeg``, the Deep Zoom layout that OpenSeadragon
and other viewers read: level ``L`` is the full-size image, each level below halves it
(rounding up) down to 1 × 1 px at level 0; tiles are ``tile_size`` px squares plus
``overlap`` px borders shared with their neighbours. Tiles come from OpenSlide's
:class:`openslide.deepzoom.DeepZoomGenerator` over the whole level-0 image (no cropping to
the scanned bounds, so pyramid px map to level-0 px by a power of two).

Two limits keep a pyramid small, and the finest level that meets both is the "full size":

- a resolution cap: no level finer than ``finest_mpp`` µm/px, nor larger than ``max_scale``
  × the level-0 side; the full size is level 0 downsampled by the smallest power of two that
  meets both;
- a byte budget: levels are written coarse to fine and a level that would take the tiles
  past ``max_bytes`` (sizes of the files, the descriptor included) is dropped with every
  finer one. File-system blocks add up to 4 KiB per tile and per level folder on disk.
"""

from __future__ import annotations

import io
import math
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_path
from ..errors import InputError, SlideError

DZI_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"
DEFAULT_MAX_BYTES = 64 * 2**20
# Room kept in the byte budget for the .dzi descriptor itself (it is about 200 bytes).
_DESCRIPTOR_RESERVE = 512
_PARTIAL = ".partial"


@dataclass(frozen=True)
class DziInfo:
    """A .dzi descriptor: the full-size image in px, the tile side and overlap in px, the
    tile file extension."""

    width: int
    height: int
    tile_size: int
    overlap: int
    format: str

    @property
    def levels(self) -> int:
        """Number of levels, 1 × 1 px (level 0) to full size."""
        return math.ceil(math.log2(max(self.width, self.height))) + 1


@dataclass(frozen=True)
class Pyramid:
    """What :func:`write_pyramid` wrote.

    ``dzi``: the descriptor's path; ``tiles_dir``: ``<name>_files``. ``info``: the
    descriptor. ``downsample``: level-0 px per full-size px (a power of two, ≥ 1).
    ``mpp``: µm/px of the full size (None when the slide's µm/px is unknown). ``n_tiles``
    and ``bytes``: tile files written and the bytes of all files (tiles and descriptor).
    ``limited_by``: what set the full size: ``"level 0"``, ``"resolution cap"`` or
    ``"byte budget"``.
    """

    dzi: Path
    tiles_dir: Path
    info: DziInfo
    level0_size: tuple[int, int]
    downsample: int
    mpp: float | None
    n_tiles: int
    bytes: int
    limited_by: str


def write_pyramid(
    slide_path: str | Path,
    out_dir: str | Path,
    name: str,
    *,
    finest_mpp: float | None = None,
    max_scale: float = 1.0,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    mpp: float | None = None,
    tile_size: int = 254,
    overlap: int = 1,
    quality: int = 80,
) -> Pyramid:
    """Write ``out_dir/<name>.dzi`` and ``out_dir/<name>_files/`` for the slide at
    ``slide_path``, replacing an earlier pyramid of that name; return what was written.
    The descriptor is written last, so its presence means the pyramid is complete.

    ``finest_mpp``: resolution cap in µm/px (needs the slide's µm/px: ``mpp`` overrides its
    metadata, as the manifest's ``mpp`` column does); ``max_scale``: the full size's side
    is at most this fraction of level 0's (0 < ``max_scale`` ≤ 1); ``max_bytes``: byte
    budget (None: unbounded). ``quality``: JPEG quality 1–100. A budget too small for the
    level that fits one tile is an :class:`InputError`.
    """
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    from .access import metadata_mpp, open_slide, resolve_mpp

    _check_settings(name, finest_mpp, max_scale, max_bytes, tile_size, overlap, quality)
    slide_path, out_dir = Path(slide_path), Path(out_dir)
    slide = open_slide(slide_path)
    try:
        slide_mpp = None
        if finest_mpp is not None or mpp is not None or metadata_mpp(slide.properties):
            mpp_x, mpp_y, _ = resolve_mpp(slide_path, slide.properties, override=mpp)
            slide_mpp = (mpp_x + mpp_y) / 2
        dz = DeepZoomGenerator(slide, tile_size=tile_size, overlap=overlap, limit_bounds=False)
        need = max(1.0, 1.0 / max_scale, finest_mpp / slide_mpp if finest_mpp else 1.0)
        skip = min(dz.level_count - 1, math.ceil(math.log2(need) - 1e-9))
        cap_level = dz.level_count - 1 - skip
        tiles_dir = out_dir / f"{name}_files"
        partial = out_dir / f"{name}_files{_PARTIAL}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        budget = None if max_bytes is None else max_bytes - _DESCRIPTOR_RESERVE
        try:
            top, total, n_tiles = _write_levels(dz, partial, cap_level, budget, quality)
        except openslide.OpenSlideError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise SlideError(f"{slide_path}: unreadable while writing its review pyramid "
                             f"({' '.join(str(exc).split())}); the file may be corrupt") from None
    finally:
        slide.close()
    if top < min(_one_tile_level(dz), cap_level):
        shutil.rmtree(partial, ignore_errors=True)
        raise InputError(f"{slide_path}: a review pyramid budget of {max_bytes} bytes cannot "
                         "hold even a one-tile overview; raise the budget")
    width, height = dz.level_dimensions[top]
    info = DziInfo(width, height, tile_size, overlap, "jpeg")
    dzi = out_dir / f"{name}.dzi"
    dzi.unlink(missing_ok=True)
    shutil.rmtree(tiles_dir, ignore_errors=True)
    partial.rename(tiles_dir)
    descriptor = dzi_xml(info)
    with atomic_path(dzi) as tmp:
        tmp.write_bytes(descriptor)
    downsample = 2 ** (dz.level_count - 1 - top)
    limited_by = ("level 0" if top == dz.level_count - 1
                  else "resolution cap" if top == cap_level else "byte budget")
    return Pyramid(dzi, tiles_dir, info, tuple(dz.level_dimensions[-1]), downsample,
                   None if slide_mpp is None else slide_mpp * downsample, n_tiles,
                   total + len(descriptor), limited_by)


def dzi_xml(info: DziInfo) -> bytes:
    """The .dzi descriptor of ``info`` as UTF-8 XML."""
    image = ET.Element("Image", TileSize=str(info.tile_size), Overlap=str(info.overlap),
                       Format=info.format, xmlns=DZI_NAMESPACE)
    ET.SubElement(image, "Size", Width=str(info.width), Height=str(info.height))
    return ET.tostring(image, encoding="UTF-8", xml_declaration=True)


def read_dzi(path: str | Path) -> DziInfo:
    """Parse a .dzi descriptor; :class:`InputError` naming the file when it is not one."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
        size = root.find(f"{{{DZI_NAMESPACE}}}Size")
        if size is None:
            size = root.find("Size")
        info = DziInfo(int(size.get("Width")), int(size.get("Height")),
                       int(root.get("TileSize")), int(root.get("Overlap")),
                       str(root.get("Format")))
    except (OSError, ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .dzi descriptor "
                         f"({' '.join(str(exc).split()) or type(exc).__name__})") from None
    if min(info.width, info.height, info.tile_size) < 1 or info.overlap < 0:
        raise InputError(f"{path}: .dzi descriptor with a non-positive size or tile side")
    return info


def _write_levels(dz, folder: Path, cap_level: int, budget: int | None, quality: int
                  ) -> tuple[int, int, int]:
    """Write levels 0..``cap_level`` coarse to fine into ``folder`` while within ``budget``
    bytes; return (finest level kept or -1, bytes of the kept tiles, tiles kept)."""
    total = n_tiles = 0
    for level in range(cap_level + 1):
        level_dir = folder / str(level)
        level_dir.mkdir()
        cols, rows = dz.level_tiles[level]
        level_bytes = 0
        for row in range(rows):
            for col in range(cols):
                buf = io.BytesIO()
                dz.get_tile(level, (col, row)).save(buf, "JPEG", quality=quality)
                (level_dir / f"{col}_{row}.jpeg").write_bytes(buf.getvalue())
                level_bytes += buf.tell()
                if budget is not None and total + level_bytes > budget:
                    shutil.rmtree(level_dir)
                    return level - 1, total, n_tiles
        total += level_bytes
        n_tiles += cols * rows
    return cap_level, total, n_tiles


def _one_tile_level(dz) -> int:
    """The finest level that is a single tile."""
    return max(i for i, t in enumerate(dz.level_tiles) if t == (1, 1))


def _check_settings(name, finest_mpp, max_scale, max_bytes, tile_size, overlap, quality
                    ) -> None:
    if not name or Path(name).name != name or name.startswith("."):
        raise SlideError(f"pyramid name {name!r} is not a plain file name")
    problems = []
    if finest_mpp is not None and not finest_mpp > 0:
        problems.append(f"finest µm/px must be positive, got {finest_mpp}")
    if not 0 < max_scale <= 1:
        problems.append(f"max scale must lie in (0, 1], got {max_scale}")
    if max_bytes is not None and max_bytes <= _DESCRIPTOR_RESERVE:
        problems.append(f"byte budget must exceed {_DESCRIPTOR_RESERVE}, got {max_bytes}")
    if tile_size < 16 or not 0 <= overlap < tile_size // 2:
        problems.append(f"tile side {tile_size} / overlap {overlap} out of range")
    if not 1 <= quality <= 100:
        problems.append(f"JPEG quality must lie in 1–100, got {quality}")
    if problems:
        raise InputError("review pyramid: " + "; ".join(problems))
