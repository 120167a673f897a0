"""The ``train`` stage: gated attention-MIL with a chosen loss, per fold, into a run folder.

:func:`train_run` checks everything before training (labels, feature files, the features'
settings, splits) and lists every offending slide in one :class:`InputError`, then trains every
fold (:mod:`wsi_ncmi.model.fit`; with ``optim.lr: auto``, once per lr of ``optim.lr_grid``,
keeping the best on validation: :mod:`wsi_ncmi.model.lrchoice`) and writes the run folder
(:mod:`wsi_ncmi.formats.runfolder`): ``config.yaml``, ``splits.json``, ``features.json``,
``provenance.json`` and per fold ``model.safetensors``, ``model.json``, ``history.csv``,
``embeddings.npz``.

``model.json``: ``classes``, ``loss``, ``loss_settings`` (all of them), ``feature_dim`` (D),
``embed_dim`` (m), ``attn_dim``, ``dropout``, ``encoder``, ``centroid_mode``, ``centroid_map``,
``temperature`` (NCMI, SupCon; null otherwise), ``lr`` (the network lr trained with),
``lr_search`` (per lr tried by ``lr: auto``: its ``best_val_macro_f1``, ``best_epoch``,
``epochs_run``; null for one lr), ``best_epoch``, ``best_val_macro_f1``, ``epochs_run``,
``validation_head`` and ``centroid_head_means`` (C×k class means of p over the fold's training
bags with the saved weights). ``embeddings.npz``: ``slide_id``, ``z`` (n×m), ``p`` (n×k), plus
``z_tilde`` (NCMI) or ``logits`` (losses with a classifier), for every slide of the fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..formats.config import loss_settings, resolve_config, split_seed
from ..formats.featurefile import feature_settings, read_encoder_name
from ..formats.labels import map_labels
from ..formats.manifests import load_manifest
from ..formats.runfolder import SPLITS, fold_dir, read_splits, write_fold, write_run_files
from ..model.bags import open_bags
from ..model.device import select_device
from ..model.fit import FoldContext
from ..model.inference import check_bags
from ..model.losses import get_loss, loss_names
from ..model.lrchoice import fit_fold
from ..stats.splits import make_splits, validate_splits
from .provenance import write_record

#: losses that learn nothing from one bag per step, and why
PAIRED_LOSSES = {"ncmi": "the first batch sets the centre μ",
                 "supcon": "it contrasts bags of one batch with each other"}


def train_run(config: dict, out_dir: Path, features_dir: Path, manifest: Path, *,
              config_files: Sequence[Path] = (), command: str = "train") -> Path:
    """Train every fold of a run; return ``out_dir``.

    ``config``: raw (merged) config, defaults and validation are applied here;
    ``features_dir``: folder of ``<slide_id>.h5`` feature files (one encoder);
    ``manifest``: CSV with ``slide_id``, ``patient_id`` and the task's label column;
    ``config_files``: the YAML files ``config`` came from (recorded as inputs).
    """
    cfg = resolve_config(config, loss_names())
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
        splits = load_or_make_splits(out_dir, df, y, cfg)
        problems += absent_class_problems(splits, dict(zip(df["slide_id"], y, strict=True)),
                                          classes)
    if problems:
        raise InputError(f"{len(problems)} problem(s) before training: {'; '.join(problems)}")

    settings = feature_settings({sid: info.path for sid, info in infos.items()})
    outputs = write_run_files(out_dir, cfg, splits, settings)
    first = next(iter(infos.values()))
    encoder = read_encoder_name(first.path) or features_dir.name
    ctx = FoldContext(cfg=cfg, source=open_bags(infos, cfg["data"]["cache_max_gb"]),
                      labels=dict(zip(df["slide_id"], y.tolist(), strict=True)),
                      n_classes=len(classes), device=select_device(cfg["device"]))
    for fold in splits["folds"]:
        trained = fit_fold(ctx, fold, classes, first.feature_dim, encoder)
        state = {k: v.detach().cpu().contiguous() for k, v in trained.model.state_dict().items()}
        outputs += write_fold(fold_dir(out_dir, fold["fold"]), state, trained.meta,
                              trained.history, trained.embeddings)
    write_record(out_dir, command=command, config=cfg, scope=out_dir,
                 inputs=[Path(manifest), *map(Path, config_files),
                         *(info.path for info in infos.values())],
                 outputs=outputs, seeds={"seed": cfg["seed"], "split": split_seed(cfg)})
    return out_dir


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


def load_or_make_splits(run_dir: Path, df: pd.DataFrame, y: np.ndarray, cfg: dict) -> dict:
    """Reuse the run's ``splits.json`` when it exists, else make splits; validate either
    against ``df``."""
    path = Path(run_dir) / SPLITS
    if path.is_file():
        splits = read_splits(run_dir)
        source = str(path)
    else:
        splits = make_splits(df, y, cfg["split"], split_seed(cfg))
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
