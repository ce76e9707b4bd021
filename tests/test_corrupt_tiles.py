"""Corrupt and truncated slide files: tile errors name their place, extraction skips, the viewer survives."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest_fakes import FakeEncoder

from napari_care.core.extract import extract_features
from napari_care.core.progress import run_to_end
from napari_care.core.slide import open_slide
from napari_care.core.slide.levels import BAD_TILE_GREY, TileDecodeError
from napari_care.core.tiling import tile_grid

SHAPE = (700, 500)  # level 0 (height, width)
TILE = (96, 160)  # file tiles (height, width): 4 columns, 8 rows at level 0
BAD_COL, BAD_ROW = 1, 2  # the corrupted level-0 file tile
BAD_BOX = (160, 192, 320, 288)  # its level-0 (x0, y0, x1, y1)
PATCH = 64  # patch side in level-0 pixels (read at level 0: whole crops, no resampling)
CALIBRATED = {"resolution": (20000.0, "centimeter")}  # 0.5 um/px: no "no mpp" warning


@pytest.fixture
def clean(make_pyramid):
    return make_pyramid("clean.tif", shape=SHAPE, tile_shape=TILE, compression="jpeg", **CALIBRATED)


@pytest.fixture
def corrupt(clean) -> Path:
    """A copy of the clean pyramid whose level-0 tile (BAD_COL, BAD_ROW) starts with junk."""
    with tifffile.TiffFile(clean.path) as tif:
        page = tif.pages[0]
        index = BAD_ROW * -(-SHAPE[1] // TILE[1]) + BAD_COL
        offset = page.dataoffsets[index]
    data = bytearray(clean.path.read_bytes())
    data[offset : offset + 16] = b"\x2c\x14" * 8  # no JPEG start-of-image marker any more
    path = clean.path.with_name("corrupt.tif")
    path.write_bytes(bytes(data))
    return path


def _extract(path: Path, **options):
    """(features, warnings) of extracting every 64-px level-0 patch of ``path``."""
    reports = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_slide(path) as slide:
            grid = tile_grid(slide, level=0, tile_size_px=PATCH, min_tissue=0)
            work = extract_features(slide, grid, FakeEncoder(), batch_size=5, **options)
            features = run_to_end(work, reports.append)
    assert reports[-1].done == reports[-1].total == len(grid)  # skipped patches do not stall the bar
    return features, [str(w.message) for w in caught]


def _over(coords: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    x, y = coords[:, 0], coords[:, 1]
    return (x < x1) & (x + PATCH > x0) & (y < y1) & (y + PATCH > y0)


def test_tile_error_names_file_level_tile_and_level0_box(corrupt):
    with open_slide(corrupt) as slide:
        with pytest.raises(TileDecodeError) as raised:
            slide.tiled_levels[0].tile(BAD_ROW, BAD_COL)
        error = raised.value
        assert isinstance(error, ValueError)
        assert (error.path, error.level, error.tile, error.box_level0) == (
            corrupt,
            0,
            (BAD_COL, BAD_ROW),
            BAD_BOX,
        )
        message = str(error)
        assert "corrupt.tif" in message and "level 0" in message
        assert f"({BAD_COL}, {BAD_ROW})" in message and str(BAD_BOX) in message
        with pytest.raises(TileDecodeError):  # remembered: the same error, without decoding again
            slide.tiled_levels[0].tile(BAD_ROW, BAD_COL)
        assert slide.tiled_levels[0].bad_tiles.errors == [error]


def test_extraction_skips_patches_over_the_bad_tile_with_one_warning(clean, corrupt):
    reference, clean_warnings = _extract(clean.path)
    assert clean_warnings == [] and reference.skipped_patches == 0
    features, messages = _extract(corrupt)
    over = _over(reference.coords, BAD_BOX)
    assert over.sum() == 6  # 3 patch columns x 2 patch rows touch the tile
    assert features.skipped_patches == 6 and len(features) == len(reference) - 6
    np.testing.assert_array_equal(features.coords, reference.coords[~over])
    np.testing.assert_array_equal(features.features, reference.features[~over])
    assert len(messages) == 1
    assert messages[0].startswith("corrupt.tif: 1 file tile could not be decoded (level 0, tiles")
    assert f"({BAD_COL}, {BAD_ROW})" in messages[0] and "Not a JPEG file" in messages[0]
    assert messages[0].endswith("; 6 patches skipped")


def test_strict_mode_fails_the_slide_with_the_tile_error(corrupt):
    with pytest.raises(TileDecodeError, match=r"corrupt\.tif: level 0 file tile") as raised:
        _extract(corrupt, on_bad_tile="raise")
    assert raised.value.tile == (BAD_COL, BAD_ROW)
    with pytest.raises(ValueError, match="on_bad_tile"):
        _extract(corrupt, on_bad_tile="ignore")


def test_truncated_file_says_so_once_and_extraction_skips_past_the_end(make_pyramid):
    pyramid = make_pyramid(
        "cut.tif", shape=SHAPE, tile_shape=TILE, compression="jpeg", level_count=1, **CALIBRATED
    )
    data = pyramid.path.read_bytes()
    cut = pyramid.path.with_name("cut90.tif")
    cut.write_bytes(data[: int(len(data) * 0.9)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        open_slide(cut).close()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert messages[0].startswith(f"cut90.tif is truncated: {len(data) * 9 // 10:,} bytes of at least ")
    assert "file tiles lie past the end and are skipped" in messages[0]

    features, messages = _extract(cut)
    truncation = [m for m in messages if "is truncated:" in m]
    summary = [m for m in messages if "could not be decoded" in m]
    assert len(truncation) == 1 and len(summary) == 1 and len(messages) == 2
    assert f"file is truncated at {len(data) * 9 // 10} bytes" in summary[0] and "past the end" in summary[0]
    assert features.skipped_patches > 0
    # what is skipped lies at the end of the file: the bottom rows of tiles
    assert features.coords[:, 1].max() < SHAPE[0] - PATCH
    assert len(features) + features.skipped_patches == -(-SHAPE[0] // PATCH) * -(-SHAPE[1] // PATCH)


def test_read_region_over_a_bad_tile_returns_pixels_and_warns_once(clean, corrupt):
    with open_slide(clean.path) as good:
        expected = good.read_region((0, 0), 0, (SHAPE[1], SHAPE[0]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_slide(corrupt) as slide:
            region = slide.read_region((0, 0), 0, (SHAPE[1], SHAPE[0]))
            again = slide.read_region((100, 150), 0, (200, 200))
            chunk = np.asarray(
                slide.levels[0][BAD_BOX[1] : BAD_BOX[3], BAD_BOX[0] : BAD_BOX[2]]
            )  # napari's path
            coarse = slide.read_region((0, 0), 1, (SHAPE[1] // 2, SHAPE[0] // 2))  # another level is intact
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "shown grey" in messages[0] and f"({BAD_COL}, {BAD_ROW})" in messages[0]
    x0, y0, x1, y1 = BAD_BOX
    assert (region[y0:y1, x0:x1] == BAD_TILE_GREY).all() and (chunk == BAD_TILE_GREY).all()
    outside = np.ones(SHAPE, dtype=bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(region[outside], expected[outside])
    np.testing.assert_array_equal(again, region[150:350, 100:300])
    assert coarse.shape == (SHAPE[0] // 2, SHAPE[1] // 2, 3) and (coarse != BAD_TILE_GREY).any()


def test_openslide_backend_reports_a_bad_tile_and_the_viewer_survives(make_pyramid):
    pytest.importorskip("openslide")
    from napari_care.core.slide.backends import registered_backends
    from napari_care.core.slide.handle import _open_with

    pyramid = make_pyramid(
        "os.tif", shape=SHAPE, tile_shape=TILE, compression="jpeg", layout="pages", **CALIBRATED
    )
    with tifffile.TiffFile(pyramid.path) as tif:
        offset = tif.pages[0].dataoffsets[BAD_ROW * 4 + BAD_COL]
    data = bytearray(pyramid.path.read_bytes())
    data[offset : offset + 16] = b"\x2c\x14" * 8
    path = pyramid.path.with_name("os-corrupt.tif")
    path.write_bytes(bytes(data))
    backend = next(b for b in registered_backends() if b.name == "openslide")
    slide = _open_with(backend, path, None)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(
                TileDecodeError, match=r"os-corrupt\.tif: level 0 file tile .*Not a JPEG file"
            ):
                slide.tiled_levels[0].tile(BAD_ROW, BAD_COL)
            region = slide.read_region((0, 0), 0, (SHAPE[1], SHAPE[0]))
        x0, y0, x1, y1 = BAD_BOX
        assert (region[y0:y1, x0:x1] == BAD_TILE_GREY).all()
        assert len(caught) == 1 and "shown grey" in str(caught[0].message)
    finally:
        slide.close()


def test_a_job_counts_skipped_patches_in_its_row_and_strict_fails_it(corrupt, tmp_path):
    from napari_care.core.jobs import SlideJob, extract_job
    from napari_care.core.segment import SegmentOptions

    options = SegmentOptions(tile_size_px=PATCH, min_tissue=0.0, tissue_threshold=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = extract_job(SlideJob(corrupt), tmp_path / "skip", options)
        strict = extract_job(
            SlideJob(corrupt), tmp_path / "strict", SegmentOptions(**{**options.to_dict(), "strict": True})
        )
    assert (
        row["status"] == "done" and "patches skipped (file tiles that could not be decoded)" in row["detail"]
    )
    assert strict["status"] == "failed" and "(1, 2)" in strict["detail"] and "corrupt.tif" in strict["detail"]
    assert not (tmp_path / "strict" / "corrupt.features.h5").exists()
    assert "level 0, tiles (column, row) (1, 2)" in row["detail"]  # the tile is named in the row too


def test_a_job_row_says_the_slide_is_truncated_and_tifffile_prints_nothing(make_pyramid, tmp_path, capfd):
    from napari_care.core.jobs import SlideJob, extract_job
    from napari_care.core.segment import SegmentOptions

    pyramid = make_pyramid("whole.tif", shape=SHAPE, tile_shape=TILE, compression="jpeg", **CALIBRATED)
    data = pyramid.path.read_bytes()
    cut = pyramid.path.with_name("cut.tif")
    cut.write_bytes(data[: len(data) // 2])
    options = SegmentOptions(tile_size_px=PATCH, min_tissue=0.0, tissue_threshold=0.01)
    row = extract_job(SlideJob(cut), tmp_path / "out", options)
    assert f"cut.tif is truncated: {len(data) // 2:,} bytes of at least" in row["detail"]
    assert row["detail"].count("is truncated:") == 1  # said once (the tile errors say where, in their words)
    assert "tifffile" not in capfd.readouterr().err  # its raw log lines are said in our words instead
