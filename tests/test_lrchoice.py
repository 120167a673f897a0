"""``optim.lr: auto``: one training per lr of the grid, the best on validation kept, ties to
the loss's default lr, diverged lrs left out; for real, the kept run equals ``train`` at that
lr alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from test_train import FAST, write_cohort

from wsi_ncmi.formats.config import resolve_config
from wsi_ncmi.model.fit import FoldContext, TrainedFold, TrainingDiverged
from wsi_ncmi.model.lrchoice import fit_fold
from wsi_ncmi.stages.train import train_run

FOLD = {"fold": 0, "train": ["a", "b"], "val": ["c"], "test": ["d"]}


def stand_in(val_f1: dict[float, float | None]):
    """A one-lr trainer whose kept checkpoint scores ``val_f1[lr]`` (None: diverges); it
    records the lrs it was called with."""
    calls: list[float] = []

    def train(ctx, fold, classes, feature_dim, encoder):
        lr = ctx.cfg["optim"]["lr"]
        calls.append(lr)
        if val_f1[lr] is None:
            raise TrainingDiverged(f"lr {lr}: the training loss became NaN/inf")
        return TrainedFold(model=None, meta={"best_val_macro_f1": val_f1[lr], "best_epoch": 3,
                                             "epochs_run": 9}, history=[], embeddings={})
    return train, calls


def context(loss: str, **optim) -> FoldContext:
    cfg = resolve_config({"loss": {"name": loss}, "optim": optim})
    return FoldContext(cfg=cfg, source=None, labels={}, n_classes=2, device=None)


def fit(ctx: FoldContext, scores: dict, fold: dict = FOLD) -> tuple[TrainedFold, list[float]]:
    train, calls = stand_in(scores)
    return fit_fold(ctx, fold, ["x", "y"], 4, "toy", train=train), calls


def test_auto_keeps_the_lr_best_on_validation_and_records_every_lr():
    trained, calls = fit(context("ce"), {3e-4: 0.55, 1e-3: 0.60, 3e-3: 0.81, 1e-2: 0.74,
                                       2e-2: 0.70})
    assert calls == [3e-4, 1e-3, 3e-3, 1e-2, 2e-2]
    assert trained.meta["lr"] == 3e-3 and trained.meta["best_val_macro_f1"] == 0.81
    assert [(r["lr"], r["best_val_macro_f1"]) for r in trained.meta["lr_search"]] == [
        (3e-4, 0.55), (1e-3, 0.60), (3e-3, 0.81), (1e-2, 0.74), (2e-2, 0.70)]


@pytest.mark.parametrize(("loss", "scores", "kept"), [
    # tie: the loss's LOSS_LR
    ("ncmi", {3e-4: 0.7, 1e-3: 0.7, 3e-3: 0.7, 1e-2: 0.7, 2e-2: 0.7}, 1e-2),
    ("opl", {3e-4: 0.5, 1e-3: 0.5, 3e-3: 0.8, 1e-2: 0.8, 2e-2: 0.8}, 3e-3),
    # the default lr not tied: the smallest
    ("ce", {3e-4: 0.5, 1e-3: 0.5, 3e-3: 0.8, 1e-2: 0.8, 2e-2: 0.8}, 3e-3),
    ("ce", {3e-4: 0.8, 1e-3: 0.5, 3e-3: 0.8, 1e-2: 0.6, 2e-2: 0.6}, 3e-4),
])
def test_exact_ties_go_to_the_losses_default_lr_else_the_smallest(loss, scores, kept):
    assert fit(context(loss), scores)[0].meta["lr"] == kept


def test_a_diverged_lr_is_left_out_and_all_diverged_fails():
    trained, _ = fit(context("ce"), {3e-4: 0.3, 1e-3: 0.4, 3e-3: 0.5, 1e-2: None, 2e-2: 0.45})
    assert trained.meta["lr"] == 3e-3
    assert "diverged" in trained.meta["lr_search"][3]
    with pytest.raises(TrainingDiverged, match="every lr of optim.lr_grid"):
        fit(context("ce"), {3e-4: None, 1e-3: None, 3e-3: None, 1e-2: None, 2e-2: None})


def test_one_lr_trains_once_and_no_validation_falls_back_to_the_default(caplog):
    trained, calls = fit(context("ce", lr=5e-4), {5e-4: 0.5})
    assert calls == [5e-4] and trained.meta["lr"] == 5e-4 and trained.meta["lr_search"] is None
    with caplog.at_level("WARNING", logger="wsi_ncmi"):
        trained, calls = fit(context("squentropy"), {3e-3: 0.5}, {**FOLD, "val": []})
    assert calls == [3e-3] and trained.meta["lr"] == 3e-3
    assert "no validation slides to choose the lr on" in caplog.text


def test_grid_order_does_not_matter():
    _, calls = fit(context("ce", lr_grid=[1e-2, 1e-3]), {1e-3: 0.5, 1e-2: 0.6})
    assert calls == [1e-3, 1e-2]


def test_auto_for_real_keeps_the_run_train_makes_at_that_lr(tmp_path):
    manifest = write_cohort(tmp_path / "cohort", per_class=12)
    cfg = {**FAST, "optim": {**FAST["optim"], "epochs": 6, "lr": "auto",
                             "lr_grid": [1e-3, 1e-2]}, "loss": {"name": "ce"}}
    auto = train_run(cfg, tmp_path / "auto", tmp_path / "cohort" / "features", manifest)
    meta = json.loads((auto / "fold_0" / "model.json").read_text())
    assert [r["lr"] for r in meta["lr_search"]] == [1e-3, 1e-2]
    best = max(r["best_val_macro_f1"] for r in meta["lr_search"])
    assert meta["best_val_macro_f1"] == best and meta["lr"] in (1e-3, 1e-2)
    single = train_run({**cfg, "optim": {**cfg["optim"], "lr": meta["lr"]}}, tmp_path / "one",
                       tmp_path / "cohort" / "features", manifest)
    one = json.loads((single / "fold_0" / "model.json").read_text())
    assert one["lr_search"] is None and one["best_epoch"] == meta["best_epoch"]
    a, b = (load_file(r / "fold_0" / "model.safetensors") for r in (auto, single))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    history = (auto / "fold_0" / "history.csv").read_text().splitlines()
    assert all(f",{meta['lr']}," in row for row in history[1:2])  # epoch 1 ran at the kept lr
