"""The extract stage: ``tiles/<id>.h5`` + slide → ``features/<encoder>/<id>.h5``.

Worker processes (each with its own slide handle) read regions of adjacent tiles
(:mod:`wsi_ncmi.stages.tileloader`) while the main process runs the frozen encoder. On the CPU
path workers cut and resize the tiles (cv2 INTER_AREA) and uint8 tiles travel through pinned
memory with non-blocking copies; on the device path (CUDA with nvJPEG, direct reader) workers
hand over compressed native tiles, which are decoded, assembled and resized on the device in
one batch. Either way tiles are normalised on the device and run channels-last under
``inference_mode`` (bf16/fp16 autocast on CUDA when the encoder prefers it). Features stream
to HDF5 batch by batch, so memory stays bounded whatever the tile count; every batch is
checked for NaN/Inf; the file is published atomically.
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
from ..slides.gpudecode import DecodedTiles, device_decode_available
from ..slides.readers import READERS
from ..slides.reading import ReadSpec, resolve_grid
from .jobs import SlideJob, record_tag, shard_jobs
from .ledger import Ledger
from .provenance import write_record
from .runner import RunSummary, run_jobs
from .tileloader import CompressedItem, gather, tile_loader

log = logging.getLogger("wsi_ncmi")

DECODES = ("auto", "cpu", "device")
#: how tiles are resized on the device path (a setting: not bit-equal to cv2's on every tile)
DEVICE_RESIZE = "area weights, torch float32 (slides.gpudecode.resize_area)"


@dataclass(frozen=True)
class ExtractConfig:
    """``batch_size``: tiles per forward pass. ``workers``: reader processes (0 = read in the
    main process). ``precision``: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` (see
    :func:`~wsi_ncmi.model.device.select_precision`). ``max_bad_tiles``: share of tiles that
    may fail to decode before the slide fails. ``region_tiles``: most tiles read per region
    call. ``reader``: ``auto`` | ``direct`` | ``openslide``
    (:func:`~wsi_ncmi.slides.readers.open_reader`; the same pixels, so not part of the settings
    key; the reader used is recorded in each feature file). ``input_size``: side (px) tiles
    are resized to for the encoder: None = the encoder's own (``spec.input_size``),
    ``"native"`` = the tile as cut, or a number. ``decode``: where JPEG tiles are decoded and
    resized — ``cpu`` (the worker processes, cv2 INTER_AREA), ``device`` (compressed tiles
    decoded by torchvision on the compute device and resized there; on a CPU device this runs
    the same code with libjpeg-turbo), or ``auto`` (``device`` on CUDA when nvJPEG is there and
    the reader may be the direct one, else ``cpu``). Both are settings: they enter the key."""

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
    input_size: int | str | None = None
    decode: str = "auto"


def precision_of(encoder: Encoder, device: torch.device, config: ExtractConfig) -> str:
    """The compute precision of ``encoder`` on ``device`` for ``config.precision``."""
    return select_precision(device, encoder.spec.gpu_precision, config.precision)


def input_setting(encoder: Encoder, config: ExtractConfig) -> int | None:
    """The input side ``config.input_size`` asks for (px), None for the tile as cut."""
    size = config.input_size
    if size is None:
        return encoder.spec.input_size
    if size == "native":
        return None
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 4096:
        raise InputError(f"--input-size {size!r}: expected native or a side of 16–4096 px")
    return size


def decode_path(config: ExtractConfig) -> str:
    """``cpu`` or ``device``: where ``config`` has tiles decoded and resized (see
    :class:`ExtractConfig`); :class:`InputError` when ``device`` decoding is unavailable."""
    if config.decode not in DECODES:
        raise InputError(f"decode {config.decode!r}: expected one of {', '.join(DECODES)}")
    if config.decode == "cpu" or config.reader == "openslide":
        return "cpu"
    device = select_device(config.device)
    if config.decode == "auto" and device.type != "cuda":
        return "cpu"
    if device_decode_available(str(device)):
        return "device"
    if config.decode == "device":
        raise InputError(f"decode on {device}: torchvision cannot decode JPEG there")
    return "cpu"


def extract_key(encoder: Encoder, config: ExtractConfig, precision: str) -> str:
    """Digest of everything that changes the features' values or storage (the device path's
    decoder and resize enter it; the CPU path's key is what it was before there was one)."""
    settings = {"encoder": encoder.spec.name, "weights": encoder.weights_sha256,
                "precision": precision, "fp16_storage": config.fp16_storage,
                "input_size": input_setting(encoder, config)}
    if decode_path(config) == "device":
        settings["pixels"] = (f"torchvision.io.decode_jpeg on {select_device(config.device).type}"
                              f"; {DEVICE_RESIZE}")
    return settings_key(settings)


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
    side = input_setting(encoder, config) or grid.tile_size
    spec = ReadSpec(grid.level, grid.read_size, downsamples[grid.level], side)
    precision = precision_of(encoder, device, config)
    n = len(grid.coords)
    with atomic_path(out) as tmp:
        read = _encode_to_h5(tmp, slide_path, grid.coords, spec, encoder, config, device,
                             precision)
        n_bad = read["n_bad"]
        _write_attrs(tmp, grid, encoder, config, precision, side, read,
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
    log.info("encoder %s (%d-d, weights %s %s…) on %s, %s; input %s px; tiles decoded on "
             "the %s", encoder.spec.name, encoder.dim, encoder.weights_source,
             encoder.weights_sha256[:12], device, precision,
             input_setting(encoder, config) or "native", decode_path(config))
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


def _encode_to_h5(tmp, slide_path, coords, spec, encoder, config, device, precision) -> dict:
    """Read, encode and stream one slide's tiles into ``tmp``; return the facts of the read:
    bad tiles, the reader, the tiles decoded on the device. Reader items are gathered on the
    device into batches of ``batch_size``."""
    import h5py

    n, dim = len(coords), encoder.dim
    dtype = np.float16 if config.fp16_storage else np.float32
    cuda = device.type == "cuda"
    compressed = decode_path(config) == "device"
    loader, reader = tile_loader(slide_path, coords, spec, config.reader, config.workers,
                                 config.batch_size, config.region_tiles, pin_memory=cuda,
                                 compressed=compressed)
    mean = torch.tensor(encoder.spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.spec.std, device=device).view(1, 3, 1, 1)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    cache = DecodedTiles() if compressed else None
    written, on_device = 0, 0
    with h5py.File(tmp, "w") as f:
        feats = f.create_dataset("features", (n, dim), dtype=dtype, maxshape=(n, dim),
                                 chunks=(max(1, min(n, 512)), dim) if n else None)
        out_coords = f.create_dataset("coords", (n, 2), dtype=np.int64, maxshape=(n, 2))

        def flush(pending) -> None:
            nonlocal written, on_device
            idx, tiles, good, decoded = gather(pending, device, reader, coords, cache)
            on_device += decoded
            x = tiles.permute(0, 3, 1, 2).float()
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
            for item in loader:
                if isinstance(item, CompressedItem):
                    count += len(item.idx)
                else:
                    item = (item[0], item[1].to(device, non_blocking=cuda), item[2])
                    count += len(item[0])
                pending.append(item)
                if count >= config.batch_size:
                    flush(pending)
                    pending, count = [], 0
            if pending:
                flush(pending)
        feats.resize((written, dim))
        out_coords.resize((written, 2))
    reader.close()
    return {"n_bad": n - written, "reader": reader.name, "on_device": on_device,
            "device": device.type}


def _write_attrs(tmp, grid, encoder, config, precision, side, read, key) -> None:
    import h5py

    n, on_device = len(grid.coords), read["on_device"]
    resize = "cv2.INTER_AREA"
    if on_device:
        resize = DEVICE_RESIZE + (f"; cv2.INTER_AREA for {n - on_device} tiles read on the CPU"
                                  if on_device < n else "")

    pre = {"input_size": side, "mean": list(encoder.spec.mean), "std": list(encoder.spec.std)}
    facts = {k: grid.attrs[k] for k in TILE_FACT_KEYS if k in grid.attrs}
    attrs = {
        **facts,
        "encoder": encoder.spec.name, "weights_sha256": encoder.weights_sha256,
        "weights_source": encoder.weights_source,
        "weights_file": str(encoder.weights_path or ""),
        "resize": resize if side != grid.read_size else "none", "reader": read["reader"],
        "decode": (f"torchvision on {read['device']} ({on_device} of {n} tiles)" if on_device
                   else "cpu"),
        "random_weights": encoder.weights_source == "random", "feature_dim": encoder.dim,
        "dtype": "float16" if config.fp16_storage else "float32", "precision": precision,
        "preprocessing": json.dumps(pre), "input_mpp": float(grid.effective_mpp or -1),
        "tile_size": grid.tile_size, "patch_level": grid.level, "patch_size": grid.read_size,
        "patch_size_level0": grid.size_level0, "tile_format": grid.source_format,
        "n_tiles_listed": n, "n_bad_tiles": read["n_bad"],
        "tiling": json.dumps({k: grid.attrs[k] for k in TILING_KEYS if k in grid.attrs}),
        "tiles_key": str(grid.attrs.get("settings_key", "")), "extract_key": key,
        "schema_version": SCHEMA_VERSION, "wsi_ncmi_version": __version__,
        "slide_id": str(grid.attrs.get("slide_id", "")),
    }
    with h5py.File(tmp, "a") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
