"""The feature file ``features/<encoder>/<slide_id>.h5``: the contract between ``extract`` and
``train``/``eval``/``predict``.

Datasets:

- ``features`` (N×D, float32, or float16 with ``--fp16-storage``): one row per tile.
- ``coords`` (N×2 int64): level-0 (x, y) of each row's tile, same order as ``features``.

Root attributes that are *settings* — what makes features of two slides comparable, so they
must agree across a cohort (``train`` refuses a cohort where they do not, and ``predict``
repeats them on new slides):

- ``encoder`` (name), ``weights_sha256``, ``random_weights`` (bool — True means the features
  are NOT from a trained encoder), ``tile_size`` (px), ``preprocessing`` (JSON: the encoder's
  input side in px and the normalisation mean/std), ``tiling`` (JSON of the tile file's
  settings: ``target_mpp``, ``tile_size``, ``overlap``, ``min_tissue``, ``seg_mpp``,
  ``level_tolerance``; those it has).

Root attributes that are *facts* of this slide (they differ between slides of one cohort):

- ``input_mpp`` (µm/px the tiles were cut at; within ``level_tolerance`` of the target, −1
  when unknown, e.g. CLAM/TRIDENT tiles), ``patch_level``, ``patch_size``,
  ``patch_size_level0``, ``resize`` (``none`` when tiles reached the encoder at the side they
  were read, else the resize method: ``cv2.INTER_AREA`` on the CPU path, area weights on the
  device path), ``decode`` (``cpu``, or ``torchvision on <device> (k of N tiles)``),
  ``reader`` (``direct`` | ``openslide``), ``tile_format`` (``wsi-ncmi`` |
  ``clam`` | ``trident``), ``weights_source`` (``file`` | ``hub`` | ``random``),
  ``weights_file`` (the weights file's absolute path, "" for random weights), and copied
  from our tile files: ``slide_width``, ``slide_height`` (level-0 px), ``slide_mpp_x``,
  ``slide_mpp_y``, ``level_mpp``, ``achieved_seg_mpp`` (µm/px).
- ``feature_dim``, ``dtype``, ``precision`` (compute: ``fp32`` | ``bf16`` | ``fp16``),
  ``n_tiles_listed``, ``n_bad_tiles`` (tiles that failed to decode and were left out).
- ``tiles_key``: settings digest of the tile file used; ``extract_key``: digest of the
  extraction settings; both decide whether a rerun may reuse the file.
- ``schema_version``, ``wsi_ncmi_version``, ``slide_id``.

Schema 1 files kept ``resize`` inside ``preprocessing`` and the *achieved* overview µm/px
under ``tiling.seg_mpp``; both are read as facts. TRIDENT and CLAM feature files
(``features`` + ``coords`` datasets in HDF5) are read the same way; only the two datasets are
required.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from .ids import id_path

SCHEMA_VERSION = 2
#: root attributes that say how features were made (settings, see the module docstring)
SETTING_KEYS = ("encoder", "weights_sha256", "random_weights", "tile_size", "preprocessing",
                "tiling")
#: tile-file attributes copied into a feature file as facts of its slide
TILE_FACT_KEYS = ("slide_width", "slide_height", "slide_mpp_x", "slide_mpp_y", "level_mpp",
                  "achieved_seg_mpp")
_READ_KEYS = (*SETTING_KEYS, "input_mpp", "patch_level", "resize", "weights_file",
              "slide_width", "slide_height", "schema_version")


def features_dir(workspace: Path, encoder: str) -> Path:
    """``WORKSPACE/features/<encoder>`` (an ``hf-hub:org/name`` encoder → ``hf-hub_org_name``)."""
    return workspace / "features" / encoder.replace("hf-hub:", "hf-hub_").replace("/", "_")


def bag_path(folder: Path, slide_id: str) -> Path:
    """``<folder>/<slide_id>.h5``: a slide's feature file in a folder of them."""
    return id_path(folder, slide_id, ".h5")


def features_path(workspace: Path, encoder: str, slide_id: str) -> Path:
    """``WORKSPACE/features/<encoder>/<slide_id>.h5``."""
    return bag_path(features_dir(workspace, encoder), slide_id)


