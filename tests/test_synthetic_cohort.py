"""The synthetic cohort generator: every slide read back through OpenSlide shows the
heterogeneity the truth file claims (formats, levels, µm/px, sizes, tiles, stain), lesions
fall in their class's size range, bad files fail as intended, no file name carries a label,
and the manifest keeps each patient in one split."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import math
import os
import re
from dataclasses import replace

import numpy as np
import openslide
import pytest

from wsi_ncmi.formats.manifests import check_manifest
from wsi_ncmi.slides.access import metadata_mpp
from wsi_ncmi.slides.cohort import TRUTH_COLUMNS, Cohort, plan_cohort, write_cohort
from wsi_ncmi.slides.cohort_presets import (
    bracs7_like,
    bracs_like,
    camelyon_classes,
    camelyon_like,
    demo,
)
from wsi_ncmi.slides.synthetic_tissue import Stain, make_layout, render_tile

HAS_DICOM = importlib.util.find_spec("wsidicomizer") is not None
SIZE_SCALE = 0.1  # class thresholds: ITC ≤ 20 µm < micro ≤ 200 µm < macro


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Cohort:
    """8 patients over 5 centres and 4 classes, one slide each, plus one bad file of each
    kind: 11 slides of 2 000–4 000 px."""
    spec = camelyon_like(patients=8, slides_per_patient=1, size_scale=SIZE_SCALE,
                         width_mm=(0.5, 0.8), dicom=HAS_DICOM)
    return write_cohort(spec, tmp_path_factory.mktemp("cohort"), seed=0)


def good(cohort: Cohort) -> list[dict]:
    return [t for t in cohort.slides if not t["damage"]]


def downsamples(truth: dict) -> list[int]:
    return [int(d) for d in truth["downsamples"].split(";")]


def test_slides_read_back_as_the_truth_says(cohort):
    """Vendor, size, level count and downsamples, tile size and µm/px (or its absence)
    of every good slide, as OpenSlide and the pipeline's µm/px reader see them."""
    check_read_back(cohort)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["demo", "bracs_like"])
def test_preset_cohorts_read_back(preset, tmp_path):
    """The demo's 40 slides and a small BRACS-like cohort, written and read back."""
    spec = demo() if preset == "demo" else bracs_like(patients=6, width_mm=(0.8, 1.6))
    cohort = write_cohort(spec, tmp_path, seed=1)
    check_read_back(cohort)
    for t in cohort.slides:
        lo, hi = next(c.draw_um for c in spec.classes if c.label == t["label"])
        if t["lesion_kind"]:
            assert 0.97 * lo <= float(t["lesion_diameter_um"]) <= hi * 1.03


def check_read_back(cohort: Cohort) -> None:
    for t in good(cohort):
        slide = openslide.OpenSlide(str(cohort.folder / t["path"]))
        props = slide.properties
        assert props["openslide.vendor"] == t["vendor"], t["slide_id"]
        assert slide.dimensions == (int(t["width"]), int(t["height"]))
        assert slide.level_downsamples == pytest.approx(downsamples(t), rel=0.01)
        assert int(props["openslide.level[0].tile-width"]) == int(t["tile"])
        if t["recorded_mpp"]:
            assert metadata_mpp(props) == pytest.approx((float(t["true_mpp"]),) * 2)
        else:
            assert metadata_mpp(props) is None, f"{t['slide_id']} should have no µm/px"
        if t["format"] == "svs":  # Aperio's description carries the JPEG quality
            assert f"Q={t['quality']}" in props["tiff.ImageDescription"]
            assert "thumbnail" in slide.associated_images


