"""``predict``: a trained run on new slides — tile → extract → aggregate → probabilities.

Every slide goes through the same steps the run's training features went through, with the
settings recorded in ``RUN/features.json`` (written by ``train``): tiling (target µm/px,
tile size, overlap, minimum tissue, segmentation µm/px, level tolerance) and the encoder
(name, sha256 of its weights, input side and normalisation). The encoder's weights must be
the very ones the model was trained on: ``--weights FILE`` is checked by sha256 before
anything runs; without it the local Hugging Face cache is used (and checked), or — for a run
trained on explicitly random weights (tests, demo) — the same seeded random weights are
rebuilt (and checked). A mismatch or missing weights refuses the whole batch with one line.

The workspace ``OUT`` holds everything, so a rerun skips finished work at every step:
``tiles/``, ``previews/``, ``tissue/``, ``features/<encoder>/`` (as ``tile``/``extract``
write them), ``heatmaps/<slide_id>.png|.geojson`` (:mod:`wsi_ncmi.heatmaps`),
``predictions/<slide_id>.json`` (one record per slide), ``predictions.csv`` (merged),
``ledger/predict/`` (:mod:`wsi_ncmi.batch`) and ``provenance/predict-<shard>.json``.

Heads (see :mod:`wsi_ncmi.heads`):

- ``linear_probe`` (default): multinomial logistic regression on the slide embedding z,
  fitted on the fold's training slides (z from ``fold_<k>/embeddings.npz``, labels from the
  run's manifest) exactly as ``eval`` fits it (C chosen by patient-grouped cross-validated
  log-loss, CV seed :data:`PROBE_SEED`). Its parameters are stored once as
  ``fold_<k>/probe.json`` (plain numbers, no pickle) with the sha256 of the embeddings they
  came from; a retrained fold gets a new probe.
- ``centroid``: softmax over classes of −KL(p‖s_c), s_c from ``model.json``'s
  ``centroid_head_means``.
- ``classifier``: softmax of the run's own logits (CE-family runs only).

What "calibrated" means here: the probe's probabilities are those of a logistic model fitted
by minimising log-loss — a strictly proper scoring rule — on the training split, with its
regularisation chosen by cross-validated log-loss; they are fitted to be probabilities, not
rescaled scores. That holds for slides like the training ones. The aggregator was trained on
those same slides, so their embeddings are easier than new slides' and the probe can be
over-confident on new ones; on another centre or scanner nothing guarantees calibration.
Check it with ``wsi-ncmi eval`` (expected calibration error) on labelled slides from the
target site. The centroid head's scores, softmax(−KL), are not fitted to be probabilities
(they stay near 1/C when the KL divergences are small); the classifier's softmax was trained
with the network on the same slides and is typically over-confident.

With several folds (``--all-folds``) the probabilities of the folds are averaged, and so is
the attention (each fold's sums to 1 over the tiles, so the mean does too).

``predictions.csv``: ``slide_id``, ``predicted_class``, ``prob_<class>`` per class (sum to
1), ``head``, ``folds`` (``;``-separated), ``review`` (True when the top probability is below
the review threshold), ``n_tiles``; one row per slide predicted with this run, head and fold
choice, sorted by slide id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import atomic_path, write_json
from .batch import BatchSummary, Ledger, SlideJob, in_shard, parse_shard, record_tag, run_batch
from .errors import InputError

if TYPE_CHECKING:
    import torch

    from .encoders import Encoder
    from .extraction import ExtractConfig
    from .heads import LinearProbe
    from .inference import LoadedModel
    from .tiling import TileConfig

log = logging.getLogger("wsi_ncmi")

HEADS = ("linear_probe", "centroid", "classifier")
PROBE_FILE = "probe.json"
PROBE_SEED = 0
PROBE_SCHEMA_VERSION = 1
DEFAULT_REVIEW_THRESHOLD = 0.8
FEATURES_FILE = "features.json"
TILING_REQUIRED = ("target_mpp", "tile_size", "overlap", "min_tissue", "seg_mpp",
                   "level_tolerance")


def run_config(run_dir: Path) -> dict:
    """``RUN/config.yaml`` as a dict; :class:`InputError` when missing or unreadable."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise InputError(f"{path}: not found (is {run_dir} a trained run folder?)")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: unreadable YAML ({' '.join(str(exc).split())[:200]})") \
            from None
    if not isinstance(cfg, dict) or "task" not in cfg:
        raise InputError(f"{path}: not a resolved run config (no task section)")
    return cfg


