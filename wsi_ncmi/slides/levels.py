"""Which pyramid level to read, and at what size, to get tiles at a target µm/px.

The rule: take the level whose µm/px is nearest the target when it lies within ``tolerance``
(relative, e.g. 0.05 = 5 %), and read tiles there at their output size. Otherwise read the
coarsest level that is finer than the target, at a larger size, and downsample. Never
upsample: a target finer than level 0 (beyond the tolerance) is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import SlideError


@dataclass(frozen=True)
class ReadPlan:
    """How to read one tile.

    ``level``: the OpenSlide level read. ``read_size``: the tile's side at that level (px),
    which is CLAM's ``patch_size``. ``size_level0``: the tile's side in level-0 px.
    ``tile_size``: the side of the tile handed to the encoder (px at ``effective_mpp``).
    ``level_mpp``: µm/px of the level read. ``effective_mpp``: µm/px of the output tile.
    """

    target_mpp: float
    effective_mpp: float
    level: int
    level_mpp: float
    read_size: int
    tile_size: int
    size_level0: int

    @property
    def needs_resize(self) -> bool:
        return self.read_size != self.tile_size


def plan_read(
    level_downsamples: Sequence[float],
    slide_mpp: float,
    target_mpp: float,
    tile_size: int,
    tolerance: float = 0.05,
) -> ReadPlan:
    """Choose the level and read size for ``tile_size`` px tiles at ``target_mpp`` µm/px.

    ``level_downsamples`` as OpenSlide reports them (level 0 first, 1.0); ``slide_mpp`` is
    the level-0 µm/px.
    """
    if target_mpp <= 0 or tile_size <= 0 or slide_mpp <= 0:
        raise ValueError("target_mpp, tile_size and slide_mpp must be positive")
    level_mpps = [slide_mpp * d for d in level_downsamples]
    nearest = min(range(len(level_mpps)), key=lambda i: abs(level_mpps[i] / target_mpp - 1))
    if abs(level_mpps[nearest] / target_mpp - 1) <= tolerance:
        return _plan(level_downsamples, level_mpps, nearest, target_mpp, tile_size, tile_size)
    finer = [i for i, m in enumerate(level_mpps) if m < target_mpp]
    if not finer:
        raise SlideError(
            f"target {target_mpp:g} µm/px is finer than the slide's level 0 "
            f"({slide_mpp:g} µm/px) beyond the {tolerance:.0%} tolerance; upsampling is refused"
        )
    level = max(finer, key=lambda i: level_mpps[i])
    read_size = round(tile_size * target_mpp / level_mpps[level])
    return _plan(level_downsamples, level_mpps, level, target_mpp, tile_size, read_size)


def _plan(downsamples, level_mpps, level, target_mpp, tile_size, read_size) -> ReadPlan:
    return ReadPlan(
        target_mpp=target_mpp,
        effective_mpp=level_mpps[level] * read_size / tile_size,
        level=level,
        level_mpp=level_mpps[level],
        read_size=read_size,
        tile_size=tile_size,
        size_level0=round(read_size * downsamples[level]),
    )
