"""Synthetic feature files with a learnable slide-level signal, for the training benchmarks.

Class 0 bags hold only noise tiles, N(0, I_D). A class c ≥ 1 bag replaces a minority share of
its tiles by ``signal``·u_c + noise, where u_c are fixed orthonormal directions — so the label
is readable only by attending to a few tiles, as with a small metastasis in a lymph node.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd


def write_synthetic_bags(folder: Path, n_classes: int, slides_per_class: int, feature_dim: int,
                         tiles: tuple[int, int] = (20, 60), signal_share: float = 0.2,
                         signal: float = 2.0, slides_per_patient: int = 2, seed: int = 0,
                         prefix: str = "s", log_sizes: bool = False) -> pd.DataFrame:
    """Write ``<folder>/<slide_id>.h5`` files (features float16 N×D, coords N×2) and return a
    manifest (``slide_id, path, label, patient_id``) with labels ``class0``, ``class1``, …;
    a bag has between ``tiles[0]`` and ``tiles[1]`` tiles, drawn uniformly or, with
    ``log_sizes``, log-uniformly (tissue areas of real slides spread over orders of magnitude);
    a class c ≥ 1 bag has ``round(signal_share · n)`` witness tiles, at least one."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    directions = np.linalg.qr(rng.standard_normal((feature_dim, feature_dim)))[0].T
    rows = []
    for c in range(n_classes):
        for j in range(slides_per_class):
            sid = f"{prefix}{c}_{j:03d}"
            n = (int(round(np.exp(rng.uniform(np.log(tiles[0]), np.log(tiles[1])))))
                 if log_sizes else int(rng.integers(tiles[0], tiles[1] + 1)))
            x = rng.standard_normal((n, feature_dim))
            if c > 0:
                k = max(1, round(signal_share * n))
                x[rng.choice(n, size=k, replace=False)] += signal * directions[c - 1]
            with h5py.File(folder / f"{sid}.h5", "w") as f:
                f["features"] = x.astype(np.float16)
                f["coords"] = (np.arange(2 * n).reshape(n, 2) * 256).astype(np.int64)
                f.attrs["encoder"] = "synthetic"
            rows.append({"slide_id": sid, "path": f"{sid}.svs", "label": f"class{c}",
                         "patient_id": f"{prefix}p{c}_{j // slides_per_patient:03d}"})
    return pd.DataFrame(rows)