def run_folds(run_dir: Path) -> list[dict]:
    """The fold entries of ``RUN/splits.json``; :class:`InputError` when there are none."""
    path = Path(run_dir) / "splits.json"
    try:
        folds = json.loads(path.read_text()).get("folds")
    except (OSError, ValueError, AttributeError):
        raise InputError(f"{path}: missing or not a splits record") from None
    if not folds:
        raise InputError(f"{path}: no folds")
    return folds


def choose_folds(run_dir: Path, fold: int | None, all_folds: bool) -> list[int]:
    """Fold numbers to use: ``fold``, every fold, or fold 0 of a single-fold run."""
    available = [int(f["fold"]) for f in run_folds(run_dir)]
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


def read_feature_settings(run_dir: Path) -> dict:
    """``RUN/features.json``: how the run's training features were made; :class:`InputError`
    when it is missing or lacks a setting predict must reproduce."""
    path = Path(run_dir) / FEATURES_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found; the run predates recorded feature settings — "
                         "retrain it to use predict")
    try:
        settings = json.loads(path.read_text())
    except ValueError:
        raise InputError(f"{path}: not valid JSON") from None
    tiling = settings.get("tiling") or {}
    missing = [k for k in ("encoder", "weights_sha256", "preprocessing")
               if not settings.get(k)]
    missing += [f"tiling.{k}" for k in TILING_REQUIRED if tiling.get(k) is None]
    if missing:
        raise InputError(f"{path}: the training features do not record {', '.join(missing)} "
                         "(features made elsewhere?); predict cannot reproduce them")
    return settings


def probe_record(probe: LinearProbe, classes: Sequence[str]) -> dict:
    """The JSON-able parameters of a fitted :class:`~wsi_ncmi.heads.LinearProbe`."""
    scaler, logreg = probe.pipeline[0], probe.pipeline[-1]
    return {
        "schema_version": PROBE_SCHEMA_VERSION, "input": "z", "classes": list(classes),
        "C": probe.C, "selection": probe.selection, "seed": PROBE_SEED,
        "scaler_mean": scaler.mean_.tolist(), "scaler_scale": scaler.scale_.tolist(),
        "coef": logreg.coef_.tolist(), "intercept": logreg.intercept_.tolist(),
        "fitted_classes": [int(c) for c in logreg.classes_],
    }


def probe_proba(record: dict, z: np.ndarray) -> np.ndarray:
    """(n×C) float64 class probabilities of embeddings ``z`` (n×m) under a stored probe —
    the same numbers as the scikit-learn pipeline it was taken from."""
    x = (np.asarray(z, dtype=np.float64) - np.asarray(record["scaler_mean"])) \
        / np.asarray(record["scaler_scale"])
    logits = x @ np.asarray(record["coef"]).T + np.asarray(record["intercept"])
    if logits.shape[1] == 1:  # binary: scikit-learn keeps one logit, for the second class
        p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        fitted = np.stack([1.0 - p1, p1], 1)
    else:
        e = np.exp(logits - logits.max(1, keepdims=True))
        fitted = e / e.sum(1, keepdims=True)
    out = np.zeros((len(x), len(record["classes"])))
    out[:, record["fitted_classes"]] = fitted
    return out


def load_or_fit_probe(run_dir: Path, fold: int) -> dict:
    """The fold's stored probe (``fold_<k>/probe.json``), fitted and stored first when absent
    or made from other embeddings. A run folder that cannot be written is used as is (the
    probe is then refitted on every call, with a warning)."""
    from .encoders import file_sha256

    fold_dir = Path(run_dir) / f"fold_{fold}"
    path, emb_path = fold_dir / PROBE_FILE, fold_dir / "embeddings.npz"
    if not emb_path.is_file():
        raise InputError(f"{emb_path}: not found (needed for the linear probe; or use "
                         "--head centroid)")
    sha = file_sha256(emb_path)
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except ValueError:
            record = {}
        if record.get("embeddings_sha256") == sha and record.get("schema_version") == \
                PROBE_SCHEMA_VERSION:
            return record
    record = fit_probe(run_dir, fold, emb_path, path)
    record["embeddings_sha256"] = sha
    try:
        write_json(path, record)
    except OSError as exc:
        log.warning("%s: cannot store the fitted probe (%s); it will be refitted next time",
                    path, exc)
    return record


