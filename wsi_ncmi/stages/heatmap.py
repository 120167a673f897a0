"""Attention heatmaps: where on a slide a trained model looked (PNG + QuPath GeoJSON).

``<slide_id>.png`` and ``<slide_id>.geojson`` (:mod:`wsi_ncmi.stats.attention`) for one slide,
drawn by ``wsi-ncmi heatmap`` (:func:`run_heatmap`), by ``eval --heatmaps``
(:func:`draw_heatmaps`) and by ``predict`` (:func:`write_heatmap`). The PNG's title names the
slide, the predicted class, its probability and the head that gave it — and, for ``eval``'s
labelled slides, the true class. Tile squares need the
tile side in level-0 px (:func:`~wsi_ncmi.formats.featurefile.tile_geometry`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_json
from ..errors import InputError
from ..formats.featurefile import bag_path, tile_geometry
from ..formats.ids import check_id, id_path
from ..formats.runfolder import fold_dir, fold_holding, model_files, read_config, recorded_path
from ..slides.access import open_slide
from ..slides.overview import read_thumbnail
from ..stats.attention import (
    attention_geojson,
    attention_percentiles,
    attention_raster,
    render_heatmap,
)
from ..stats.reports import HEAD_NAMES
from .provenance import write_record

log = logging.getLogger("wsi_ncmi")


@dataclass(frozen=True)
class SlideCall:
    """The prediction shown in a heatmap's title: class name, its probability (0–1), the
    head that produced it and, for a labelled slide, its ``true_class``."""

    predicted_class: str
    probability: float
    head: str
    true_class: str | None = None

    def caption(self, slide_id: str) -> str:
        """The heatmap's title line."""
        truth = f"true {self.true_class}, " if self.true_class is not None else ""
        return (f"{slide_id}: {truth}predicted {self.predicted_class} "
                f"(p = {self.probability:.2f}, {HEAD_NAMES.get(self.head, self.head)})")


def write_heatmap(out_dir: Path, slide_id: str, slide_path: Path, features_file: Path,
                  attention: np.ndarray, call: SlideCall) -> list[Path]:
    """Write ``out_dir/<slide_id>.png`` and ``.geojson`` for one slide; return their paths.

    ``attention`` (N,) is in the row order of ``features_file``, whose ``coords`` place the
    tiles; ``call`` is the prediction named in the title.
    """
    slide = open_slide(slide_path)
    try:
        downsamples = tuple(float(d) for d in slide.level_downsamples)
        width, height = slide.dimensions
    finally:
        slide.close()
    coords, size0 = tile_geometry(features_file, downsamples)
    attention = np.asarray(attention, dtype=np.float64)
    if len(coords) != len(attention) or len(coords) == 0:
        raise InputError(f"{features_file}: {len(coords)} tile(s) but {len(attention)} "
                         "attention value(s)")
    outside = (coords[:, 0] >= width) | (coords[:, 1] >= height) | (coords < 0).any(1)
    if outside.any():
        raise InputError(f"{features_file}: {int(outside.sum())} tile(s) lie outside "
                         f"{slide_path.name} ({width} × {height} px): wrong slide?")
    thumbnail, scale = read_thumbnail(slide_path)
    raster = attention_raster(coords, size0, attention_percentiles(attention),
                              thumbnail.shape[:2], scale)
    png = render_heatmap(id_path(out_dir, slide_id, ".png"), thumbnail, raster,
                         call.caption(slide_id))
    log.debug("wrote %s: %d tile(s) over a %d × %d px thumbnail, titled %r", png, len(coords),
              thumbnail.shape[1], thumbnail.shape[0], call.caption(slide_id))
    geojson = id_path(out_dir, slide_id, ".geojson")
    write_json(geojson, attention_geojson(coords, size0, attention, slide_id))
    return [png, geojson]


def run_heatmap(run_dir: Path, slide_id: str, slide_path: Path, *, fold: int | None = None,
                features_dir: Path | None = None, out_dir: Path | None = None,
                head: str = "linear_probe", device: str = "cpu") -> list[Path]:
    """Heatmap of one slide by one fold of a trained run (the ``wsi-ncmi heatmap`` command).

    ``fold``: default the fold whose test part holds the slide (an out-of-fold view), else
    fold 0 of a single-fold run. ``features_dir``: default ``data.features_dir`` of
    ``RUN/config.yaml``. ``out_dir``: default ``RUN/heatmaps/fold_<k>``. The title shows
    ``head``'s prediction (:mod:`wsi_ncmi.model.predictor`). Returns the PNG and GeoJSON
    paths, and records the provenance beside them (``provenance/heatmap-<slide_id>.json``).
    """
    from ..model.predictor import load_predictor

    run_dir = Path(run_dir)
    check_id(slide_id)
    k = fold if fold is not None else fold_holding(run_dir, slide_id)
    given = features_dir is not None
    features_dir = recorded_path(read_config(run_dir), "features_dir", features_dir, run_dir)
    if not bag_path(features_dir, slide_id).is_file():
        source = "--features-dir" if given else "data.features_dir of RUN/config.yaml"
        raise InputError(f"{bag_path(features_dir, slide_id)}: feature file not found (from "
                         f"{source}); pass --features-dir FOLDER holding {slide_id}.h5")
    predictor = load_predictor(run_dir, [k], head, device)
    result = predictor.predict(Path(features_dir), [slide_id])
    proba = result["proba"][0]
    best = int(proba.argmax())
    call = SlideCall(predictor.classes[best], float(proba[best]), head)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "heatmaps" / f"fold_{k}"
    paths = write_heatmap(out_dir, slide_id, Path(slide_path),
                          bag_path(features_dir, slide_id), result["attention"][0], call)
    write_record(out_dir / "provenance", command="heatmap",
                 config={"run": run_dir, "slide_id": slide_id, "fold": k, "head": head,
                         "features_dir": features_dir, "device": device},
                 inputs=[*model_files(run_dir, [k], head == "linear_probe",
                                      head == "centroid"),
                         bag_path(features_dir, slide_id)],
                 slides=[(slide_id, Path(slide_path))],
                 outputs=paths, name=f"heatmap-{slide_id}.json")
    return paths


def draw_heatmaps(run_dir: Path, picks: Sequence[tuple[int, str, SlideCall]],
                  features_dir: Path, slide_paths: dict[str, Path], out_dir: Path,
                  device: str) -> list[Path]:
    """Heatmaps of the ``picks`` (fold, slide id, the prediction to show), each drawn with
    attention from that fold's model; slide files from ``slide_paths``. A slide whose file is
    missing or unreadable is skipped with a logged reason. Returns the files written."""
    from ..model.inference import load_fold, run_model

    written: list[Path] = []
    models: dict[int, object] = {}
    for i, (fold, sid, call) in enumerate(picks, 1):
        slide_path = slide_paths.get(sid)
        if slide_path is None or not slide_path.is_file():
            log.warning("heatmaps: slide %s skipped: slide file %s not found", sid, slide_path)
            continue
        log.info("heatmap %d/%d: %s (fold %d)", i, len(picks), sid, fold)
        if fold not in models:
            models[fold] = load_fold(fold_dir(run_dir, fold), device)
        attention = run_model(models[fold], features_dir, [sid])["attention"][0]
        try:
            written += write_heatmap(out_dir, sid, slide_path, bag_path(features_dir, sid),
                                     attention, call)
        except InputError as exc:
            log.warning("heatmaps: slide %s skipped: %s", sid, exc)
    log.info("heatmaps: %d of %d slide(s) drawn in %s", len(written) // 2, len(picks), out_dir)
    return written
