"""Shared fixtures: synthetic slides generated on the fly (seconds, cached per session), and
headless Chromium for the review page's browser tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from wsi_ncmi.slides.synthetic import write_synthetic_slide

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


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


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium (or ``$WSI_NCMI_CHROMIUM``) through Playwright; the test is skipped,
    with the reason, when either is missing."""
    executable = os.environ.get("WSI_NCMI_CHROMIUM") or shutil.which("chromium")
    if executable is None:
        pytest.skip("no Chromium installed (Debian: apt-get install -y chromium); the review "
                    "page's browser test needs it")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