def fit_probe(run_dir: Path, fold: int, emb_path: Path, probe_path: Path) -> dict:
    """Fit the fold's probe on its training slides' embeddings; labels and patients come
    from the run's manifest (``data.manifest`` of ``RUN/config.yaml``)."""
    from .heads import fit_linear_probe
    from .manifests import load_manifest
    from .training import map_labels

    cfg = run_config(run_dir)
    manifest = Path((cfg.get("data") or {}).get("manifest") or "")
    if not manifest.is_file():
        raise InputError(f"{probe_path}: not stored yet, and fitting it needs the run's "
                         f"training manifest {manifest} (data.manifest), which is missing; "
                         "run predict once where it exists, or use --head centroid")
    df = load_manifest(manifest, required=("slide_id", cfg["task"]["label_column"]))
    classes, y_all, _ = map_labels(df, cfg["task"])
    label = dict(zip(df["slide_id"], y_all.tolist(), strict=True))
    patient = (dict(zip(df["slide_id"], df["patient_id"].str.strip(), strict=True))
               if "patient_id" in df.columns else {})
    train_ids = next(f["train"] for f in run_folds(run_dir) if int(f["fold"]) == fold)
    bad = [s for s in train_ids if label.get(s, -1) < 0]
    if bad:
        raise InputError(f"{manifest}: {len(bad)} training slide(s) of fold {fold} lack a "
                         f"usable label (e.g. {', '.join(bad[:5])})")
    with np.load(emb_path) as emb:
        row = {str(s): i for i, s in enumerate(emb["slide_id"])}
        absent = [s for s in train_ids if s not in row]
        if absent:
            raise InputError(f"{emb_path}: no embedding for {len(absent)} training slide(s) "
                             f"(e.g. {', '.join(absent[:5])})")
        z = emb["z"][[row[s] for s in train_ids]]
    groups = [patient.get(s, "") for s in train_ids]
    probe = fit_linear_probe(z, np.array([label[s] for s in train_ids]), len(classes),
                             groups=groups if any(groups) else None, seed=PROBE_SEED)
    return {**probe_record(probe, classes), "n_train_slides": len(train_ids)}


@dataclass
class FoldScorer:
    """One fold's model and the parameters of the chosen head."""

    fold: int
    loaded: LoadedModel
    head: str
    probe: dict | None = None
    means: np.ndarray | None = None

    def scores(self, outputs: dict) -> np.ndarray:
        """(n×C) class probabilities from :func:`~wsi_ncmi.inference.run_model` outputs."""
        from .heads import centroid_scores, softmax

        if self.head == "linear_probe":
            return probe_proba(self.probe, outputs["z"])
        if self.head == "centroid":
            return centroid_scores(outputs["p"], self.means)
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
        from .inference import run_model

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
    from .inference import load_fold

    if head not in HEADS:
        raise InputError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    run_dir = Path(run_dir)
    scorers, classes = [], None
    for k in folds:
        fold_dir = run_dir / f"fold_{k}"
        loaded = load_fold(fold_dir, device)
        meta = loaded.meta
        if classes is not None and list(meta["classes"]) != classes:
            raise InputError(f"{fold_dir / 'model.json'}: classes {meta['classes']} differ from "
                             f"fold {folds[0]}'s {classes}")
        classes = list(meta["classes"])
        scorer = FoldScorer(k, loaded, head)
        if head == "linear_probe":
            scorer.probe = load_or_fit_probe(run_dir, k)
        elif head == "centroid":
            means = np.asarray(meta.get("centroid_head_means") or [], dtype=np.float64)
            if means.shape[:1] != (len(classes),) or not np.isfinite(means).all():
                raise InputError(f"{fold_dir / 'model.json'}: no usable centroid_head_means")
            scorer.means = means
        elif meta.get("validation_head") != "classifier":
            raise InputError(f"{fold_dir}: a {meta['loss']} run has no classifier of its own; "
                             "use --head linear_probe or centroid")
        scorers.append(scorer)
    return RunPredictor(run_dir, head, classes, scorers)


