"""Training one fold: the θ-step/q-step loop, validation, early stopping, the best checkpoint.

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

History (one row per epoch): ``epoch``; ``train_loss`` and ``train_<term>`` (the loss's terms,
means over the epoch's training steps); ``cmi``, ``gamma``, ``ncmi``
(:func:`~wsi_ncmi.stats.simplex.ncmi_measure` of the training bags' eval-mode outputs);
``z_norm`` (mean ‖z‖ over the epoch's training steps); ``centre_gap`` (‖mean z − μ‖ at the end
of the epoch, NCMI only); ``centroid_shift`` (mean over classes of the total-variation distance
½‖q_c − q_c⁰‖₁ between the centroids now and when they were initialised — NCMI — or at the end
of the first epoch — ``cmi_ce``; NaN for other losses); ``val_macro_f1``, ``val_auc``
(one-vs-rest macro AUC; NaN when a class is missing from validation); ``lr`` (network learning
rate used in the epoch); ``seconds`` (wall time of the epoch).

Per-epoch hook: :func:`train_fold` calls ``on_epoch(row)`` with each history row as soon as the
epoch is validated (``wsi-ncmi tune`` reports ``val_macro_f1`` to its pruner this way). The
hook may raise to stop the fold; the exception propagates out of :func:`train_fold`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score

from ..errors import InputError
from ..stats.simplex import centroid_scores, class_means, ncmi_measure, softmax
from .bags import BagSource, iter_batches, plan_batches
from .inference import forward_bags
from .slidemodel import SlideModel, build_model

MODEL_SCHEMA_VERSION = 1
log = logging.getLogger("wsi_ncmi")


class TrainingDiverged(InputError):
    """The training loss became NaN or inf (a setting such as the learning rate is too
    high for these data)."""


@dataclass
class TrainedFold:
    """A trained fold: the best checkpoint's ``model`` (eval mode), ``meta`` (``model.json``),
    ``history`` (one dict per epoch) and ``embeddings`` (``embeddings.npz`` arrays)."""

    model: SlideModel
    meta: dict
    history: list[dict]
    embeddings: dict[str, np.ndarray]


@dataclass
class FoldContext:
    """What every epoch of one fold needs."""

    cfg: dict
    source: BagSource
    labels: dict[str, int]
    n_classes: int
    device: torch.device


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
    """Eval-mode outputs (see :func:`~.inference.forward_bags`) of all tiles of ``ids``'
    bags, in the order of ``ids``."""
    return forward_bags(model, ctx.source, ids, ctx.cfg["data"]["eval_batch_size"], ctx.device,
                        ctx.cfg["data"]["prefetch"])


def validation_metrics(out: dict, y: np.ndarray, means: np.ndarray, n_classes: int
                       ) -> tuple[float, float]:
    """Macro-F1 and one-vs-rest macro AUC (NaN when a class is absent) on validation outputs:
    from the loss's classifier when it has one, else from the centroid head."""
    if len(y) == 0:
        return float("nan"), float("nan")
    scores = (softmax(out["logits"]) if out["logits"] is not None
              else centroid_scores(out["p"], means))
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