def test_the_cohort_is_heterogeneous(cohort):
    """Formats, scanners' µm/px, slides without µm/px, pyramids with and without a level
    near 0.5 µm/px, tile sizes, JPEG qualities and sizes all vary."""
    slides = good(cohort)
    vendors = {t["vendor"] for t in slides}
    assert vendors >= {"aperio", "generic-tiff"} | ({"dicom"} if HAS_DICOM else set())
    assert len({t["true_mpp"] for t in slides}) == 5
    assert any(not t["recorded_mpp"] for t in slides)
    assert {int(t["tile"]) for t in slides} == {240, 256, 512}
    assert len({t["downsamples"] for t in slides}) >= 4
    steps = {b // a for t in slides for a, b in itertools.pairwise(downsamples(t))}
    assert {2, 4} <= steps

    def has_level_near(t: dict, target: float = 0.5) -> bool:
        return any(abs(float(t["true_mpp"]) * d / target - 1) < 0.15 for d in downsamples(t))

    assert any(has_level_near(t) for t in slides) and not all(has_level_near(t) for t in slides)
    qualities = [int(t["quality"]) for t in slides]
    assert 70 <= min(qualities) and max(qualities) <= 95 and max(qualities) - min(qualities) >= 10
    areas = [int(t["width"]) * int(t["height"]) for t in slides]
    assert max(areas) > 2 * min(areas)
    shares = [float(t["tissue_share"]) for t in slides]
    assert max(shares) - min(shares) > 0.1
    assert len({t["fragments"] for t in slides}) >= 2


def test_stain_differs_by_centre(cohort):
    """The median tissue colour (optical density, on the coarsest level still drawn with
    nuclei, ≤ 2 µm/px) differs more between centres than between slides of one centre."""
    colour: dict[str, list[np.ndarray]] = {}
    for t in good(cohort):
        slide = openslide.OpenSlide(str(cohort.folder / t["path"]))
        mpps = [float(t["true_mpp"]) * d for d in slide.level_downsamples]
        level = max(i for i, m in enumerate(mpps) if m <= 2.0)
        rgb = np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level]))
        px = rgb[..., :3].reshape(-1, 3).astype(np.float32)
        tissue = np.maximum(px[px.min(1) < 225], 1)
        colour.setdefault(t["centre"], []).append(np.median(-np.log(tissue / 255), 0))
    within = max(np.linalg.norm(a - b) for c in colour.values() for a in c for b in c)
    means = {c: np.mean(v, 0) for c, v in colour.items()}
    between = min(np.linalg.norm(means[a] - means[b]) for a in means for b in means if a < b)
    assert len(means) >= 4 and between > 2 * within, (between, within)


def test_lesions_fall_in_their_class_range(cohort):
    """Largest diameter inside the class's (lo, hi] µm, an area a lobed ellipse of that
    diameter can have, and dark nuclei where the truth puts a micro or macro lesion."""
    ranges = {c.label: c.diameter_um for c in camelyon_classes(SIZE_SCALE)}
    seen = set()
    for t in good(cohort):
        d, area = float(t["lesion_diameter_um"]), float(t["lesion_area_mm2"]) * 1e6
        if t["label"] == "negative":
            assert d == 0 and area == 0 and not t["lesion_kind"]
            continue
        lo, hi = ranges[t["label"]]
        assert lo < d <= hi, (t["slide_id"], t["label"], d)
        assert 0.3 * math.pi / 4 * d**2 < area <= math.pi / 4 * d**2 * 1.05
        seen.add(t["label"])
        if t["label"] in ("micro", "macro"):
            slide = openslide.OpenSlide(str(cohort.folder / t["path"]))
            half = int(d / float(t["true_mpp"]) / 6)
            x, y = int(t["lesion_x"]) - half, int(t["lesion_y"]) - half
            centre = np.asarray(slide.read_region((x, y), 0, (2 * half, 2 * half)))[..., :3]
            assert centre.mean() < 150, (t["slide_id"], centre.mean())  # stroma is ~190
    assert seen == {"itc", "micro", "macro"}


