"""The tile file ``tiles/<slide_id>.h5``: the contract between ``tile`` and ``extract``.

Datasets:

- ``coords`` (N×2 int64): level-0 (x, y) of each tile's top-left corner, row-major order.
- ``tissue_fraction`` (N float32): share of the tile covered by tissue, in [0, 1].

Attributes, on ``coords`` (where CLAM and TRIDENT put theirs):

- ``patch_level`` (int): the OpenSlide level read (CLAM's name).
- ``patch_size`` (int): the tile's side at ``patch_level``, px (CLAM's name).
- ``patch_size_level0`` (int): the tile's side in level-0 px (TRIDENT's name).
- ``tile_size`` (int): the side of the tile the encoder sees, px at ``effective_mpp``.
- ``target_mpp``, ``effective_mpp``, ``level_mpp`` (float, µm/px): asked for, obtained, and
  of the level read. ``slide_mpp_x``, ``slide_mpp_y`` (float): level-0 µm/px used;
  ``mpp_source``: ``metadata`` | ``manifest`` | ``fallback``.
- ``overlap`` (int, px at ``effective_mpp``), ``min_tissue`` (float), ``seg_mpp`` (float,
  µm/px of the segmentation overview asked for), ``level_tolerance`` (float, relative).
- ``achieved_seg_mpp`` (float, µm/px): the overview resolution this slide's pyramid gave
  (close to ``seg_mpp``, depends on the slide's size and levels).
- ``slide_width``, ``slide_height`` (int, level-0 px), ``slide_file`` (file name only — a
  folder path can carry a label), ``slide_id``, ``n_tiles``, ``tissue_area_mm2``.
- ``schema_version`` (int), ``wsi_ncmi_version`` (str), ``settings_key`` (str): a digest of
  the settings that produced the file, used to decide whether a rerun may reuse it.

Reading also accepts CLAM coordinate files (``coords`` with ``patch_level``, ``patch_size``,
optionally ``downsample``) and TRIDENT ones (``coords`` with ``patch_size`` and
``patch_size_level0``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import atomic_path
from ..errors import InputError

SCHEMA_VERSION = 2
#: the tile file's *settings*: what must agree across a cohort, what a feature file copies
#: (its ``tiling`` attribute) so that new slides can be tiled the same way. Every other
#: attribute is a *fact* of one slide (level read, achieved µm/px, slide size…). Schema 1 files
#: stored the achieved overview µm/px under ``seg_mpp``.
TILING_KEYS = ("target_mpp", "tile_size", "overlap", "min_tissue", "seg_mpp", "level_tolerance")


@dataclass
class TileGrid:
    """Tile coordinates and how to read them back.

    ``level``/``read_size`` are None when the file does not say (TRIDENT), and
    ``size_level0`` is None when it cannot be known without the slide (CLAM without
    ``downsample``); :func:`wsi_ncmi.slides.reading.resolve_grid` fills them from the slide.
    """

    coords: np.ndarray
    tile_size: int
    level: int | None
    read_size: int | None
    size_level0: int | None
    effective_mpp: float | None
    tissue_fraction: np.ndarray | None
    source_format: str
    attrs: dict


def settings_key(settings: dict) -> str:
    """Stable short digest of a settings dict (JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def write_tile_file(path: Path, coords: np.ndarray, tissue_fraction: np.ndarray,
                    attrs: dict) -> None:
    """Write a tile file atomically. ``attrs`` are stored on ``coords`` beside
    ``schema_version``, ``wsi_ncmi_version`` and ``n_tiles``."""
    import h5py

    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("coords", data=coords)
            f.create_dataset("tissue_fraction", data=np.asarray(tissue_fraction, np.float32))
            for key, value in attrs.items():
                ds.attrs[key] = value
            ds.attrs["n_tiles"] = len(coords)
            ds.attrs["schema_version"] = SCHEMA_VERSION
            ds.attrs["wsi_ncmi_version"] = __version__


def read_tile_file(path: str | Path) -> TileGrid:
    """Read a tile file of ours, CLAM's or TRIDENT's; raise :class:`InputError` naming the
    file when it is unreadable or lacks what is needed to re-read its tiles."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                raise InputError(f"{path}: no 'coords' dataset (not a tile file)")
            ds = f["coords"]
            coords = np.asarray(ds[:], dtype=np.int64).reshape(-1, 2)
            attrs = {k: _plain(v) for k, v in ds.attrs.items()}
            attrs.update({k: _plain(v) for k, v in f.attrs.items() if k not in attrs})
            fractions = np.asarray(f["tissue_fraction"][:]) if "tissue_fraction" in f else None
    except InputError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: unreadable HDF5 ({' '.join(str(exc).split())})") from None
    return _grid_from_attrs(path, coords, fractions, attrs)


def is_complete(path: Path, key: str) -> bool:
    """True when ``path`` is a readable tile file of ours, of this schema, made with settings
    ``key`` and holding as many tiles as it says (checked, not merely present)."""
    if not path.is_file():
        return False
    try:
        grid = read_tile_file(path)
    except InputError:
        return False
    a = grid.attrs
    return (
        grid.source_format == "wsi-ncmi"
        and a.get("schema_version") == SCHEMA_VERSION
        and a.get("settings_key") == key
        and int(a.get("n_tiles", -1)) == len(grid.coords)
        and grid.tissue_fraction is not None
        and len(grid.tissue_fraction) == len(grid.coords)
    )


def _grid_from_attrs(path: Path, coords, fractions, attrs: dict) -> TileGrid:
    if "schema_version" in attrs and "tile_size" in attrs:
        return TileGrid(coords, int(attrs["tile_size"]), int(attrs["patch_level"]),
                        int(attrs["patch_size"]), int(attrs["patch_size_level0"]),
                        float(attrs["effective_mpp"]), fractions, "wsi-ncmi", attrs)
    if "patch_size_level0" in attrs and "patch_size" in attrs:
        level = int(attrs["patch_level"]) if "patch_level" in attrs else None
        return TileGrid(coords, int(attrs["patch_size"]), level, None,
                        int(attrs["patch_size_level0"]), None, fractions, "trident", attrs)
    if "patch_level" in attrs and "patch_size" in attrs:
        size = int(attrs["patch_size"])
        down = attrs.get("downsample")
        size0 = round(size * float(np.atleast_1d(down)[0])) if down is not None else None
        return TileGrid(coords, size, int(attrs["patch_level"]), size, size0, None, fractions,
                        "clam", attrs)
    raise InputError(
        f"{path}: 'coords' lacks the attributes to re-read tiles (need ours, CLAM's "
        "patch_level + patch_size, or TRIDENT's patch_size + patch_size_level0)"
    )


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
