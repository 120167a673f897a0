"""Shared fixtures: synthetic slides generated on the fly (seconds, cached per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_ncmi.slides.synthetic import write_synthetic_slide


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory) -> Path:
    """Three small slides (4096 × 3072 px at 0.25 µm/px): no lesion, dense, glands."""
    folder = tmp_path_factory.mktemp("slides")
    for i, lesion in enumerate([None, "dense", "glands"]):
        write_synthetic_slide(folder / f"slide_{i}.tif", 4096, 3072, seed=i, lesion=lesion,
                              downsamples=(1, 4, 16))
    return folder


@pytest.fixture(scope="session")
def slide_path(slide_dir) -> Path:
    return slide_dir / "slide_1.tif"
