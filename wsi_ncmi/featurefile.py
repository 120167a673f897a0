"""The feature file ``features/<encoder>/<slide_id>.h5``: the contract between ``extract`` and
``train``/``eval``/``predict``.

Datasets:

- ``features`` (N×D, float32, or float16 with ``--fp16-storage``): one row per tile.
- ``coords`` (N×2 int64): level-0 (x, y) of each row's tile, same order as ``features``.

Root attributes:

- ``encoder`` (name), ``weights_sha256``, ``weights_source`` (``file`` | ``hub`` |
  ``random``), ``random_weights`` (bool — True means the features are NOT from a trained
  encoder), ``feature_dim``, ``dtype``, ``precision`` (compute: ``fp32`` | ``bf16`` | ``fp16``).
- ``preprocessing``: JSON of the input side (px), normalisation mean/std, interpolation.
- ``input_mpp`` (µm/px of the tiles), ``tile_size`` (px), ``patch_level``, ``patch_size``,
  ``patch_size_level0``, ``tile_format`` (``wsi-ncmi`` | ``clam`` | ``trident``).
- ``tiling``: JSON of the tile file's settings (``target_mpp``, ``tile_size``, ``overlap``,
  ``min_tissue``, ``seg_mpp``, ``level_tolerance``; those it has), so a model trained on these
  features can tile new slides the same way.
- ``n_tiles_listed``, ``n_bad_tiles`` (tiles that failed to decode and were left out).
- ``tiles_key``: settings digest of the tile file used; ``extract_key``: digest of the
  extraction settings; both decide whether a rerun may reuse the file.
- ``schema_version``, ``wsi_ncmi_version``, ``slide_id``.

TRIDENT and CLAM feature files (``features`` + ``coords`` datasets in HDF5) are read the same
way; only the two datasets are required.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

SCHEMA_VERSION = 1


def features_dir(workspace: Path, encoder: str) -> Path:
    """``WORKSPACE/features/<encoder>`` (an ``hf-hub:org/name`` encoder → ``hf-hub_org_name``)."""
    return workspace / "features" / encoder.replace("hf-hub:", "hf-hub_").replace("/", "_")


def features_path(workspace: Path, encoder: str, slide_id: str) -> Path:
    """``WORKSPACE/features/<encoder>/<slide_id>.h5``."""
    return features_dir(workspace, encoder) / f"{slide_id}.h5"


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
