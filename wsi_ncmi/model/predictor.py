"""A trained run as a predictor: chosen folds, one prediction head, class probabilities.

Heads (:mod:`wsi_ncmi.model.heads`):

- ``linear_probe`` (default): multinomial logistic regression on the slide embedding z,
  fitted on the fold's training slides (z from ``fold_<k>/embeddings.npz``, labels from the
  run's manifest) exactly as ``eval`` fits it (C chosen by patient-grouped cross-validated
  log-loss, CV seed :data:`~wsi_ncmi.model.heads.PROBE_SEED`). Its parameters are stored once
  as ``fold_<k>/probe.json`` (plain numbers, no pickle) with the sha256 of the embeddings they
  came from; a retrained fold gets a new probe.
- ``centroid``: softmax over classes of −KL(p‖s_c) / T, s_c from ``model.json``'s
  ``centroid_head_means`` and the temperature T fitted on the fold's validation slides
  (:func:`~wsi_ncmi.model.heads.fit_temperature`; p from ``embeddings.npz``, labels from the
  run's manifest), stored once as
  ``fold_<k>/centroid_calibration.json`` with the sha256 of those embeddings, T, and the
  validation log-loss and ECE before and after (T = 1, said in the record, when the fold has
  no validation slides).
- ``classifier``: softmax of the run's own logits (CE-family runs only).

What "calibrated" means here: the probe's probabilities are those of a logistic model fitted
by minimising log-loss — a strictly proper scoring rule — on the training split, with its
regularisation chosen by cross-validated log-loss; they are fitted to be probabilities, not
rescaled scores. That holds for slides like the training ones. The aggregator was trained on
those same slides, so their embeddings are easier than new slides' and the probe can be
over-confident on new ones; on another centre or scanner nothing guarantees calibration.
Check it with ``wsi-ncmi eval`` (expected calibration error) on labelled slides from the
target site. The centroid head's raw scores, softmax(−KL), are not probabilities (they stay
near 1/C when the KL divergences are small, so a review threshold would flag every slide);
its temperature makes them calibrated on the validation slides without changing which class
wins. The classifier's softmax was trained with the network on the same slides and is
typically over-confident.

With several folds the probabilities of the folds are averaged, and so is the attention (each
fold's sums to 1 over the tiles, so the mean does too).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..formats.labels import read_labels
from ..formats.runfolder import (
    CALIBRATION,
    META,
    PROBE,
    embeddings_sha256,
    fold_dir,
    read_config,
    read_embeddings,
    read_probe,
    read_splits,
    write_probe,
)
from ..stats.metrics import ece
from ..stats.simplex import centroid_scores, kl_to_centroids, softmax
from .heads import (
    CALIBRATION_SCHEMA_VERSION,
    HEADS,
    PROBE_SCHEMA_VERSION,
    PROBE_SEED,
    fit_linear_probe,
    fit_temperature,
    probe_proba,
    probe_record,
)
from .inference import LoadedModel, load_fold, run_model

log = logging.getLogger("wsi_ncmi")


def _load_or_fit(run_dir: Path, fold: int, name: str, schema_version: int, fit) -> dict:
    """The fold's stored record ``name``, made by ``fit()`` and stored first when absent or
    made from other embeddings. A run folder that cannot be written is used as is (the record
    is then refitted on every call, with a warning)."""
    folder = fold_dir(run_dir, fold)
    sha = embeddings_sha256(folder)
    record = read_probe(folder, sha, schema_version, name)
    if record is not None:
        return record
    record = {**fit(), "embeddings_sha256": sha}
    try:
        write_probe(folder, record, name)
    except OSError as exc:
        log.warning("%s: cannot store %s (%s); it will be refitted next time", folder, name,
                    exc)
    return record


def load_or_fit_probe(run_dir: Path, fold: int) -> dict:
    """The fold's stored probe (``fold_<k>/probe.json``), fitted and stored first when absent
    or made from other embeddings."""
    return _load_or_fit(run_dir, fold, PROBE, PROBE_SCHEMA_VERSION,
                        lambda: fit_probe(run_dir, fold))


def load_or_fit_calibration(run_dir: Path, fold: int, means: np.ndarray,
                            manifest: Path | None = None) -> dict:
    """The fold's stored centroid calibration (``fold_<k>/centroid_calibration.json``),
    fitted and stored first when absent or made from other embeddings (labels from
    ``manifest``, default the run's)."""
    return _load_or_fit(run_dir, fold, CALIBRATION, CALIBRATION_SCHEMA_VERSION,
                        lambda: fit_calibration(run_dir, fold, means, manifest))


def centroid_means(folder: Path, meta: dict) -> np.ndarray:
    """(C×k) ``centroid_head_means`` of a fold's ``model.json`` (``meta``);
    :class:`InputError` when absent or unusable."""
    means = np.asarray(meta.get("centroid_head_means") or [], dtype=np.float64)
    if means.shape[:1] != (len(meta["classes"]),) or not np.isfinite(means).all():
        raise InputError(f"{Path(folder) / META}: no usable centroid_head_means")
    return means


def centroid_temperature(run_dir: Path, fold: int, meta: dict,
                         manifest: Path | None = None) -> float:
    """The temperature of the fold's centroid head (``meta``: its ``model.json``), fitted on
    its validation slides (labels from ``manifest``, default the run's) and stored the first
    time (:func:`load_or_fit_calibration`)."""
    means = centroid_means(fold_dir(run_dir, fold), meta)
    return float(load_or_fit_calibration(run_dir, fold, means, manifest)["temperature"])


def _fold_labels(run_dir: Path, fold: int, part: str, fitted: str,
                 manifest: Path | None = None):
    """Slide ids of the fold's ``part`` (train | val) and the labels of ``manifest``
    (default: the run's) for fitting the file ``fitted``."""
    cfg = read_config(run_dir)
    if manifest is None:
        manifest = Path((cfg.get("data") or {}).get("manifest") or "")
    if not manifest.is_file():
        raise InputError(f"{fold_dir(run_dir, fold) / fitted}: not stored yet, and fitting it "
                         f"needs the run's training manifest {manifest} (data.manifest), "
                         "which is missing; run predict once where it exists")
    labels = read_labels(manifest, cfg["task"])
    ids = next(f[part] for f in read_splits(run_dir)["folds"] if int(f["fold"]) == fold)
    bad = [s for s in ids if labels.label.get(s, -1) < 0]
    if bad:
        raise InputError(f"{manifest}: {len(bad)} {part} slide(s) of fold {fold} lack a "
                         f"usable label (e.g. {', '.join(bad[:5])})")
    return list(ids), labels


def fit_probe(run_dir: Path, fold: int) -> dict:
    """Fit the fold's probe on its training slides' embeddings; labels and patients come
    from the run's manifest (``data.manifest`` of ``RUN/config.yaml``)."""
    train_ids, labels = _fold_labels(run_dir, fold, "train", PROBE)
    z = read_embeddings(fold_dir(run_dir, fold), train_ids, "z")
    groups = [labels.patient.get(s, "") for s in train_ids]
    probe = fit_linear_probe(z, np.array([labels.label[s] for s in train_ids]),
                             len(labels.classes), groups=groups if any(groups) else None,
                             seed=PROBE_SEED)
    return {**probe_record(probe, labels.classes), "n_train_slides": len(train_ids)}


def fit_calibration(run_dir: Path, fold: int, means: np.ndarray,
                    manifest: Path | None = None) -> dict:
    """Fit the centroid head's temperature on the fold's validation slides (outputs p from
    ``embeddings.npz``, centroids ``means`` (C×k), labels from ``manifest``, default the
    run's); the record holds T and the validation log-loss (nats) and ECE before (T = 1) and
    after."""
    val_ids, labels = _fold_labels(run_dir, fold, "val", CALIBRATION, manifest)
    base = {"schema_version": CALIBRATION_SCHEMA_VERSION, "head": "centroid",
            "n_val_slides": len(val_ids)}
    if not val_ids:
        log.warning("fold %d has no validation slides: its centroid head stays uncalibrated "
                    "(T = 1)", fold)
        return {**base, "temperature": 1.0, "note": "no validation slides; uncalibrated"}
    p = read_embeddings(fold_dir(run_dir, fold), val_ids, "p")
    y = np.array([labels.label[s] for s in val_ids])
    t = fit_temperature(-kl_to_centroids(p, means), y)
    quality = {}
    for when, temperature in (("before", 1.0), ("after", t)):
        scores = centroid_scores(p, means, temperature)
        quality[when] = {
            "log_loss": float(-np.mean(np.log(np.clip(scores[np.arange(len(y)), y],
                                                      1e-15, None)))),
            "ece": ece(scores.argmax(1) == y, scores.max(1))}
    log.info("fold %d: centroid head calibrated on %d validation slide(s): T = %.4g, ECE "
             "%.3f → %.3f", fold, len(val_ids), t, quality["before"]["ece"],
             quality["after"]["ece"])
    return {**base, "temperature": t, "validation": quality}


@dataclass
class FoldScorer:
    """One fold's model and the parameters of the chosen head."""

    fold: int
    loaded: LoadedModel
    head: str
    probe: dict | None = None
    means: np.ndarray | None = None
    temperature: float = 1.0

    def scores(self, outputs: dict) -> np.ndarray:
        """(n×C) class probabilities from :func:`~wsi_ncmi.model.inference.run_model`
        outputs."""
        if self.head == "linear_probe":
            return probe_proba(self.probe, outputs["z"])
        if self.head == "centroid":
            return centroid_scores(outputs["p"], self.means, self.temperature)
        return softmax(outputs["logits"])


@dataclass
class RunPredictor:
    """The chosen folds of a run with one head, ready to score feature files."""

    run_dir: Path
    head: str
    classes: list[str]
    scorers: list[FoldScorer] = field(default_factory=list)

    @property
    def folds(self) -> list[int]:
        return [s.fold for s in self.scorers]

    def predict(self, features_dir: Path, slide_ids: list[str]) -> dict:
        """``{"slide_id": list, "proba": (n×C) float64, "attention": list of (N_i,)
        float64}`` for the slides' feature files in ``features_dir``; probabilities and
        attention averaged over the folds."""
        probas, attentions = [], []
        for scorer in self.scorers:
            out = run_model(scorer.loaded, Path(features_dir), list(slide_ids))
            probas.append(scorer.scores(out))
            attentions.append([a.astype(np.float64) for a in out["attention"]])
        attention = [np.mean([a[i] for a in attentions], axis=0) for i in range(len(slide_ids))]
        return {"slide_id": list(slide_ids), "proba": np.mean(probas, axis=0),
                "attention": attention}


def load_predictor(run_dir: Path, folds: Sequence[int], head: str = "linear_probe",
                   device: str = "cpu") -> RunPredictor:
    """Load the run's ``folds`` and the parameters of ``head`` (fitting and storing the
    linear probe the first time); :class:`InputError` when the head does not apply."""
    if head not in HEADS:
        raise InputError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    run_dir = Path(run_dir)
    scorers, classes = [], None
    for k in folds:
        folder = fold_dir(run_dir, k)
        loaded = load_fold(folder, device)
        meta = loaded.meta
        if classes is not None and list(meta["classes"]) != classes:
            raise InputError(f"{folder / META}: classes {meta['classes']} differ from "
                             f"fold {folds[0]}'s {classes}")
        classes = list(meta["classes"])
        scorer = FoldScorer(k, loaded, head)
        if head == "linear_probe":
            scorer.probe = load_or_fit_probe(run_dir, k)
        elif head == "centroid":
            scorer.means = centroid_means(folder, meta)
            scorer.temperature = centroid_temperature(run_dir, k, meta)
        elif meta.get("validation_head") != "classifier":
            raise InputError(f"{folder}: a {meta['loss']} run has no classifier of its own; "
                             "use --head linear_probe or centroid")
        scorers.append(scorer)
    return RunPredictor(run_dir, head, classes, scorers)
