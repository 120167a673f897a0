"""Synthetic cohorts whose slides differ the way real cohorts' slides do.

A :class:`CohortSpec` holds the classes (:class:`LesionClass`: a lesion kind and the range
of the lesion's largest diameter, in µm, that defines the class), the centres
(:class:`Centre`: the scanner's true µm/px, file formats, pyramids, tile sizes, JPEG quality,
stain), how many patients and slides per patient, slide sizes, tissue, bad files and the
split. :func:`write_cohort` writes into a folder:

- the slides, named ``<centre>_p<patient>_s<slide>`` (e.g. ``c2_p017_s1.svs``), never after
  their label; a DICOM slide is a folder ``<id>/`` holding ``<id>.dcm`` (level 0, what the
  manifest names) and ``<id>_level<i>.dcm``;
- ``manifest.csv``: ``slide_id, path`` (relative to the folder) ``, label, patient_id,
  group`` (centre) ``, split, mpp`` (the true µm/px, only for slides that record none and
  only if the spec says the manifest supplies it);
- ``truth.csv``: what each slide really is, for tests (:data:`TRUTH_COLUMNS`);
- ``cohort.json``: the spec, seed and :data:`GENERATOR_VERSION`; a later call with the
  same ones reuses the files (another spec's slides listed in ``truth.csv`` are removed).

Presets are in :mod:`wsi_ncmi.slides.cohort_presets`.
Bad files, one extra slide of an existing patient per entry of ``bad_files``, are kinds of
:data:`wsi_ncmi.slides.synthetic.DAMAGE_KINDS`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .synthetic import (
    DAMAGE_KINDS,
    FORMATS,
    SUFFIXES,
    Stain,
    damage_slide,
    pyramid_levels,
    write_synthetic_slide,
)

# Raise when a change makes the same spec and seed write different slides: it invalidates
# cohorts that write_cohort would otherwise reuse.
GENERATOR_VERSION = 2
VENDORS = {"tiff": "generic-tiff", "svs": "aperio", "dicom": "dicom"}
TRUTH_COLUMNS = (
    "slide_id", "path", "label", "patient_id", "centre", "format", "vendor", "width", "height",
    "true_mpp", "recorded_mpp", "downsamples", "tile", "quality", "fragments", "tissue_share",
    "lesion_kind", "lesion_diameter_um", "lesion_area_mm2", "lesion_x", "lesion_y",
    "stain_h", "stain_e", "damage", "corrupt_tiles",
)


@dataclass(frozen=True)
class LesionClass:
    """A class: its ``label``, the lesion ``kind`` its slides carry (``None``: no lesion),
    the range ``diameter_um`` = (lo, hi] of the lesion's largest diameter (µm) that defines
    the class, and the narrower range ``draw_um`` the generator draws diameters from."""

    label: str
    kind: str | None
    diameter_um: tuple[float, float] = (0.0, 0.0)
    draw_um: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class Centre:
    """A centre's scanner: true level-0 ``mpp`` (µm/px), and the ``formats``, ``pyramids``
    (level downsample lists) and ``tiles`` (px) its slides come in, cycled over its slides
    (slide k gets entry k mod len); JPEG ``quality`` drawn in [lo, hi]; ``stain`` (varied
    per slide by the spec's ``stain_jitter``); every ``no_mpp_every``-th slide, from its
    first, records no µm/px (0: all record it; DICOM slides always do)."""

    name: str
    mpp: float
    formats: tuple[str, ...] = ("tiff",)
    pyramids: tuple[tuple[int, ...], ...] = ((1, 4, 16),)
    tiles: tuple[int, ...] = (256,)
    quality: tuple[int, int] = (80, 90)
    stain: Stain = field(default_factory=Stain)
    no_mpp_every: int = 0


@dataclass(frozen=True)
class CohortSpec:
    """What :func:`write_cohort` makes.

    Patient k belongs to centre k mod C and class (k div C + k mod C) mod K, so any number
    of patients spreads evenly over centres and classes, and C·K patients hold every
    (centre, class) pair. Each patient has ``slides_per_patient`` slides of its class.
    Slide width is drawn log-uniformly in ``width_mm`` (mm; at least 2.5 lesion
    diameters), height = width · U(``aspect``); ``fragments`` (inclusive range) tissue
    pieces whose size is scaled by U(``tissue_scale``). ``bad_files``: one extra slide per
    entry, of that damage kind, given to a patient chosen at random. Split: with
    ``holdout`` (a centre name) all of that centre's patients are ``test`` and the others
    ``train``/``val`` by ``split_shares[:2]``; else ``train/val/test`` by ``split_shares``,
    per class, by patient. ``manifest_mpp``: the manifest gives the true µm/px of slides
    that record none."""

    name: str
    classes: tuple[LesionClass, ...]
    centres: tuple[Centre, ...]
    patients: int
    slides_per_patient: int = 1
    width_mm: tuple[float, float] = (1.0, 2.5)
    aspect: tuple[float, float] = (0.6, 0.85)
    fragments: tuple[int, int] = (1, 4)
    tissue_scale: tuple[float, float] = (0.8, 1.3)
    bad_files: tuple[str, ...] = ()
    holdout: str | None = None
    split_shares: tuple[float, float, float] = (0.6, 0.2, 0.2)
    manifest_mpp: bool = True
    stain_jitter: float = 0.03

    def __post_init__(self) -> None:
        if self.patients < 1 or self.slides_per_patient < 1:
            raise ValueError("a cohort needs at least one patient and one slide per patient")
        names = [c.name for c in self.centres]
        if self.holdout is not None and self.holdout not in names:
            raise ValueError(f"holdout {self.holdout!r} is not one of the centres {names}")
        if bad := [b for b in self.bad_files if b not in DAMAGE_KINDS]:
            raise ValueError(f"bad_files {bad} are not among {DAMAGE_KINDS}")
        if bad := sorted({f for c in self.centres for f in c.formats} - set(FORMATS)):
            raise ValueError(f"formats {bad} are not among {FORMATS}")


@dataclass(frozen=True)
class SlidePlan:
    """One slide to write; all sizes in level-0 px unless named otherwise."""

    slide_id: str
    patient_id: str
    centre: str
    label: str
    split: str
    format: str
    width: int
    height: int
    mpp: float
    record_mpp: bool
    downsamples: tuple[int, ...]
    tile: int
    quality: int
    stain: Stain
    lesion_kind: str | None
    lesion_um: float | None
    fragments: int
    tissue_scale: float
    seed: int
    damage: str = ""

    @property
    def path(self) -> str:
        """The slide's file, relative to the cohort folder."""
        name = self.slide_id + SUFFIXES[self.format]
        return f"{self.slide_id}/{name}" if self.format == "dicom" else name


@dataclass(frozen=True)
class Cohort:
    """A written cohort: its ``folder``, ``manifest`` and ``truth`` CSV paths, and one truth
    record (a dict with :data:`TRUTH_COLUMNS`) per slide, in manifest order."""

    folder: Path
    manifest: Path
    truth: Path
    slides: tuple[dict, ...]


def plan_cohort(spec: CohortSpec, seed: int = 0) -> list[SlidePlan]:
    """Every slide of ``spec`` (the bad ones last), drawn deterministically from ``seed``."""
    rng = np.random.default_rng(seed)
    n_c, n_k = len(spec.centres), len(spec.classes)
    members = [(k % n_c, (k // n_c + k % n_c) % n_k) for k in range(spec.patients)]
    splits = _splits(spec, members, rng)
    per_centre = [0] * n_c
    plans = []
    for k, (c, cls) in enumerate(members):
        for j in range(spec.slides_per_patient):
            plans.append(_plan_slide(spec, rng, k, j, spec.centres[c], per_centre[c],
                                     spec.classes[cls], splits[k]))
            per_centre[c] += 1
    for i, kind in enumerate(spec.bad_files):
        k = int(rng.integers(spec.patients))
        c, cls = members[k]
        plans.append(_plan_slide(spec, rng, k, spec.slides_per_patient + i, spec.centres[c],
                                 per_centre[c], spec.classes[cls], splits[k], kind))
        per_centre[c] += 1
    return plans


def write_cohort(spec: CohortSpec, folder: str | Path, seed: int = 0,
                 workers: int = 1) -> Cohort:
    """Write the slides, ``manifest.csv``, ``truth.csv`` and ``cohort.json`` of ``spec`` into
    ``folder`` (see the module docstring) with ``workers`` processes; reuse them if
    ``cohort.json`` says they were made from the same spec and seed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"spec": asdict(spec), "seed": seed, "generator": GENERATOR_VERSION},
                        sort_keys=True, default=str)
    stamp, truth_csv = folder / "cohort.json", folder / "truth.csv"
    previous = _read_truth(truth_csv)
    if stamp.is_file() and stamp.read_text() == record and previous and all(
            (folder / row["path"]).exists() for row in previous):
        return Cohort(folder, folder / "manifest.csv", truth_csv, tuple(previous))
    stamp.unlink(missing_ok=True)
    for row in previous:  # another spec's slides must not linger among this one's
        _remove_slide(folder, row)
    plans = plan_cohort(spec, seed)
    if any(p.format == "dicom" for p in plans) and not importlib.util.find_spec("wsidicomizer"):
        raise ImportError(f"cohort {spec.name!r} has DICOM slides, which need the optional "
                          "dependency wsidicomizer: pip install 'wsi-ncmi[dicom]'")
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            truths = list(pool.map(write_planned_slide, plans, [folder] * len(plans)))
    else:
        truths = [write_planned_slide(p, folder) for p in plans]
    _write_csv(folder / "manifest.csv", [_manifest_row(spec, p) for p in plans])
    _write_csv(truth_csv, truths, TRUTH_COLUMNS)
    stamp.write_text(record)
    return Cohort(folder, folder / "manifest.csv", truth_csv,
                  tuple({k: str(v) for k, v in t.items()} for t in truths))


def write_planned_slide(plan: SlidePlan, folder: Path) -> dict:
    """Write one planned slide under ``folder``; return its truth record."""
    path = folder / plan.path
    path.parent.mkdir(parents=True, exist_ok=True)
    truth = {"slide_id": plan.slide_id, "path": plan.path, "label": plan.label,
             "patient_id": plan.patient_id, "centre": plan.centre, "format": plan.format,
             "vendor": VENDORS[plan.format], "width": plan.width, "height": plan.height,
             "true_mpp": plan.mpp, "recorded_mpp": plan.mpp if plan.record_mpp else "",
             "downsamples": ";".join(map(str, pyramid_levels(plan.width, plan.height,
                                                            plan.downsamples))),
             "tile": plan.tile, "quality": plan.quality, "fragments": plan.fragments,
             "tissue_share": "", "lesion_kind": plan.lesion_kind or "",
             "lesion_diameter_um": 0.0, "lesion_area_mm2": 0.0, "lesion_x": "", "lesion_y": "",
             "stain_h": round(plan.stain.hematoxylin, 4), "stain_e": round(plan.stain.eosin, 4),
             "damage": plan.damage, "corrupt_tiles": ""}
    if plan.damage == "not_a_slide":
        damage_slide(path, "not_a_slide")
        return truth
    layout = write_synthetic_slide(
        path, plan.width, plan.height, mpp=plan.mpp, seed=plan.seed, lesion=plan.lesion_kind,
        downsamples=plan.downsamples, tile=plan.tile, quality=plan.quality,
        format=plan.format, record_mpp=plan.record_mpp, stain=plan.stain,
        lesion_um=plan.lesion_um, fragments=plan.fragments, tissue_scale=plan.tissue_scale)
    tissue, _ = layout.masks(max(1.0, max(plan.width, plan.height) / 512))
    truth["tissue_share"] = round(float(tissue.mean()), 4)
    if layout.shapes:
        diameter, area = layout.lesion_extent()
        truth |= {"lesion_diameter_um": round(diameter * plan.mpp, 2),
                  "lesion_area_mm2": round(area * plan.mpp**2 / 1e6, 6),
                  "lesion_x": round(layout.shapes[0].cx), "lesion_y": round(layout.shapes[0].cy)}
    if plan.damage:
        corrupted = damage_slide(path, plan.damage, layout, plan.seed)
        truth["corrupt_tiles"] = ";".join(f"{x}:{y}" for x, y in corrupted)
    return truth


def _plan_slide(spec: CohortSpec, rng: np.random.Generator, k: int, j: int, centre: Centre,
                index: int, cls: LesionClass, split: str, damage: str = "") -> SlidePlan:
    formats = centre.formats
    if damage:  # damaged files are TIFF-based: their damage is defined on TIFF tiles
        formats = tuple(f for f in formats if f != "dicom") or ("svs",)
    lesion_um = float(rng.uniform(*cls.draw_um)) if cls.kind is not None else None
    lo, hi = spec.width_mm
    drawn_mm = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    # a bad file's size does not matter: keep it cheap to write
    width_mm = max(lo if damage else drawn_mm, 2.5 * (lesion_um or 0) / 1000)
    width = round(width_mm * 1000 / centre.mpp)
    height = round(width * rng.uniform(*spec.aspect))
    fmt = formats[index % len(formats)]
    downsamples = centre.pyramids[index % len(centre.pyramids)]
    if fmt == "dicom":  # wsidicom needs every level to be an exact integer downsample
        step = max(downsamples)
        width, height = (max(step, v // step * step) for v in (width, height))
    record_mpp = not (centre.no_mpp_every and index % centre.no_mpp_every == 0)
    return SlidePlan(
        slide_id=f"{centre.name}_p{k:03d}_s{j}", patient_id=f"p{k:03d}", centre=centre.name,
        label=cls.label, split=split, format=fmt, width=width, height=height, mpp=centre.mpp,
        record_mpp=record_mpp or fmt == "dicom", downsamples=downsamples,
        tile=centre.tiles[index % len(centre.tiles)],
        quality=int(rng.integers(centre.quality[0], centre.quality[1] + 1)),
        stain=centre.stain.jittered(rng, spec.stain_jitter), lesion_kind=cls.kind,
        lesion_um=lesion_um, fragments=int(rng.integers(spec.fragments[0],
                                                        spec.fragments[1] + 1)),
        tissue_scale=float(rng.uniform(*spec.tissue_scale)),
        seed=int(rng.integers(2**31)), damage=damage)


def _splits(spec: CohortSpec, members: list[tuple[int, int]],
            rng: np.random.Generator) -> list[str]:
    """train/val/test per patient: the holdout centre's patients are test; the others are
    divided per class by the split shares (test share 0 with a holdout)."""
    split = ["test"] * len(members)
    held = [i for i, (c, _) in enumerate(members)
            if spec.centres[c].name == spec.holdout]
    shares = np.array(spec.split_shares, float)
    if spec.holdout is not None:
        shares[2] = 0.0
    shares /= shares.sum()
    for cls in range(len(spec.classes)):
        pool = [i for i, (_, k) in enumerate(members) if k == cls and i not in held]
        rng.shuffle(pool)
        bounds = np.round(np.cumsum(shares) * len(pool)).astype(int)
        for rank, i in enumerate(pool):
            split[i] = ("train", "val", "test")[int(np.searchsorted(bounds, rank, "right"))]
    return split


def _manifest_row(spec: CohortSpec, plan: SlidePlan) -> dict:
    supplied = spec.manifest_mpp and not plan.record_mpp and plan.damage != "not_a_slide"
    return {"slide_id": plan.slide_id, "path": plan.path, "label": plan.label,
            "patient_id": plan.patient_id, "group": plan.centre, "split": plan.split,
            "mpp": plan.mpp if supplied else ""}


def _remove_slide(folder: Path, row: dict) -> None:
    """Delete a slide this module wrote (``<id>.<ext>`` or the DICOM folder ``<id>/``), and
    nothing else whatever ``row`` says."""
    sid, parts = row.get("slide_id", ""), Path(row.get("path", "")).parts
    if not (sid.replace("_", "").isalnum() and parts and parts[0].startswith(sid)):
        return
    if parts[0] == sid and len(parts) == 2:
        shutil.rmtree(folder / sid, ignore_errors=True)
    elif len(parts) == 1 and parts[0] in {sid + s for s in SUFFIXES.values()}:
        (folder / parts[0]).unlink(missing_ok=True)


def _read_truth(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict], columns: tuple[str, ...] | None = None) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
