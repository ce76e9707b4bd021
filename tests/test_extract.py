"""The extraction pipeline: tile reading, batching, caching, cancelling, bad encoders."""

from __future__ import annotations

import threading
from itertools import pairwise

import numpy as np
import pytest
from conftest_fakes import PINK, PURPLE, FakeEncoder, FakeSlide, slide_image

from napari_care.core.extract import Cancelled, extract_features
from napari_care.core.feature_cache import FeatureCache
from napari_care.core.progress import run_to_end
from napari_care.core.tile_reader import cut_patches, patches_per_block, plan_blocks
from napari_care.core.tiling import tile_grid

BLOCKS = [(0, 0, 1024, 512, PINK), (0, 512, 1024, 1000, PURPLE)]


@pytest.fixture
def slide(tmp_path):
    # 1000 x 1200 at 0.5 um/px: the right part is glass, the bottom edge cuts the last tile row
    return FakeSlide(slide_image(1000, 1200, BLOCKS, noise=0), tmp_path / "extract.svs", factors=(1, 2, 4))


def _expected_means(slide, grid) -> np.ndarray:
    """Mean RGB of each tile, read one by one at level 0 and block-averaged (the slow, obvious way)."""
    out = []
    side0 = int(grid.tile_size_level0)
    factor = side0 // grid.tile_size_px
    for x, y in grid.coords:
        region = slide.read_region((int(x), int(y)), 0, (side0, side0)).astype(np.float64)
        t = grid.tile_size_px
        small = np.rint(region.reshape(t, factor, t, factor, 3).mean(axis=(1, 3)))
        out.append(small.reshape(-1, 3).mean(axis=0))
    return np.array(out)