def feature_shape(path: str | Path) -> tuple[int, int]:
    """(N, D) of a feature file of ours, CLAM's or TRIDENT's, reading shapes only;
    :class:`InputError` naming the file when it is missing, unreadable, lacks
    ``features``/``coords``, holds non-float features or the shapes disagree. A leading batch
    axis of 1 (kept by some CLAM/TRIDENT files) is accepted; N = 0 (an empty bag) is allowed."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: feature file not found")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("features", "coords") if k not in f]
            if missing:
                raise InputError(f"{path}: no {' or '.join(missing)} dataset (not a feature file)")
            feats = _drop_batch_axis(f["features"].shape)
            coords = _drop_batch_axis(f["coords"].shape)
            kind = f["features"].dtype.kind
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: unreadable HDF5 ({' '.join(str(exc).split())}); "
                         "truncated or corrupt — delete it and rerun extract") from None
    if len(feats) != 2 or coords != (feats[0], 2):
        raise InputError(f"{path}: features {feats} and coords {coords} do not match "
                         "(expected N×D and N×2)")
    if kind != "f":
        raise InputError(f"{path}: features must be floating point")
    return int(feats[0]), int(feats[1])


def read_features(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features N×D float32, coords N×2 int64, root attributes) of a feature file of ours,
    CLAM's or TRIDENT's, validated by :func:`feature_shape`."""
    import h5py

    path = Path(path)
    n, d = feature_shape(path)
    try:
        with h5py.File(path, "r") as f:
            feats = np.asarray(f["features"][:], dtype=np.float32).reshape(n, d)
            coords = np.asarray(f["coords"][:], dtype=np.int64).reshape(n, 2)
            attrs = {k: f.attrs[k] for k in f.attrs}
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: unreadable HDF5 ({' '.join(str(exc).split())}); "
                         "truncated or corrupt — delete it and rerun extract") from None
    return feats, coords, attrs


