"""The whole-slide path's fast patch reduction, and the whole-slide benchmark's reading of the
command's progress bars (benchmarks/bench_whole_slide.py)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_care.core.pixels import block_mean
from napari_care.core.tile_reader import PIL_EXACT_FACTORS, cut_patches

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_whole_factor_patches_are_the_block_means_of_their_crops(factor):
    rng = np.random.default_rng(factor)
    region = rng.integers(0, 256, size=(200, 232, 3), dtype=np.uint8)
    size = 8 * factor
    starts = np.array([[0, 0], [232 - size, 200 - size], [17, 33], [5, 200 - size]])
    patches = cut_patches(region, starts.astype(np.float64), float(size), size // factor)
    crops = np.stack([region[y : y + size, x : x + size] for x, y in starts])
    np.testing.assert_array_equal(patches, block_mean(crops, factor))
    assert patches.dtype == np.uint8 and patches.shape == (4, 8, 8, 3)


def test_pillow_reduce_rounds_half_up_like_block_mean_at_its_factors():
    # small values make many block sums end in exactly .5, where roundings part ways
    rng = np.random.default_rng(7)
    region = rng.integers(0, 4, size=(64, 64, 3), dtype=np.uint8)
    region[:, 32:] += 252
    for factor in PIL_EXACT_FACTORS:
        means = block_mean(region, factor).astype(np.float64)
        exact = region.reshape(64 // factor, factor, 64 // factor, factor, 3).mean(axis=(1, 3))
        assert np.any(exact % 1 == 0.5)  # the case is there
        patch = cut_patches(region, np.zeros((1, 2)), 64.0, 64 // factor)[0]
        np.testing.assert_array_equal(patch, means)


def test_patches_reaching_out_of_the_region_are_refused():
    region = np.zeros((64, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="reach out of a 64 x 64 region"):
        cut_patches(region, np.array([[40.0, 0.0]]), 32.0, 16)


@pytest.fixture
def bench_whole_slide():
    pytest.importorskip("psutil")
    if not (BENCHMARKS / "bench_whole_slide.py").is_file():
        pytest.skip("benchmarks/ is not here")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_whole_slide
    finally:
        sys.path.remove(str(BENCHMARKS))
    return bench_whole_slide


def test_bar_clock_reads_each_stage_from_tqdm_redraws(bench_whole_slide):
    stderr = (
        "tissue:   0%|          | 0/1 [00:00<?, ?it/s]\r"
        "tissue: 100%|##########| 1/1 [00:00<00:00, 80.0it/s, 40 tiles on tissue in the slide]\r"
        "extract:   5%|5         | 2/40 [00:00<00:01, 30it/s, s.svs: 2 of 40 tiles]\r"
        "extract: 100%|##########| 40/40 [00:01<00:00, 30it/s, s.svs: 40 of 40 tiles]\r"
        "segment: 100%|##########| 1/1 [00:00<00:00, 1.0it/s, 3 regions]\n"
        "napari-care: warning: something\n"
    )
    clock = bench_whole_slide.BarClock(start=0.0)
    clock.read(io.BufferedReader(io.BytesIO(stderr.encode())))
    assert set(clock.first) == {"tissue", "extract", "segment"}
    assert clock.counts["extract"] == (40, 40) and "extract" in clock.last
    assert clock.text == ["napari-care: warning: something"]
    assert bench_whole_slide.stage_of(clock.last["extract"] + 10.0, clock) == "writing"


def test_bar_clock_takes_a_whole_bar_without_its_next_carriage_return(bench_whole_slide):
    # tqdm writes "\r" + the bar: the last bar of a stage has no terminator until the next
    clock = bench_whole_slide.BarClock(start=0.0)
    clock.read(
        io.BufferedReader(io.BytesIO(b"\rextract: 100%|#| 40/40 [00:01<00:00, 30it/s, s.svs: 40 of 40]"))
    )
    assert clock.counts["extract"] == (40, 40) and "extract" in clock.last


def test_tiled_reads_inside_and_across_the_edge_match_the_file(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from napari_care.core.slide.handle import open_slide

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(300, 420, 3), dtype=np.uint8)  # edge tiles are partial
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb", compression="zlib")
    with open_slide(path, mpp=0.5) as slide:
        level = slide.tiled_levels[0]
        inside, bad = level.read_checked(100, 50, 200, 160)
        assert not bad
        np.testing.assert_array_equal(inside, image[50:210, 100:300])
        across, _ = level.read_checked(380, 280, 64, 64)  # past the right and bottom edges
        np.testing.assert_array_equal(across[:20, :40], image[280:, 380:])
        assert (across[20:] == 255).all() and (across[:, 40:] == 255).all()
        corner = level.tile(2, 3)  # the last tile, whole: the image's part of it is the file's
        assert corner.shape == (128, 128, 3)
        np.testing.assert_array_equal(corner[:44, :36], image[256:, 384:])
