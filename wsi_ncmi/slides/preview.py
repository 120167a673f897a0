"""Preview PNG of a tiled slide: the overview, the tissue outline and the tile grid."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..atomic import atomic_path
from .tissue import TissueMap

MAX_SIDE = 2048
MIN_SIDE = 1024
_OUTLINE = (40, 160, 60)
_HOLE = (30, 90, 220)
_GRID = (20, 20, 20)


def write_preview(
    path: Path, tissue: TissueMap, coords: np.ndarray, size0: int, caption: str
) -> None:
    """Draw tissue exteriors (green), holes (blue) and kept tiles (dark squares) over the
    overview, scaled to ``MIN_SIDE``–``MAX_SIDE`` px on the long side, with a caption."""
    long_side = max(tissue.overview.shape[:2])
    f = min(MAX_SIDE, max(MIN_SIDE, long_side)) / long_side
    img = cv2.resize(tissue.overview, None, fx=f, fy=f,
                     interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    sx, sy = tissue.scale[0] / f, tissue.scale[1] / f
    scale = np.array([sx, sy])
    for x, y in coords:
        p0 = (int(x / sx), int(y / sy))
        p1 = (int((x + size0) / sx), int((y + size0) / sy))
        cv2.rectangle(img, p0, p1, _GRID, 1)
    thickness = max(1, round(max(img.shape[:2]) / 600))
    for rings in tissue.polygons:
        pts = [np.round(r / scale).astype(np.int32) for r in rings]
        cv2.polylines(img, pts[:1], True, _OUTLINE, thickness, cv2.LINE_AA)
        cv2.polylines(img, pts[1:], True, _HOLE, thickness, cv2.LINE_AA)
    bar = np.full((28, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, caption, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", np.vstack([img, bar])[..., ::-1])
        if not ok:
            raise OSError(f"{path}: PNG encoding failed")
        tmp.write_bytes(buf.tobytes())
