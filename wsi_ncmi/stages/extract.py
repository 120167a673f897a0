"""The extract stage: ``tiles/<id>.h5`` + slide → ``features/<encoder>/<id>.h5``.

Worker processes (each with its own OpenSlide handle) read regions of adjacent tiles and cut
them up (:mod:`wsi_ncmi.slides.reading`) while the main process runs the frozen encoder: uint8 tiles
travel through pinned memory with non-blocking copies, are normalised on the device, and run
channels-last under ``inference_mode`` (bf16/fp16 autocast on CUDA when the encoder prefers it).
Features stream to HDF5 batch by batch, so memory stays bounded whatever the tile count; every
batch is checked for NaN/Inf; the file is published atomically.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..atomic import atomic_path, remove_stale_temps
from ..errors import InputError
from ..formats.featurefile import SCHEMA_VERSION, TILE_FACT_KEYS, features_path, is_complete
from ..formats.ids import id_path
from ..formats.tilefile import TILING_KEYS, read_tile_file, settings_key
from ..model.device import select_device, select_precision
from ..model.encoders import Encoder, load_encoder
from ..slides.access import open_slide
from ..slides.readers import READERS, open_reader
from ..slides.reading import ReadSpec, TileReader, region_runs, resolve_grid
from .jobs import SlideJob, record_tag, shard_jobs
from .ledger import Ledger
from .provenance import write_record
from .runner import RunSummary, run_jobs

log = logging.getLogger("wsi_ncmi")


@dataclass(frozen=True)
class ExtractConfig:
    """``batch_size``: tiles per forward pass. ``workers``: reader processes (0 = read in the
    main process). ``precision``: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` (see
    :func:`~wsi_ncmi.model.device.select_precision`). ``max_bad_tiles``: share of tiles that
    may fail to decode before the slide fails. ``region_tiles``: most tiles read per region
    call. ``reader``: ``auto`` | ``direct`` | ``openslide``
    (:func:`~wsi_ncmi.slides.reading.open_reader`; the same pixels, so not part of the settings
    key; the reader used is recorded in each feature file)."""

    encoder: str = "resnet50_trunc"
    weights: Path | None = None
    random_weights: bool = False
    download: bool = False
    device: str = "auto"
    batch_size: int = 64
    workers: int = max(1, min(8, (os.cpu_count() or 2) - 1))
    fp16_storage: bool = False
    max_bad_tiles: float = 0.05
    region_tiles: int = 8
    precision: str = "auto"
    reader: str = "auto"


def precision_of(encoder: Encoder, device: torch.device, config: ExtractConfig) -> str:
    """The compute precision of ``encoder`` on ``device`` for ``config.precision``."""
    return select_precision(device, encoder.spec.gpu_precision, config.precision)


def extract_key(encoder: Encoder, config: ExtractConfig, precision: str) -> str:
    """Digest of everything that changes the features' values or storage."""
    return settings_key({"encoder": encoder.spec.name, "weights": encoder.weights_sha256,
                         "precision": precision, "fp16_storage": config.fp16_storage,
                         "input_size": encoder.spec.input_size})


def extract_slide(
    slide_path: Path, tile_file: Path, out: Path, encoder: Encoder, config: ExtractConfig,
    device: torch.device,
) -> dict:
    """Encode every tile listed in ``tile_file``; write ``out``; return ledger fields."""
    remove_stale_temps(out)
    grid = read_tile_file(tile_file)
    slide = open_slide(slide_path)
    downsamples = tuple(float(d) for d in slide.level_downsamples)
    slide.close()
    grid = resolve_grid(grid, downsamples, tile_file)
    side = encoder.spec.input_size or grid.tile_size
    spec = ReadSpec(grid.level, grid.read_size, downsamples[grid.level], side)
    precision = precision_of(encoder, device, config)
    n = len(grid.coords)
    with atomic_path(out) as tmp:
        n_bad = _encode_to_h5(tmp, slide_path, grid.coords, spec, encoder, config, device,
                              precision)
        _write_attrs(tmp, grid, encoder, config, precision, side, n, n_bad,
                     extract_key(encoder, config, precision))
        if n and n_bad > config.max_bad_tiles * n:
            raise InputError(f"{slide_path}: {n_bad} of {n} tiles failed to decode "
                             f"(more than {config.max_bad_tiles:.0%})")
    result = {"n_tiles": n - n_bad, "n_bad_tiles": n_bad, "precision": precision,
              "outputs": {"features": str(out)}}
    if n == 0:
        result["note"] = "tile file lists no tiles: empty bag"
    elif n_bad:
        result["note"] = f"{n_bad} tile(s) failed to decode and were left out"
    return result


def extract_slides(
    jobs: list[SlideJob], workspace: Path, config: ExtractConfig, shard: str | None = None,
    tiles_dir: Path | None = None,
) -> RunSummary:
    """Extract features for every job of this shard, skipping complete files, and record the
    run's provenance in ``WORKSPACE/provenance/extract-<tag>.json``."""
    mine = shard_jobs(jobs, shard)
    tiles_dir = tiles_dir or workspace / "tiles"
    device = select_device(config.device)
    encoder = load_encoder(config.encoder, config.weights, config.random_weights, config.download)
    encoder.model.to(device, memory_format=torch.channels_last)
    precision = precision_of(encoder, device, config)
    if config.reader not in READERS:
        raise InputError(f"--reader {config.reader!r}: expected one of {', '.join(READERS)}")
    key = extract_key(encoder, config, precision)
    log.info("encoder %s (%d-d, weights %s %s…) on %s, %s", encoder.spec.name, encoder.dim,
             encoder.weights_source, encoder.weights_sha256[:12], device, precision)
    if encoder.weights_source == "random":
        log.warning("random encoder weights: features are not from a trained model")

    def tile_file(job: SlideJob) -> Path:
        return id_path(tiles_dir, job.slide_id, ".h5")

    def done(job: SlideJob) -> bool:
        tf = tile_file(job)
        if not tf.is_file():
            return False
        try:
            tiles_key = str(read_tile_file(tf).attrs.get("settings_key", ""))
        except InputError:
            return False
        return is_complete(features_path(workspace, config.encoder, job.slide_id), tiles_key, key)

    def process(job: SlideJob) -> dict:
        tf = tile_file(job)
        if not tf.is_file():
            raise InputError(f"{tf}: tile file not found; run `wsi-ncmi tile` first")
        out = features_path(workspace, config.encoder, job.slide_id)
        result = extract_slide(job.path, tf, out, encoder, config, device)
        result["outputs"] = {"features": str(out.relative_to(workspace))}
        return result

    summary = run_jobs(mine, Ledger(workspace, "extract"), process, done)
    complete = sorted(summary.complete)
    write_record(workspace / "provenance", command="extract",
                 config={**asdict(config), "shard": shard, "tiles": tiles_dir},
                 inputs=[encoder.weights_path] if encoder.weights_path else [],
                 slides=[(j.slide_id, j.path) for j in jobs if j.slide_id in summary.complete],
                 outputs=[features_path(workspace, config.encoder, s) for s in complete],
                 name=f"extract-{record_tag(jobs, shard)}.json")
    return summary


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


def tile_loader(slide_path: Path, coords: np.ndarray, spec: ReadSpec, config: ExtractConfig,
                pin_memory: bool) -> tuple[torch.utils.data.DataLoader, TileReader]:
    """A loader of (indices, uint8 tiles k×H×W×3, decoded flags) items in tile order.

    Items hold about a quarter of a worker's share of the slide (between ``2 ×
    region_tiles`` and ``batch_size`` tiles): small enough that every reader process gets
    work on a short slide, large enough that per-item overhead stays low on a long one. The
    caller gathers items into encoder batches.
    """
    workers = config.workers if len(coords) else 0
    share = len(coords) // (4 * max(1, workers))
    item = max(2 * config.region_tiles, min(config.batch_size, share))
    runs = region_runs(coords, spec.downsample, spec.read_size, config.region_tiles)
    items = pack_runs(runs, item)
    reader = open_reader(slide_path, spec, config.reader)
    loader = torch.utils.data.DataLoader(
        _Items(reader, coords, items), batch_size=None, shuffle=False, num_workers=workers,
        pin_memory=pin_memory, prefetch_factor=4 if workers else None,
        worker_init_fn=_one_thread if workers else None,
    )
    return loader, reader


def _encode_to_h5(tmp, slide_path, coords, spec, encoder, config, device, precision) -> int:
    """Read, encode and stream one slide's tiles into ``tmp``; return the bad-tile count.
    Reader items are gathered on the device into batches of ``batch_size``."""
    import h5py

    n, dim = len(coords), encoder.dim
    dtype = np.float16 if config.fp16_storage else np.float32
    cuda = device.type == "cuda"
    loader, reader = tile_loader(slide_path, coords, spec, config, pin_memory=cuda)
    mean = torch.tensor(encoder.spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.spec.std, device=device).view(1, 3, 1, 1)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    written = 0
    with h5py.File(tmp, "w") as f:
        feats = f.create_dataset("features", (n, dim), dtype=dtype, maxshape=(n, dim),
                                 chunks=(max(1, min(n, 512)), dim) if n else None)
        out_coords = f.create_dataset("coords", (n, 2), dtype=np.int64, maxshape=(n, 2))
        f.attrs["reader"] = reader.name

        def flush(pending) -> None:
            nonlocal written
            idx = torch.cat([p[0] for p in pending]).numpy()
            good = torch.cat([p[2] for p in pending]).numpy()
            x = torch.cat([p[1] for p in pending]).permute(0, 3, 1, 2).float()
            x = x.div_(255).sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                y = encoder.model(x)
            y = y.float()
            if not torch.isfinite(y).all():
                raise InputError(f"{slide_path}: encoder produced NaN/Inf features for tiles "
                                 f"{int(idx[0])}–{int(idx[-1])}")
            k = int(good.sum())
            feats[written:written + k] = y.cpu().numpy()[good].astype(dtype)
            out_coords[written:written + k] = coords[idx[good]]
            written += k

        with torch.inference_mode():
            pending, count = [], 0
            for idx, tiles, ok in loader:
                pending.append((idx, tiles.to(device, non_blocking=cuda), ok))
                count += len(idx)
                if count >= config.batch_size:
                    flush(pending)
                    pending, count = [], 0
            if pending:
                flush(pending)
        feats.resize((written, dim))
        out_coords.resize((written, 2))
    reader.close()
    return n - written


def _one_thread(_worker_id: int) -> None:
    """Reader processes decode with one thread each: the processes are the parallelism."""
    torch.set_num_threads(1)


def _write_attrs(tmp, grid, encoder, config, precision, side, n, n_bad, key) -> None:
    import h5py

    pre = {"input_size": side, "mean": list(encoder.spec.mean), "std": list(encoder.spec.std)}
    facts = {k: grid.attrs[k] for k in TILE_FACT_KEYS if k in grid.attrs}
    attrs = {
        **facts,
        "encoder": encoder.spec.name, "weights_sha256": encoder.weights_sha256,
        "weights_source": encoder.weights_source,
        "weights_file": str(encoder.weights_path or ""),
        "resize": "cv2.INTER_AREA" if side != grid.read_size else "none",
        "random_weights": encoder.weights_source == "random", "feature_dim": encoder.dim,
        "dtype": "float16" if config.fp16_storage else "float32", "precision": precision,
        "preprocessing": json.dumps(pre), "input_mpp": float(grid.effective_mpp or -1),
        "tile_size": grid.tile_size, "patch_level": grid.level, "patch_size": grid.read_size,
        "patch_size_level0": grid.size_level0, "tile_format": grid.source_format,
        "n_tiles_listed": n, "n_bad_tiles": n_bad,
        "tiling": json.dumps({k: grid.attrs[k] for k in TILING_KEYS if k in grid.attrs}),
        "tiles_key": str(grid.attrs.get("settings_key", "")), "extract_key": key,
        "schema_version": SCHEMA_VERSION, "wsi_ncmi_version": __version__,
        "slide_id": str(grid.attrs.get("slide_id", "")),
    }
    with h5py.File(tmp, "a") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