def train_fold(ctx: FoldContext, fold: dict, classes: list[str], feature_dim: int,
               encoder: str, on_epoch: Callable[[dict], None] | None = None) -> TrainedFold:
    """Train one fold (``fold``: a splits record entry) and return the best checkpoint's
    model, ``model.json`` contents, history and embeddings. ``on_epoch``: called with each
    epoch's history row after validation (module docstring); :class:`TrainingDiverged` when
    the loss becomes NaN/inf."""
    cfg, optim = ctx.cfg, ctx.cfg["optim"]
    seeds = np.random.SeedSequence([cfg["seed"], fold["fold"]])
    torch.manual_seed(int(seeds.generate_state(1)[0]))
    rng = np.random.default_rng(seeds)
    meta = model_meta(cfg, classes, feature_dim, encoder, fold["fold"])
    model = build_model(meta).to(ctx.device)
    loss_head = model.head
    centroid_ids = {id(p) for p in loss_head.centroid_parameters()}
    optimizer = make_optimizer(optim, [p for p in model.parameters()
                                       if p.requires_grad and id(p) not in centroid_ids])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(optim, e))
    warmup_epochs = math.ceil(loss_head.centroid_warmup * optim["epochs"])
    data_init_epoch = max(1, warmup_epochs) if loss_head.wants_data_centroids() else None
    train_ids, val_ids = fold["train"], fold["val"]
    y_train = np.array([ctx.labels[s] for s in train_ids])
    y_val = np.array([ctx.labels[s] for s in val_ids], dtype=np.int64)

    history: list[dict] = []
    q_start = loss_head.centroids()
    best: dict = {}
    stale = 0
    for epoch in range(optim["epochs"]):
        t0 = time.perf_counter()
        if epoch == data_init_epoch:
            p_train = predict_ids(model, ctx, train_ids)["p"]
            means = class_means(p_train, y_train, ctx.n_classes)
            loss_head.set_centroids(torch.from_numpy(means).to(ctx.device))
            q_start = loss_head.centroids()
        lr = optimizer.param_groups[0]["lr"]
        order = epoch_order(train_ids, y_train, optim["balanced_sampling"], rng)
        stats = train_epoch(model, optimizer, ctx, order, rng,
                            q_steps=bool(centroid_ids) and epoch >= warmup_epochs)
        scheduler.step()
        if not math.isfinite(stats["train_loss"]):
            raise TrainingDiverged(f"fold {fold['fold']}, epoch {epoch + 1}: the training "
                                   "loss became NaN/inf (lower optim.lr or set "
                                   "optim.grad_clip)")
        if q_start is None:
            q_start = loss_head.centroids()
        train_out = predict_ids(model, ctx, train_ids)
        means = class_means(train_out["p"], y_train, ctx.n_classes)
        f1, auc = validation_metrics(predict_ids(model, ctx, val_ids), y_val, means,
                                     ctx.n_classes)
        mu = getattr(loss_head, "mu", None)
        row = {
            "epoch": epoch + 1,
            **{k: v for k, v in stats.items() if k != "z_mean"},
            **ncmi_measure(train_out["p"], y_train, ctx.n_classes),
            "centre_gap": (float((stats["z_mean"] - mu).norm()) if mu is not None
                           else float("nan")),
            "centroid_shift": centroid_shift(loss_head.centroids(), q_start),
            "val_macro_f1": f1, "val_auc": auc, "lr": lr,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        log.info("fold %s epoch %d/%d: train loss %.4f, NCMI %.4f, val macro-F1 %.3f (%.1f s)",
                 fold["fold"], epoch + 1, optim["epochs"], row["train_loss"], row["ncmi"], f1,
                 row["seconds"])
        if on_epoch is not None:
            on_epoch(row)
        if not val_ids or not best or f1 >= best["f1"]:
            best = {"f1": f1, "epoch": epoch + 1,
                    "state": copy.deepcopy(model.state_dict()), "means": means}
            stale = 0
        else:
            stale += 1
            if stale >= optim["patience"]:
                break

    model.load_state_dict(best["state"])
    log.info("fold %s: kept epoch %d of %d (val macro-F1 %.3f)", fold["fold"], best["epoch"],
             len(history), best["f1"])
    meta.update(best_epoch=best["epoch"], best_val_macro_f1=best["f1"],
                epochs_run=len(history),
                validation_head="classifier" if train_out["logits"] is not None else "centroid",
                centroid_head_means=best["means"].tolist())
    out = predict_ids(model, ctx, train_ids + val_ids + fold["test"])
    embeddings = {"slide_id": np.array(out["slide_id"]), "z": out["z"], "p": out["p"]}
    embeddings.update({k: out[k] for k in ("z_tilde", "logits") if out[k] is not None})
    return TrainedFold(model=model, meta=meta, history=history, embeddings=embeddings)
