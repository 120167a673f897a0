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


def read_features(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features N×D float32, coords N×2 int64, root attributes) of a feature file of ours,
    CLAM's or TRIDENT's; :class:`InputError` naming the file when it cannot be used."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: feature file not found")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("features", "coords") if k not in f]
            if missing:
                raise InputError(f"{path}: no {' or '.join(missing)} dataset (not a feature file)")
            feats = np.asarray(f["features"][:], dtype=np.float32)
            coords = np.asarray(f["coords"][:], dtype=np.int64)
            attrs = {k: f.attrs[k] for k in f.attrs}
    except InputError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: unreadable HDF5 ({' '.join(str(exc).split())}); "
                         "truncated or corrupt — delete it and rerun extract") from None
    if feats.ndim == 3 and feats.shape[0] == 1:  # CLAM/TRIDENT sometimes keep a batch axis
        feats = feats[0]
    if coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    if feats.ndim != 2 or coords.shape != (len(feats), 2):
        raise InputError(f"{path}: features {feats.shape} and coords {coords.shape} "
                         "do not match (expected N×D and N×2)")
    return feats, coords, attrs


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
