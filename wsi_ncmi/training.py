"""The ``train`` stage: gated attention-MIL with a chosen loss, per fold, into a run folder.

``train_run`` checks everything before training (labels, feature files, splits) and lists every
offending slide in one :class:`InputError`, then writes::

    RUN/config.yaml   resolved config          RUN/splits.json   patient-grouped splits
    RUN/provenance.json                        RUN/features.json how the features were made
    RUN/fold_<k>/model.safetensors, model.json, history.csv, embeddings.npz

Per training step (θ-step): aggregator → loss head → backward → optimiser step on the network
(the loss's centroids held fixed). For a loss with learned centroids (NCMI ``learned``), after
the warm-up share of the epochs each θ-step is followed by the loss's q-step on the same batch.

After every epoch the model runs in eval mode over the training and validation bags (all
tiles). Validation predictions come from the loss's own classifier when its head has logits (CE
family, OPL, squentropy, square) or else (NCMI, SupCon) from the centroid head: s_c = mean of p
over the training bags of class c, predict argmin_c KL(p‖s_c), class scores
softmax_c(−KL(p‖s_c)). The checkpoint with the best validation macro-F1 is kept
(a later epoch that equals it replaces it); training stops after ``optim.patience`` epochs
without reaching it. Without validation slides the last epoch is kept.

``history.csv`` (one row per epoch): ``epoch``; ``train_loss`` and ``train_<term>`` (the
loss's terms, means over the epoch's training steps); ``cmi``, ``gamma``, ``ncmi``
(:func:`ncmi_measure` of the training bags' eval-mode outputs); ``z_norm`` (mean ‖z‖ over the
epoch's training steps); ``centre_gap`` (‖mean z − μ‖ at the end of the epoch, NCMI only);
``centroid_shift`` (mean over classes of the total-variation distance ½‖q_c − q_c⁰‖₁ between
the centroids now and when they were initialised — NCMI — or at the end of the first epoch —
``cmi_ce``; blank for other losses); ``val_macro_f1``,
``val_auc`` (one-vs-rest macro AUC; blank when a class is missing from validation); ``lr``
(network learning rate used in the epoch); ``seconds`` (wall time of the epoch).

``model.json``: ``classes``, ``loss``, ``loss_settings`` (all of them), ``feature_dim`` (D),
``embed_dim`` (m), ``attn_dim``, ``dropout``, ``encoder``, ``centroid_mode``, ``centroid_map``,
``temperature`` (NCMI, SupCon; null otherwise), ``best_epoch``, ``best_val_macro_f1``,
``epochs_run``, ``validation_head`` and ``centroid_head_means`` (C×k class means of p over the
fold's training bags with the saved weights). ``embeddings.npz``: ``slide_id``, ``z`` (n×m),
``p`` (n×k), plus ``z_tilde`` (NCMI) or ``logits`` (losses with a classifier), for every slide
of the fold.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors.torch import save_file
from sklearn.metrics import f1_score, roc_auc_score

from .aggregators import SlideModel
from .atomic import atomic_path, write_json
from .bags import BagInfo, BagSource, iter_batches, open_bags, plan_batches, read_encoder_name
from .config import loss_settings, resolve_config
from .errors import InputError
from .inference import build_model, check_bags, forward_batches
from .losses import get_loss, ncmi_measure
from .manifests import load_manifest
from .splits import make_splits, validate_splits

MODEL_SCHEMA_VERSION = 1
#: losses that learn nothing from one bag per step, and why
PAIRED_LOSSES = {"ncmi": "the first batch sets the centre μ",
                 "supcon": "it contrasts bags of one batch with each other"}
log = logging.getLogger(__name__)


@dataclass
class FoldContext:
    """What every epoch of one fold needs."""

    cfg: dict
    source: BagSource
    labels: dict[str, int]
    n_classes: int
    device: torch.device


def train_run(config: dict, out_dir: Path, features_dir: Path, manifest: Path, *,
              config_files: Sequence[Path] = (), command: str = "train") -> Path:
    """Train every fold of a run; return ``out_dir``.

    ``config``: raw (merged) config, defaults and validation are applied here;
    ``features_dir``: folder of ``<slide_id>.h5`` feature files (one encoder);
    ``manifest``: CSV with ``slide_id``, ``patient_id`` and the task's label column;
    ``config_files``: the YAML files ``config`` came from (recorded as inputs).
    """
    cfg = resolve_config(config)
    out_dir, features_dir = Path(out_dir), Path(features_dir)
    if not features_dir.is_dir():
        raise InputError(f"{features_dir}: feature folder not found")
    df = load_manifest(manifest, required=("slide_id", "patient_id",
                                           cfg["task"]["label_column"]))
    if df.empty:
        raise InputError(f"{manifest}: no slides")
    classes, y, label_problems = map_labels(df, cfg["task"])
    cfg["task"]["classes"] = classes
    cfg["loss"] = resolved_loss_section(cfg, len(classes))
    cfg["data"].update(features_dir=str(features_dir.resolve()),
                       manifest=str(Path(manifest).resolve()))
    infos, bag_problems = check_bags(features_dir, df["slide_id"].tolist())
    problems = label_problems + bag_problems + feature_dim_problems(infos)
    if not label_problems:
        splits = load_or_make_splits(out_dir / "splits.json", df, y, cfg)
        problems += absent_class_problems(splits, dict(zip(df["slide_id"], y, strict=True)),
                                          classes)
    if problems:
        raise InputError(f"{len(problems)} problem(s) before training: {'; '.join(problems)}")

    settings = feature_settings(infos)
    _write_yaml(out_dir / "config.yaml", cfg)
    write_json(out_dir / "splits.json", splits)
    write_json(out_dir / "features.json", settings)
    first = next(iter(infos.values()))
    encoder = read_encoder_name(first.path) or features_dir.name
    ctx = FoldContext(cfg=cfg, source=open_bags(infos, cfg["data"]["cache_max_gb"]),
                      labels=dict(zip(df["slide_id"], y.tolist(), strict=True)),
                      n_classes=len(classes), device=resolve_device(cfg["device"]))
    outputs = [out_dir / "config.yaml", out_dir / "splits.json", out_dir / "features.json"]
    for fold in splits["folds"]:
        fold_dir = out_dir / f"fold_{fold['fold']}"
        train_fold(ctx, fold, fold_dir, classes, first.feature_dim, encoder)
        outputs += [fold_dir / n for n in ("model.safetensors", "model.json", "history.csv",
                                           "embeddings.npz")]

    from .provenance import write_record

    write_record(out_dir, command=command, config=cfg,
                 inputs=[Path(manifest), *map(Path, config_files),
                         *(info.path for info in infos.values())],
                 outputs=outputs, seeds={"seed": cfg["seed"]})
    return out_dir


FEATURE_SETTING_KEYS = ("encoder", "weights_sha256", "random_weights", "input_mpp", "tile_size",
                        "preprocessing", "tiling")


def feature_settings(infos: dict[str, BagInfo]) -> dict:
    """How the run's feature files were made (``RUN/features.json``, what ``predict``
    reproduces): their root attributes :data:`FEATURE_SETTING_KEYS` (null where a file has
    none, e.g. CLAM's), which must agree across slides — except ``input_mpp``, which varies
    with each slide's scanner within the tiling's level tolerance (recorded as the median and
    ``input_mpp_range``), and the ``resize`` entry of ``preprocessing``, which depends on
    whether a slide had a pyramid level at the target µm/px. :class:`InputError` lists the
    slides of every disagreeing setting."""
    per_slide = {sid: _feature_attrs(info.path) for sid, info in infos.items()}
    problems = []
    for key in (k for k in FEATURE_SETTING_KEYS if k != "input_mpp"):
        groups: dict[str, list[str]] = {}
        for sid, attrs in per_slide.items():
            groups.setdefault(json.dumps(attrs[key], sort_keys=True), []).append(sid)
        if len(groups) > 1:
            problems.append(f"{key}: " + "; ".join(
                f"{value} ({', '.join(sids[:5])}{' …' if len(sids) > 5 else ''})"
                for value, sids in groups.items()))
    first = next(iter(per_slide.values()))
    mpps = {sid: a["input_mpp"] for sid, a in per_slide.items()}
    known = [m for m in mpps.values() if m is not None]
    tiling = first["tiling"] or {}
    if known:
        target = tiling.get("target_mpp") or float(np.median(known))
        tolerance = tiling.get("level_tolerance", 0.05)
        off = [sid for sid, m in mpps.items()
               if m is None or abs(m - target) > tolerance * target + 1e-9]
        if off:
            problems.append(f"input_mpp: {len(off)} slide(s) not within {tolerance:.0%} of "
                            f"{target:g} µm/px ({', '.join(off[:5])})")
    if problems:
        raise InputError(f"feature files disagree on how they were made: {' | '.join(problems)}")
    return {**first, "input_mpp": float(np.median(known)) if known else None,
            "input_mpp_range": [min(known), max(known)] if known else None,
            "n_slides": len(per_slide)}


def _feature_attrs(path: Path) -> dict:
    """The :data:`FEATURE_SETTING_KEYS` root attributes of one feature file as plain values
    (JSON attributes parsed; ``preprocessing`` without ``resize``; None when absent, and
    ``input_mpp`` None when not positive — extract's mark for tiles of unknown µm/px)."""
    import h5py

    with h5py.File(path, "r") as f:
        raw = {k: f.attrs.get(k) for k in FEATURE_SETTING_KEYS}
    out = {}
    for key, value in raw.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        if key in ("preprocessing", "tiling") and isinstance(value, str):
            value = json.loads(value)
        out[key] = value
    if isinstance(out["preprocessing"], dict):
        out["preprocessing"].pop("resize", None)
    if out["input_mpp"] is not None and out["input_mpp"] <= 0:
        out["input_mpp"] = None
    return out


def map_labels(df: pd.DataFrame, task: dict) -> tuple[list[str], np.ndarray, list[str]]:
    """Class names, class index per manifest row (−1 when unknown) and one problem line per
    slide whose label maps to no class (or per label_map entry naming an unknown class)."""
    label_map = {str(k): str(v) for k, v in task["label_map"].items()}
    mapped = df[task["label_column"]].str.strip().map(lambda r: label_map.get(r, r))
    classes = ([str(c) for c in task["classes"]] if task["classes"] is not None
               else sorted(c for c in mapped.unique() if c))
    index = {c: i for i, c in enumerate(classes)}
    problems = [f"task.label_map: {raw!r} maps to unknown class {cls!r}"
                for raw, cls in label_map.items() if cls not in index]
    y = mapped.map(lambda c: index.get(c, -1)).to_numpy(dtype=np.int64)
    raw = df[task["label_column"]]
    problems += [f"slide {sid}: unknown label {lab!r}"
                 for sid, lab, yi in zip(df["slide_id"], raw, y, strict=True) if yi < 0]
    return classes, y, problems


def resolved_loss_section(cfg: dict, n_classes: int) -> dict:
    """``{"name": ..., name: settings}`` with every default, checked by building the loss."""
    name = cfg["loss"]["name"]
    loss = get_loss(name, n_classes, cfg["model"]["embed_dim"], **loss_settings(cfg))
    if name in PAIRED_LOSSES and cfg["optim"]["batch_size"] < 2:
        raise InputError(f"optim.batch_size must be ≥ 2 for the {name} loss "
                         f"({PAIRED_LOSSES[name]})")
    return {"name": name, name: loss.settings()}


def feature_dim_problems(infos: dict) -> list[str]:
    """One line per slide whose feature size differs from the most common one."""
    dims = pd.Series({sid: info.feature_dim for sid, info in infos.items()}, dtype=object)
    if dims.empty:
        return []
    common = dims.value_counts().index[0]
    return [f"slide {sid}: features have D = {d}, most slides have D = {common}"
            for sid, d in dims.items() if d != common]


def load_or_make_splits(path: Path, df: pd.DataFrame, y: np.ndarray, cfg: dict) -> dict:
    """Reuse ``path`` when it exists, else make splits; validate either against ``df``."""
    if path.is_file():
        try:
            splits = json.loads(path.read_text())
        except ValueError:
            raise InputError(f"{path}: not valid JSON") from None
        source = str(path)
    else:
        splits = make_splits(df, y, cfg["split"], cfg["seed"])
        source = "new splits"
    validate_splits(splits, df, cfg["split"]["method"], source)
    return splits


def absent_class_problems(splits: dict, y: dict[str, int], classes: list[str]) -> list[str]:
    """One line per fold whose training part lacks a class."""
    problems = []
    for fold in splits["folds"]:
        present = {y[sid] for sid in fold["train"]}
        absent = [c for i, c in enumerate(classes) if i not in present]
        if absent:
            problems.append(f"fold {fold['fold']}: class(es) {', '.join(absent)} absent from "
                            "the training split")
    return problems


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_meta(cfg: dict, classes: list[str], feature_dim: int, encoder: str, fold: int
               ) -> dict:
    """``model.json`` contents known before training."""
    name = cfg["loss"]["name"]
    settings = cfg["loss"][name]
    return {
        "schema_version": MODEL_SCHEMA_VERSION, "fold": fold, "classes": classes,
        "loss": name, "loss_settings": settings, "aggregator": "gated_abmil",
        "feature_dim": feature_dim, "embed_dim": cfg["model"]["embed_dim"],
        "attn_dim": cfg["model"]["attn_dim"], "dropout": cfg["model"]["dropout"],
        "encoder": encoder, "centroid_mode": settings.get("centroid_mode"),
        "centroid_map": settings.get("centroid_map"),
        "temperature": settings.get("temperature"),
    }


def make_optimizer(optim: dict, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW or SGD (with momentum) over ``params``, as ``optim`` says."""
    if optim["name"] == "adamw":
        return torch.optim.AdamW(params, lr=optim["lr"], weight_decay=optim["weight_decay"])
    return torch.optim.SGD(params, lr=optim["lr"], momentum=optim["momentum"],
                           weight_decay=optim["weight_decay"])


def lr_factor(optim: dict, epoch: int) -> float:
    """Learning-rate multiplier of 0-based ``epoch``: cosine from 1 towards ``min_lr_ratio``
    over ``epochs``, or 1."""
    if optim["schedule"] == "constant":
        return 1.0
    low = optim["min_lr_ratio"]
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * epoch / optim["epochs"]))


def epoch_order(train_ids: list[str], y: np.ndarray, balanced: bool,
                rng: np.random.Generator) -> list[str]:
    """The epoch's slide order: a permutation, or as many draws with replacement with class
    probabilities equalised (each slide weighted by 1 / its class's count)."""
    if not balanced:
        return [train_ids[i] for i in rng.permutation(len(train_ids))]
    counts = np.bincount(y)
    weights = 1.0 / counts[y]
    picks = rng.choice(len(train_ids), size=len(train_ids), replace=True,
                       p=weights / weights.sum())
    return [train_ids[i] for i in picks]


def train_epoch(model: SlideModel, optimizer: torch.optim.Optimizer, ctx: FoldContext,
                order: list[str], rng: np.random.Generator, q_steps: bool) -> dict[str, float]:
    """One pass of θ-steps (and q-steps when ``q_steps``) over the slides in ``order``.

    Returns batch-size-weighted means of the loss (``train_loss``), its terms
    (``train_<term>``) and ‖z‖ (``z_norm``), and the mean embedding (``z_mean``, an m-vector
    as a tensor).
    """
    optim, device = ctx.cfg["optim"], ctx.device
    plans = plan_batches(ctx.source, order, optim["batch_size"], optim["max_tiles"], rng)
    theta = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    keys: list[str] = []
    sums: torch.Tensor | float = 0.0  # per-step numbers stay on the device until the end
    z_sum: torch.Tensor | float = 0.0
    n = 0
    for batch in iter_batches(ctx.source, plans, ctx.cfg["data"]["prefetch"]):
        y = torch.tensor([ctx.labels[s] for s in batch.slide_ids], device=device)
        z, _ = model(batch.x.to(device).float(), batch.mask.to(device))
        out = model.head.compute(z, y)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if optim["grad_clip"] is not None:
            torch.nn.utils.clip_grad_norm_(theta, optim["grad_clip"])
        optimizer.step()
        if q_steps:
            model.head.centroid_step()
        keys = ["train_loss", *(f"train_{k}" for k in out.terms), "z_norm"]
        zd = z.detach()
        sums = sums + torch.stack([out.loss.detach(), *out.terms.values(),
                                   zd.norm(dim=1).mean()]) * len(y)
        z_sum = z_sum + zd.sum(0)
        n += len(y)
    stats = dict(zip(keys, (sums / n).tolist(), strict=True))
    stats["z_mean"] = z_sum / n
    return stats


def predict_ids(model: SlideModel, ctx: FoldContext, ids: list[str]) -> dict:
    """Eval-mode outputs (see :func:`forward_batches`) of all tiles of ``ids``' bags."""
    plans = plan_batches(ctx.source, ids, ctx.cfg["data"]["eval_batch_size"])
    return forward_batches(model, iter_batches(ctx.source, plans, ctx.cfg["data"]["prefetch"]),
                           ctx.device)


def class_means(p: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(C×k) mean output per class (float64); a class without samples gets NaN."""
    means = np.full((n_classes, p.shape[1]), np.nan)
    for c in range(n_classes):
        if (y == c).any():
            means[c] = p[y == c].astype(np.float64).mean(0)
    return means


def centroid_head_scores(p: np.ndarray, means: np.ndarray) -> np.ndarray:
    """(n×C) softmax over classes of −KL(p_i ‖ s_c), for outputs p (n×k) and means s (C×k)."""
    log_p = np.log(np.clip(p.astype(np.float64), 1e-12, None))
    log_s = np.log(np.clip(means, 1e-12, None))
    kl = (np.exp(log_p) * log_p).sum(1, keepdims=True) - np.exp(log_p) @ log_s.T
    scores = np.exp(-(kl - kl.min(1, keepdims=True)))
    return scores / scores.sum(1, keepdims=True)


def validation_metrics(out: dict, y: np.ndarray, means: np.ndarray, n_classes: int
                       ) -> tuple[float, float]:
    """Macro-F1 and one-vs-rest macro AUC (NaN when a class is absent) on validation outputs:
    from the loss's classifier when it has one, else from the centroid head."""
    if len(y) == 0:
        return float("nan"), float("nan")
    scores = (torch.softmax(torch.from_numpy(out["logits"]).double(), 1).numpy()
              if out["logits"] is not None else centroid_head_scores(out["p"], means))
    f1 = f1_score(y, scores.argmax(1), labels=list(range(n_classes)), average="macro",
                  zero_division=0)
    if len(np.unique(y)) < n_classes:
        return float(f1), float("nan")
    auc = (roc_auc_score(y, scores[:, 1]) if n_classes == 2 else
           roc_auc_score(y, scores, multi_class="ovr", average="macro",
                         labels=list(range(n_classes))))
    return float(f1), float(auc)


def centroid_shift(now: torch.Tensor | None, start: torch.Tensor | None) -> float:
    """Mean over classes of ½‖q_c − q_c⁰‖₁; NaN when either is unknown."""
    if now is None or start is None:
        return float("nan")
    return float(0.5 * (now - start).abs().sum(1).mean())


def train_fold(ctx: FoldContext, fold: dict, fold_dir: Path, classes: list[str],
               feature_dim: int, encoder: str) -> dict:
    """Train one fold and write its folder; return its ``model.json`` contents."""
    cfg, optim = ctx.cfg, ctx.cfg["optim"]
    seeds = np.random.SeedSequence([cfg["seed"], fold["fold"]])
    torch.manual_seed(int(seeds.generate_state(1)[0]))
    rng = np.random.default_rng(seeds)
    meta = model_meta(cfg, classes, feature_dim, encoder, fold["fold"])
    model = build_model(meta).to(ctx.device)
    head = model.head
    centroid_ids = {id(p) for p in head.centroid_parameters()}
    optimizer = make_optimizer(optim, [p for p in model.parameters()
                                       if p.requires_grad and id(p) not in centroid_ids])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(optim, e))
    warmup_epochs = math.ceil(head.centroid_warmup * optim["epochs"])
    data_init_epoch = max(1, warmup_epochs) if head.wants_data_centroids() else None
    train_ids, val_ids = fold["train"], fold["val"]
    y_train = np.array([ctx.labels[s] for s in train_ids])
    y_val = np.array([ctx.labels[s] for s in val_ids], dtype=np.int64)

    history: list[dict] = []
    q_start = head.centroids()
    best: dict = {}
    stale = 0
    for epoch in range(optim["epochs"]):
        t0 = time.perf_counter()
        if epoch == data_init_epoch:
            p_train = predict_ids(model, ctx, train_ids)["p"]
            means = class_means(p_train, y_train, ctx.n_classes)
            head.set_centroids(torch.from_numpy(means).to(ctx.device))
            q_start = head.centroids()
        lr = optimizer.param_groups[0]["lr"]
        order = epoch_order(train_ids, y_train, optim["balanced_sampling"], rng)
        stats = train_epoch(model, optimizer, ctx, order, rng,
                            q_steps=bool(centroid_ids) and epoch >= warmup_epochs)
        scheduler.step()
        if not math.isfinite(stats["train_loss"]):
            raise InputError(f"fold {fold['fold']}, epoch {epoch + 1}: the training loss "
                             "became NaN/inf (lower optim.lr or set optim.grad_clip)")
        if q_start is None:
            q_start = head.centroids()
        train_out = predict_ids(model, ctx, train_ids)
        means = class_means(train_out["p"], y_train, ctx.n_classes)
        f1, auc = validation_metrics(predict_ids(model, ctx, val_ids), y_val, means,
                                     ctx.n_classes)
        mu = getattr(head, "mu", None)
        row = {
            "epoch": epoch + 1,
            **{k: v for k, v in stats.items() if k != "z_mean"},
            **ncmi_measure(train_out["p"], y_train, ctx.n_classes),
            "centre_gap": (float((stats["z_mean"] - mu).norm()) if mu is not None
                           else float("nan")),
            "centroid_shift": centroid_shift(head.centroids(), q_start),
            "val_macro_f1": f1, "val_auc": auc, "lr": lr,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        log.info("fold %s epoch %d/%d: train loss %.4f, NCMI %.4f, val macro-F1 %.3f (%.1f s)",
                 fold["fold"], epoch + 1, optim["epochs"], row["train_loss"], row["ncmi"], f1,
                 row["seconds"])
        if not val_ids or not best or f1 >= best["f1"]:
            best = {"f1": f1, "epoch": epoch + 1,
                    "state": copy.deepcopy(model.state_dict()), "means": means}
            stale = 0
        else:
            stale += 1
            if stale >= optim["patience"]:
                break

    model.load_state_dict(best["state"])
    meta.update(best_epoch=best["epoch"], best_val_macro_f1=best["f1"],
                epochs_run=len(history),
                validation_head="classifier" if train_out["logits"] is not None else "centroid",
                centroid_head_means=best["means"].tolist())
    write_fold(fold_dir, model, meta, history,
               predict_ids(model, ctx, train_ids + val_ids + fold["test"]))
    return meta


def write_fold(fold_dir: Path, model: SlideModel, meta: dict, history: list[dict],
               out: dict) -> None:
    """Write a fold's weights, description, history and embeddings atomically."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(fold_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(fold_dir / "model.json", meta)
    with atomic_path(fold_dir / "history.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        for row in history:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v
                             for k, v in row.items()})
    arrays = {"slide_id": np.array(out["slide_id"]), "z": out["z"], "p": out["p"]}
    arrays.update({k: out[k] for k in ("z_tilde", "logits") if out[k] is not None})
    with atomic_path(fold_dir / "embeddings.npz") as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)


def _write_yaml(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))
