"""The ``eval`` stage: a trained run → metrics, predictions, plots and a report per split.

For every fold of ``RUN/splits.json`` the fold's model runs (eval mode, all tiles) over the
fold's training slides and the evaluated split's slides; the heads (:mod:`wsi_ncmi.model.heads`) are
fitted on the training slides' outputs only and score the evaluated slides:

- ``linear_probe`` on the embeddings z (or z̃, ``probe_input``), every run;
- ``centroid`` on the simplex outputs p (NCMI: NSF output; CE family: softmax), every run;
- ``classifier``: softmax of the run's own logits, CE-family runs only.

With several folds each fold is scored on its own part of the split, and the rows of all folds
are pooled (for ``test`` with k-fold or leave-one-group-out splits this is the out-of-fold
prediction of every slide); the headline metrics and their intervals are those of the pooled
rows, and per-fold point estimates with their mean ± sd (ddof = 1) come beside them.

NCMI, CMI and Γ (:func:`~wsi_ncmi.stats.simplex.ncmi_measure`) are computed on the evaluated
slides' outputs p with that set's own class means as centroids — the measure as defined by
Yang et al. for "a model on a labelled set" — so they describe the geometry of the outputs on
the split itself. The training split's value (``ncmi_train``, centroids = training class
means) is reported beside it; the centroid *head* is what uses the training centroids to
predict. With several folds the top-level values are means over folds (each fold's model has
its own output simplex, so pooling p across folds would mix spaces).

Writes ``RUN/eval/<split>/``: ``metrics.json``, ``predictions.csv``,
``confusion_<head>.png``, ``roc_<head>.png``, ``report.md`` (all atomically), a
``provenance.json`` record and, when asked, ``heatmaps/`` and the review page ``review/``
(:mod:`wsi_ncmi.stages.review`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path, write_json
from ..errors import InputError
from ..formats.featurefile import bag_path
from ..formats.ids import id_problem
from ..formats.labels import read_labels
from ..formats.manifests import load_manifest
from ..formats.runfolder import (
    META,
    SPLITS,
    eval_dir,
    fold_dir,
    model_files,
    read_config,
    read_splits,
    recorded_path,
)
from ..model.device import select_device
from ..model.heads import HEADS, fit_centroids, fit_linear_probe
from ..model.predictor import centroid_temperature
from ..stats.plots import plot_confusion, plot_roc
from ..stats.reports import render_eval_report
from ..stats.simplex import centroid_scores, ncmi_measure, softmax
from .evalmetrics import FoldResult, RunData, build_metrics, pool
from .heatmap import SlideCall, draw_heatmaps
from .provenance import write_record
from .review import EvalSlides, ReviewSettings, write_eval_review

log = logging.getLogger("wsi_ncmi")

PROBE_INPUTS = ("z", "z_tilde")
SPLIT_PARTS = ("train", "val", "test")


def evaluate_run(run_dir: Path, split: str = "test", features_dir: Path | None = None,
                 manifest: Path | None = None, n_boot: int = 1000, seed: int = 0, *,
                 probe_input: str = "z", device: str = "auto", heatmaps: int = 0,
                 slide_root: Path | None = None, review: ReviewSettings | None = None) -> Path:
    """Evaluate every fold of the run in ``run_dir`` on ``split`` (train | val | test) and
    write ``run_dir/eval/<split>/``; return that folder.

    ``features_dir``, ``manifest``: override ``data.features_dir`` / ``data.manifest`` of
    ``RUN/config.yaml``; ``n_boot``: bootstrap resamples (patients); ``seed``: seeds the
    bootstrap and the probe's cross-validation folds; ``probe_input``: ``z`` or ``z_tilde``
    (NCMI runs only); ``device``: auto | cpu | cuda | cuda:N for running the model;
    ``heatmaps``: draw attention heatmaps of this many most confident slides (linear probe)
    into ``eval/<split>/heatmaps/``, their files found by the manifest's ``path`` column under
    ``slide_root`` (:func:`wsi_ncmi.stages.heatmap.draw_heatmaps`); ``review``: write the
    review page ``eval/<split>/review/`` with these pyramid settings (None: no page), slide
    files found the same way.
    """
    if split not in SPLIT_PARTS:
        raise InputError(f"split must be one of {', '.join(SPLIT_PARTS)}, got {split!r}")
    if probe_input not in PROBE_INPUTS:
        raise InputError(f"probe input must be z or z_tilde, got {probe_input!r}")
    if n_boot < 1:
        raise InputError(f"n_boot must be ≥ 1, got {n_boot}")
    run_dir = Path(run_dir)
    data = load_run_data(run_dir, features_dir, manifest, split)
    dev = str(select_device(device))
    log.info("eval %s on the %s split: %d fold(s), %s", run_dir, split,
             sum(bool(f[split]) for f in data.splits["folds"]), dev)
    results = [evaluate_fold(fold_dir(run_dir, fold["fold"]), fold, split, data, probe_input,
                             seed, dev)
               for fold in data.splits["folds"] if fold[split]]
    log.info("eval: bootstrap intervals over patients (%d resamples)", n_boot)
    metrics = build_metrics(results, data, run_dir, split, n_boot, seed, probe_input)
    out_dir = eval_dir(run_dir, split)
    log.info("eval: writing metrics, predictions, plots and the report to %s", out_dir)
    outputs = write_outputs(out_dir, results, data, metrics)
    files = slide_files(data.manifest, slide_root) if heatmaps > 0 or review else {}
    slides_read: list[tuple[str, Path]] = []
    if heatmaps > 0:
        picks = most_confident(results, data.classes, heatmaps)
        outputs += draw_heatmaps(run_dir, picks, data.features_dir, files,
                                 out_dir / "heatmaps", dev)
        slides_read += [(sid, files[sid]) for _, sid, _ in picks if sid in files]
    if review is not None:
        rows = [(r.fold, sid, r.scores["linear_probe"][i], data.classes[r.y[i]])
                for r in results for i, sid in enumerate(r.slide_ids)]
        outputs += write_eval_review(out_dir / "review", EvalSlides(
            run_dir, split, data.classes, rows, data.features_dir, files,
            out_dir / "heatmaps"), review, dev)
        slides_read += [(sid, files[sid]) for _, sid, _, _ in rows
                        if sid in files and files[sid].is_file()]
    write_eval_record(out_dir, run_dir, data, split, outputs,
                      {"n_boot": n_boot, "seed": seed, "probe_input": probe_input,
                       "device": dev, "heatmaps": heatmaps,
                       "review": None if review is None else asdict(review)}, slides_read)
    return out_dir


def most_confident(results: list[FoldResult], classes: list[str], k: int,
                   head: str = "linear_probe") -> list[tuple[int, str, SlideCall]]:
    """The ``k`` evaluated slides ``head`` predicts most confidently (highest top probability;
    ties by slide id), each with the fold that scored it and its prediction (with the true
    class)."""
    ranked = sorted((-float(r.scores[head][i].max()), sid, r.fold,
                     classes[int(r.scores[head][i].argmax())], classes[int(r.y[i])])
                    for r in results for i, sid in enumerate(r.slide_ids))
    return [(fold, sid, SlideCall(name, -neg_p, head, true_class=truth))
            for neg_p, sid, fold, name, truth in ranked[:k]]


def slide_files(manifest: Path, slide_root: Path | None) -> dict[str, Path]:
    """Slide id → slide file from the manifest's ``path`` column, relative to ``slide_root``
    (default: the manifest's folder); empty, with a warning, when there is no such column."""
    df = load_manifest(manifest)
    if "path" not in df.columns:
        log.warning("%s has no 'path' column; slide files cannot be found", manifest)
        return {}
    root = Path(slide_root) if slide_root is not None else Path(manifest).parent
    return {sid: root / str(path) for sid, path in zip(df["slide_id"], df["path"], strict=True)}


def write_eval_record(out_dir: Path, run_dir: Path, data: RunData, split: str,
                      outputs: list[Path], settings: dict,
                      slides: list[tuple[str, Path]]) -> Path:
    """``out_dir/provenance.json``: the run's config, splits, fold models, manifest and the
    feature files read, the slides drawn under heatmaps, the eval ``settings`` and the files
    written. The run folder is the record's scope: a copied run verifies its own files."""
    folds = [int(f["fold"]) for f in data.splits["folds"] if f[split]]
    bags = dict.fromkeys(s for f in data.splits["folds"] if f[split]
                         for part in ("train", split) for s in f[part])
    return write_record(
        out_dir, command="eval", slides=slides, scope=run_dir,
        config={"run": str(run_dir), "split": split, **settings,
                "features_dir": str(data.features_dir), "manifest": str(data.manifest)},
        inputs=[*model_files(run_dir, folds, probe=False, calibration=True), data.manifest,
                *(bag_path(data.features_dir, s) for s in bags)],
        outputs=outputs, seeds={"bootstrap": settings["seed"], "probe_cv": settings["seed"]})


def load_run_data(run_dir: Path, features_dir: Path | None, manifest: Path | None,
                  split: str) -> RunData:
    """Read the run's config, splits and the manifest's labels; :class:`InputError` listing
    every evaluated or training slide without a usable label."""
    cfg, splits = read_config(run_dir), read_splits(run_dir)
    features = recorded_path(cfg, "features_dir", features_dir, run_dir)
    manifest_path = recorded_path(cfg, "manifest", manifest, run_dir)
    labels = read_labels(manifest_path, cfg["task"])
    folds = splits["folds"]
    needed = dict.fromkeys(sid for f in folds for part in ("train", split) for sid in f[part])
    unsafe = [problem for sid in needed if (problem := id_problem(sid))]
    if unsafe:
        raise InputError(f"{Path(run_dir) / SPLITS}: {'; '.join(unsafe)}")
    problems = [f"slide {sid}: not in {manifest_path}" if sid not in labels.label
                else f"slide {sid}: label {labels.raw[sid]!r} maps to no class"
                for sid in needed if labels.label.get(sid, -1) < 0]
    if problems:
        raise InputError(f"{len(problems)} slide(s) cannot be evaluated: {'; '.join(problems)}")
    if not any(f[split] for f in folds):
        raise InputError(f"{Path(run_dir) / SPLITS}: the {split} split holds no slides in any "
                         "fold")
    return RunData(cfg=cfg, splits=splits, classes=labels.classes, labels=labels.label,
                   patients={sid: labels.patient.get(sid, "") for sid in needed},
                   features_dir=features, manifest=manifest_path)


def evaluate_fold(fold_dir: Path, fold: dict, split: str, data: RunData, probe_input: str,
                  seed: int, device: str) -> FoldResult:
    """Run one fold's model on its training and ``split`` slides and score the latter with
    every applicable head."""
    from ..model.inference import load_fold, run_model

    log.info("eval fold %s: running the model on %d training and %d %s slide(s)",
             fold["fold"], len(fold["train"]), len(fold[split]), split)
    loaded = load_fold(fold_dir, device)
    if list(loaded.meta["classes"]) != data.classes:
        raise InputError(f"{fold_dir / META}: classes {loaded.meta['classes']} differ "
                         f"from the run config's {data.classes}")
    batch = int(data.cfg.get("data", {}).get("eval_batch_size", 4))
    train_ids, eval_ids = list(fold["train"]), list(fold[split])
    train = run_model(loaded, data.features_dir, train_ids, batch)
    evaluated = train if split == "train" else run_model(loaded, data.features_dir, eval_ids,
                                                         batch)
    n_classes = len(data.classes)
    y_train = np.array([data.labels[s] for s in train_ids], dtype=np.int64)
    y_eval = np.array([data.labels[s] for s in eval_ids], dtype=np.int64)
    if evaluated[probe_input] is None:
        raise InputError(f"{fold_dir}: loss {loaded.meta['loss']} has no {probe_input} "
                         "(use the probe input z)")
    patients = [data.patients[s] for s in train_ids]
    probe = fit_linear_probe(train[probe_input], y_train, n_classes,
                             groups=patients if any(patients) else None, seed=seed)
    means = fit_centroids(train["p"], y_train, n_classes)
    temperature = centroid_temperature(fold_dir.parent, int(fold["fold"]), loaded.meta,
                                       data.manifest)
    scores = {"linear_probe": probe.scores(evaluated[probe_input]),
              "centroid": centroid_scores(evaluated["p"], means, temperature)}
    fit = {"linear_probe": {"input": probe_input, "C": probe.C, **probe.selection,
                            "n_train_slides": len(train_ids)},
           "centroid": {"outputs": f"p ({evaluated['p'].shape[1]}-simplex)",
                        "n_train_slides": len(train_ids),
                        "temperature": temperature}}
    if evaluated["logits"] is not None:
        scores["classifier"] = softmax(evaluated["logits"])
        fit["classifier"] = {"outputs": f"softmax of the {loaded.meta['loss']} run's logits"}
    return FoldResult(fold=int(fold["fold"]), slide_ids=eval_ids, y=y_eval, scores=scores,
                      ncmi=ncmi_measure(evaluated["p"], y_eval, n_classes),
                      ncmi_train=ncmi_measure(train["p"], y_train, n_classes), fit=fit)


def predictions_frame(results: list[FoldResult], data: RunData) -> pd.DataFrame:
    """One row per (head, fold, slide): ids, true and predicted class, one score per class."""
    rows = []
    for head in HEADS:
        for r in results:
            if head not in r.scores:
                continue
            s = r.scores[head]
            for i, sid in enumerate(r.slide_ids):
                rows.append({"slide_id": sid, "patient_id": data.patients[sid], "fold": r.fold,
                             "true_label": data.classes[r.y[i]], "head": head,
                             "predicted_label": data.classes[int(s[i].argmax())],
                             **{f"score_{c}": float(s[i, j])
                                for j, c in enumerate(data.classes)}})
    return pd.DataFrame(rows)


def write_outputs(out_dir: Path, results: list[FoldResult], data: RunData,
                  metrics: dict) -> list[Path]:
    """metrics.json, predictions.csv, the plots and report.md in ``out_dir``; returns their
    paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ids, y, scores = pool(results)
    title = f"{Path(metrics['run']).name} · {{}} · {metrics['split']} (n = {len(ids)})"
    paths = []
    for head, s in scores.items():
        cm = np.array(metrics["heads"][head]["confusion"])
        paths.append(plot_confusion(cm, data.classes, out_dir / f"confusion_{head}.png",
                                    title.format(head)))
        paths.append(plot_roc(y, s, data.classes, out_dir / f"roc_{head}.png",
                              title.format(head)))
    with atomic_path(out_dir / "predictions.csv") as tmp:
        predictions_frame(results, data).to_csv(tmp, index=False)
    write_json(out_dir / "metrics.json", metrics)
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(render_eval_report(metrics))
    return [*paths, out_dir / "predictions.csv", out_dir / "metrics.json",
            out_dir / "report.md"]