def tile_config_for(settings: dict, fallback_mpp: float | None = None) -> TileConfig:
    """The :class:`~wsi_ncmi.tiling.TileConfig` the training slides were tiled with, with
    ``fallback_mpp`` (µm/px) for slides that lack it."""
    from .tiling import TileConfig
    from .tissue import TissueSettings

    t = settings["tiling"]
    return TileConfig(mpp=float(t["target_mpp"]), tile_size=int(t["tile_size"]),
                      overlap=int(t["overlap"]), min_tissue=float(t["min_tissue"]),
                      level_tolerance=float(t["level_tolerance"]), fallback_mpp=fallback_mpp,
                      tissue=TissueSettings(seg_mpp=float(t["seg_mpp"])))


def load_matching_encoder(settings: dict, weights: Path | None, download: bool = False
                          ) -> Encoder:
    """The run's encoder with the weights its training features were made with; refuses
    (:class:`InputError`, one line) on another sha256, missing weights or other
    preprocessing."""
    from .encoders import file_sha256, load_encoder

    name, want = settings["encoder"], settings["weights_sha256"]
    if weights is not None:
        if not Path(weights).is_file():
            raise InputError(f"{weights}: weights file not found")
        got = file_sha256(Path(weights))
        if got != want:
            raise InputError(f"{weights}: sha256 {got[:16]}… differs from the weights the model "
                             f"was trained with ({name}, sha256 {want[:16]}…); refusing to "
                             "predict with another encoder")
        encoder = load_encoder(name, Path(weights))
    else:
        try:
            encoder = load_encoder(name, random_weights=bool(settings.get("random_weights")),
                                   download=download)
        except InputError as exc:
            raise InputError(f"encoder weights of the model ({name}, sha256 {want[:16]}…) "
                             f"cannot be found: {exc}") from None
        if encoder.weights_sha256 != want:
            raise InputError(f"encoder {name}: the available weights ({encoder.weights_source}, "
                             f"sha256 {encoder.weights_sha256[:16]}…) differ from the model's "
                             f"(sha256 {want[:16]}…); pass the right --weights FILE")
    _check_preprocessing(encoder, settings)
    if encoder.weights_source == "random":
        log.warning("the model was trained on features of random encoder weights (test/demo)")
    return encoder


def _check_preprocessing(encoder: Encoder, settings: dict) -> None:
    recorded = settings["preprocessing"]
    side = encoder.spec.input_size or int(settings["tiling"]["tile_size"])
    now = {"input_size": side, "mean": list(encoder.spec.mean), "std": list(encoder.spec.std)}
    differs = [k for k, v in now.items()
               if not np.allclose(np.asarray(recorded.get(k, np.nan), dtype=float), v)]
    if differs:
        raise InputError(f"encoder {encoder.spec.name}: preprocessing {', '.join(differs)} "
                         f"now {[now[k] for k in differs]}, the model's features had "
                         f"{[recorded.get(k) for k in differs]}; refusing to predict")


@dataclass(frozen=True)
class PredictConfig:
    """``run``: run folder; ``folds``: fold numbers used (probabilities averaged); ``head``:
    linear_probe | centroid | classifier; ``weights``: encoder weights file (checked by
    sha256); ``device``: auto | cpu | cuda | cuda:N; ``review_threshold``: top probability
    (0–1) below which a slide is flagged for review; ``fallback_mpp``: level-0 µm/px for
    slides without it in their metadata (as ``tile --fallback-mpp``); ``workers``: tile-reader
    processes (None = extract's default); ``batch_size``: tiles per encoder forward pass;
    ``download``: allow fetching hub weights over the network (default: local cache only)."""

    run: Path
    folds: tuple[int, ...]
    head: str = "linear_probe"
    weights: Path | None = None
    device: str = "auto"
    review_threshold: float = DEFAULT_REVIEW_THRESHOLD
    fallback_mpp: float | None = None
    workers: int | None = None
    batch_size: int = 64
    download: bool = False


