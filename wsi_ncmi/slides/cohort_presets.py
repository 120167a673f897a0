"""Cohort presets: CAMELYON-17-like (4 classes by lesion size, 5 centres), BRACS-like
(3 classes by lesion pattern, or 7 subtypes by pattern and size; one scanner) and the
demo's small 3-centre cohort.

Each preset is a function returning a :class:`~wsi_ncmi.slides.cohort.CohortSpec`; its
arguments scale it (patients, sizes) for tests, the demo and benchmarks.
"""

from __future__ import annotations

import math

from .cohort import Centre, CohortSpec, LesionClass
from .synthetic import DAMAGE_KINDS, Stain

CAMELYON_THRESHOLDS_UM = (200.0, 2000.0)
# Centre stains, pairwise ≥ 0.08 apart in the optical density of stroma (per-slide jitter of
# 3 % moves it by ~0.01): reference; strong H, weak bluish E; pale H, strong E; dark and
# purple; pale E.
STAINS = (
    Stain(),
    Stain(1.3, 0.8, h_shift=(-0.05, 0.0, 0.12), e_shift=(0.15, 0.0, 0.15),
          gain=(0.97, 0.99, 1.02)),
    Stain(0.85, 1.25, e_shift=(0.0, 0.05, -0.05), gain=(1.02, 0.99, 0.97)),
    Stain(1.2, 1.1, h_shift=(0.1, -0.05, 0.0), e_shift=(-0.05, 0.0, 0.15),
          gain=(1.0, 0.96, 1.0)),
    Stain(0.9, 0.7, gain=(1.0, 1.02, 1.0)),
)


def camelyon_classes(size_scale: float = 0.25) -> tuple[LesionClass, ...]:
    """CAMELYON-17's node classes by the largest metastasis diameter — negative (none),
    itc (≤ 0.2 mm), micro (0.2–2 mm], macro (> 2 mm) — with both thresholds multiplied by
    ``size_scale`` so that macro lesions fit small synthetic slides (at 0.25: ITC ≤ 50 µm,
    micro ≤ 500 µm; at 0.5 µm/px a 256-px tile spans 128 µm, so an ITC sits inside one
    tile, a micro lesion spans a few and a macro lesion many). Metastases are ``dense``."""
    itc, macro = (t * size_scale for t in CAMELYON_THRESHOLDS_UM)
    return (LesionClass("negative", None),
            LesionClass("itc", "dense", (0.0, itc), (0.4 * itc, 0.85 * itc)),
            LesionClass("micro", "dense", (itc, macro), (1.5 * itc, 0.8 * macro)),
            LesionClass("macro", "dense", (macro, math.inf), (1.2 * macro, 1.8 * macro)))


def camelyon_centres(dicom: bool = True) -> tuple[Centre, ...]:
    """Five centres at CAMELYON-17-like level-0 µm/px (0.243, 0.226, 0.2525, 0.25, 0.27)
    with their own formats, pyramids (steps of 2 and 4, missing levels), tile sizes, JPEG
    qualities and stains; c4 records no µm/px in every second slide (from its first).
    ``dicom=False`` gives c3 generic TIFFs instead of DICOM (no optional dependency)."""
    return (
        Centre("c0", 0.243, ("svs",), ((1, 4, 16), (1, 4, 16, 64)), (240,), (70, 80),
               STAINS[0]),
        Centre("c1", 0.226, ("tiff",), ((1, 2, 4, 8, 16), (1, 2, 8)), (256,), (85, 95),
               STAINS[1]),
        Centre("c2", 0.2525, ("svs", "tiff"), ((1, 4, 16), (1, 16)), (240, 512), (75, 90),
               STAINS[2]),
        Centre("c3", 0.25, ("dicom",) if dicom else ("tiff",), ((1, 4, 16), (1, 2, 8, 32)),
               (256, 512), (80, 92), STAINS[3]),
        Centre("c4", 0.27, ("tiff", "svs"), ((1, 8, 32), (1, 4, 16)), (512, 256), (70, 95),
               STAINS[4], no_mpp_every=2),
    )


def camelyon_like(patients: int = 20, slides_per_patient: int = 2, size_scale: float = 0.25,
                  width_mm: tuple[float, float] = (1.0, 3.0), dicom: bool = True,
                  bad_files: tuple[str, ...] = DAMAGE_KINDS,
                  holdout: str | None = None) -> CohortSpec:
    """CAMELYON-17-like: 4 classes by lesion size (:func:`camelyon_classes`), 5 centres
    (:func:`camelyon_centres`), ``patients`` patients (20 hold every centre × class pair
    once) of ``slides_per_patient`` slides, one bad file of each damage kind."""
    return CohortSpec("camelyon_like", camelyon_classes(size_scale), camelyon_centres(dicom),
                      patients, slides_per_patient, width_mm=width_mm, fragments=(1, 5),
                      bad_files=bad_files, holdout=holdout)


