"""The tile grid: positions, resolution, read level, tissue filter, boxes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest_fakes import PINK, FakeSlide, slide_image

from napari_care.core.tiling import tile_grid
from napari_care.core.tissue import TissueMask


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    # 2048 x 2048 at 0.5 um/px (20x); pink tissue on [512, 1536) x [512, 1024)
    image = slide_image(2048, 2048, [(512, 512, 1536, 1024, PINK)])
    return FakeSlide(image, tmp_path_factory.mktemp("tiling") / "grid.svs", factors=(1, 2, 4, 16))


def test_whole_slide_positions_at_20x(slide):
    grid = tile_grid(slide, mpp=0.5, tile_size_px=224, min_tissue=0)
    assert len(grid) == 10 * 10  # tiles start at 0, 224, ..., 2016 < 2048
    assert grid.tile_size_level0 == 224.0 and grid.stride_level0 == 224.0
    assert grid.read_level == 0 and grid.read_downsample == 1.0 and grid.target_mpp == 0.5
    np.testing.assert_array_equal(grid.coords, grid.grid * 224)
    assert grid.grid[:, 0].max() == 9 and grid.coords.dtype == np.int64 and grid.grid.dtype == np.int64
    assert np.isnan(grid.tissue_fraction).all()  # no mask asked for


@pytest.mark.parametrize(
    ("kwargs", "level", "size0"),
    [
        ({"mpp": 1.0}, 1, 448.0),
        ({"magnification": 10}, 1, 448.0),
        ({"magnification": 5}, 2, 896.0),
        ({"mpp": 1.5}, 1, 672.0),  # between levels: the finer one, resized
        ({"mpp": 8.0}, 3, 3584.0),
        ({"mpp": 0.25}, 0, 112.0),  # finer than the slide: upsampled from level 0
    ],
)
def test_read_level_is_the_nearest_finer_level(slide, kwargs, level, size0):
    grid = tile_grid(slide, tile_size_px=224, min_tissue=0, **kwargs)
    assert grid.read_level == level
    assert grid.read_downsample == slide.level_downsamples[level]
    assert grid.tile_size_level0 == size0


def test_tissue_filter_keeps_tiles_on_tissue(slide):
    grid = tile_grid(slide, tile_size_px=256, min_tissue=0.5)
    # pink covers tiles x in [512, 1536) = gx 2..5, y in [512, 1024) = gy 2..3
    assert set(map(tuple, grid.grid.tolist())) == {(gx, gy) for gx in range(2, 6) for gy in range(2, 4)}
    assert (grid.tissue_fraction > 0.9).all()
    half = tile_grid(slide, tile_size_px=256, min_tissue=0.5, tissue=TissueMask(np.ones((8, 8), bool), 256.0))
    assert len(half) == 64  # a given mask is used as is


def test_box_subset_keeps_grid_indices(slide):
    whole = tile_grid(slide, mpp=1.0, tile_size_px=224, min_tissue=0)
    box = (500, 700, 1300, 1100)
    from_box = tile_grid(slide, mpp=1.0, tile_size_px=224, min_tissue=0, box=box)
    sub = whole.subset(box)
    np.testing.assert_array_equal(from_box.grid, sub.grid)
    np.testing.assert_array_equal(from_box.coords, sub.coords)
    # tiles of 448 level-0 px intersecting x in [500, 1300): gx 1 and 2; y in [700, 1100): gy 1 and 2
    assert set(map(tuple, sub.grid.tolist())) == {(1, 1), (2, 1), (1, 2), (2, 2)}
    assert len(whole.subset((0, 0, 1, 1))) == 1 and len(whole.subset((5000, 5000, 6000, 6000))) == 0


def test_overlap_sets_the_stride(slide):
    grid = tile_grid(slide, mpp=1.0, tile_size_px=224, overlap_px=32, min_tissue=0)
    assert grid.stride_level0 == 384.0 and grid.overlap_px == 32
    np.testing.assert_array_equal(grid.coords, grid.grid * 384)


def test_no_tissue_gives_empty_grid_and_warning(tmp_path):
    glass = FakeSlide(slide_image(1024, 1024), tmp_path / "glass-only.svs")
    with pytest.warns(UserWarning, match="glass-only.svs"):
        grid = tile_grid(glass)
    assert len(grid) == 0 and grid.coords.shape == (0, 2) and grid.grid.shape == (0, 2)


def test_slide_without_mpp(tmp_path):
    slide = FakeSlide(slide_image(1024, 1024), tmp_path / "uncalibrated.tif", mpp=None)
    with pytest.raises(ValueError, match=r"uncalibrated.tif.*mpp=.*level=/downsample="):
        tile_grid(slide, min_tissue=0)
    with pytest.raises(ValueError, match="no pixel size"):
        tile_grid(slide, magnification=20, min_tissue=0)
    by_level = tile_grid(slide, level=1, tile_size_px=128, min_tissue=0)
    assert by_level.target_mpp is None and by_level.read_level == 1 and by_level.tile_size_level0 == 512.0
    by_factor = tile_grid(slide, downsample=2.0, tile_size_px=128, min_tissue=0)
    assert by_factor.read_level == 0 and by_factor.tile_size_level0 == 256.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overlap_px": 224}, "overlap_px"),
        ({"tile_size_px": 0}, "tile_size_px"),
        ({"mpp": 0.5, "magnification": 20}, "one of"),
        ({"level": 9}, "level 9"),
        ({"min_tissue": 1.5}, "min_tissue"),
        ({"box": (10, 10, 5, 20)}, "x1 > x0"),
        ({"mpp": -1.0}, "mpp must be positive"),
        ({"downsample": 0}, "downsample"),
    ],
)
def test_bad_arguments(slide, kwargs, message):
    kwargs.setdefault("min_tissue", 0)
    with pytest.raises(ValueError, match=message):
        tile_grid(slide, **kwargs)
