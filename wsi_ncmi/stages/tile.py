"""The tile stage: slides → ``tiles/<id>.h5`` + ``previews/<id>.png`` + ``tissue/<id>.geojson``.

For each slide: resolve its µm/px, choose the level to read
(:mod:`wsi_ncmi.slides.levels`), segment tissue on an overview (:mod:`wsi_ncmi.slides.tissue`),
lay a row-major grid of tiles that lie wholly inside the slide, keep those whose tissue fraction
reaches ``min_tissue``, and publish the outputs atomically. A slide with no tissue is done with
0 tiles (and a note), not an error. Only the pyramid is read: label and macro images never are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import atomic_path, remove_stale_temps
from ..formats.ids import id_path
from ..formats.tilefile import is_complete, settings_key, write_tile_file
from ..slides.access import open_slide, slide_info
from ..slides.grid import grid_coords, stride_level0, tissue_fractions
from ..slides.levels import plan_read
from ..slides.preview import write_preview
from ..slides.tissue import TissueSettings, find_tissue, to_geojson
from ..units import Mpp, Px
from .jobs import SlideJob, record_tag, shard_jobs
from .ledger import Ledger
from .provenance import write_record
from .runner import RunSummary, run_jobs


@dataclass(frozen=True)
class TileConfig:
    """``target_mpp``: µm/px of the tiles. ``tile_size``/``overlap``: px at that µm/px.
    ``min_tissue``: minimum tissue fraction of a kept tile. ``level_tolerance``: relative
    µm/px difference within which a pyramid level is read as is. ``fallback_mpp``: level-0
    µm/px used only for slides without it in their metadata (None = such slides fail)."""

    target_mpp: Mpp = Mpp(0.5)
    tile_size: Px = Px(256)
    overlap: Px = Px(0)
    min_tissue: float = 0.25
    level_tolerance: float = 0.05
    fallback_mpp: Mpp | None = None
    tissue: TissueSettings = field(default_factory=TissueSettings)

    def key(self) -> str:
        settings = asdict(self)
        # digested under the field's first name, so tile files made before it was renamed
        # (and the features made from them) stay reusable
        settings = {"mpp": settings.pop("target_mpp"), **settings}
        return settings_key(settings)


def outputs_for(workspace: Path, slide_id: str) -> dict[str, Path]:
    """The files the tile stage writes for one slide."""
    return {
        "tiles": id_path(workspace / "tiles", slide_id, ".h5"),
        "preview": id_path(workspace / "previews", slide_id, ".png"),
        "geojson": id_path(workspace / "tissue", slide_id, ".geojson"),
    }


def tile_slide(
    path: Path, slide_id: str, workspace: Path, config: TileConfig,
    mpp_override: Mpp | None = None,
) -> dict:
    """Tile one slide; return its ledger fields (``n_tiles``, ``effective_mpp``, outputs…)."""
    out = outputs_for(workspace, slide_id)
    for p in out.values():
        remove_stale_temps(p)
    slide = open_slide(path)
    try:
        info = slide_info(slide, path, mpp_override, config.fallback_mpp)
        plan = plan_read(info.level_downsamples, info.mpp, config.target_mpp, config.tile_size,
                         config.level_tolerance)
        tissue = find_tissue(slide, info, config.tissue)
    finally:
        slide.close()
    stride0 = stride_level0(plan.size_level0, config.tile_size, config.overlap)
    grid = grid_coords(info.dimensions[0], info.dimensions[1], plan.size_level0, stride0)
    fractions = tissue_fractions(tissue.mask, tissue.scale, grid, plan.size_level0)
    keep = fractions >= config.min_tissue
    coords, fractions = grid[keep], fractions[keep]

    with atomic_path(out["geojson"]) as tmp:
        tmp.write_text(json.dumps(to_geojson(tissue, slide_id)))
    caption = (f"{slide_id}  {len(coords)} tiles  {config.tile_size}px @ "
               f"{plan.effective_mpp:.3f} um/px  (level {plan.level})")
    write_preview(out["preview"], tissue, coords, plan.size_level0, caption)
    attrs = {
        "patch_level": plan.level, "patch_size": plan.read_size,
        "patch_size_level0": plan.size_level0, "tile_size": plan.tile_size,
        "target_mpp": plan.target_mpp, "effective_mpp": plan.effective_mpp,
        "level_mpp": plan.level_mpp, "slide_mpp_x": info.mpp_x, "slide_mpp_y": info.mpp_y,
        "mpp_source": info.mpp_source, "overlap": config.overlap,
        "level_tolerance": config.level_tolerance,
        "min_tissue": config.min_tissue, "seg_mpp": config.tissue.seg_mpp,
        "achieved_seg_mpp": tissue.seg_mpp,
        "slide_width": info.dimensions[0], "slide_height": info.dimensions[1],
        "slide_file": path.name, "slide_id": slide_id,
        "tissue_area_mm2": tissue.tissue_area_mm2, "settings_key": config.key(),
    }
    write_tile_file(out["tiles"], coords, fractions, attrs)
    result = {
        "n_tiles": int(len(coords)), "level": plan.level,
        "effective_mpp": round(plan.effective_mpp, 5), "mpp_source": info.mpp_source,
        "tissue_area_mm2": round(tissue.tissue_area_mm2, 4),
        "outputs": {k: str(p.relative_to(workspace)) for k, p in out.items()},
    }
    if len(coords) == 0:
        result["note"] = "no tissue found: 0 tiles"
    return result


def tile_complete(workspace: Path, slide_id: str, config: TileConfig) -> bool:
    """Whether a slide's outputs exist and its tile file checks out for these settings."""
    out = outputs_for(workspace, slide_id)
    return (out["preview"].is_file() and out["geojson"].is_file()
            and is_complete(out["tiles"], config.key()))


def tile_slides(
    jobs: list[SlideJob], workspace: Path, config: TileConfig, shard: str | None = None
) -> RunSummary:
    """Tile every job of this shard, skipping complete slides (see
    :func:`~wsi_ncmi.stages.runner.run_jobs`), and record the run's provenance in
    ``WORKSPACE/provenance/tile-<tag>.json``."""
    summary = run_jobs(
        shard_jobs(jobs, shard),
        Ledger(workspace, "tile"),
        process=lambda j: tile_slide(j.path, j.slide_id, workspace, config, j.mpp_override),
        is_done=lambda j: tile_complete(workspace, j.slide_id, config),
    )
    complete = sorted(summary.complete)
    write_record(workspace / "provenance", command="tile",
                 config={**asdict(config), "shard": shard},
                 inputs=[],
                 slides=[(j.slide_id, j.path) for j in jobs if j.slide_id in summary.complete],
                 outputs=[p for sid in complete for p in outputs_for(workspace, sid).values()],
                 name=f"tile-{record_tag(jobs, shard)}.json")
    return summary

