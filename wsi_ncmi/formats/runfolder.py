"""The run folder ``RUN/``: written by ``train``, read by ``eval``, ``compare``, ``heatmap`` and
``predict``. Every file of it is read and written here, and nowhere else.

    RUN/config.yaml            resolved training config (usable again as train --config)
    RUN/splits.json            {"method", "seed", "folds": [{"fold", "train", "val", "test"}]}
    RUN/features.json          how the features were made (formats.featurefile.feature_settings)
    RUN/provenance.json        the train command's provenance record
    RUN/fold_<k>/model.safetensors   aggregator and loss-head state (safetensors, no pickle)
    RUN/fold_<k>/model.json          what rebuilds the model (see stages.train)
    RUN/fold_<k>/history.csv         one row per epoch
    RUN/fold_<k>/embeddings.npz      slide_id, z, p, and z_tilde (NCMI) or logits (CE family)
    RUN/fold_<k>/probe.json          the linear probe's parameters, stored by predict
    RUN/fold_<k>/centroid_calibration.json  the centroid head's temperature, stored by
                                     predict and eval
    RUN/eval/<split>/                metrics.json, predictions.csv, plots, report.md
    RUN/heatmaps/fold_<k>/           heatmaps drawn by `wsi-ncmi heatmap`

``docs/artifacts.md`` documents every field. Paths inside a run (``data.features_dir``,
``data.manifest`` of the config) are recorded absolute.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from ..atomic import atomic_path, write_json
from ..checksums import file_sha256
from ..errors import InputError
from .tilefile import TILING_KEYS

CONFIG = "config.yaml"
SPLITS = "splits.json"
FEATURES = "features.json"
WEIGHTS = "model.safetensors"
META = "model.json"
HISTORY = "history.csv"
EMBEDDINGS = "embeddings.npz"
PROBE = "probe.json"
CALIBRATION = "centroid_calibration.json"


def fold_dir(run_dir: Path, fold: int) -> Path:
    """``RUN/fold_<fold>``."""
    return Path(run_dir) / f"fold_{int(fold)}"


def eval_dir(run_dir: Path, split: str) -> Path:
    """``RUN/eval/<split>``."""
    return Path(run_dir) / "eval" / split


def is_run(folder: Path) -> bool:
    """Whether ``folder`` looks like a run folder (``config.yaml`` and ``splits.json``)."""
    return (Path(folder) / CONFIG).is_file() and (Path(folder) / SPLITS).is_file()


def not_a_run(run_dir: Path, missing: Path | None = None) -> InputError:
    """The one-line error every reader of a run gives when ``run_dir`` is not one
    (``missing``: the file it lacks); it names the run folders inside ``run_dir`` when there
    are some (``demo_out/runs`` holds ``ncmi`` and ``ce``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return InputError(f"{run_dir}: not found (a run folder written by `wsi-ncmi train` "
                          "is expected)")
    runs = sorted(p.name for p in run_dir.iterdir() if p.is_dir() and is_run(p))
    if runs:
        return InputError(f"{run_dir} is not a run folder but holds run folders "
                          f"{', '.join(runs)}: pass one of them, e.g. {run_dir / runs[0]}")
    if missing is None or not any((run_dir / n).is_file() for n in (CONFIG, SPLITS)):
        return InputError(f"{run_dir}: not a run folder (no {CONFIG} nor {SPLITS}; is it a "
                          "folder written by `wsi-ncmi train`?)")
    return InputError(f"{missing}: not found (is {run_dir} a complete run folder?)")


def require(path: Path, run_dir: Path) -> Path:
    """``path`` when it is a file; else the one-line error every reader of a run gives
    (:func:`not_a_run`)."""
    if not Path(path).is_file():
        raise not_a_run(run_dir, Path(path))
    return Path(path)


def require_run(run_dir: Path) -> Path:
    """``run_dir`` when it is a run folder (:func:`is_run`); else :func:`not_a_run`'s
    error."""
    for name in (CONFIG, SPLITS):
        require(Path(run_dir) / name, run_dir)
    return Path(run_dir)


def read_config(run_dir: Path) -> dict:
    """``RUN/config.yaml`` as a dict; :class:`InputError` when missing or unreadable."""
    path = require(Path(run_dir) / CONFIG, run_dir)
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: unreadable YAML ({' '.join(str(exc).split())[:200]})") \
            from None
    if not isinstance(cfg, dict) or "task" not in cfg:
        raise InputError(f"{path}: not a resolved run config (no task section)")
    return cfg


def read_splits(run_dir: Path) -> dict:
    """``RUN/splits.json``; :class:`InputError` when missing, unreadable or without folds."""
    path = require(Path(run_dir) / SPLITS, run_dir)
    try:
        splits = json.loads(path.read_text())
    except (OSError, ValueError):
        raise InputError(f"{path}: not valid JSON") from None
    if not isinstance(splits, dict) or not splits.get("folds"):
        raise InputError(f"{path}: no folds")
    return splits


def choose_folds(run_dir: Path, fold: int | None, all_folds: bool) -> list[int]:
    """Fold numbers to use: ``fold``, every fold, or fold 0 of a single-fold run."""
    available = [int(f["fold"]) for f in read_splits(run_dir)["folds"]]
    if fold is not None and all_folds:
        raise InputError("--fold and --all-folds exclude each other")
    if all_folds:
        return available
    if fold is not None:
        if fold not in available:
            raise InputError(f"{run_dir}: no fold {fold} (folds: "
                             f"{', '.join(map(str, available))})")
        return [fold]
    if len(available) > 1:
        raise InputError(f"{run_dir}: the run has {len(available)} folds; choose --fold K or "
                         "--all-folds (probabilities averaged over folds)")
    return available


def fold_holding(run_dir: Path, slide_id: str) -> int:
    """The fold whose test part holds ``slide_id``; else 0 for a single-fold run;
    :class:`InputError` otherwise (the caller must choose)."""
    folds = read_splits(run_dir)["folds"]
    for entry in folds:
        if slide_id in entry.get("test", []):
            return int(entry["fold"])
    if len(folds) == 1:
        return int(folds[0]["fold"])
    raise InputError(f"{run_dir}: slide {slide_id} is in no fold's test part and the run has "
                     f"{len(folds)} folds; choose one with --fold")


def recorded_path(cfg: dict, key: str, given: Path | None, run_dir: Path) -> Path:
    """``given`` when not None, else ``data.<key>`` of the run's config; :class:`InputError`
    when neither exists."""
    recorded = (cfg.get("data") or {}).get(key)
    if given is None and not recorded:
        raise InputError(f"{Path(run_dir) / CONFIG}: no data.{key} recorded; pass it "
                         f"explicitly (--{key.replace('_', '-')})")
    return Path(given if given is not None else recorded)


def read_feature_record(run_dir: Path) -> dict:
    """``RUN/features.json`` as ``{"settings", "facts"}`` (a run from before the split into
    settings and facts has its flat record read as settings, with no facts);
    :class:`InputError` when it is missing or unreadable."""
    path = require_run(run_dir) / FEATURES
    if not path.is_file():
        raise InputError(f"{path}: not found; the run predates recorded feature settings — "
                         "retrain it to use predict")
    try:
        record = json.loads(path.read_text())
    except ValueError:
        raise InputError(f"{path}: not valid JSON") from None
    if "settings" not in record:
        return {"settings": record, "facts": {}}
    return record


def read_feature_settings(run_dir: Path) -> dict:
    """The settings of ``RUN/features.json`` (how the run's training features were made);
    :class:`InputError` when a setting predict must reproduce is missing."""
    path = Path(run_dir) / FEATURES
    settings = read_feature_record(run_dir)["settings"]
    tiling = settings.get("tiling") or {}
    missing = [k for k in ("encoder", "weights_sha256", "preprocessing")
               if not settings.get(k)]
    missing += [f"tiling.{k}" for k in TILING_KEYS if tiling.get(k) is None]
    if missing:
        raise InputError(f"{path}: the training features do not record {', '.join(missing)} "
                         "(features made elsewhere?); predict cannot reproduce them")
    return settings


def write_run_files(run_dir: Path, cfg: dict, splits: dict, settings: dict) -> list[Path]:
    """Write ``config.yaml``, ``splits.json`` and ``features.json``; return their paths."""
    run_dir = Path(run_dir)
    with atomic_path(run_dir / CONFIG) as tmp:
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    write_json(run_dir / SPLITS, splits)
    write_json(run_dir / FEATURES, settings)
    return [run_dir / CONFIG, run_dir / SPLITS, run_dir / FEATURES]


def write_fold(fold: Path, state: dict, meta: dict, history: list[dict],
               embeddings: dict[str, np.ndarray]) -> list[Path]:
    """Write a fold's weights (``state``: name → CPU tensor), ``model.json``, history (one
    dict per epoch; NaN written blank) and embeddings atomically; return the paths."""
    from safetensors.torch import save_file

    fold.mkdir(parents=True, exist_ok=True)
    with atomic_path(fold / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(fold / META, meta)
    with atomic_path(fold / HISTORY) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        for row in history:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v
                             for k, v in row.items()})
    with atomic_path(fold / EMBEDDINGS) as tmp, tmp.open("wb") as f:
        np.savez(f, **embeddings)
    return [fold / n for n in (WEIGHTS, META, HISTORY, EMBEDDINGS)]