def _drop_batch_axis(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[1:] if len(shape) == 3 and shape[0] == 1 else shape


def is_complete(path: Path, tiles_key: str, extract_key: str) -> bool:
    """True when ``path`` is a whole feature file of ours for these tile and extraction
    settings (rows of features and coords agree with the recorded counts)."""
    import h5py

    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            n = int(a["n_tiles_listed"]) - int(a["n_bad_tiles"])
            return (
                a.get("tiles_key") == tiles_key and a.get("extract_key") == extract_key
                and f["features"].shape[0] == n and f["coords"].shape == (n, 2)
            )
    except (OSError, KeyError, ValueError):
        return False


def read_setting_attrs(path: Path) -> dict:
    """Settings and the facts :func:`feature_settings` summarises, of one feature file, as
    plain values (JSON attributes parsed; None when absent; ``input_mpp`` None when not
    positive; a schema 1 file's ``resize`` moved out of ``preprocessing`` and its achieved
    ``tiling.seg_mpp`` dropped)."""
    import h5py

    with h5py.File(path, "r") as f:
        raw = {k: f.attrs.get(k) for k in _READ_KEYS}
    out = {}
    for key, value in raw.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        if key in ("preprocessing", "tiling") and isinstance(value, str):
            value = json.loads(value)
        out[key] = value
    if isinstance(out["preprocessing"], dict) and "resize" in out["preprocessing"]:
        out["resize"] = out["preprocessing"].pop("resize")
    if out["schema_version"] == 1 and isinstance(out["tiling"], dict):
        out["tiling"].pop("seg_mpp", None)
    if out["input_mpp"] is not None and out["input_mpp"] <= 0:
        out["input_mpp"] = None
    return out


def feature_settings(paths: dict[str, Path]) -> dict:
    """How a cohort's feature files were made, for ``RUN/features.json`` (what ``predict``
    reproduces), from ``paths`` (slide id → feature file).

    Returns ``{"schema_version", "settings", "facts"}``: ``settings`` are the files'
    :data:`SETTING_KEYS` (null where a file has none, e.g. CLAM's), which must agree across
    slides — :class:`InputError` lists the slides of every disagreeing setting, and of every
    slide whose tiles' µm/px lies outside the tiling's level tolerance of its target.
    ``facts`` summarise what each slide achieved: ``n_slides``; ``input_mpp`` (median, min,
    max µm/px; null when unknown); ``levels_read`` (pyramid level → slide count);
    ``resized_slides`` (slides whose tiles were read larger and downsampled);
    ``slide_width``/``slide_height`` (min, max level-0 px); ``weights_files`` (the distinct
    weights files the encoder read)."""
    per_slide = {sid: read_setting_attrs(path) for sid, path in paths.items()}
    problems = []
    for key in SETTING_KEYS:
        groups: dict[str, list[str]] = {}
        for sid, attrs in per_slide.items():
            groups.setdefault(json.dumps(attrs[key], sort_keys=True), []).append(sid)
        if len(groups) > 1:
            problems.append(f"{key}: " + "; ".join(
                f"{value} ({', '.join(sids[:5])}{' …' if len(sids) > 5 else ''})"
                for value, sids in groups.items()))
    first = next(iter(per_slide.values()))
    mpps = {sid: a["input_mpp"] for sid, a in per_slide.items()}
    known = [m for m in mpps.values() if m is not None]
    tiling = first["tiling"] or {}
    if known:
        target = tiling.get("target_mpp") or float(np.median(known))
        tolerance = tiling.get("level_tolerance", 0.05)
        off = [sid for sid, m in mpps.items()
               if m is None or abs(m - target) > tolerance * target + 1e-9]
        if off:
            problems.append(f"input_mpp: {len(off)} slide(s) not within {tolerance:.0%} of "
                            f"{target:g} µm/px ({', '.join(off[:5])})")
    if problems:
        raise InputError(f"feature files disagree on how they were made: {' | '.join(problems)}")
    return {"schema_version": SCHEMA_VERSION,
            "settings": {k: first[k] for k in SETTING_KEYS},
            "facts": _facts(per_slide.values(), known)}


def _facts(per_slide, known_mpps: list[float]) -> dict:
    per_slide = list(per_slide)
    levels: dict[str, int] = {}
    for a in per_slide:
        if a["patch_level"] is not None:
            levels[str(a["patch_level"])] = levels.get(str(a["patch_level"]), 0) + 1

    def span(key: str) -> list | None:
        values = [a[key] for a in per_slide if a[key] is not None]
        return [min(values), max(values)] if values else None

    return {
        "n_slides": len(per_slide),
        "input_mpp": ({"median": float(np.median(known_mpps)), "min": min(known_mpps),
                       "max": max(known_mpps)} if known_mpps else None),
        "levels_read": dict(sorted(levels.items())),
        "resized_slides": sum(a["resize"] not in (None, "none") for a in per_slide),
        "slide_width": span("slide_width"), "slide_height": span("slide_height"),
        "weights_files": sorted({a["weights_file"] for a in per_slide if a["weights_file"]}),
    }


def read_encoder_name(path: Path) -> str | None:
    """The ``encoder`` root attribute of a feature file, or None when absent."""
    import h5py

    with h5py.File(path, "r") as f:
        value = f.attrs.get("encoder")
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def tile_geometry(features_file: Path, level_downsamples: Sequence[float]
                  ) -> tuple[np.ndarray, int]:
    """The tiles of a feature file: level-0 top-left (x, y) of each row (N×2 int64, only the
    ``coords`` dataset is read) and the tile side in level-0 px (see module docstring);
    :class:`InputError` naming the file when either cannot be told."""
    import h5py

    attrs: dict = {}
    try:
        with h5py.File(features_file, "r") as f:
            coords = np.asarray(f["coords"][:], dtype=np.int64).reshape(-1, 2)
            for holder in (f["coords"], f):
                attrs.update({k: v for k, v in holder.attrs.items() if k not in attrs})
    except (OSError, KeyError) as exc:
        raise InputError(f"{features_file}: no readable coords ({' '.join(str(exc).split())})"
                         ) from None
    return coords, _tile_side(features_file, coords, attrs, level_downsamples)


def _tile_side(features_file: Path, coords: np.ndarray, attrs: dict,
               level_downsamples: Sequence[float]) -> int:
    if "patch_size_level0" in attrs and int(attrs["patch_size_level0"]) > 0:
        return int(attrs["patch_size_level0"])
    if "patch_size" in attrs and "patch_level" in attrs:
        level = int(attrs["patch_level"])
        if 0 <= level < len(level_downsamples):
            return round(int(attrs["patch_size"]) * level_downsamples[level])
    diffs = [np.diff(np.unique(coords[:, k])) for k in (0, 1)]
    steps = np.concatenate([d[d > 0] for d in diffs])
    if len(steps) == 0:
        raise InputError(f"{features_file}: no tile size recorded (patch_size_level0) and a "
                         "single tile position: cannot draw its square")
    return int(steps.min())
