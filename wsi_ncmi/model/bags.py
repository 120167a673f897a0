"""Bags of tile features: reading feature files, checking them, caching, batching.

A bag is one slide's feature file ``<features_dir>/<slide_id>.h5`` with datasets ``features``
(N×D, float16/float32) and ``coords`` (N×2). Our own files, CLAM's and TRIDENT's ``.h5`` share
this layout (a leading batch axis of 1 is dropped); other layouts (CLAM's ``.pt``) are not
accepted.

Bags are held as float16 tensors, in memory when all of them fit under a budget
(:func:`open_bags`), otherwise re-read from HDF5 per batch by a background reader a few
batches ahead. Both paths round features to float16 the same way, so which one is used never
changes a result. Batches are padded to the longest bag and carry a mask.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..formats.featurefile import feature_shape, read_features

T = TypeVar("T")
FP16_BYTES = 2


@dataclass(frozen=True)
class BagInfo:
    """Shape of one feature file: ``n_tiles`` rows of ``feature_dim`` features."""

    path: Path
    n_tiles: int
    feature_dim: int


@dataclass
class BagBatch:
    """A padded mini-batch of bags.

    ``x``: (B×N×D) float16, zero on padding; ``mask``: (B×N) bool, True on real tiles;
    ``slide_ids``: the B slides in order; ``rows``: per slide, the feature-file rows used
    (int64 array), in the order they appear in ``x``.
    """

    x: Tensor
    mask: Tensor
    slide_ids: list[str]
    rows: list[np.ndarray]


def inspect_bag(path: Path) -> BagInfo:
    """Read only the shapes of a feature file (:func:`wsi_ncmi.formats.featurefile.feature_shape`
    validates it); an empty bag (N = 0) is returned, not raised: callers decide."""
    n, d = feature_shape(path)
    return BagInfo(Path(path), n, d)


def read_bag(path: Path) -> Tensor:
    """All features of a feature file (ours, CLAM's or TRIDENT's, read by
    :func:`wsi_ncmi.formats.featurefile.read_features`) as a float16 tensor (N×D).

    Raises :class:`InputError` naming the file when it cannot be read or holds values that are
    not finite in float16 (|x| > 65504, NaN, inf).
    """
    feats = read_features(path)[0].astype(np.float16)
    if not np.isfinite(feats).all():
        raise InputError(f"{path}: features hold NaN, inf or values beyond float16 range")
    return torch.from_numpy(feats)


class BagSource:
    """Float16 bags by slide id, read from their feature files on every request."""

    cached = False

    def __init__(self, infos: dict[str, BagInfo]) -> None:
        self.infos = infos

    def get(self, slide_id: str) -> Tensor:
        """The bag of ``slide_id`` (N×D float16)."""
        return read_bag(self.infos[slide_id].path)


class CachedBagSource(BagSource):
    """Every bag read once into memory as float16."""

    cached = True

    def __init__(self, infos: dict[str, BagInfo]) -> None:
        super().__init__(infos)
        self._bags = {sid: read_bag(info.path) for sid, info in infos.items()}

    def get(self, slide_id: str) -> Tensor:
        return self._bags[slide_id]


def open_bags(infos: dict[str, BagInfo], cache_max_gb: float) -> BagSource:
    """A cached source when all bags fit in ``cache_max_gb`` GB (10⁹ bytes) as float16,
    otherwise a streaming one."""
    need = sum(i.n_tiles * i.feature_dim * FP16_BYTES for i in infos.values())
    if need <= cache_max_gb * 1e9:
        return CachedBagSource(infos)
    return BagSource(infos)


def collate(bags: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Pad bags (each N_i×D, N_i ≥ 1, one dtype) into x (B×max N_i×D in the bags' dtype —
    float16 here, half the bytes to move to a GPU; convert on the device) with zeros on padding,
    and mask (B×max N_i bool, True on real tiles)."""
    n_max = max(b.shape[0] for b in bags)
    x = torch.zeros(len(bags), n_max, bags[0].shape[1], dtype=bags[0].dtype)
    mask = torch.zeros(len(bags), n_max, dtype=torch.bool)
    for i, bag in enumerate(bags):
        x[i, : bag.shape[0]] = bag
        mask[i, : bag.shape[0]] = True
    return x, mask


def plan_rows(n_tiles: int, max_tiles: int | None, rng: np.random.Generator | None) -> np.ndarray:
    """Rows of a bag to use: all of them, or — when ``max_tiles`` is set and exceeded and an
    ``rng`` is given — a uniform random subset of ``max_tiles`` rows in file order."""
    if max_tiles is None or n_tiles <= max_tiles or rng is None:
        return np.arange(n_tiles, dtype=np.int64)
    return np.sort(rng.choice(n_tiles, size=max_tiles, replace=False)).astype(np.int64)


def fetch_bags(source: BagSource, plan: Sequence[tuple[str, np.ndarray]]) -> list[Tensor]:
    """The whole bags of one planned batch (I/O only, safe in a background thread)."""
    return [source.get(sid) for sid, _ in plan]


def assemble_batch(plan: Sequence[tuple[str, np.ndarray]], bags: Sequence[Tensor]) -> BagBatch:
    """Select each bag's planned rows and pad them into a :class:`BagBatch`."""
    chosen = [bag if len(rows) == bag.shape[0] else bag[torch.from_numpy(rows)]
              for (_, rows), bag in zip(plan, bags, strict=True)]
    x, mask = collate(chosen)
    return BagBatch(x=x, mask=mask, slide_ids=[sid for sid, _ in plan],
                 rows=[rows for _, rows in plan])


def plan_batches(source: BagSource, order: Sequence[str], batch_size: int,
                 max_tiles: int | None = None,
                 rng: np.random.Generator | None = None) -> list[list[tuple[str, np.ndarray]]]:
    """Split slides ``order`` into consecutive batches of ``batch_size`` (the last may be
    smaller) and choose each bag's rows (:func:`plan_rows`). Planning up front keeps the random
    draws independent of how far a background reader runs ahead."""
    plans = []
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        plans.append([(sid, plan_rows(source.infos[sid].n_tiles, max_tiles, rng))
                      for sid in ids])
    return plans


def by_tile_count(source: BagSource, order: Sequence[str]) -> list[int]:
    """Positions of ``order``'s slides sorted by tile count (stable): batches planned in this
    order hold bags of similar size, so little of a batch is padding."""
    return sorted(range(len(order)), key=lambda i: source.infos[order[i]].n_tiles)


def iter_batches(source: BagSource, plans: Sequence[Sequence[tuple[str, np.ndarray]]],
                 prefetch: int = 2) -> Iterator[BagBatch]:
    """Load planned batches in order. A streaming source reads its HDF5 files up to
    ``prefetch`` batches ahead in a background thread; tensor work stays in the calling
    thread (torch ops from a second thread make the CPU thread pools contend)."""
    fetches = [partial(fetch_bags, source, plan) for plan in plans]
    if source.cached or prefetch < 1:
        bag_lists: Iterable[list[Tensor]] = (fetch() for fetch in fetches)
    else:
        bag_lists = prefetched(fetches, prefetch)
    for plan, bags in zip(plans, bag_lists, strict=True):
        yield assemble_batch(plan, bags)


def prefetched(loads: Iterable[Callable[[], T]], depth: int) -> Iterator[T]:
    """Call ``loads`` in order in a background thread, at most ``depth`` results ahead of the
    consumer; re-raise a loader's exception in the consumer."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for load in loads:
                if stop.is_set():
                    return
                results.put((True, load()))
            results.put((True, done))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer below
            results.put((False, exc))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = results.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                results.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)
