"""Reader items for the extract stage: tiles read in worker processes, in tile order.

Two kinds of item, one per pixel path:

- **pixels** (the CPU path): a worker reads runs of adjacent tiles with its reader
  (:mod:`wsi_ncmi.slides.reading`: OpenSlide or the direct JPEG reader), cuts and resizes
  them (cv2 INTER_AREA) and hands over uint8 tiles;
- **compressed** (the device path, direct reader only): a worker hands over the JPEG streams
  of the native tiles each run touches (:func:`~wsi_ncmi.slides.gpudecode.read_run_compressed`),
  and the process that owns the device decodes a whole batch of them in one call, assembles
  and resizes the tiles there (:func:`gather`). A run that has no compressed form (fractional
  level offsets) or whose tile is damaged is read on the CPU path by the worker instead; a run
  whose streams do not decode on the device is read on the CPU path by the main process. The
  CPU path's retry-once-then-skip policy applies to both.

Items are handed to worker processes round-robin, and each worker keeps its own cache of
decoded native tiles: on the CPU path a native tile that runs of two workers' items share
(224-px tiles over 256-px native tiles: most, between adjacent tile rows) is decoded by each,
and one worker's 32 MiB cache does not hold the two native rows of a wide slide either
(``benchmarks/bench_extract.py`` counts ~2 decodes per native tile then, 1 where tiles line
up with native tiles). On the device path the main process decodes every native tile and
keeps them between batches (:class:`~wsi_ncmi.slides.gpudecode.DecodedTiles`, 256 MiB: the
two native rows of a slide up to ~160 000 px wide at 256-px native tiles), so each is
decoded once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..slides.gpudecode import (
    CompressedRun,
    DecodedTiles,
    decode_runs,
    read_run_compressed,
    resize_area,
)
from ..slides.jpegtiff import DirectTileReader, TileDecodeError
from ..slides.readers import open_reader
from ..slides.reading import ReadSpec, TileReader, region_runs


@dataclass
class CompressedItem:
    """One item of the device path: ``idx`` (k,) tile indices; ``runs``: (first row, run) of
    each run handed over compressed; ``cpu_rows`` (j,) rows read on the CPU path, with their
    ``cpu_tiles`` (j×out×out×3 uint8) and ``cpu_ok`` (j,) decoded flags."""

    idx: np.ndarray
    runs: list[tuple[int, CompressedRun]]
    cpu_rows: np.ndarray
    cpu_tiles: np.ndarray
    cpu_ok: np.ndarray


class _Items(torch.utils.data.Dataset):
    """Item i: (tile indices, uint8 tiles k×H×W×3, decoded flags) of the i-th reader item."""

    def __init__(self, reader: TileReader, coords: np.ndarray, batches: list[list[tuple]]):
        self.reader, self.coords, self.batches = reader, coords, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i):
        parts = [self.reader.read_run(self.coords[a:b]) for a, b in self.batches[i]]
        idx = np.concatenate([np.arange(a, b) for a, b in self.batches[i]])
        tiles = np.concatenate([p[0] for p in parts])
        ok = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(idx), torch.from_numpy(tiles), torch.from_numpy(ok)


class _CompressedItems(_Items):
    """Item i: a :class:`CompressedItem` of the i-th reader item."""

    reader: DirectTileReader

    def __getitem__(self, i) -> CompressedItem:
        out = self.reader.spec.out_size
        runs, rows, tiles, oks = [], [], [], []
        first = 0
        for a, b in self.batches[i]:
            try:
                run = read_run_compressed(self.reader, self.coords[a:b])
            except (TileDecodeError, OSError):
                self.reader.close()
                run = None
            if run is None:
                pixels, ok = self.reader.read_run(self.coords[a:b])
                rows.append(np.arange(first, first + b - a))
                tiles.append(pixels)
                oks.append(ok)
            else:
                runs.append((first, run))
            first += b - a
        idx = np.concatenate([np.arange(a, b) for a, b in self.batches[i]])
        return CompressedItem(
            idx, runs, np.concatenate(rows) if rows else np.zeros(0, np.int64),
            np.concatenate(tiles) if tiles else np.zeros((0, out, out, 3), np.uint8),
            np.concatenate(oks) if oks else np.zeros(0, bool))


def pack_runs(runs: list[tuple[int, int]], batch_size: int) -> list[list[tuple[int, int]]]:
    """Group region runs into batches of at most ``batch_size`` tiles (runs split if needed)."""
    batches, current, filled = [], [], 0
    for a, b in runs:
        while a < b:
            take = min(b - a, batch_size - filled)
            current.append((a, a + take))
            filled += take
            a += take
            if filled == batch_size:
                batches.append(current)
                current, filled = [], 0
    if current:
        batches.append(current)
    return batches


def tile_loader(slide_path: Path, coords: np.ndarray, spec: ReadSpec, reader_choice: str,
                workers: int, batch_size: int, region_tiles: int, pin_memory: bool,
                compressed: bool = False) -> tuple[torch.utils.data.DataLoader, TileReader]:
    """A loader of reader items in tile order, and the reader (its ``name`` says which).

    Items are (indices, uint8 tiles k×H×W×3, decoded flags), or :class:`CompressedItem`
    when ``compressed`` is asked and the direct reader reads the slide. They hold about a
    quarter of a worker's share of the slide (between ``2 × region_tiles`` and
    ``batch_size`` tiles): small enough that every reader process gets work on a short
    slide, large enough that per-item overhead stays low on a long one. The caller gathers
    items into encoder batches (:func:`gather`). ``workers`` reader processes read them,
    none for a slide of one encoder batch or less.
    """
    # one encoder batch or less leaves no compute for reads to overlap with: starting
    # worker processes would only add their start-up (~0.5 s a slide)
    workers = workers if len(coords) > batch_size else 0
    share = len(coords) // (4 * max(1, workers))
    item = max(2 * region_tiles, min(batch_size, share))
    runs = region_runs(coords, spec.downsample, spec.read_size, region_tiles)
    items = pack_runs(runs, item)
    reader = open_reader(slide_path, spec, reader_choice)
    kind = _CompressedItems if compressed and isinstance(reader, DirectTileReader) else _Items
    loader = torch.utils.data.DataLoader(
        kind(reader, coords, items), batch_size=None, shuffle=False, num_workers=workers,
        pin_memory=pin_memory, prefetch_factor=4 if workers else None,
        worker_init_fn=_one_thread if workers else None,
    )
    return loader, reader


def _one_thread(_worker_id: int) -> None:
    """Reader processes decode with one thread each: the processes are the parallelism."""
    torch.set_num_threads(1)


def gather(items: list, device: torch.device, reader: TileReader, coords: np.ndarray,
           cache: DecodedTiles | None = None) -> tuple[np.ndarray, torch.Tensor, np.ndarray, int]:
    """(indices, uint8 tiles N×out×out×3 on ``device``, decoded flags, how many were decoded
    on the device) of reader items in order. Pixel items' tiles are copied to the device
    (non-blocking from pinned memory); the compressed runs of all items are decoded there in
    one batch, reusing the native tiles ``cache`` keeps (one by one when the batch fails; a
    run that still fails is read on the CPU path with ``reader``)."""
    cuda = device.type == "cuda"
    runs = [run for item in items if isinstance(item, CompressedItem) for _, run in item.runs]
    decoded = _decode_all(runs, device, reader, coords, items, cache) if runs else []
    idx, tiles, oks, used, on_device = [], [], [], 0, 0
    for item in items:
        if not isinstance(item, CompressedItem):
            idx.append(item[0].numpy())
            tiles.append(item[1].to(device, non_blocking=cuda))
            oks.append(item[2].numpy())
            continue
        n, side = len(item.idx), reader.spec.out_size
        block = torch.empty((n, side, side, 3), dtype=torch.uint8, device=device)
        ok = np.ones(n, bool)
        if len(item.cpu_rows):
            block[torch.from_numpy(item.cpu_rows).to(device)] = torch.from_numpy(
                item.cpu_tiles).to(device)
            ok[item.cpu_rows] = item.cpu_ok
        for first, run in item.runs:
            pixels, run_ok, decoded_here = decoded[used]
            used += 1
            on_device += run.n_tiles if decoded_here else 0
            block[first:first + run.n_tiles] = pixels
            ok[first:first + run.n_tiles] = run_ok
        idx.append(item.idx)
        tiles.append(block)
        oks.append(ok)
    return np.concatenate(idx), torch.cat(tiles), np.concatenate(oks), on_device


def _decode_all(runs: list[CompressedRun], device: torch.device, reader: TileReader,
                coords: np.ndarray, items: list, cache: DecodedTiles | None
                ) -> list[tuple[torch.Tensor, np.ndarray, bool]]:
    """(tiles out×out on ``device``, decoded flags, whether decoded on the device) of each
    compressed run, in order."""
    side = reader.spec.out_size
    try:
        pixels = resize_area(decode_runs(runs, str(device), cache), side)
    except RuntimeError:  # a stream the device decoder refuses: find it run by run
        where = [(item.idx, first) for item in items if isinstance(item, CompressedItem)
                 for first, _ in item.runs]
        return [_decode_one(run, idx[first:first + run.n_tiles], device, reader, coords)
                for run, (idx, first) in zip(runs, where, strict=True)]
    bounds = np.cumsum([0] + [run.n_tiles for run in runs])
    return [(pixels[a:b], np.ones(b - a, bool), True)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _decode_one(run: CompressedRun, idx: np.ndarray, device: torch.device, reader: TileReader,
                coords: np.ndarray) -> tuple[torch.Tensor, np.ndarray, bool]:
    """One run decoded on the device, or read on the CPU path when it does not decode."""
    try:
        return (resize_area(decode_runs([run], str(device)), reader.spec.out_size),
                np.ones(run.n_tiles, bool), True)
    except RuntimeError:
        tiles, ok = reader.read_run(coords[idx])
        return torch.from_numpy(tiles).to(device), ok, False
