"""Shared by the benchmarks: a cached large synthetic slide and peak-memory reading."""

from __future__ import annotations

import resource
import time
from pathlib import Path

from wsi_ncmi.slides.synthetic import write_synthetic_slide


def big_slide(folder: Path, width: int, height: int, seed: int = 0) -> Path:
    """A generated slide of ``width`` × ``height`` px at 0.25 µm/px, made once and reused."""
    path = folder / f"synthetic_{width}x{height}_s{seed}.tif"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        write_synthetic_slide(path, width, height, seed=seed, lesion="dense")
        print(f"generated {path.name} ({path.stat().st_size / 2**20:.0f} MiB) "
              f"in {time.perf_counter() - t0:.1f} s")
    return path


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    """CPU model and logical cores, as provenance records them."""
    from wsi_ncmi.stages.provenance import device_info

    info = device_info()
    return f"{info['cpu']}, {info['logical_cores']} logical cores"