@dataclass
class PredictOutcome:
    """What a predict batch did: the per-slide ``summary``, the merged ``predictions`` CSV
    and the ``provenance`` record written."""

    summary: BatchSummary
    predictions: Path
    provenance: Path


def predict_batch(jobs: list[SlideJob], out_dir: Path, config: PredictConfig,
                  shard: str | None = None) -> PredictOutcome:
    """Predict every job of this shard into the workspace ``out_dir`` (see module docstring);
    slides already predicted with the same run, folds and head are skipped."""
    import torch

    from .extraction import ExtractConfig, extract_key, precision_for, select_device
    from .provenance import write_record
    from .tilefile import settings_key

    if not 0.0 <= config.review_threshold <= 1.0:
        raise InputError(f"--review-threshold {config.review_threshold}: must be in [0, 1]")
    index, count = parse_shard(shard)
    mine = [j for j in jobs if in_shard(j.slide_id, index, count)]
    settings = read_feature_settings(config.run)
    device = select_device(config.device)
    predictor = load_predictor(config.run, config.folds, config.head, str(device))
    encoder = load_matching_encoder(settings, config.weights, config.download)
    encoder.model.to(device, memory_format=torch.channels_last)
    extract_cfg = ExtractConfig(encoder=settings["encoder"], weights=config.weights,
                                random_weights=encoder.weights_source == "random",
                                device=str(device), batch_size=config.batch_size,
                                workers=(ExtractConfig.workers if config.workers is None
                                         else config.workers))
    tile_cfg = tile_config_for(settings, config.fallback_mpp)
    e_key = extract_key(encoder, extract_cfg, precision_for(encoder, device, extract_cfg.precision))
    model_files = _model_files(config.run, predictor)
    key = settings_key({"run": str(Path(config.run).resolve()), "folds": predictor.folds,
                        "head": config.head,
                        "files": _digests(Path(config.run), model_files)})
    step = _SlideSteps(out_dir, tile_cfg, extract_cfg, encoder, device, e_key, predictor, key)
    summary = run_batch(mine, Ledger(out_dir, "predict"), step.process, step.is_done)
    csv_path = merge_predictions(out_dir, key, predictor.classes, config.review_threshold)
    finished = [j for j in mine if j.slide_id in set(summary.done) | set(summary.skipped)]
    outputs = [csv_path] + [p for j in finished for p in step.outputs(j.slide_id)]
    inputs = [j.path for j in finished] + model_files + [Path(config.run) / FEATURES_FILE]
    inputs += [config.weights] if config.weights else []
    tag = record_tag(jobs, shard)
    record = write_record(out_dir / "provenance", command="predict",
                          config={**asdict(config), "shard": shard, "feature_settings": settings,
                                  "probe_seed": PROBE_SEED},
                          inputs=inputs, outputs=outputs, name=f"predict-{tag}.json")
    return PredictOutcome(summary, csv_path, record)