def test_bad_files_fail_as_intended(cohort):
    bad = {t["damage"]: t for t in cohort.slides if t["damage"]}
    assert set(bad) == {"truncated", "not_a_slide", "corrupt_tiles"}
    for kind in ("truncated", "not_a_slide"):
        with pytest.raises(openslide.OpenSlideError):
            openslide.OpenSlide(str(cohort.folder / bad[kind]["path"]))
    t = bad["corrupt_tiles"]
    path = str(cohort.folder / t["path"])
    tile = int(t["tile"])
    corrupt = [tuple(map(int, xy.split(":"))) for xy in t["corrupt_tiles"].split(";")]
    assert len(corrupt) == 3
    for x, y in corrupt:
        slide = openslide.OpenSlide(path)  # opens: only some tiles are broken
        with pytest.raises(openslide.OpenSlideError, match="JPEG"):
            slide.read_region((x, y), 0, (tile, tile))
    slide = openslide.OpenSlide(path)
    top = slide.level_count - 1
    assert top > 0 and slide.read_region((0, 0), top, slide.level_dimensions[top])


def test_no_label_in_any_file_name(cohort):
    labels = {c.label.lower() for c in camelyon_classes()}
    names = [p for _, dirs, files in os.walk(cohort.folder) for p in dirs + files]
    assert len(names) >= len(cohort.slides)
    for name in names + [t["slide_id"] for t in cohort.slides]:
        assert not any(label in name.lower() for label in labels), name
    assert all(re.fullmatch(r"c\d_p\d{3}_s\d", t["slide_id"]) for t in cohort.slides)


def test_manifest_keeps_patients_in_one_split_and_gives_missing_mpp(cohort):
    with cohort.manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    truth = {t["slide_id"]: t for t in cohort.slides}
    assert [r["slide_id"] for r in rows] == list(truth)
    assert all(tuple(t) == TRUTH_COLUMNS for t in cohort.slides)
    assert list(rows[0]) == ["slide_id", "path", "label", "patient_id", "group", "split", "mpp"]
    split_of: dict[str, set[str]] = {}
    for r in rows:
        t = truth[r["slide_id"]]
        assert (cohort.folder / r["path"]).is_file() and r["path"] == t["path"]
        assert r["group"] == t["centre"] and r["label"] == t["label"]
        split_of.setdefault(r["patient_id"], set()).add(r["split"])
        needs_mpp = not t["recorded_mpp"] and t["damage"] != "not_a_slide"
        assert (float(r["mpp"]) == float(t["true_mpp"])) if needs_mpp else r["mpp"] == ""
    assert all(len(s) == 1 for s in split_of.values())
    assert {s for v in split_of.values() for s in v} <= {"train", "val", "test"}
    report = check_manifest(cohort.manifest, slide_root=cohort.folder)
    assert report.problems == [] and report.rows == len(rows)


def test_holdout_centre_is_the_test_split():
    plans = plan_cohort(camelyon_like(patients=20, holdout="c4"), seed=3)
    assert {p.split for p in plans if p.centre == "c4"} == {"test"}
    assert {p.split for p in plans if p.centre != "c4"} == {"train", "val"}
    pairs = {(p.centre, p.label) for p in plans if not p.damage}
    assert len(pairs) == 20  # every centre has every class


