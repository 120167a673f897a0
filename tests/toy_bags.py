"""Two-class toy bags for the tests of training, tuning, seeds and claims."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def write_toy_bags(features: Path, per_class: int, dim: int, shift: float,
                   seed: int) -> list[tuple[str, int, int]]:
    """Write ``features/s<c>_<jj>.h5`` for classes c = 0, 1 and j < ``per_class``: bags of
    8–16 tiles of ``dim``-d standard-normal features, class 1 with a third of its tiles
    shifted by ``shift`` along axis 0 (coords all zero). Returns (slide_id, c, j) per bag."""
    rng = np.random.default_rng(seed)
    features.mkdir(parents=True)
    bags = []
    for c in range(2):
        for j in range(per_class):
            n = int(rng.integers(8, 17))
            x = rng.standard_normal((n, dim)).astype(np.float32)
            if c:
                x[: n // 3 + 1, 0] += shift
            sid = f"s{c}_{j:02d}"
            with h5py.File(features / f"{sid}.h5", "w") as f:
                f["features"] = x
                f["coords"] = np.zeros((n, 2), np.int64)
            bags.append((sid, c, j))
    return bags
