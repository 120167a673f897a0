import pytest

from wsi_ncmi.errors import SlideError
from wsi_ncmi.slides.levels import plan_read

PYRAMID_40X = (1.0, 4.0, 16.0, 64.0)


def test_level_within_tolerance_is_read_as_is():
    plan = plan_read((1.0, 2.0, 8.0), 0.2465, 0.5, 256)
    assert plan.level == 1
    assert plan.read_size == 256 and not plan.needs_resize
    assert plan.effective_mpp == pytest.approx(0.493)
    assert plan.size_level0 == 512


def test_missing_ideal_level_reads_finer_level_and_downsamples():
    # 0.25 µm/px slide with levels at 1, 4, 16: 0.5 µm/px lies between levels 0 and 1.
    plan = plan_read(PYRAMID_40X, 0.25, 0.5, 256)
    assert plan.level == 0
    assert plan.read_size == 512 and plan.needs_resize
    assert plan.effective_mpp == pytest.approx(0.5)
    assert plan.size_level0 == 512


def test_coarse_target_uses_coarsest_level_finer_than_target():
    plan = plan_read(PYRAMID_40X, 0.25, 2.0, 224)
    assert plan.level == 1  # 1.0 µm/px; 4.0 µm/px would need upsampling
    assert plan.read_size == 448
    assert plan.size_level0 == 448 * 4
    assert plan.effective_mpp == pytest.approx(2.0)


def test_tolerance_boundary():
    assert plan_read((1.0, 4.0), 0.26, 1.0, 256, tolerance=0.05).level == 1  # 1.04: within 5 %
    assert plan_read((1.0, 4.0), 0.27, 1.0, 256, tolerance=0.05).level == 0  # 1.08: outside


def test_target_finer_than_level0_is_refused():
    with pytest.raises(SlideError, match="upsampling is refused"):
        plan_read(PYRAMID_40X, 0.5, 0.25, 256)


def test_slightly_finer_target_within_tolerance_reads_level0():
    plan = plan_read(PYRAMID_40X, 0.5, 0.49, 256)
    assert plan.level == 0 and plan.read_size == 256
    assert plan.effective_mpp == pytest.approx(0.5)


def test_non_integer_downsamples():
    plan = plan_read((1.0, 4.000781, 16.0125), 0.2277, 0.91, 256)
    assert plan.level == 1
    assert plan.size_level0 == round(256 * 4.000781)