def test_plans_are_deterministic_and_presets_hold_what_they_say():
    assert plan_cohort(camelyon_like(), 7) == plan_cohort(camelyon_like(), 7)
    assert plan_cohort(camelyon_like(), 7) != plan_cohort(camelyon_like(), 8)
    plans = plan_cohort(demo(), 0)
    assert len(plans) == 40 and len({p.patient_id for p in plans}) == 20
    assert {p.label for p in plans} == {"normal", "dense_lesion", "gland_lesion"}
    assert {p.centre for p in plans} == {"c0", "c1", "c2"} and not any(p.damage for p in plans)
    assert {p.format for p in plans} == {"svs", "tiff"} and not all(p.record_mpp for p in plans)
    bracs = plan_cohort(bracs_like(), 0)
    assert {(p.label, p.lesion_kind) for p in bracs} == {("BT", "glands"), ("AT", "crowded"),
                                                         ("MT", "dense")}
    assert {p.format for p in bracs} == {"svs"}
    assert all(250 <= p.lesion_um <= 700 for p in bracs)
    bracs7 = plan_cohort(bracs7_like(patients=70), 0)
    assert {(p.label, p.lesion_kind) for p in bracs7} == {
        ("N", None), ("PB", "glands"), ("UDH", "glands"), ("FEA", "crowded"),
        ("ADH", "crowded"), ("DCIS", "dense"), ("IC", "dense")}
    sizes = {label: [p.lesion_um for p in bracs7 if p.label == label]
             for label in ("PB", "UDH", "FEA", "ADH", "DCIS", "IC")}
    for small, large in (("PB", "UDH"), ("FEA", "ADH"), ("DCIS", "IC")):
        assert max(sizes[small]) <= 250 and min(sizes[large]) >= 400
    assert len(bracs7) == 70 and {p.split for p in bracs7} == {"train", "val", "test"}


def test_lesion_kinds_look_different():
    """At 0.25 µm/px inside the lesion: ``dense`` is darkest; ``glands`` and ``crowded``
    show white lumens; ``crowded`` packs more dark nuclei than ``glands``."""
    noise = np.zeros((512, 512, 3), np.float32)
    stats = {}
    for kind in ("dense", "glands", "crowded"):
        layout = make_layout(4000, 3000, seed=1, lesion=kind, lesion_px=1600)
        s = layout.shapes[0]
        tile = render_tile(layout, s.cx - 128, s.cy - 128, 256, 1, 0.25,
                           np.random.default_rng(0), noise).astype(float)
        stats[kind] = ((tile.max(2) > 235).mean(), (tile.mean(2) < 90).mean())
    assert stats["dense"][1] > 0.5 > stats["crowded"][1] > stats["glands"][1]
    assert stats["glands"][0] > 0.1 and stats["crowded"][0] > 0.1 > stats["dense"][0]


def test_stain_is_a_centre_colour_transform():
    """Identity by default; less H and E make stroma and nuclei paler, more haematoxylin
    makes nuclei darker; the gain scales its channel."""
    rgb = np.random.default_rng(0).uniform(30, 250, (64, 64, 3)).astype(np.float32)
    assert Stain().apply(rgb) == pytest.approx(np.floor(rgb), abs=0.01)
    assert Stain(gain=(1.0, 1.0, 0.9)).apply(rgb)[..., 2] == pytest.approx(
        0.9 * np.floor(rgb[..., 2]), abs=0.01)
    palette = np.array([[[232, 168, 204], [110, 50, 150]]], np.float32)  # stroma, nucleus
    paler = Stain(hematoxylin=0.5, eosin=0.5).apply(palette)
    assert (paler.sum(2) > palette.sum(2) + 30).all()
    assert Stain(hematoxylin=1.5).apply(palette)[0, 1].sum() < palette[0, 1].sum() - 30


def test_a_rerun_reuses_the_cohort_and_another_spec_replaces_it(tmp_path):
    spec = camelyon_like(patients=2, slides_per_patient=2, size_scale=SIZE_SCALE,
                         width_mm=(0.3, 0.4), dicom=False, bad_files=())
    first = write_cohort(spec, tmp_path, seed=0)
    stamp = {t["path"]: (tmp_path / t["path"]).stat().st_mtime_ns for t in first.slides}
    again = write_cohort(spec, tmp_path, seed=0)
    assert again.slides == first.slides
    assert stamp == {p: (tmp_path / p).stat().st_mtime_ns for p in stamp}
    other = write_cohort(replace(spec, slides_per_patient=1), tmp_path, seed=0)
    gone = set(stamp) - {t["path"] for t in other.slides}
    assert len(gone) == 2 and not any((tmp_path / p).exists() for p in gone)
