import numpy as np
import pytest

from wsi_ncmi.slides.grid import grid_coords, stride_level0, tissue_fractions


def test_grid_is_row_major_and_inside():
    coords = grid_coords(1000, 600, 256, 256)
    assert coords.shape == (3 * 2, 2) and coords.dtype == np.int64
    assert coords.tolist() == [[0, 0], [256, 0], [512, 0], [0, 256], [256, 256], [512, 256]]
    assert (coords[:, 0] + 256 <= 1000).all() and (coords[:, 1] + 256 <= 600).all()


def test_overlap_stride():
    assert stride_level0(512, 256, 0) == 512
    assert stride_level0(512, 256, 64) == 384  # 64 px at target = 128 level-0 px
    with pytest.raises(ValueError):
        stride_level0(512, 256, 256)


def test_tissue_fraction_maths():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # left half tissue
    scale = (100.0, 100.0)  # one mask pixel = 100 level-0 px
    coords = np.array([[0, 0], [300, 0], [500, 0], [0, 500]])
    frac = tissue_fractions(mask, scale, coords, 400)
    np.testing.assert_allclose(frac, [1.0, 0.5, 0.0, 1.0])


def test_tissue_fraction_of_tile_smaller_than_a_mask_pixel():
    mask = np.ones((4, 4), bool)
    frac = tissue_fractions(mask, (1000.0, 1000.0), np.array([[10, 10]]), 256)
    assert frac.tolist() == [1.0]