BRACS_SCANNER = Centre("bracs", 0.252, ("svs",), ((1, 4, 16), (1, 4, 16, 32)), (240, 256),
                       (70, 90), Stain(1.05, 0.95))
#: BRACS's 7 subtypes in their 3 groups (benign, atypical, malignant): the lesion pattern
#: each group carries in the generator and the lesion size that separates a group's two
#: subtypes (N: no lesion)
BRACS_SUBTYPES = (("N", None, None), ("PB", "glands", "small"), ("UDH", "glands", "large"),
                  ("FEA", "crowded", "small"), ("ADH", "crowded", "large"),
                  ("DCIS", "dense", "small"), ("IC", "dense", "large"))


def bracs_like(patients: int = 30, slides_per_patient: int = 1,
               lesion_um: tuple[float, float] = (250.0, 700.0),
               width_mm: tuple[float, float] = (1.0, 4.0),
               bad_files: tuple[str, ...] = ()) -> CohortSpec:
    """BRACS-like, 3 classes by lesion pattern, one Aperio scanner (0.252 µm/px, SVS):
    BT benign (regular ``glands``), AT atypical (``crowded`` small glands), MT malignant
    (``dense`` invasive). Lesion diameters are drawn in ``lesion_um`` for every class, so
    size says nothing about the class; slide sizes vary 4-fold (biopsies to excisions)."""
    any_size = (0.0, math.inf)
    classes = (LesionClass("BT", "glands", any_size, lesion_um),
               LesionClass("AT", "crowded", any_size, lesion_um),
               LesionClass("MT", "dense", any_size, lesion_um))
    return CohortSpec("bracs_like", classes, (BRACS_SCANNER,), patients, slides_per_patient,
                      width_mm=width_mm, fragments=(1, 6), tissue_scale=(0.6, 1.4),
                      bad_files=bad_files)


def bracs7_like(patients: int = 70, slides_per_patient: int = 1,
                small_um: tuple[float, float] = (150.0, 250.0),
                large_um: tuple[float, float] = (400.0, 700.0),
                width_mm: tuple[float, float] = (1.0, 4.0),
                bad_files: tuple[str, ...] = ()) -> CohortSpec:
    """BRACS-like with the 7 subtypes of :data:`BRACS_SUBTYPES`, one Aperio scanner as
    :func:`bracs_like`. N has no lesion; the two subtypes of a group share its lesion pattern
    (benign ``glands``, atypical ``crowded``, malignant ``dense``) and differ by lesion size:
    the first has a lesion in ``small_um``, the second in ``large_um`` (µm, largest
    diameter; the class ranges split at the gap between them). Like BRACS's fine task, a
    pattern names the group and the subtype takes a second, finer look: a stand-in for the
    task's difficulty, not for its histology."""
    cut = (small_um[1] + large_um[0]) / 2
    sizes = {"small": ((0.0, cut), small_um), "large": ((cut, math.inf), large_um)}
    classes = tuple(LesionClass(label, None) if kind is None else
                    LesionClass(label, kind, *sizes[size])
                    for label, kind, size in BRACS_SUBTYPES)
    return CohortSpec("bracs7_like", classes, (BRACS_SCANNER,), patients,
                      slides_per_patient, width_mm=width_mm, fragments=(1, 6),
                      tissue_scale=(0.6, 1.4), bad_files=bad_files)


def demo(patients: int = 20, width_mm: tuple[float, float] = (1.0, 1.5),
         lesion_um: tuple[float, float] = (250.0, 450.0),
         holdout: str | None = None) -> CohortSpec:
    """The demo's cohort: 3 classes by lesion pattern (``normal`` without lesion,
    ``dense_lesion``, ``gland_lesion``; one lesion of ``lesion_um`` µm), 3 centres at 20×-like
    µm/px (c0: 0.499, SVS; c1: 0.4545, TIFF with steps of 2; c2: 0.5034, TIFF and SVS, a
    pyramid with a missing level, and no recorded µm/px in every third slide from the
    first, which the manifest gives), each with its own stain, tiles and JPEG quality;
    ``patients`` patients of 2 slides (40 slides), slides ``width_mm`` wide (at least 2.5
    lesion diameters; 1.0–1.5 mm: 2 000–3 300 px, ~200 Mpx in all), no bad files."""
    classes = (LesionClass("normal", None),
               LesionClass("dense_lesion", "dense", (0.0, math.inf), lesion_um),
               LesionClass("gland_lesion", "glands", (0.0, math.inf), lesion_um))
    centres = (
        Centre("c0", 0.499, ("svs",), ((1, 4, 16),), (240,), (70, 80), STAINS[0]),
        Centre("c1", 0.4545, ("tiff",), ((1, 2, 4, 8), (1, 8)), (256, 512), (85, 95),
               STAINS[1]),
        Centre("c2", 0.5034, ("tiff", "svs"), ((1, 4, 16), (1, 16)), (512,), (75, 90),
               STAINS[2], no_mpp_every=3),
    )
    return CohortSpec("demo", classes, centres, patients, 2, width_mm=width_mm,
                      holdout=holdout)
