"""Training configuration: YAML files deep-merged over defaults, then validated.

Sections (a cohort config holds ``task`` + ``split``; a training config the rest):

- ``task``: ``name``, ``label_column`` (manifest column with the raw label), ``classes`` (class
  order = index order; null → the sorted distinct mapped labels of the manifest), ``label_map``
  (raw label → class; labels not in it must equal a class name).
- ``split``: ``method`` (column | kfold | logo), ``column``, ``k``, ``group_column``,
  ``val_fraction`` (patient share of the training part held out for validation, kfold/logo),
  ``seed`` (the split seed: integer, or null = the run's ``seed``; runs of several training
  seeds share one split seed, so only the training differs between them).
- ``model``: gated attention-MIL sizes: ``embed_dim`` (m), ``attn_dim``, ``dropout``.
- ``loss``: ``name`` plus one optional sub-section per loss holding its settings, e.g.
  ``loss: {name: ncmi, ncmi: {temperature: 0.1}, cmi_ce: {cmi_weight: 0.5}}``; only the chosen
  loss's settings are used, and the resolved config keeps only those, with every default.
- ``optim``: ``name`` (adamw | sgd), ``lr`` (``auto`` = chosen per fold on the validation
  slides from ``lr_grid``, see :mod:`wsi_ncmi.model.lrchoice`; null = the loss's single
  default, :data:`LOSS_LR`; or a number), ``lr_grid`` (the lrs ``auto`` tries),
  ``weight_decay``, ``momentum`` (sgd), ``epochs``, ``batch_size`` (bags per step),
  ``max_tiles`` (tiles per bag in training; null = all), ``balanced_sampling``, ``schedule``
  (cosine | constant), ``min_lr_ratio``, ``patience`` (epochs without a better validation
  macro-F1 before stopping), ``grad_clip`` (max gradient L2 norm or null).
- ``data``: ``cache_max_gb`` (float16 in-memory cache budget, GB), ``prefetch`` (batches read
  ahead when streaming), ``eval_batch_size``; ``features_dir`` and ``manifest`` are recorded
  by ``train`` (the paths it was given), so ``eval`` can find them.
- ``device``: ``auto`` (CUDA when available) | ``cpu`` | ``cuda`` | ``cuda:N``.
- ``seed``: integer.

The training defaults (dropout 0.1, AdamW with the lr of 3e-4, 1e-3, 3e-3, 1e-2 and 2e-2 that
scores best on the fold's validation slides (``lr: auto``) and weight decay 1e-3, 100 epochs
of a cosine schedule with early stopping after 30 epochs without a better validation
macro-F1, 8 bags per step, 512 tiles per bag in training) were chosen on validation splits
against per-cohort tuned recipes (``benchmarks/bench_defaults.py``, docs/training.md); those
of wsi-ncmi ≤ 0.1 (lr 2e-4, 50 epochs, 4096 tiles, no dropout) underfit. A loss may differ
from them in :data:`LOSS_DEFAULTS` (the square loss: dropout 0.4, weight decay 0.025).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError

log = logging.getLogger(__name__)

#: each loss's single default lr (``optim.lr: null``; where ``auto`` breaks exact ties and ``tune``
#: starts): of 3e-4, 1e-3, 3e-3 and 1e-2, the smallest within 0.01 of the best mean
#: validation macro-F1 over the defaults study's five learnable cohorts
#: (``benchmarks/bench_lr.py``, docs/training.md "The learning rate"). At 1e-2 the
#: losses on logits collapse on rare witnesses (focal, 1 witness in 100: 0.532 against 0.934
#: at 1e-3); SupCon collapses at 1e-2 on 7 classes (0.760 → 0.285); NCMI learns fastest at 1e-2;
#: CE's 3e-4 is 0.0098 below its best (1e-3), a tie by the rule.
LOSS_LR: dict[str, float] = {"ce": 3e-4, "focal": 1e-3, "label_smoothing": 1e-3, "square": 1e-3,
                             "cmi_ce": 1e-3, "supcon": 1e-3, "opl": 3e-3, "squentropy": 3e-3,
                             "ncmi": 1e-2}
#: what a loss trains with by default besides the common :data:`DEFAULTS` (a config file or
#: override that sets one of these keys wins): the square loss with dropout 0.4 and weight
#: decay 0.025, which on the defaults study's five learnable cohorts left it no cohort more than
#: 0.03 below its tuned recipe, against one (the 1536-d cohort, by 0.057) with the common
#: settings (docs/training.md, "Re-measured on a fresh machine")
LOSS_DEFAULTS: dict[str, dict] = {
    "square": {"model": {"dropout": 0.4}, "optim": {"weight_decay": 0.025}}}
#: ``optim.lr`` of a loss missing from :data:`LOSS_LR`
FALLBACK_LR = 1e-3
#: ``optim.lr`` meaning "choose from ``optim.lr_grid`` on each fold's validation slides"
AUTO_LR = "auto"
#: the lrs ``optim.lr: auto`` tries (docs/training.md, "The learning rate"; 3e-4 joined
#: 1e-3–1e-2 after the tunes kept lrs below 1e-3 in 22 of 45 cells; 2e-2 joined after fresh
#: tunes of the CE family on 7 classes kept ~2e-2: own-head misses 8 → 3 of 45)
LR_GRID = [3e-4, 1e-3, 3e-3, 1e-2, 2e-2]

DEFAULTS: dict[str, Any] = {
    "task": {"name": None, "label_column": "label", "classes": None, "label_map": {}},
    "split": {"method": "column", "column": "split", "k": 5, "group_column": "group",
              "val_fraction": 0.2, "seed": None},
    "model": {"embed_dim": 128, "attn_dim": 128, "dropout": 0.1},
    "loss": {"name": "ncmi"},
    "optim": {"name": "adamw", "lr": AUTO_LR, "lr_grid": LR_GRID, "weight_decay": 1e-3,
              "momentum": 0.9, "epochs": 100, "batch_size": 8, "max_tiles": 512,
              "balanced_sampling": False,
              "schedule": "cosine", "min_lr_ratio": 0.0, "patience": 30, "grad_clip": None},
    "data": {"cache_max_gb": 8.0, "prefetch": 2, "eval_batch_size": 4, "features_dir": None,
             "manifest": None},
    "device": "auto",
    "seed": 0,
}
SPLIT_METHODS = ("column", "kfold", "logo")


def deep_merge(base: dict, override: dict) -> dict:
    """A new dict: ``base`` with ``override``'s keys replacing it, recursing into dicts."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: Path) -> dict:
    """One YAML mapping; :class:`InputError` naming the file when unreadable or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
    return data


def load_config(paths: Sequence[Path], overrides: dict | None = None) -> dict:
    """Deep-merge the YAML ``paths`` in order (later wins) and then ``overrides``; no defaults
    yet (see :func:`resolve_config`)."""
    merged: dict = {}
    for path in paths:
        merged = deep_merge(merged, load_yaml(path))
    out = deep_merge(merged, overrides or {})
    _warn_settings_of_another_loss(merged, out)
    return out


def _warn_settings_of_another_loss(files: dict, out: dict) -> None:
    """A run's ``config.yaml`` or a tune's ``best.yaml`` holds its loss's lr and settings;
    trained with another ``--loss`` it keeps them, not the new loss's defaults: say so."""
    old, new = _setting(files, "loss", "name"), _setting(out, "loss", "name")
    if old is None or new == old:
        return
    lr = _setting(files, "optim", "lr")
    if lr is not None and lr != AUTO_LR:
        log.warning("the config sets optim.lr %s (loss %s); loss %s trains with it, not with "
                    "its default %s (set optim.lr: null for that)", lr, old, new,
                    default_lr(new))
    if not isinstance(old, str) or old not in LOSS_DEFAULTS:
        return
    was, now = loss_defaults(old), loss_defaults(new)
    for section, keys in LOSS_DEFAULTS[old].items():
        for key in keys:
            value = _setting(files, section, key)
            if value == was[section][key] != now[section][key]:
                log.warning("the config sets %s.%s %s (loss %s's default); loss %s trains with "
                            "it, not with its default %s", section, key, value, old, new,
                            now[section][key])


