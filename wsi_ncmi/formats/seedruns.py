"""The multi-seed run folder written by ``train --seeds``: one run folder per training seed.

    OUT/seeds.json          {"seeds": [0, 1, …], "split_seed": S, "runs": {"0": "seed_0", …}}
    OUT/seed_<s>/           a run folder (formats.runfolder) trained with seed s; every seed's
                            splits.json is the same (made with the split seed S)
    OUT/provenance.json     the train command's record over all seeds
    OUT/eval/<split>/       seeds.csv and report.md: every seed's evaluation side by side

``seeds.json`` is written after the last seed's run, so its presence means every run is there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..atomic import write_json
from ..errors import InputError

SEEDS = "seeds.json"


def seed_dir(root: Path, seed: int) -> Path:
    """``OUT/seed_<seed>``."""
    return Path(root) / f"seed_{int(seed)}"


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``; :class:`InputError` for anything but distinct integers."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds must list one or more distinct integers, got {text!r}")
    return seeds


def write_seed_index(root: Path, seeds: Sequence[int], split_seed: int) -> Path:
    """``OUT/seeds.json`` for runs ``seed_<s>`` of ``seeds``."""
    path = Path(root) / SEEDS
    write_json(path, {"seeds": [int(s) for s in seeds], "split_seed": int(split_seed),
                      "runs": {str(s): seed_dir(root, s).name for s in seeds}})
    return path


def is_multi_seed(root: Path) -> bool:
    """Whether ``root`` is a multi-seed folder (holds ``seeds.json``)."""
    return (Path(root) / SEEDS).is_file()


def seed_runs(root: Path) -> dict[int, Path]:
    """Seed → run folder of a multi-seed folder, in the order trained; :class:`InputError`
    when ``seeds.json`` is unreadable or names a missing run."""
    path = Path(root) / SEEDS
    try:
        seeds = json.loads(path.read_text())["seeds"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{path}: not a seeds record (no 'seeds' list)") from None
    if not isinstance(seeds, list) or not seeds or \
            not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise InputError(f"{path}: 'seeds' must be a non-empty list of integers")
    runs = {s: seed_dir(root, s) for s in seeds}
    missing = [str(r) for r in runs.values() if not r.is_dir()]
    if missing:
        raise InputError(f"{path}: run folder(s) missing: {', '.join(missing)}")
    return runs
