"""Loading a trained fold and running it on feature files (used by eval, predict, heatmap).

A fold folder (:mod:`wsi_ncmi.formats.runfolder`) holds ``model.safetensors`` (aggregator
weights and the loss head's state: the CE-family classifier, or NCMI's EMA centre μ and
centroid parameters w) and ``model.json`` (what is needed to rebuild the model).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..formats.featurefile import bag_path
from ..formats.runfolder import META, WEIGHTS, read_fold
from .bags import (
    BagBatch,
    BagInfo,
    BagSource,
    by_tile_count,
    inspect_bag,
    iter_batches,
    plan_batches,
)
from .slidemodel import SlideModel, build_model


@dataclass
class LoadedModel:
    """A fold's model in eval mode and its ``model.json`` contents."""

    model: SlideModel
    meta: dict


def load_fold(fold_dir: Path, device: str = "cpu") -> LoadedModel:
    """Rebuild a fold's model from ``fold_dir/model.json`` + ``model.safetensors``, in eval
    mode on ``device``; :class:`InputError` naming the file when either is missing or they
    do not match."""
    fold_dir = Path(fold_dir)
    meta, state = read_fold(fold_dir)
    try:
        model = build_model(meta)
    except (KeyError, TypeError) as exc:
        raise InputError(f"{fold_dir / META}: not a model description ({exc!r})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{fold_dir / WEIGHTS}: weights do not match {META} "
                         f"({' '.join(str(exc).split())[:300]})") from None
    model.to(device).eval()
    return LoadedModel(model=model, meta=meta)


@torch.no_grad()
def forward_batches(model: SlideModel, batches: Iterable[BagBatch], device: str | torch.device
                    ) -> dict:
    """Run ``model`` in eval mode over ``batches`` (all rows of every bag).

    Returns ``slide_id`` (list), ``z`` (n×m), ``z_tilde`` (n×m or None), ``p`` (n×k),
    ``logits`` (n×C or None) as float32 arrays, and ``attention`` (list of (N_i,) float32).
    """
    model.eval()
    ids, attention = [], []
    parts: dict[str, list[np.ndarray]] = {"z": [], "z_tilde": [], "p": [], "logits": []}
    for batch in batches:
        z, alpha = model(batch.x.to(device).float(), batch.mask.to(device))
        head = model.head.outputs(z)
        ids += batch.slide_ids
        for key, value in (("z", z), ("z_tilde", head.z_tilde), ("p", head.p),
                           ("logits", head.logits)):
            if value is not None:
                parts[key].append(value.float().cpu().numpy())
        alpha = alpha.float().cpu().numpy()
        attention += [alpha[i, : len(rows)].copy() for i, rows in enumerate(batch.rows)]
    out: dict = {"slide_id": ids, "attention": attention}
    for key, arrays in parts.items():
        out[key] = np.concatenate(arrays).astype(np.float32) if arrays else None
    return out


def forward_bags(model: SlideModel, source: BagSource, slide_ids: Sequence[str], batch_size: int,
                 device: str | torch.device, prefetch: int = 2) -> dict:
    """:func:`forward_batches` over all tiles of ``slide_ids``' bags, in the order of
    ``slide_ids``. Batches hold bags of similar size (planned in order of tile count): a batch
    is padded to its longest bag, so slides of 200 and 20 000 tiles side by side would
    compute 100× the smaller one's tiles."""
    by_size = by_tile_count(source, slide_ids)
    plans = plan_batches(source, [slide_ids[i] for i in by_size], batch_size)
    out = forward_batches(model, iter_batches(source, plans, prefetch), device)
    back = np.argsort(np.array(by_size, dtype=np.int64))
    out["slide_id"] = [out["slide_id"][j] for j in back]
    out["attention"] = [out["attention"][j] for j in back]
    for key in ("z", "z_tilde", "p", "logits"):
        if out[key] is not None:
            out[key] = out[key][back]
    return out


def check_bags(features_dir: Path, slide_ids: Sequence[str],
               feature_dim: int | None = None) -> tuple[dict[str, BagInfo], list[str]]:
    """Inspect every slide's feature file; return the readable non-empty ones and one problem
    line per other slide (unsafe id, missing, unreadable, empty, or — when ``feature_dim`` is
    given — of another feature size)."""
    infos, problems = {}, []
    for sid in slide_ids:
        try:
            info = inspect_bag(bag_path(features_dir, sid))
        except InputError as exc:
            problems.append(f"slide {sid}: {exc}")
            continue
        if info.n_tiles == 0:
            problems.append(f"slide {sid}: empty bag (0 tiles) in {info.path}")
        elif feature_dim is not None and info.feature_dim != feature_dim:
            problems.append(f"slide {sid}: features have D = {info.feature_dim}, expected "
                            f"{feature_dim}")
        else:
            infos[sid] = info
    return infos, problems


def run_model(loaded: LoadedModel, features_dir: Path, slide_ids: list[str],
              batch_size: int = 8) -> dict:
    """Run a loaded fold on the slides' feature files in ``features_dir``.

    Returns ``{"slide_id", "z" (n×m), "z_tilde" (n×m) or None, "p" (n×k), "logits" (n×C) or
    None, "attention" (list of (N_i,) in feature-file row order)}``, float32, in the order of
    ``slide_ids``. Raises :class:`InputError` listing every slide whose file is missing,
    unreadable, empty or of the wrong feature size.
    """
    infos, problems = check_bags(features_dir, slide_ids, loaded.meta["feature_dim"])
    if problems:
        raise InputError(f"{len(problems)} slide(s) cannot be run: {'; '.join(problems)}")
    source = BagSource(infos)
    device = next(loaded.model.parameters()).device
    return forward_bags(loaded.model, source, list(slide_ids), batch_size, device)