def resolve_config(raw: dict, loss_names: Sequence[str] | None = None) -> dict:
    """``raw`` merged over :data:`DEFAULTS` and validated; raises :class:`InputError` listing
    every problem found. ``loss_names``: the losses that exist (the train stage passes the
    registry's), checked against ``loss.name`` and the ``loss.<name>`` sections; None skips
    that check. Loss settings are checked later, when the loss is built."""
    cfg = deep_merge(loss_defaults(_setting(raw, "loss", "name")), raw)
    if isinstance(cfg["optim"], dict) and cfg["optim"].get("lr") is None:
        cfg["optim"]["lr"] = default_lr(_setting(cfg, "loss", "name"))
    problems = _unknown_keys(cfg, loss_names) + _check_values(cfg)
    if problems:
        raise InputError(f"config: {'; '.join(problems)}")
    return cfg


def loss_defaults(loss: Any) -> dict:
    """:data:`DEFAULTS` for the loss named ``loss`` (None: the default loss's), with its
    :data:`LOSS_DEFAULTS`."""
    name = DEFAULTS["loss"]["name"] if loss is None else loss
    return deep_merge(DEFAULTS, LOSS_DEFAULTS.get(name, {}) if isinstance(name, str) else {})


def _setting(cfg: dict, section: str, key: str) -> Any:
    """``cfg[section][key]`` of a config not yet validated; None when either is missing."""
    part = cfg.get(section)
    return part.get(key) if isinstance(part, dict) else None