def test_features_match_tiles_and_edges_are_white(slide):
    grid = tile_grid(slide, mpp=1.0, tile_size_px=112, min_tissue=0)  # 224 level-0 px per tile
    encoder = FakeEncoder()
    reports = []
    pf = run_to_end(extract_features(slide, grid, encoder, batch_size=7, num_workers=3), reports.append)
    assert pf.features.shape == (len(grid), 4) and pf.encoder == "fake-mean" and pf.mpp == 1.0
    np.testing.assert_array_equal(pf.coords, grid.coords)
    np.testing.assert_array_equal(pf.grid, grid.grid)
    np.testing.assert_allclose(pf.features[:, :3], _expected_means(slide, grid), atol=0.51)
    assert (pf.features[:, 3] == 112).all()
    # the bottom row (y = 896) hangs 120 px over the edge: white fills the rest
    bottom_left = np.flatnonzero((grid.coords[:, 0] == 0) & (grid.coords[:, 1] == 896))[0]
    expected = (np.array(PURPLE) * 104 + 255 * 120) / 224
    np.testing.assert_allclose(pf.features[bottom_left, :3], expected, atol=1.0)
    assert encoder.tiles_seen == len(grid) and encoder.calls == -(-len(grid) // 7)
    assert [r.stage for r in reports] == ["extract"] * len(reports)
    assert reports[-1].done == reports[-1].total == len(grid)
    assert all(a.done <= b.done for a, b in pairwise(reports))


def test_reads_the_nearest_level_never_level0(slide):
    grid = tile_grid(slide, mpp=2.0, tile_size_px=64, min_tissue=0)
    run_to_end(extract_features(slide, grid, FakeEncoder(), batch_size=16))
    assert grid.read_level == 2 and set(slide.reads) == {2}


def test_each_file_tile_decoded_once_in_few_reads(tmp_path):
    slide = FakeSlide(
        slide_image(2048, 2048, [(0, 0, 2048, 2048, PINK)], noise=0), tmp_path / "big.svs", factors=(1,)
    )
    grid = tile_grid(slide, mpp=0.5, tile_size_px=224, min_tissue=0)
    assert patches_per_block(224, 224, 256) == 8  # 8 patches = 1792 px = 7 file tiles exactly
    run_to_end(extract_features(slide, grid, FakeEncoder(), batch_size=32, num_workers=2))
    assert max(slide.decoded.values()) == 1  # block edges fall on file-tile edges
    assert len(slide.decoded) == 64  # all 8 x 8 file tiles, and only those
    assert slide.reads[0] == len(plan_blocks(grid, np.arange(len(grid)), (256, 256))) == 4


def test_cut_patches_integer_and_fractional_scales():
    rng = np.random.default_rng(1)
    region = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    two = cut_patches(region, np.array([[0.0, 0.0], [32.0, 16.0]]), 32.0, 16)
    expected = np.floor(region[16:48, 32:64].reshape(16, 2, 16, 2, 3).mean(axis=(1, 3)) + 0.5)  # half up
    np.testing.assert_array_equal(two[1], expected)
    same = cut_patches(region, np.array([[5.0, 7.0]]), 20.0, 20)
    np.testing.assert_array_equal(same[0], region[7:27, 5:25])
    flat = np.full((40, 40, 3), 77, dtype=np.uint8)
    odd = cut_patches(flat, np.array([[1.3, 2.6]]), 30.7, 16)  # sub-pixel box, PIL resampling
    assert odd.shape == (1, 16, 16, 3) and (odd == 77).all()


def test_cache_reuses_tiles_across_runs_and_boxes(slide, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    grid = tile_grid(slide, mpp=1.0, tile_size_px=112, min_tissue=0)
    first = FakeEncoder()
    pf1 = run_to_end(extract_features(slide, grid, first, cache=cache))
    assert first.tiles_seen == len(grid)

    again = FakeEncoder()
    pf2 = run_to_end(extract_features(slide, grid, again, cache=cache))
    assert again.tiles_seen == 0 and again.calls == 0
    assert pf1.encoded_count == len(grid) and pf2.encoded_count == 0
    np.testing.assert_array_equal(pf1.features, pf2.features)

    # a fresh cache on the same folder reads the file
    disk = FakeEncoder()
    pf3 = run_to_end(extract_features(slide, grid, disk, cache=FeatureCache(tmp_path / "cache")))
    assert disk.tiles_seen == 0
    np.testing.assert_array_equal(pf1.features, pf3.features)
    assert len(list((tmp_path / "cache").glob("*.h5"))) == 1

    # visible fields: the second box overlaps the first, only its new tiles are encoded
    boxes = FeatureCache()
    box_a, box_b = (0, 0, 600, 600), (400, 0, 1000, 600)
    enc = FakeEncoder()
    grid_a = tile_grid(slide, mpp=1.0, tile_size_px=112, min_tissue=0, box=box_a)
    run_to_end(extract_features(slide, grid_a, enc, cache=boxes))
    seen_a = enc.tiles_seen
    grid_b = tile_grid(slide, mpp=1.0, tile_size_px=112, min_tissue=0, box=box_b)
    pf_b = run_to_end(extract_features(slide, grid_b, enc, cache=boxes))
    shared = len({tuple(g) for g in grid_a.grid} & {tuple(g) for g in grid_b.grid})
    assert shared > 0 and enc.tiles_seen - seen_a == len(grid_b) - shared
    np.testing.assert_array_equal(
        pf_b.features, pf1.features[[np.flatnonzero((grid.grid == g).all(1))[0] for g in grid_b.grid]]
    )

    other = FakeEncoder(cfg=type(first.cfg)(name="another"))
    run_to_end(extract_features(slide, grid, other, cache=cache))
    assert other.tiles_seen == len(grid)  # another encoder is another key


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancel_stops_within_a_batch_and_writes_nothing(slide, tmp_path, kind):
    cache = FeatureCache(tmp_path / "cache")
    grid = tile_grid(slide, mpp=1.0, tile_size_px=112, min_tissue=0)
    event = threading.Event()
    encoder = FakeEncoder()
    work = extract_features(
        slide, grid, encoder, batch_size=4, cache=cache, cancel=event if kind == "event" else event.is_set
    )
    next(work)
    next(work)  # one batch encoded
    event.set()
    with pytest.raises(Cancelled, match=r"extract\.svs"):
        next(work)
    assert encoder.calls == 1
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    # the finished batch stays in memory: a re-run encodes the rest only
    rerun = FakeEncoder()
    run_to_end(extract_features(slide, grid, rerun, batch_size=4, cache=cache))
    assert rerun.tiles_seen == len(grid) - 4


def test_nan_features_name_the_slide(slide):
    grid = tile_grid(slide, mpp=1.0, tile_size_px=112, min_tissue=0)
    with pytest.raises(ValueError, match=r"extract.svs.*NaN/inf features for 1 of 8 tiles"):
        run_to_end(extract_features(slide, grid, FakeEncoder(poison=True), batch_size=8))


def test_empty_grid_encodes_nothing(slide):
    grid = tile_grid(slide, mpp=1.0, tile_size_px=112, min_tissue=0, box=(5000, 5000, 6000, 6000))
    encoder = FakeEncoder()
    pf = run_to_end(extract_features(slide, grid, encoder))
    assert pf.features.shape == (0, 4) and pf.coords.shape == (0, 2) and encoder.calls == 0


def test_real_slide_end_to_end(make_pyramid):
    from napari_care.core.slide.handle import open_slide

    pyramid = make_pyramid(
        "real.tif", shape=(600, 800), tile_shape=(128, 128), compression="jpeg", level_count=3
    )
    with pytest.warns(UserWarning, match="no pixel size"), open_slide(pyramid.path) as real:
        grid = tile_grid(real, downsample=2.0, tile_size_px=64, min_tissue=0)
        assert grid.read_level == 1
        pf = run_to_end(extract_features(real, grid, FakeEncoder(), batch_size=16, num_workers=2))
        level1 = real.levels[1].compute()
    assert pf.mpp is None and len(pf) == len(grid) == 5 * 7
    # each tile's mean equals the mean of the level-1 pixels under it (white past the edge)
    padded = np.full((5 * 64, 7 * 64, 3), 255, np.uint8)
    padded[: level1.shape[0], : level1.shape[1]] = level1
    for (gx, gy), row in zip(grid.grid, pf.features, strict=True):
        tile = padded[gy * 64 : gy * 64 + 64, gx * 64 : gx * 64 + 64]
        np.testing.assert_allclose(row[:3], tile.reshape(-1, 3).mean(axis=0), atol=1e-3)


def test_fractional_level_downsample_resamples_exactly(tmp_path):
    # scanners store e.g. 4.0003 for a 4x level: patches fall between pixels and are resampled
    slide = FakeSlide(slide_image(1024, 1024, BLOCKS, noise=0), tmp_path / "svs-like.svs", factors=(1, 4))
    slide.level_downsamples[1] = 4.0003
    grid = tile_grid(slide, mpp=2.0, tile_size_px=32, min_tissue=0)
    assert grid.read_level == 1 and grid.tile_size_read_px != round(grid.tile_size_read_px)
    pf = run_to_end(extract_features(slide, grid, FakeEncoder(), batch_size=16))
    inside_pink = (grid.coords[:, 1] + grid.tile_size_level0 <= 500) & (grid.coords[:, 0] + 128 <= 1000)
    np.testing.assert_allclose(pf.features[inside_pink, :3], np.tile(PINK, (inside_pink.sum(), 1)), atol=0.6)
    assert slide.reads[0] == 0


def test_real_svs_box_extraction(shared_slide):
    from napari_care.core.slide.handle import open_slide

    with open_slide(shared_slide("CMU-1-Small-Region.svs")) as real:
        whole = tile_grid(real, mpp=1.0, tile_size_px=112)
        box = (500, 500, 1500, 1500)
        grid = tile_grid(real, mpp=1.0, tile_size_px=112, box=box)
        pf = run_to_end(extract_features(real, grid, FakeEncoder(), num_workers=2))
    assert 0 < len(grid) <= 25 and len(whole) > 2 * len(grid)  # gx, gy in 2..6 at most
    np.testing.assert_array_equal(whole.subset(box).grid, grid.grid)
    assert np.isfinite(pf.features).all() and pf.features[:, :3].max() < 250  # tissue, not glass


def test_cache_keys_and_damaged_files(slide, tmp_path):
    from napari_care.core.feature_cache import cache_key

    grid = tile_grid(slide, mpp=1.0, tile_size_px=112, min_tissue=0)
    encoder = FakeEncoder()
    key = cache_key(slide, grid, encoder)
    assert key == cache_key(slide, grid, FakeEncoder())  # same name, no weights: same key
    assert key != cache_key(
        slide, tile_grid(slide, mpp=1.0, tile_size_px=112, overlap_px=16, min_tissue=0), encoder
    )
    cache = FeatureCache(tmp_path / "c")
    with pytest.raises(ValueError, match="3 feature rows for 2 grid indices"):
        cache.store(key, grid.grid[:2], np.zeros((3, 4)))
    cache.path_for(key).parent.mkdir()
    cache.path_for(key).write_bytes(b"damaged")
    found, cached = cache.lookup(key, grid.grid)
    assert not found.any() and cached is None  # a damaged file is a miss, not a crash
    slide.path.unlink()
    with pytest.raises(FileNotFoundError, match=r"extract\.svs"):
        cache_key(slide, grid, encoder)


def test_with_the_default_encoder(slide, tmp_path):
    from napari_care.core.encoders import create_encoder
    from napari_care.core.features import load_features, save_features

    encoder = create_encoder("default")
    grid = tile_grid(slide, mpp=1.0, tile_size_px=224, min_tissue=0.5)
    pf = run_to_end(extract_features(slide, grid, encoder, batch_size=4))
    assert pf.features.shape == (len(grid), encoder.embed_dim) and len(grid) > 0
    assert np.isfinite(pf.features).all() and pf.encoder == "default"
    back = load_features(save_features(tmp_path / "f.h5", pf))
    np.testing.assert_array_equal(back.features, pf.features)
    np.testing.assert_array_equal(back.grid, grid.grid)