def read_fold_meta(fold: Path) -> dict:
    """A fold's ``model.json``; :class:`InputError` when missing or unreadable."""
    path = Path(fold) / META
    if not path.is_file():
        raise InputError(f"{path}: not found (is {fold} a trained fold folder?)")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path}: not a model description ({exc!r})") from None


def read_fold(fold: Path) -> tuple[dict, dict]:
    """``model.json`` and the weights (name → CPU tensor) of a fold folder; :class:`InputError`
    naming the file when either is missing or unreadable."""
    from safetensors.torch import load_file

    fold = Path(fold)
    meta = read_fold_meta(fold)
    if not (fold / WEIGHTS).is_file():
        raise InputError(f"{fold / WEIGHTS}: not found (is {fold} a trained fold folder?)")
    try:
        state = load_file(fold / WEIGHTS, device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises several unrelated types
        raise InputError(f"{fold / WEIGHTS}: unreadable safetensors ({exc})") from None
    return meta, state


def _embeddings(fold: Path) -> Path:
    path = Path(fold) / EMBEDDINGS
    if not path.is_file():
        raise InputError(f"{path}: not found (needed for the linear probe; or use "
                         "--head centroid)")
    return path


def read_embeddings(fold: Path, slide_ids: Sequence[str], key: str = "z") -> np.ndarray:
    """Rows ``key`` (``z``, ``p``, ``z_tilde``, ``logits``) of ``embeddings.npz`` for
    ``slide_ids``, in that order; :class:`InputError` when the file or a slide is missing."""
    path = _embeddings(fold)
    with np.load(path) as emb:
        row = {str(s): i for i, s in enumerate(emb["slide_id"])}
        absent = [s for s in slide_ids if s not in row]
        if absent:
            raise InputError(f"{path}: no embedding for {len(absent)} slide(s) "
                             f"(e.g. {', '.join(absent[:5])})")
        return emb[key][[row[s] for s in slide_ids]]


def embeddings_sha256(fold: Path) -> str:
    """sha256 of the fold's ``embeddings.npz`` (what a stored probe was fitted on);
    :class:`InputError` when it is missing."""
    return file_sha256(_embeddings(fold))


def read_probe(fold: Path, embeddings_sha: str, schema_version: int,
               name: str = PROBE) -> dict | None:
    """The stored ``probe.json`` (or another fitted head's file ``name``, e.g.
    :data:`CALIBRATION`) when it was fitted on these embeddings with this schema, else
    None."""
    try:
        record = json.loads((Path(fold) / name).read_text())
    except (OSError, ValueError):
        return None
    if record.get("embeddings_sha256") != embeddings_sha or \
            record.get("schema_version") != schema_version:
        return None
    return record


def write_probe(fold: Path, record: dict, name: str = PROBE) -> None:
    """Store ``probe.json`` (or ``name``; plain numbers) atomically."""
    write_json(Path(fold) / name, record)


def model_files(run_dir: Path, folds: Sequence[int], probe: bool,
                calibration: bool = False) -> list[Path]:
    """The files a prediction with these folds depends on (config, splits, each fold's model
    description and weights, its stored probe when ``probe`` and its centroid calibration
    when ``calibration``, each when present)."""
    files = [Path(run_dir) / CONFIG, Path(run_dir) / SPLITS]
    for k in folds:
        fold = fold_dir(run_dir, k)
        files += [fold / META, fold / WEIGHTS]
        files += [fold / name for name, wanted in ((PROBE, probe), (CALIBRATION, calibration))
                  if wanted and (fold / name).is_file()]
    return files


def read_eval(run_dir: Path, split: str) -> tuple[dict, object]:
    """``metrics.json`` (dict) and ``predictions.csv`` (pandas DataFrame, ids as text) of an
    evaluated split; :class:`InputError` when the run was not evaluated on it."""
    import pandas as pd

    folder = eval_dir(run_dir, split)
    metrics_path, pred_path = folder / "metrics.json", folder / "predictions.csv"
    if not metrics_path.is_file() or not pred_path.is_file():
        if not is_run(run_dir):
            raise not_a_run(run_dir)
        raise InputError(f"{run_dir}: not evaluated on the {split} split (run `wsi-ncmi eval "
                         f"{run_dir} --split {split}` first)")
    metrics = json.loads(metrics_path.read_text())
    pred = pd.read_csv(pred_path, dtype={"slide_id": str, "patient_id": str, "true_label": str},
                       keep_default_na=False)
    return metrics, pred
