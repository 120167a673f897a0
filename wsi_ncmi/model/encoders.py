"""Frozen tile encoders: a small registry over timm, and where their weights come from.

Names accepted:

- ``resnet50_trunc``: timm ResNet-50 cut after layer 3, global average pool, 1024-d (CLAM's
  long-standing default); weights ``timm/resnet50.tv_in1k`` (torchvision ImageNet); fed 224 px,
  as CLAM and TRIDENT feed it.
- ``uni``: UNI (ViT-L/16, 1024-d), ``hf-hub:MahmoodLab/uni`` (gated; accept its licence and
  download it once with ``--download`` on a machine with internet, or pass ``--weights``).
- any timm model name (``vit_small_patch16_224.augreg_in21k``…): its pooled output.
- ``hf-hub:<org>/<repo>``: a timm model on the Hugging Face hub.

Weights come from, in order: ``weights`` (a safetensors file or a state dict loaded with
``weights_only=True``), ``random_weights`` (explicitly random, flagged in every output), or the
local Hugging Face cache — the network is used only when ``download`` is asked for. The
sha256 of the weights actually used is returned with the model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..checksums import file_sha256
from ..errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderError(InputError):
    """An encoder cannot be built or its weights cannot be found or loaded."""


@dataclass(frozen=True)
class EncoderSpec:
    """How to build and feed an encoder.

    ``input_size``: the encoder's own input side in px (224 for ``resnet50_trunc`` and the
    ImageNet and pathology ViTs; from timm's pretrained config otherwise), the default side
    tiles are resized to (None: no size is stated, the tile is fed as cut).
    ``mean``/``std``: per-channel normalisation of [0, 1] RGB. ``gpu_precision``: autocast
    dtype on CUDA (``bf16`` | ``fp16`` | ``fp32``); CPU runs fp32.
    """

    name: str
    architecture: str
    hub_id: str | None
    input_size: int | None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    gpu_precision: str = "bf16"
    create_kwargs: dict = field(default_factory=dict)
    truncate_after_layer3: bool = False


REGISTRY: dict[str, EncoderSpec] = {
    "resnet50_trunc": EncoderSpec(
        "resnet50_trunc", "resnet50", "timm/resnet50.tv_in1k", 224,
        truncate_after_layer3=True),
    "uni": EncoderSpec(
        "uni", "hf-hub:MahmoodLab/uni", "MahmoodLab/uni", 224,
        create_kwargs={"init_values": 1e-5, "dynamic_img_size": True}),
}


@dataclass
class Encoder:
    """A built encoder in eval mode. ``dim``: output feature size. ``weights_source``:
    ``file`` | ``hub`` | ``random``; ``weights_path``: the file the weights were read from
    (``--weights`` or the hub cache's file; None for random weights)."""

    model: object
    spec: EncoderSpec
    dim: int
    weights_sha256: str
    weights_source: str
    weights_path: Path | None = None


def get_spec(name: str) -> EncoderSpec:
    """The spec of a registry name, a timm model name or an ``hf-hub:`` name."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith("hf-hub:"):
        return EncoderSpec(name, name, name.removeprefix("hf-hub:"), None)
    import timm

    arch = name.split(".")[0]
    if not timm.is_model(arch):
        raise EncoderError(f"unknown encoder {name!r}: not in the registry "
                           f"({', '.join(REGISTRY)}), not a timm model, not hf-hub:<repo>")
    cfg = timm.models.get_pretrained_cfg(name) if "." in name else None
    cfg = cfg or timm.models.get_pretrained_cfg(arch)
    hub = getattr(cfg, "hf_hub_id", None) if cfg else None
    size = cfg.input_size[-1] if cfg and cfg.input_size else None
    mean = tuple(cfg.mean) if cfg else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg else IMAGENET_STD
    return EncoderSpec(name, name, hub, size, mean, std)


def load_encoder(
    name: str,
    weights: Path | None = None,
    random_weights: bool = False,
    download: bool = False,
    seed: int = 0,
) -> Encoder:
    """Build encoder ``name`` with its weights (see module docstring for the order)."""
    if weights is not None and random_weights:
        raise EncoderError("--weights and --random-weights exclude each other")
    if not download:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read before huggingface_hub is imported
    import torch

    spec = get_spec(name)
    if random_weights:
        torch.manual_seed(seed)
        model = _create(spec)
        return _finish(model, spec, _state_sha256(model.state_dict()), "random", None)
    source = "file"
    if weights is None:
        weights, source = _hub_weights(spec, download), "hub"
    model = _create(spec)
    _load_state(model, spec, weights)
    return _finish(model, spec, file_sha256(weights), source, Path(weights).resolve())


def save_seeded_checkpoint(name: str, path: Path, seed: int = 0) -> str:
    """Write a seeded random initialisation of encoder ``name`` as safetensors (for the demo
    and tests, where no pretrained weights can be downloaded); return its sha256."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = _create(get_spec(name))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return file_sha256(path)


def _create(spec: EncoderSpec):
    import timm
    import torch

    try:
        model = timm.create_model(spec.architecture, pretrained=False, num_classes=0,
                                  **spec.create_kwargs)
    except Exception as exc:  # timm raises many types for a missing hub config
        raise EncoderError(f"cannot build encoder {spec.name!r}: {_one_line(exc)}") from None
    if spec.truncate_after_layer3:
        model.layer4 = torch.nn.Identity()
    return model


def _hub_weights(spec: EncoderSpec, download: bool) -> Path:
    from huggingface_hub import hf_hub_download

    if spec.hub_id is None:
        raise EncoderError(f"encoder {spec.name!r} has no hub weights; pass --weights FILE")
    last = None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return Path(hf_hub_download(spec.hub_id, filename, local_files_only=not download))
        except Exception as exc:  # not cached / not on the hub: try the next file name
            last = exc
    if download:
        raise EncoderError(f"weights of {spec.name!r} ({spec.hub_id}) could not be fetched "
                           f"from the hub: {_one_line(last)}; pass --weights FILE")
    raise EncoderError(f"weights of {spec.name!r} ({spec.hub_id}) are not in the local Hugging "
                       "Face cache (HF_HOME); pass --weights FILE, or --download to fetch them")


def _load_state(model, spec: EncoderSpec, path: Path) -> None:
    import torch

    if not Path(path).is_file():
        raise EncoderError(f"{path}: weights file not found")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EncoderError(f"{path}: unreadable weights ({_one_line(exc)})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    wanted = model.state_dict().keys()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in wanted}
    missing = [k for k in wanted if k not in state]
    if missing:
        raise EncoderError(f"{path}: not weights of {spec.name!r}; missing {len(missing)} "
                           f"tensors (e.g. {', '.join(missing[:3])})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EncoderError(f"{path}: weights do not fit {spec.name!r} ({_one_line(exc)[:300]})") \
            from None


def _finish(model, spec: EncoderSpec, sha: str, source: str, path: Path | None) -> Encoder:
    import torch

    model.eval().requires_grad_(False)
    side = spec.input_size or 224
    with torch.inference_mode():
        dim = int(model(torch.zeros(1, 3, side, side)).shape[-1])
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if spec.name.startswith("hf-hub:") and cfg.get("mean"):
        size = cfg.get("input_size", (3, None, None))[-1]
        spec = replace(spec, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), input_size=size)
    return Encoder(model, spec, dim, sha, source, path)


def _state_sha256(state) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _one_line(exc) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def load_recorded_encoder(settings: dict, weights: Path | None, download: bool = False,
                          recorded_files: Sequence[str] = ()) -> Encoder:
    """The encoder a run's features were made with (``settings``: the settings of
    ``RUN/features.json``), with those very weights and the input size the features were made
    at (its ``spec.input_size``); refuses (:class:`EncoderError`, one line) on another sha256,
    missing weights or other normalisation.

    Weights, in order: ``weights`` (a file to check and use); the same seeded random weights
    for features of explicitly random weights; the weights files the features were made from
    (``recorded_files``, from the record's facts) when one is still there with that sha256;
    else the local Hugging Face cache (the network only with ``download``)."""
    name, want = settings["encoder"], settings["weights_sha256"]
    recorded = [Path(p) for p in recorded_files]
    if weights is None and not settings.get("random_weights") and recorded:
        weights = _recorded_weights(recorded, name, want)
    if weights is not None:
        if not Path(weights).is_file():
            raise EncoderError(f"{weights}: weights file not found")
        got = file_sha256(Path(weights))
        if got != want:
            raise EncoderError(f"{weights}: sha256 {got[:16]}… differs from the weights the "
                               f"model was trained with ({name}, sha256 {want[:16]}…); refusing "
                               "to predict with another encoder")
        encoder = load_encoder(name, Path(weights))
    else:
        try:
            encoder = load_encoder(name, random_weights=bool(settings.get("random_weights")),
                                   download=download)
        except InputError as exc:
            raise EncoderError(f"encoder weights of the model ({name}, sha256 {want[:16]}…) "
                               f"cannot be found: {exc}") from None
        if encoder.weights_sha256 != want:
            raise EncoderError(f"encoder {name}: the available weights "
                               f"({encoder.weights_source}, sha256 "
                               f"{encoder.weights_sha256[:16]}…) differ from the model's "
                               f"(sha256 {want[:16]}…); pass the right --weights FILE")
    side = settings["preprocessing"].get("input_size")
    if side is not None:  # repeat the features' input size, whatever the encoder's default
        encoder.spec = replace(encoder.spec, input_size=int(side))
    _check_preprocessing(encoder, settings)
    return encoder


def _recorded_weights(files: list[Path], name: str, want: str) -> Path:
    """The first of the recorded weights ``files`` whose sha256 is ``want``; a one-line
    :class:`EncoderError` naming them when none is (gone, or changed since)."""
    present = [p for p in files if p.is_file()]
    for path in present:
        if file_sha256(path) == want:
            return path
    shown = ", ".join(map(str, files))
    if present:
        raise EncoderError(f"{shown}: the encoder weights the model was trained with ({name}, "
                           f"sha256 {want[:16]}…) have changed since; pass --weights FILE with "
                           "the original file")
    raise EncoderError(f"{shown}: the encoder weights the model was trained with ({name}, "
                       f"sha256 {want[:16]}…) are no longer there; pass --weights FILE")


def _check_preprocessing(encoder: Encoder, settings: dict) -> None:
    import numpy as np

    recorded = settings["preprocessing"]
    side = encoder.spec.input_size or int(settings["tiling"]["tile_size"])
    now = {"input_size": side, "mean": list(encoder.spec.mean), "std": list(encoder.spec.std)}
    differs = [k for k, v in now.items()
               if not np.allclose(np.asarray(recorded.get(k, np.nan), dtype=float), v)]
    if differs:
        raise EncoderError(f"encoder {encoder.spec.name}: preprocessing {', '.join(differs)} "
                           f"now {[now[k] for k in differs]}, the model's features had "
                           f"{[recorded.get(k) for k in differs]}; refusing to predict")
