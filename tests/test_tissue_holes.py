"""Holes in tissue as ``wsi-ncmi tile`` outlines them (``tissue/<id>.geojson``, drawn in blue
on the preview): every hole of at least ``min_hole_area_mm2`` is kept, smaller ones count as
tissue — whatever the closing that joins fragments would fill."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import tifffile
from cli import run_cli

from wsi_ncmi.slides.tissue import TissueSettings

MPP = 4.0  # level-0 µm/px of the drawn slide: its 16 µm/px overview is 512 px wide
SIDE = 2048
#: hole diameters in µm; at 16 µm/px the closing's 5 px kernel would fill the first three
DIAMETERS_UM = (32.0, 80.0, 112.0, 160.0, 240.0)


def write_disc_with_holes(path: Path) -> list[float]:
    """A pink disc (radius 3 mm) on white with round white holes of :data:`DIAMETERS_UM`;
    returns the holes' areas in mm²."""
    img = np.full((SIDE, SIDE, 3), 242, np.uint8)
    cv2.circle(img, (SIDE // 2, SIDE // 2), int(3000 / MPP), (214, 140, 196), -1)
    areas = []
    for i, d in enumerate(DIAMETERS_UM):
        angle = 2 * math.pi * i / len(DIAMETERS_UM)
        centre = (int(SIDE / 2 + 450 * math.cos(angle)), int(SIDE / 2 + 450 * math.sin(angle)))
        cv2.circle(img, centre, round(d / 2 / MPP), (242, 242, 242), -1)
        areas.append(math.pi * (d / 2000) ** 2)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", metadata=None,
                 resolution=(1e4 / MPP,) * 2, resolutionunit="CENTIMETER")
    return areas


def ring_area_mm2(ring: list[list[float]]) -> float:
    xy = np.asarray(ring)
    x, y = xy[:, 0], xy[:, 1]
    return abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))) / 2 * (MPP / 1000) ** 2


def test_every_hole_over_the_minimum_area_is_outlined(tmp_path):
    areas = write_disc_with_holes(tmp_path / "disc.tif")
    run_cli("tile", tmp_path / "disc.tif", "--out", tmp_path / "ws", "--mpp", MPP,
            "--tile-size", 64)
    features = json.loads((tmp_path / "ws" / "tissue" / "disc.geojson").read_text())["features"]
    assert len(features) == 1
    holes = sorted(ring_area_mm2(r) for r in features[0]["geometry"]["coordinates"][1:])
    expected = [a for a in areas if a >= TissueSettings().min_hole_area_mm2]
    assert len(holes) == len(expected) == 4
    # outlines at 16 µm/px: each hole's area within one overview pixel ring of the drawn one
    for found, drawn in zip(holes, sorted(expected), strict=True):
        d = 2 * math.sqrt(drawn / math.pi) * 1000  # µm
        assert abs(found - drawn) <= math.pi * d * 16 / 1e6 + 0.0005, (found, drawn)
