"""Mixed-magnification features: grid geometry, extraction, file round trip, region tokens, job, CLI."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest_fakes import PINK, PURPLE, FakeEncoder, FakeSlide, slide_image

from napari_care.core.feature_cache import FeatureCache
from napari_care.core.features import PatchFeatures, save_features
from napari_care.core.jobs import SlideJob
from napari_care.core.mixmag_features import (
    SUFFIX,
    MixMagFeatures,
    extract_mixmag,
    is_mixmag_file,
    load_mixmag,
    mixmag_grids,
    mixmag_job,
    save_mixmag,
)
from napari_care.core.progress import run_to_end
from napari_care.core.segment import SegmentOptions

REGION = 896  # level-0 pixels of a region on a 0.5 um/px slide


@pytest.fixture
def slide(tmp_path):
    """2 x 2 regions of tissue (a purple 20x tile marks one slot) and a glass column on the right."""
    blocks = [(0, 0, 2 * REGION, 2 * REGION, PINK), (REGION + 224, 448, REGION + 448, 672, PURPLE)]
    return FakeSlide(
        slide_image(2 * REGION, 2 * REGION + 600, blocks, noise=0), tmp_path / "s.svs", factors=(1, 3, 8)
    )


def test_grids_tile_each_region_exactly_and_read_the_nearest_finer_level(slide):
    grids = mixmag_grids(slide, min_tissue=0.5)
    assert [len(g) for g in grids] == [4, 16, 64]
    assert [g.tile_size_px for g in grids] == [224, 224, 224]
    assert [g.tile_size_level0 for g in grids] == [896.0, 448.0, 224.0]
    # downsample 4 (5x) reads level 1 (x3), not level 2 (x8); 10x (x2) and 20x (x1) read level 0
    assert [g.read_level for g in grids] == [1, 0, 0]
    for region in grids[0].coords:
        footprint = np.zeros((REGION, REGION), dtype=np.int64)
        for grid in grids[1:]:
            size = int(grid.tile_size_level0)
            inside = np.all((grid.coords >= region) & (grid.coords < region + REGION), axis=1)
            assert inside.sum() == (REGION // size) ** 2
            for x, y in grid.coords[inside] - region:
                footprint[y : y + size, x : x + size] += 1
        assert (footprint == 2).all()  # 10x and 20x tiles each cover the region once, no gap, no overlap


def test_region_size_option_and_tissue_rule(slide):
    grids = mixmag_grids(slide, region_size_px=448, min_tissue=0.5)
    assert [g.tile_size_px for g in grids] == [112, 112, 112]
    assert [len(g) for g in grids] == [16, 64, 256]
    with pytest.raises(ValueError, match="multiple of 4"):
        mixmag_grids(slide, region_size_px=898)
    slide.mpp = None
    with pytest.raises(ValueError, match="no pixel size"):
        mixmag_grids(slide)


def test_a_box_keeps_the_regions_it_meets_whole(slide):
    whole = mixmag_grids(slide, region_size_px=448, min_tissue=0.5)
    boxed = mixmag_grids(slide, region_size_px=448, min_tissue=0.5, box=(500, 100, 1000, 200))
    assert boxed[0].coords.tolist() == [[448, 0], [896, 0]]  # the two regions the box meets
    for part, full, side in zip(boxed, whole, (1, 2, 4), strict=True):
        inside = np.isin(full.grid[:, 0] // side, (1, 2)) & (full.grid[:, 1] // side == 0)
        np.testing.assert_array_equal(
            part.coords, full.coords[inside]
        )  # every tile of those regions, no other


def test_fine_tiles_off_tissue_are_missing(tmp_path):
    # tissue covers the left region and the top half of the right one
    blocks = [(0, 0, REGION, REGION, PINK), (REGION, 0, 2 * REGION, REGION // 2, PINK)]
    slide = FakeSlide(slide_image(REGION, 2 * REGION, blocks, noise=0), tmp_path / "half.svs", factors=(1, 4))
    mf = run_to_end(extract_mixmag(slide, FakeEncoder(), min_tissue=0.5, num_workers=1))
    assert mf.tile_counts == (2, 6, 24)
    tokens = mf.to_region_tokens()
    right = int(np.argmax(tokens.region_coords[:, 0]))
    expected = np.r_[True, [True, True, False, False], np.repeat([True, False], 8)]
    np.testing.assert_array_equal(tokens.token_present[right], expected)
    assert tokens.token_present[1 - right].all()
    assert (tokens.tokens[right][~expected] == 0).all()


def test_extract_puts_each_tile_in_its_slot_and_uses_the_cache(slide, tmp_path):
    encoder, cache = FakeEncoder(), FeatureCache(tmp_path / "cache")
    mf = run_to_end(extract_mixmag(slide, encoder, min_tissue=0.5, cache=cache, num_workers=1))
    assert encoder.tiles_seen == 84
    tokens = mf.to_region_tokens()
    assert tokens.tokens.shape == (4, 21, 4) and tokens.token_present.all()
    assert tokens.region_size_level0 == REGION and tokens.slide_id == "s"
    region = int(np.flatnonzero((tokens.region_coords == [REGION, 0]).all(axis=1))[0])
    red = tokens.tokens[region, :, 0]
    # the purple tile is 20x (x=1, y=2) of that region -> slot 5 + 2 * 4 + 1 = 14; 10x slot (0, 1) -> 3
    assert int(np.argmin(red)) == 14 and red[14] == pytest.approx(PURPLE[0], abs=1)
    assert red[3] == pytest.approx(0.75 * PINK[0] + 0.25 * PURPLE[0], abs=1)
    assert red[0] == pytest.approx((15 * PINK[0] + PURPLE[0]) / 16, abs=1)
    np.testing.assert_array_equal(tokens.tokens[:, :, 3], 224)  # every tile resized to 224 px
    again = run_to_end(extract_mixmag(slide, encoder, min_tissue=0.5, cache=cache, num_workers=1))
    assert encoder.tiles_seen == 84  # all three magnifications came from the cache
    np.testing.assert_array_equal(again.to_region_tokens().tokens, tokens.tokens)


def test_file_round_trip_and_errors(slide, tmp_path):
    mf = run_to_end(extract_mixmag(slide, FakeEncoder(), min_tissue=0.5, num_workers=1))
    path = save_mixmag(tmp_path / "s.mixmag.h5", mf)
    assert is_mixmag_file(path)
    back = load_mixmag(path)
    for a, b in zip(mf.levels, back.levels, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.coords, b.coords)
        assert (a.patch_size_px, a.patch_size_level0, a.mpp) == (b.patch_size_px, b.patch_size_level0, b.mpp)
    assert [pf.magnification for pf in back.levels] == [5.0, 10.0, 20.0]
    for a, b in zip(
        mf.region_of_tile + mf.position_in_region, back.region_of_tile + back.position_in_region, strict=True
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_mixmag(tmp_path / "nothing.h5")
    plain = save_features(tmp_path / "plain.h5", mf.levels[2])
    assert not is_mixmag_file(plain)
    with pytest.raises(ValueError, match="not a mixed-magnification feature file"):
        load_mixmag(plain)
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        load_mixmag(tmp_path / "junk.h5")
    with h5py.File(path, "a") as f:
        f["position_20x"][0] = 16
    with pytest.raises(ValueError, match="position outside"):
        load_mixmag(path)


def test_features_must_agree():
    pf = PatchFeatures(np.zeros((1, 4)), np.zeros((1, 2)), 224, 896.0, 2.0, "e")
    other = PatchFeatures(np.zeros((1, 3)), np.zeros((1, 2)), 224, 448.0, 1.0, "e")
    zero = np.zeros(1)
    with pytest.raises(ValueError, match="different D"):
        MixMagFeatures((pf, other, pf), (zero, zero, zero), (zero, zero, zero))
    with pytest.raises(ValueError, match="region index"):
        MixMagFeatures((pf, pf, pf), (zero, zero + 1, zero), (zero, zero, zero))


def test_mixmag_job_writes_one_file_and_the_cli_trains_on_it(make_pyramid, tmp_path):
    pyramid = make_pyramid("tiny.tif", shape=(1024, 1024), level_count=2, tile_shape=(256, 256))
    options = SegmentOptions(min_tissue=0.0)
    row = mixmag_job(SlideJob(pyramid.path, 0.5), tmp_path / "out", options)
    assert row["status"] == "done", row
    target = tmp_path / "out" / "tiny.mixmag.h5"
    mf = load_mixmag(target)
    assert mf.slide_id == "tiny" and mf.tile_counts == (
        4,
        9,
        25,
    )  # the slide ends inside the second row and column
    assert mixmag_job(SlideJob(pyramid.path, 0.5), tmp_path / "out", options)["status"] == "skipped"
    assert mixmag_job(SlideJob(tmp_path / "missing.tif"), tmp_path / "out", options)["status"] == "failed"

    from napari_care.cli.app import main

    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "pretrain",
            "mixmag",
            str(target),
            "--out",
            str(tmp_path / "mem"),
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--dim",
            "32",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 slides, 2 steps" in result.output
    for index in range(6):  # copies named as slides: the slide id is the file name
        shutil.copy(target, tmp_path / "out" / f"s{index}{SUFFIX}")
    target.unlink()
    (tmp_path / "labels.csv").write_text(
        "slide_id,label,split\n"
        + "".join(f"s{i},{i % 2},{['train', 'train', 'val', 'val', 'test', 'test'][i]}\n" for i in range(6))
    )
    result = runner.invoke(
        main,
        [
            "train-mil",
            str(tmp_path / "labels.csv"),
            str(tmp_path / "out"),
            "--mem",
            str(tmp_path / "mem" / "mem_final.json"),
            "--out",
            str(tmp_path / "mil"),
            "--max-epochs",
            "2",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "mil" / "attention.npz") as attention:
        assert list(attention["offsets"]) == [0, 4, 8, 12, 16, 20, 24]  # one instance per region
