from pathlib import Path

import pytest

from wsi_ncmi.errors import SlideError
from wsi_ncmi.slides.access import metadata_mpp, open_slide, resolve_mpp, slide_info
from wsi_ncmi.slides.synthetic import write_synthetic_slide

P = Path("x.svs")


def test_openslide_mpp_is_preferred():
    props = {"openslide.mpp-x": "0.2527", "openslide.mpp-y": "0.2531",
             "tiff.XResolution": "10", "tiff.ResolutionUnit": "centimeter"}
    assert metadata_mpp(props) == (0.2527, 0.2531)


@pytest.mark.parametrize("unit,res,expected", [
    ("centimeter", "40000", 0.25),
    ("inch", "101600", 0.25),
])
def test_tiff_resolution_units(unit, res, expected):
    props = {"tiff.XResolution": res, "tiff.YResolution": res, "tiff.ResolutionUnit": unit}
    assert metadata_mpp(props) == pytest.approx((expected, expected))


def test_resolution_without_unit_is_not_trusted():
    props = {"tiff.XResolution": "72", "tiff.YResolution": "72", "tiff.ResolutionUnit": "none"}
    assert metadata_mpp(props) is None


def test_precedence_manifest_then_metadata_then_fallback():
    meta = {"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.25"}
    assert resolve_mpp(P, meta, override=0.5, fallback=1.0) == (0.5, 0.5, "manifest")
    assert resolve_mpp(P, meta, fallback=1.0) == (0.25, 0.25, "metadata")
    assert resolve_mpp(P, {}, fallback=1.0) == (1.0, 1.0, "fallback")


def test_missing_mpp_is_a_clear_error():
    with pytest.raises(SlideError, match=r"x\.svs: no µm/px .*--fallback-mpp"):
        resolve_mpp(P, {})


def test_implausible_mpp_is_refused():
    with pytest.raises(SlideError, match="outside the plausible"):
        resolve_mpp(P, {"openslide.mpp-x": "254", "openslide.mpp-y": "254"})


def test_real_slide_mpp_round_trip(slide_path):
    slide = open_slide(slide_path)
    info = slide_info(slide, slide_path)
    assert (info.mpp_x, info.mpp_y, info.mpp_source) == (0.25, 0.25, "metadata")
    assert info.dimensions == (4096, 3072)
    assert info.level_downsamples == (1.0, 4.0, 16.0)


def test_real_slide_without_mpp(tmp_path):
    path = tmp_path / "nompp.tif"
    write_synthetic_slide(path, 1024, 768, mpp=None, downsamples=(1, 4))
    slide = open_slide(path)
    with pytest.raises(SlideError, match="no µm/px"):
        slide_info(slide, path)
    assert slide_info(slide, path, fallback_mpp=0.5).mpp_source == "fallback"


def test_not_a_slide(tmp_path):
    bogus = tmp_path / "notes.svs"
    bogus.write_text("not an image")
    with pytest.raises(SlideError, match="notes.svs: not a slide"):
        open_slide(bogus)