def default_lr(loss: Any) -> float:
    """The default ``optim.lr`` of the loss named ``loss`` (:data:`LOSS_LR`)."""
    return LOSS_LR.get(loss, FALLBACK_LR) if isinstance(loss, str) else FALLBACK_LR


def single_lr(cfg: dict) -> float:
    """A resolved config's lr when it trains at one lr: ``optim.lr``, or for ``auto`` the
    loss's default (:data:`LOSS_LR`)."""
    lr = cfg["optim"]["lr"]
    return default_lr(cfg["loss"]["name"]) if lr == AUTO_LR else lr


def loss_settings(cfg: dict) -> dict:
    """The chosen loss's settings from a resolved config's ``loss`` section."""
    return dict(cfg["loss"].get(cfg["loss"]["name"]) or {})


def split_seed(cfg: dict) -> int:
    """The seed that makes a resolved config's splits: ``split.seed``, else ``seed``."""
    return cfg["split"]["seed"] if cfg["split"]["seed"] is not None else cfg["seed"]


def _unknown_keys(cfg: dict, names: Sequence[str] | None) -> list[str]:
    problems = [f"unknown section {k!r}" for k in cfg if k not in DEFAULTS]
    for section, defaults in DEFAULTS.items():
        if not isinstance(defaults, dict) or section == "loss":
            continue
        if not isinstance(cfg[section], dict):
            problems.append(f"{section} must be a mapping")
            continue
        problems += [f"unknown key {section}.{k}" for k in cfg[section] if k not in defaults]
    loss = cfg["loss"]
    if not isinstance(loss, dict):
        return problems + ["loss must be a mapping"]
    if names is None:
        return problems
    problems += [f"unknown key loss.{k} (a loss's settings go under loss.<name>, one of "
                 f"{', '.join(names)})" for k in loss if k != "name" and k not in names]
    problems += [f"loss.{k} must be a mapping" for k in loss
                 if k in names and not isinstance(loss[k], dict | None)]
    if loss.get("name") not in names:
        problems.append(f"loss.name must be one of {', '.join(names)}, got {loss.get('name')!r}")
    return problems


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_values(cfg: dict) -> list[str]:
    p: list[str] = []
    task, split, model = cfg["task"], cfg["split"], cfg["model"]
    optim, data = cfg["optim"], cfg["data"]
    classes = task.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) < 2
                                or len(set(map(str, classes))) != len(classes)):
        p.append("task.classes must be a list of ≥ 2 distinct names (or null)")
    if not isinstance(task.get("label_map"), dict):
        p.append("task.label_map must be a mapping raw label → class")
    if not isinstance(task.get("label_column"), str):
        p.append("task.label_column must be a column name")
    if split.get("method") not in SPLIT_METHODS:
        p.append(f"split.method must be one of {', '.join(SPLIT_METHODS)}")
    if not _is_int(split.get("k")) or split["k"] < 2:
        p.append("split.k must be an integer ≥ 2")
    if split.get("seed") is not None and not _is_int(split["seed"]):
        p.append("split.seed must be an integer or null")
    if not _is_num(split.get("val_fraction")) or not 0 <= split["val_fraction"] <= 0.5:
        p.append("split.val_fraction must lie in [0, 0.5]")
    for key in ("embed_dim", "attn_dim"):
        if not _is_int(model.get(key)) or model[key] < 1:
            p.append(f"model.{key} must be an integer ≥ 1")
    if not _is_num(model.get("dropout")) or not 0 <= model["dropout"] < 1:
        p.append("model.dropout must lie in [0, 1)")
    if optim.get("name") not in ("adamw", "sgd"):
        p.append("optim.name must be adamw or sgd")
    if optim.get("schedule") not in ("cosine", "constant"):
        p.append("optim.schedule must be cosine or constant")
    if optim.get("lr") != AUTO_LR and (not _is_num(optim.get("lr")) or optim["lr"] <= 0):
        p.append(f"optim.lr must be > 0, null or {AUTO_LR}")
    grid = optim.get("lr_grid")
    if (not isinstance(grid, list) or not grid
            or not all(_is_num(v) and v > 0 for v in grid) or len(set(grid)) != len(grid)):
        p.append("optim.lr_grid must be a list of distinct lrs > 0")
    for key in ("weight_decay", "momentum", "min_lr_ratio"):
        if not _is_num(optim.get(key)) or optim[key] < 0:
            p.append(f"optim.{key} must be ≥ 0")
    for key in ("epochs", "batch_size", "patience"):
        if not _is_int(optim.get(key)) or optim[key] < 1:
            p.append(f"optim.{key} must be an integer ≥ 1")
    if optim.get("max_tiles") is not None and (not _is_int(optim["max_tiles"])
                                               or optim["max_tiles"] < 1):
        p.append("optim.max_tiles must be an integer ≥ 1 or null")
    if optim.get("grad_clip") is not None and (not _is_num(optim["grad_clip"])
                                               or optim["grad_clip"] <= 0):
        p.append("optim.grad_clip must be > 0 or null")
    if not isinstance(optim.get("balanced_sampling"), bool):
        p.append("optim.balanced_sampling must be true or false")
    if not _is_num(data.get("cache_max_gb")) or data["cache_max_gb"] < 0:
        p.append("data.cache_max_gb must be ≥ 0")
    for key, low in (("prefetch", 0), ("eval_batch_size", 1)):
        if not _is_int(data.get(key)) or data[key] < low:
            p.append(f"data.{key} must be an integer ≥ {low}")
    device = cfg.get("device")
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda")
                                           or device.startswith("cuda:")):
        p.append("device must be auto, cpu, cuda or cuda:N")
    if not _is_int(cfg.get("seed")):
        p.append("seed must be an integer")
    return p
