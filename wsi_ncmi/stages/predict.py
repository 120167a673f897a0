"""``predict``: a trained run on new slides — tile → extract → aggregate → probabilities.

Every slide goes through the same steps the run's training features went through, with the
settings recorded in ``RUN/features.json`` (written by ``train``): tiling (target µm/px,
tile size, overlap, minimum tissue, segmentation µm/px, level tolerance) and the encoder
(name, sha256 of its weights, input side and normalisation). The encoder's weights must be
the very ones the model was trained on (:func:`~wsi_ncmi.model.encoders.load_recorded_encoder`);
a mismatch or missing weights refuses the whole run with one line. Heads and what their
probabilities mean: :mod:`wsi_ncmi.model.predictor`.

The workspace ``OUT`` holds everything, so a rerun skips finished work at every step:
``tiles/``, ``previews/``, ``tissue/``, ``features/<encoder>/`` (as ``tile``/``extract``
write them), ``heatmaps/<slide_id>.png|.geojson`` (:mod:`wsi_ncmi.stages.heatmap`),
``predictions/<slide_id>.json`` (one record per slide), ``predictions/<slide_id>.attention.npy``
(the attention per tile, float64, feature-file row order; folds averaged),
``predictions.csv`` (merged), ``review/`` (the review page, :mod:`wsi_ncmi.stages.review`;
unless ``review`` is None), ``ledger/predict/`` (:mod:`wsi_ncmi.stages.ledger`) and
``provenance/predict-<shard>.json``. The page and ``predictions.csv`` are rebuilt at the end of
every run from the records of all shards.

``predictions.csv``: ``slide_id``, ``predicted_class``, ``prob_<class>`` per class (sum to
1), ``head``, ``folds`` (``;``-separated), ``review`` (True when the top probability is below
the review threshold), ``n_tiles``; one row per slide predicted with this run, head and fold
choice, sorted by slide id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_path, write_json
from ..checksums import file_sha256
from ..errors import InputError
from ..formats.featurefile import features_path, is_complete
from ..formats.ids import id_path
from ..formats.runfolder import (
    FEATURES,
    model_files,
    read_feature_record,
    read_feature_settings,
)
from ..formats.tilefile import read_tile_file, settings_key
from ..model.heads import PROBE_SEED
from ..slides.tissue import TissueSettings
from .heatmap import SlideCall, write_heatmap
from .jobs import SlideJob, record_tag, shard_jobs
from .ledger import Ledger
from .provenance import write_record
from .review import (
    DEFAULT_REVIEW_THRESHOLD,
    ReviewSettings,
    SlideFiles,
    clear_links,
    needs_review,
    page_lock,
    pyramid_path,
    review_slide,
    tile_file_facts,
    write_page,
    write_slide_pyramid,
)
from .runner import RunSummary, run_jobs
from .tile import TileConfig, tile_complete, tile_slide

if TYPE_CHECKING:
    import torch

    from ..model.encoders import Encoder
    from ..model.predictor import RunPredictor
    from .extract import ExtractConfig

log = logging.getLogger("wsi_ncmi")


def tile_config_for(settings: dict, fallback_mpp: float | None = None) -> TileConfig:
    """The :class:`~wsi_ncmi.stages.tile.TileConfig` the training slides were tiled with,
    with ``fallback_mpp`` (µm/px) for slides that lack it."""
    t = settings["tiling"]
    return TileConfig(target_mpp=float(t["target_mpp"]), tile_size=int(t["tile_size"]),
                      overlap=int(t["overlap"]), min_tissue=float(t["min_tissue"]),
                      level_tolerance=float(t["level_tolerance"]), fallback_mpp=fallback_mpp,
                      tissue=TissueSettings(seg_mpp=float(t["seg_mpp"])))


@dataclass(frozen=True)
class PredictConfig:
    """``run``: run folder; ``folds``: fold numbers used (probabilities averaged); ``head``:
    linear_probe | centroid | classifier; ``weights``: encoder weights file (checked by
    sha256); ``device``: auto | cpu | cuda | cuda:N; ``review_threshold``: top probability
    (0–1) below which a slide is flagged for review; ``fallback_mpp``: level-0 µm/px for
    slides without it in their metadata (as ``tile --fallback-mpp``); ``workers``: tile-reader
    processes (None = extract's default); ``batch_size``: tiles per encoder forward pass;
    ``download``: allow fetching hub weights over the network (default: local cache only);
    ``review``: the review page's pyramid settings, or None to write no page."""

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
    review: ReviewSettings | None = ReviewSettings()


@dataclass
class PredictOutcome:
    """What a predict batch did: the per-slide ``summary``, the merged ``predictions`` CSV
    and the ``provenance`` record written."""

    summary: RunSummary
    predictions: Path
    provenance: Path


def predict_slides(jobs: list[SlideJob], out_dir: Path, config: PredictConfig,
                   shard: str | None = None) -> PredictOutcome:
    """Predict every job of this shard into the workspace ``out_dir`` (see module docstring);
    slides already predicted with the same run, folds and head are skipped, and the encoder
    is loaded only when some slide is not."""
    from ..model.device import select_device
    from ..model.predictor import load_predictor

    if not 0.0 <= config.review_threshold <= 1.0:
        raise InputError(f"--review-threshold {config.review_threshold}: must be in [0, 1]")
    mine = shard_jobs(jobs, shard)
    settings = read_feature_settings(config.run)
    recorded = read_feature_record(config.run)["facts"].get("weights_files", [])
    device = select_device(config.device)
    log.info("predict: loading %s (fold(s) %s, head %s) on %s", config.run,
             ", ".join(map(str, config.folds)), config.head, device)
    predictor = load_predictor(config.run, config.folds, config.head, str(device))
    tile_cfg = tile_config_for(settings, config.fallback_mpp)
    files = model_files(config.run, predictor.folds, probe=config.head == "linear_probe",
                        calibration=config.head == "centroid")
    key = settings_key({"run": str(Path(config.run).resolve()), "folds": predictor.folds,
                        "head": config.head,
                        "files": _digests(Path(config.run), files)})
    step = _SlideSteps(out_dir, tile_cfg, settings["encoder"], device, predictor, key,
                       config.review)
    pending = sum(not step.is_done(j) for j in mine)
    if pending:
        step.extraction = load_extraction(settings, config, device, recorded)
    else:
        log.info("predict: all %d slide(s) already predicted with this run, head and folds",
                 len(mine))
    summary = run_jobs(mine, Ledger(out_dir, "predict"), step.process, step.is_done)
    csv_path = merge_predictions(out_dir, key, predictor.classes, config.review_threshold)
    finished = [j for j in mine if j.slide_id in summary.complete]
    outputs = [csv_path] + [p for j in finished for p in step.outputs(j.slide_id)]
    if config.review is not None:
        outputs += write_predict_review(step, config)
    inputs = files + [Path(config.run) / FEATURES]
    weights = step.extraction.encoder.weights_path if step.extraction else None
    inputs += [weights] if weights else []
    tag = record_tag(jobs, shard)
    record = write_record(out_dir / "provenance", command="predict",
                          config={**asdict(config), "shard": shard, "feature_settings": settings,
                                  "probe_seed": PROBE_SEED},
                          inputs=inputs, slides=[(j.slide_id, j.path) for j in finished],
                          outputs=outputs, name=f"predict-{tag}.json")
    return PredictOutcome(summary, csv_path, record)


@dataclass(frozen=True)
class Extraction:
    """The run's encoder on the device, the extract settings and their key (the features'
    ``extract_key``), for slides whose features are not made yet."""

    encoder: Encoder
    config: ExtractConfig
    key: str


def load_extraction(settings: dict, config: PredictConfig, device: torch.device,
                    recorded: Sequence[str] = ()) -> Extraction:
    """Load the encoder recorded in ``settings`` (``RUN/features.json``) with the very weights
    the model was trained on (:func:`~wsi_ncmi.model.encoders.load_recorded_encoder`; the
    weights files ``recorded`` in the run's facts are looked for first)."""
    import torch

    from ..model.encoders import load_recorded_encoder
    from .extract import ExtractConfig, extract_key, precision_of

    log.info("predict: loading the encoder %s", settings["encoder"])
    encoder = load_recorded_encoder(settings, config.weights, config.download, recorded)
    if encoder.weights_source == "random":
        log.warning("the model was trained on features of random encoder weights (test/demo)")
    encoder.model.to(device, memory_format=torch.channels_last)
    extract_cfg = ExtractConfig(encoder=settings["encoder"], weights=config.weights,
                                random_weights=encoder.weights_source == "random",
                                device=str(device), batch_size=config.batch_size,
                                workers=(ExtractConfig.workers if config.workers is None
                                         else config.workers))
    return Extraction(encoder, extract_cfg,
                      extract_key(encoder, extract_cfg, precision_of(encoder, device,
                                                                     extract_cfg)))


@dataclass
class _SlideSteps:
    """Tile → extract → aggregate → heatmap for one slide, each step skipped when done;
    ``extraction`` is set when some slide is not done."""

    out_dir: Path
    tile_cfg: TileConfig
    encoder_name: str
    device: torch.device
    predictor: RunPredictor
    key: str
    review: ReviewSettings | None
    extraction: Extraction | None = None

    def features(self, slide_id: str) -> Path:
        return features_path(self.out_dir, self.encoder_name, slide_id)

    def record_path(self, slide_id: str) -> Path:
        return id_path(self.out_dir / "predictions", slide_id, ".json")

    def attention_path(self, slide_id: str) -> Path:
        return id_path(self.out_dir / "predictions", slide_id, ".attention.npy")

    def files(self, slide_id: str) -> SlideFiles:
        heat = self.out_dir / "heatmaps"
        return SlideFiles(features=self.features(slide_id),
                          tiles=id_path(self.out_dir / "tiles", slide_id, ".h5"),
                          tissue=id_path(self.out_dir / "tissue", slide_id, ".geojson"),
                          heatmap=id_path(heat, slide_id, ".png"),
                          attention=id_path(heat, slide_id, ".geojson"))

    def outputs(self, slide_id: str) -> list[Path]:
        f = self.files(slide_id)
        review = [] if self.review is None else [pyramid_path(self.out_dir / "review",
                                                              slide_id)]
        return [self.record_path(slide_id), self.attention_path(slide_id), f.heatmap,
                f.attention, f.features, f.tiles, *review]

    def is_done(self, job: SlideJob) -> bool:
        try:
            record = json.loads(self.record_path(job.slide_id).read_text())
        except (OSError, ValueError, InputError):
            return False
        settings = None if self.review is None else asdict(self.review)
        return (record.get("key") == self.key
                and (settings is None or (record.get("review") or {}).get("settings") == settings)
                and all(p.is_file() for p in self.outputs(job.slide_id)))

    def process(self, job: SlideJob) -> dict:
        from .extract import extract_slide

        sid, ws = job.slide_id, self.out_dir
        if not tile_complete(ws, sid, self.tile_cfg):
            log.info("predict %s: tiling", sid)
            tile_slide(job.path, sid, ws, self.tile_cfg, job.mpp_override)
        tile_file = id_path(ws / "tiles", sid, ".h5")
        grid = read_tile_file(tile_file)
        if len(grid.coords) == 0:
            raise InputError(f"{job.path}: no tissue tiles found; nothing to predict")
        features = self.features(sid)
        ex = self.extraction
        if not is_complete(features, str(grid.attrs.get("settings_key", "")), ex.key):
            log.info("predict %s: extracting features of %d tile(s)", sid, len(grid.coords))
            extract_slide(job.path, tile_file, features, ex.encoder, ex.config, self.device)
        log.debug("predict %s: aggregating and drawing the heatmap", sid)
        result = self.predictor.predict(features.parent, [sid])
        proba = result["proba"][0]
        best = int(proba.argmax())
        classes = self.predictor.classes
        call = SlideCall(classes[best], float(proba[best]), self.predictor.head)
        attention = np.asarray(result["attention"][0], dtype=np.float64)
        heatmaps = write_heatmap(ws / "heatmaps", sid, job.path, features, attention, call)
        with atomic_path(self.attention_path(sid)) as tmp, open(tmp, "wb") as handle:
            np.save(handle, attention)
        pyramid = None if self.review is None else write_slide_pyramid(
            job.path, ws / "review", sid, self.review, tile_file_facts(tile_file)[1])
        record = {"slide_id": sid, "key": self.key, "source": job.path.name,
                  "run": str(Path(self.predictor.run_dir).resolve()),
                  "folds": self.predictor.folds, "head": self.predictor.head,
                  "classes": classes, "predicted_class": classes[best],
                  "probabilities": {c: float(p) for c, p in zip(classes, proba, strict=True)},
                  "n_tiles": len(attention), "review": pyramid}
        write_json(self.record_path(sid), record)
        return {"n_tiles": record["n_tiles"], "predicted_class": classes[best],
                "probability": round(float(proba[best]), 4),
                "outputs": {"prediction": str(self.record_path(sid).relative_to(ws)),
                            "heatmap": str(heatmaps[0].relative_to(ws)),
                            "geojson": str(heatmaps[1].relative_to(ws))}}


def read_records(out_dir: Path, key: str) -> list[dict]:
    """The per-slide records made with ``key`` (all shards), sorted by file name; records of
    other runs, heads or folds are left out (and counted in the log)."""
    records, other = [], 0
    for path in sorted((Path(out_dir) / "predictions").glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("key") != key:
            other += 1
            continue
        records.append(rec)
    if other:
        log.info("predictions: %d record(s) made with another run, head or folds left out",
                 other)
    return records


def merge_predictions(out_dir: Path, key: str, classes: list[str],
                      review_threshold: float) -> Path:
    """Rewrite ``out_dir/predictions.csv`` from the per-slide records made with ``key`` (all
    shards; :func:`read_records`)."""
    import pandas as pd

    rows = []
    for rec in read_records(out_dir, key):
        probs = [rec["probabilities"][c] for c in classes]
        rows.append({"slide_id": rec["slide_id"], "predicted_class": rec["predicted_class"],
                     **{f"prob_{c}": p for c, p in zip(classes, probs, strict=True)},
                     "head": rec["head"], "folds": ";".join(map(str, rec["folds"])),
                     "review": needs_review(probs, review_threshold),
                     "n_tiles": rec["n_tiles"]})
    columns = ["slide_id", "predicted_class", *(f"prob_{c}" for c in classes), "head", "folds",
               "review", "n_tiles"]
    out = Path(out_dir) / "predictions.csv"
    with atomic_path(out) as tmp:
        pd.DataFrame(rows, columns=columns).sort_values("slide_id").to_csv(tmp, index=False)
    return out


def write_predict_review(step: _SlideSteps, config: PredictConfig) -> list[Path]:
    """Rebuild ``OUT/review/`` from every record made with this run, head and folds (all
    shards); a slide whose files are missing or do not agree is left out with a warning.
    Returns the page's files."""
    review_dir = step.out_dir / "review"
    classes = step.predictor.classes
    with page_lock(review_dir):
        clear_links(review_dir)
        slides = []
        for rec in read_records(step.out_dir, step.key):
            sid = rec["slide_id"]
            try:
                slides.append(review_slide(
                    review_dir, sid, {c: rec["probabilities"][c] for c in classes},
                    np.load(step.attention_path(sid)), step.files(sid),
                    config.review_threshold, pyramid=rec.get("review")))
            except (OSError, ValueError, InputError) as exc:
                log.warning("review page: slide %s left out (%s); rerun predict on it", sid,
                            " ".join(str(exc).split()))
        folds = ", ".join(map(str, step.predictor.folds))
        notes = {"run": str(config.run), "head": config.head.replace("_", " "),
                 "folds": folds, "review threshold": f"{config.review_threshold:g}",
                 "images": f"finest {config.review.finest_mpp:g} µm/px, at most "
                           f"{config.review.max_bytes / 2**20:g} MiB per slide"}
        written = write_page(review_dir, slides, classes,
                             f"predict · {Path(config.run).name} · {len(slides)} slides", notes)
    log.info("review page: %s (%d slides)", written[0], len(slides))
    return written


def _digests(run_dir: Path, paths: Sequence[Path]) -> dict[str, str]:
    """sha256 of each existing file, keyed by its path relative to ``run_dir``."""
    return {str(p.relative_to(run_dir)): file_sha256(p) for p in paths if p.is_file()}
