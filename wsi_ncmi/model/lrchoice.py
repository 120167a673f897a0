"""The learning rate of a fold: one given, or the best of a grid on the validation slides.

With ``optim.lr: auto`` (the default) :func:`fit_fold` trains the fold once per lr of
``optim.lr_grid`` (3e-4, 1e-3, 3e-3, 1e-2, 2e-2), each run the same as ``train`` at that lr
alone (same seeds, same early stopping), and keeps the run whose kept checkpoint has the highest
validation macro-F1. Exact ties go to the loss's single default lr
(:data:`~wsi_ncmi.formats.config.LOSS_LR`) when it is among them, else to the smallest lr. A
run whose loss diverges (NaN/inf) is left out; when every lr diverges the fold fails. A fold
without validation slides cannot choose: it trains at the loss's default lr and says so.

Why: no single lr per loss serves every cohort. On the defaults study's five cohorts the
losses on logits want 1e-2 on 7 classes and collapse there on rare witnesses
(docs/training.md, "The learning rate"); choosing per fold on validation costs
``len(lr_grid)`` trainings and no test data.

``model.json`` gets ``lr`` (the lr kept) and ``lr_search`` (one record per lr tried: ``lr``,
``best_val_macro_f1``, ``best_epoch``, ``epochs_run``, or ``diverged``; null when one lr was
given). ``history.csv`` is the kept run's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from ..formats.config import AUTO_LR, default_lr
from .fit import FoldContext, TrainedFold, TrainingDiverged, train_fold

log = logging.getLogger("wsi_ncmi")


def fit_fold(ctx: FoldContext, fold: dict, classes: list[str], feature_dim: int,
             encoder: str, train: Callable[..., TrainedFold] = train_fold) -> TrainedFold:
    """Train one fold (``fold``: a splits record entry) at ``optim.lr``, or at each lr of
    ``optim.lr_grid`` when it is ``auto`` keeping the best on validation (module docstring).
    ``train``: the one-lr trainer (:func:`~.fit.train_fold`; tests pass a stand-in)."""
    optim = ctx.cfg["optim"]
    if optim["lr"] != AUTO_LR:
        return _at_lr(ctx, fold, classes, feature_dim, encoder, optim["lr"], train)
    preferred = default_lr(ctx.cfg["loss"]["name"])
    if not fold["val"]:
        log.warning("fold %s: no validation slides to choose the lr on; training at the "
                    "loss's default lr %g", fold["fold"], preferred)
        return _at_lr(ctx, fold, classes, feature_dim, encoder, preferred, train)
    best: TrainedFold | None = None
    records = []
    for lr in sorted(optim["lr_grid"]):
        try:
            trained = _at_lr(ctx, fold, classes, feature_dim, encoder, lr, train)
        except TrainingDiverged as exc:
            log.warning("fold %s, lr %g: %s; left out of the lr choice", fold["fold"], lr, exc)
            records.append({"lr": lr, "diverged": str(exc)})
            continue
        records.append({"lr": lr, **{k: trained.meta[k] for k in
                                     ("best_val_macro_f1", "best_epoch", "epochs_run")}})
        if best is None or _better(trained, best, preferred):
            best = trained
    if best is None:
        raise TrainingDiverged(f"fold {fold['fold']}: the training loss became NaN/inf at "
                               f"every lr of optim.lr_grid ({records[-1]['diverged']})")
    best.meta["lr_search"] = records
    log.info("fold %s: lr %g kept (validation macro-F1 %s)", fold["fold"], best.meta["lr"],
             ", ".join(f"{r['lr']:g}: " + (f"{r['best_val_macro_f1']:.3f}"
                                           if "diverged" not in r else "diverged")
                       for r in records))
    return best


def _at_lr(ctx: FoldContext, fold: dict, classes: list[str], feature_dim: int, encoder: str,
           lr: float, train: Callable[..., TrainedFold]) -> TrainedFold:
    """The fold trained at ``lr``, its ``model.json`` saying so."""
    cfg = {**ctx.cfg, "optim": {**ctx.cfg["optim"], "lr": lr}}
    trained = train(replace(ctx, cfg=cfg), fold, classes, feature_dim, encoder)
    trained.meta.update(lr=lr, lr_search=None)
    return trained


def _better(new: TrainedFold, old: TrainedFold, preferred: float) -> bool:
    """Whether ``new`` beats ``old`` (trained at a larger lr): a higher validation macro-F1,
    or an equal one at the preferred lr."""
    f_new, f_old = new.meta["best_val_macro_f1"], old.meta["best_val_macro_f1"]
    return f_new > f_old or (f_new == f_old and new.meta["lr"] == preferred)