@dataclass
class _SlideSteps:
    """Tile → extract → aggregate → heatmap for one slide, each step skipped when done."""

    out_dir: Path
    tile_cfg: TileConfig
    extract_cfg: ExtractConfig
    encoder: Encoder
    device: torch.device
    extract_key: str
    predictor: RunPredictor
    key: str

    def features(self, slide_id: str) -> Path:
        from .featurefile import features_path

        return features_path(self.out_dir, self.extract_cfg.encoder, slide_id)

    def record_path(self, slide_id: str) -> Path:
        return self.out_dir / "predictions" / f"{slide_id}.json"

    def outputs(self, slide_id: str) -> list[Path]:
        heat = self.out_dir / "heatmaps"
        return [self.record_path(slide_id), heat / f"{slide_id}.png",
                heat / f"{slide_id}.geojson", self.features(slide_id),
                self.out_dir / "tiles" / f"{slide_id}.h5"]

    def is_done(self, job: SlideJob) -> bool:
        try:
            record = json.loads(self.record_path(job.slide_id).read_text())
        except (OSError, ValueError):
            return False
        return record.get("key") == self.key and all(p.is_file()
                                                     for p in self.outputs(job.slide_id))

    def process(self, job: SlideJob) -> dict:
        from .extraction import extract_slide
        from .featurefile import is_complete
        from .heatmaps import SlideCall, write_heatmap
        from .tilefile import read_tile_file
        from .tiling import tile_complete, tile_slide

        sid, ws = job.slide_id, self.out_dir
        if not tile_complete(ws, sid, self.tile_cfg):
            tile_slide(job.path, sid, ws, self.tile_cfg, job.mpp)
        tile_file = ws / "tiles" / f"{sid}.h5"
        grid = read_tile_file(tile_file)
        if len(grid.coords) == 0:
            raise InputError(f"{job.path}: no tissue tiles found; nothing to predict")
        features = self.features(sid)
        if not is_complete(features, str(grid.attrs.get("settings_key", "")), self.extract_key):
            extract_slide(job.path, tile_file, features, self.encoder, self.extract_cfg,
                          self.device)
        result = self.predictor.predict(features.parent, [sid])
        proba = result["proba"][0]
        best = int(proba.argmax())
        classes = self.predictor.classes
        call = SlideCall(classes[best], float(proba[best]), self.predictor.head)
        heatmaps = write_heatmap(ws / "heatmaps", sid, job.path, features,
                                 result["attention"][0], call)
        record = {"slide_id": sid, "key": self.key, "source": job.path.name,
                  "run": str(Path(self.predictor.run_dir).resolve()),
                  "folds": self.predictor.folds, "head": self.predictor.head,
                  "classes": classes, "predicted_class": classes[best],
                  "probabilities": {c: float(p) for c, p in zip(classes, proba, strict=True)},
                  "n_tiles": len(result["attention"][0])}
        write_json(self.record_path(sid), record)
        return {"n_tiles": record["n_tiles"], "predicted_class": classes[best],
                "probability": round(float(proba[best]), 4),
                "outputs": {"prediction": str(self.record_path(sid).relative_to(ws)),
                            "heatmap": str(heatmaps[0].relative_to(ws)),
                            "geojson": str(heatmaps[1].relative_to(ws))}}


def merge_predictions(out_dir: Path, key: str, classes: list[str],
                      review_threshold: float) -> Path:
    """Rewrite ``out_dir/predictions.csv`` from the per-slide records made with ``key`` (all
    shards); records of other runs, heads or folds are left out (and counted in the log)."""
    import pandas as pd

    rows, other = [], 0
    for path in sorted((Path(out_dir) / "predictions").glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("key") != key:
            other += 1
            continue
        probs = [rec["probabilities"][c] for c in classes]
        rows.append({"slide_id": rec["slide_id"], "predicted_class": rec["predicted_class"],
                     **{f"prob_{c}": p for c, p in zip(classes, probs, strict=True)},
                     "head": rec["head"], "folds": ";".join(map(str, rec["folds"])),
                     "review": bool(max(probs) < review_threshold),
                     "n_tiles": rec["n_tiles"]})
    if other:
        log.info("predictions.csv: %d record(s) made with another run, head or folds left out",
                 other)
    columns = ["slide_id", "predicted_class", *(f"prob_{c}" for c in classes), "head", "folds",
               "review", "n_tiles"]
    out = Path(out_dir) / "predictions.csv"
    with atomic_path(out) as tmp:
        pd.DataFrame(rows, columns=columns).sort_values("slide_id").to_csv(tmp, index=False)
    return out


def _model_files(run_dir: Path, predictor: RunPredictor) -> list[Path]:
    files = [Path(run_dir) / "config.yaml", Path(run_dir) / "splits.json"]
    for k in predictor.folds:
        fold_dir = Path(run_dir) / f"fold_{k}"
        files += [fold_dir / "model.json", fold_dir / "model.safetensors"]
        if predictor.head == "linear_probe" and (fold_dir / PROBE_FILE).is_file():
            files.append(fold_dir / PROBE_FILE)
    return files


def _digests(run_dir: Path, paths: Sequence[Path]) -> dict[str, str]:
    """sha256 of each existing file, keyed by its path relative to ``run_dir``."""
    from .encoders import file_sha256

    return {str(p.relative_to(run_dir)): file_sha256(p) for p in paths if p.is_file()}
