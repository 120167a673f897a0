"""Tissue segmentation on a low-resolution overview of the slide.

Saturation (HSV) thresholded by Otsu's method, never below ``min_saturation`` so that a blank
slide does not turn its noise into tissue; then morphological closing (joins fragments) and
opening, and contours filtered by area. Holes (lumens, tears, fat) stay holes: the closing
would fill every hole narrower than its kernel (about 0.01 mm² at the default 16 µm/px, five
times ``min_hole_area_mm2``), so the holes of the thresholded mask are put back after it; holes
under ``min_hole_area_mm2`` count as tissue. Polygons are returned in level-0 pixel
coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .access import SlideInfo
from .overview import read_overview


@dataclass(frozen=True)
class TissueSettings:
    """``seg_mpp``: µm/px of the overview segmented. Areas in mm². ``close_um``: radius of
    the closing that joins tissue fragments, in µm."""

    seg_mpp: float = 16.0
    min_saturation: int = 20
    close_um: float = 24.0
    min_tissue_area_mm2: float = 0.01
    min_hole_area_mm2: float = 0.002


@dataclass
class TissueMap:
    """The overview and its segmentation.

    ``overview``: RGB uint8 (h×w×3); ``mask``: bool (h×w), holes False; ``scale``: level-0 px
    per overview px along (x, y); ``polygons``: list of rings per region, exterior first then
    holes, each an (n×2) float array of level-0 (x, y).
    """

    overview: np.ndarray
    mask: np.ndarray
    scale: tuple[float, float]
    polygons: list[list[np.ndarray]]
    seg_mpp: float

    @property
    def tissue_area_mm2(self) -> float:
        return float(self.mask.sum()) * (self.seg_mpp / 1000) ** 2


def segment(overview: np.ndarray, mpp: float, settings: TissueSettings) -> np.ndarray:
    """Boolean tissue mask of an RGB overview at ``mpp`` µm/px (before area filtering)."""
    sat = cv2.cvtColor(overview, cv2.COLOR_RGB2HSV)[..., 1]
    sat = cv2.medianBlur(sat, 5)
    otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thresholded = (sat > max(otsu, settings.min_saturation)).astype(np.uint8)
    radius = max(1, round(settings.close_um / mpp))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    mask = cv2.morphologyEx(thresholded, cv2.MORPH_CLOSE, kernel)
    mask[enclosed_background(thresholded)] = 0
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    return mask.astype(bool)


def enclosed_background(mask: np.ndarray) -> np.ndarray:
    """Boolean (h×w): background pixels of ``mask`` that tissue encloses (holes), i.e. not
    4-connected to the image border through background."""
    n, labels = cv2.connectedComponents((mask == 0).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    enclosed = np.ones(n, bool)
    enclosed[border] = False
    enclosed[0] = False  # label 0: the tissue itself
    return enclosed[labels]


def regions(
    mask: np.ndarray, mpp: float, settings: TissueSettings
) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """Filter a raw mask's regions by area and redraw it.

    Returns the cleaned mask and the kept regions as contour lists (exterior, holes…) in
    overview pixels.
    """
    contours, hierarchy = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    px_mm2 = (mpp / 1000) ** 2
    kept: list[list[np.ndarray]] = []
    if hierarchy is not None:
        hier = hierarchy[0]
        for i, contour in enumerate(contours):
            if hier[i][3] != -1 or cv2.contourArea(contour) * px_mm2 < settings.min_tissue_area_mm2:
                continue
            rings = [contour]
            child = hier[i][2]
            while child != -1:
                if cv2.contourArea(contours[child]) * px_mm2 >= settings.min_hole_area_mm2:
                    rings.append(contours[child])
                child = hier[child][0]
            kept.append(rings)
    clean = np.zeros(mask.shape, np.uint8)
    for rings in kept:
        cv2.fillPoly(clean, [rings[0]], 1)
        if len(rings) > 1:
            cv2.fillPoly(clean, rings[1:], 0)
    return clean.astype(bool), kept


def find_tissue(slide, info: SlideInfo, settings: TissueSettings) -> TissueMap:
    """Read the overview, segment it and return a :class:`TissueMap`."""
    overview, scale = read_overview(slide, info, settings.seg_mpp)
    seg_mpp = info.mpp * (scale[0] + scale[1]) / 2
    mask, kept = regions(segment(overview, seg_mpp, settings), seg_mpp, settings)
    polygons = [[_to_level0(ring, scale) for ring in rings] for rings in kept]
    return TissueMap(overview, mask, scale, polygons, seg_mpp)


def to_geojson(tissue: TissueMap, slide_id: str) -> dict:
    """GeoJSON FeatureCollection of tissue polygons (level-0 px) that QuPath imports as
    annotations classified ``Tissue``."""
    features = []
    for rings in tissue.polygons:
        coords = [[[round(float(x), 1), round(float(y), 1)] for x, y in ring] for ring in rings]
        for ring in coords:
            ring.append(ring[0])
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": coords},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Tissue", "color": [40, 160, 60]},
                "slide_id": slide_id,
            },
        })
    return {"type": "FeatureCollection", "features": features}


def _to_level0(contour: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    pts = contour.reshape(-1, 2).astype(np.float64) + 0.5
    return pts * np.asarray(scale)
