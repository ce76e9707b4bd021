"""The slide handle: real slides from ../shared/data and generated pyramids.

Lossless files must give back exactly the pixels written; JPEG ones the pixels tifffile
decodes from the same page.
"""

from __future__ import annotations

import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import tifffile
from conftest import expected_region
from dask.array.core import normalize_chunks

from napari_care.core.slide.backends import get_backend
from napari_care.core.slide.handle import SlideReadError, _open_with, open_slide
from napari_care.core.slide.openslide_backend import composite_on_white
from napari_care.core.slide.tile_cache import TileCache


def quiet_open(path: Path, **kwargs):
    """open_slide without the missing-mpp warning (tests of pixels, not of calibration)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return open_slide(path, **kwargs)


# --- real slides -----------------------------------------------------------------------


def test_cmu_small_region_calibration_and_associated_images(shared_slide):
    path = shared_slide("CMU-1-Small-Region.svs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a calibrated slide opens without a warning
        slide = open_slide(path)
    with slide:
        assert slide.mpp == (0.499, 0.499)
        assert slide.mpp_source == "aperio"
        assert slide.objective_power == 20
        assert slide.vendor == "aperio"
        assert slide.backend == "tifffile"
        assert slide.dimensions[0] == (2220, 2967)
        assert slide.file_level_count == 1
        images = slide.associated_images
        assert {name: image.shape for name, image in images.items()} == {
            "label": (463, 387, 3),
            "macro": (431, 1280, 3),
            "thumbnail": (768, 574, 3),
        }
        assert all(image.dtype == np.uint8 and image.std() > 10 for image in images.values())
        page = tifffile.imread(path, key=0)
        region = slide.read_region((1000, 1200), 0, (300, 256))
        np.testing.assert_array_equal(region, page[1200:1456, 1000:1300])
        assert region.std() > 20  # tissue, not glass


def test_tcga_jpeg2000_two_file_levels_no_mpp(shared_slide):
    path = shared_slide("TCGA-CR-7395-01A-01-TS1.svs")
    with pytest.warns(
        UserWarning, match=re.escape("TCGA-CR-7395-01A-01-TS1.svs: the file has no pixel size")
    ):
        slide = open_slide(path)
    with slide, tifffile.TiffFile(path) as tif:
        assert slide.file_level_count == 2
        assert slide.dimensions[:2] == [(4443, 3567), (2221, 1783)]
        assert slide.mpp is None and slide.mpp_source is None
        assert slide.level_downsamples[1] == pytest.approx(2.0005, abs=1e-4)
        region = slide.read_region((1500, 1200), 0, (512, 400))
        assert 60 < region.mean() < 230 and region.std() > 20  # decoded tissue, not white or black
        np.testing.assert_array_equal(region, tif.series[0].levels[0].asarray()[1200:1600, 1500:2012])
        level1 = tif.series[0].levels[1].asarray()
        x1, y1 = int(1500 // slide.level_downsamples[1]), int(1200 // slide.level_downsamples[1])
        np.testing.assert_array_equal(
            slide.read_region((1500, 1200), 1, (300, 200)), level1[y1 : y1 + 200, x1 : x1 + 300]
        )


def test_kidney_strip_tiff_gets_lazy_lower_levels(shared_slide):
    slide = quiet_open(shared_slide("kidney-48-5-strip.tif"))
    with slide:
        assert slide.file_level_count == 1
        assert slide.dimensions[0] == (1493, 901)
        assert slide.level_count >= 2
        assert max(slide.dimensions[-1]) <= 1024
        expected = slide.levels[0].compute().astype(np.float32)
        for _ in range(1, slide.level_count):
            h, w = expected.shape[0] // 2, expected.shape[1] // 2
            expected = np.rint(expected[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean(axis=(1, 3)))
        lowest = slide.levels[-1].compute()
        assert lowest.shape == expected.shape
        assert np.abs(lowest.astype(np.float32) - expected).max() <= 1


def test_broken_svs_raises_naming_the_file(shared_slide):
    with pytest.raises(SlideReadError, match=re.escape("broken.svs")):
        open_slide(shared_slide("broken.svs"))


# --- generated pyramids ----------------------------------------------------------------


@pytest.mark.parametrize("layout", ["subifd", "pages", "series", "ome"])
@pytest.mark.parametrize("compression", [None, "deflate", "jpeg"])
def test_levels_match_the_file(make_pyramid, layout, compression):
    name = "slide.ome.tif" if layout == "ome" else "slide.tif"
    pyramid = make_pyramid(name, layout=layout, compression=compression)
    with quiet_open(pyramid.path) as slide, tifffile.TiffFile(pyramid.path) as tif:
        assert slide.file_level_count == slide.level_count == 3
        assert slide.dimensions == [(500, 700), (250, 350), (125, 175)]
        assert slide.level_downsamples == [1.0, 2.0, 4.0]
        for k, level in enumerate(slide.levels):
            assert level.dtype == np.uint8 and level.shape == (*pyramid.levels[k].shape[:2], 3)
            assert level.chunks == normalize_chunks((96, 160, 3), level.shape)  # one chunk per file tile
            pixels = level.compute()
            if compression == "jpeg":  # same decoder, same pixels
                page_pixels = (
                    tif.series[0].levels[k].asarray() if layout != "series" else tif.series[k].asarray()
                )
                np.testing.assert_array_equal(pixels, page_pixels)
                assert np.abs(pixels.astype(int) - pyramid.rgb(k)).mean() < 15
            else:
                np.testing.assert_array_equal(pixels, pyramid.rgb(k))


@pytest.mark.parametrize("samples", [1, 4])
def test_grayscale_and_rgba_become_rgb(make_pyramid, samples):
    pyramid = make_pyramid(samples=samples, level_count=2)
    with quiet_open(pyramid.path) as slide:
        for k in range(2):
            np.testing.assert_array_equal(slide.levels[k].compute(), pyramid.rgb(k))


def test_strip_tiff_is_read_in_blocks_of_strips(make_pyramid):
    pyramid = make_pyramid(tile_shape=None, level_count=1, rows_per_strip=48)
    with quiet_open(pyramid.path) as slide:
        assert slide.levels[0].chunksize[1] == 500  # whole rows
        np.testing.assert_array_equal(slide.levels[0].compute(), pyramid.rgb())
        np.testing.assert_array_equal(
            slide.read_region((30, 90), 0, (200, 150)), pyramid.rgb()[90:240, 30:230]
        )


REGIONS = [
    (0, 0, 96, 160),  # exactly one tile
    (17, 5, 200, 300),  # across tile borders
    (450, 600, 100, 150),  # across the right and bottom edges
    (-40, -25, 100, 80),  # negative coordinates
    (-10, 650, 520, 80),  # wider than the slide, across the bottom
    (600, 800, 30, 30),  # wholly outside
    (10, 10, 0, 0),  # empty
]


@pytest.mark.parametrize(("x", "y", "width", "height"), REGIONS)
def test_read_region_level0_is_the_crop_white_outside(make_pyramid, x, y, width, height):
    pyramid = make_pyramid(compression="deflate")
    with quiet_open(pyramid.path) as slide:
        region = slide.read_region((x, y), 0, (width, height))
        assert region.shape == (height, width, 3) and region.dtype == np.uint8
        np.testing.assert_array_equal(region, expected_region(pyramid.rgb(0), x, y, width, height))


def test_read_region_at_lower_levels_takes_level0_location(make_pyramid):
    pyramid = make_pyramid(compression=None)
    with quiet_open(pyramid.path) as slide:
        for level, (x0, y0) in [(1, (101, 57)), (2, (401, 603)), (1, (-9, -3))]:
            factor = 2**level
            region = slide.read_region((x0, y0), level, (90, 70))
            expected = expected_region(pyramid.rgb(level), x0 // factor, y0 // factor, 90, 70)
            np.testing.assert_array_equal(region, expected)


def test_read_region_rejects_bad_level_and_size(make_pyramid):
    with quiet_open(make_pyramid().path) as slide:
        with pytest.raises(IndexError, match=re.escape("slide.tif: level 3")):
            slide.read_region((0, 0), 3, (10, 10))
        with pytest.raises(ValueError, match="negative"):
            slide.read_region((0, 0), 0, (-1, 10))


def test_best_level_for_downsample(make_pyramid):
    with quiet_open(make_pyramid().path) as slide:
        wanted = {0.5: 0, 1.0: 0, 1.9: 0, 1.99: 1, 2.0: 1, 3.9: 1, 4.0: 2, 64.0: 2}
        assert {d: slide.get_best_level_for_downsample(d) for d in wanted} == wanted


def test_single_level_slide_gets_lazy_2x_levels(make_pyramid):
    pyramid = make_pyramid(shape=(900, 2100), tile_shape=(256, 256), level_count=1, compression=None)
    with quiet_open(pyramid.path) as slide:
        assert slide.file_level_count == 1
        assert slide.dimensions == [(2100, 900), (1050, 450), (525, 225)]
        assert slide.level_downsamples == [1.0, 2.0, 4.0]
        level0 = pyramid.rgb().astype(np.float32)
        half = np.rint(level0.reshape(450, 2, 1050, 2, 3).mean(axis=(1, 3)))
        np.testing.assert_array_equal(slide.levels[1].compute(), half.astype(np.uint8))
        region = slide.read_region((1000, 300), 1, (200, 100))  # level-0 location, level-1 size
        np.testing.assert_array_equal(region, half[150:250, 500:700].astype(np.uint8))
        assert slide.get_best_level_for_downsample(5.0) == 2


def test_mpp_override_wins_and_is_checked(make_pyramid):
    pyramid = make_pyramid(resolution=(40000, "centimeter"))
    with quiet_open(pyramid.path) as slide:
        assert slide.mpp == (0.25, 0.25) and slide.mpp_source == "tiff-resolution"
    with open_slide(pyramid.path, mpp=0.5) as slide:
        assert slide.mpp == (0.5, 0.5) and slide.mpp_source == "user"
    with open_slide(pyramid.path, mpp=(0.3, 0.4)) as slide:
        assert slide.mpp == (0.3, 0.4)
    for bad in (0, -0.5, float("nan"), float("inf"), 1000.0, (0.5,), "abc"):
        with pytest.raises(ValueError, match="mpp"):
            open_slide(pyramid.path, mpp=bad)


def test_missing_and_non_slide_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("nope.svs")):
        open_slide(tmp_path / "nope.svs")
    text = tmp_path / "notes.tif"
    text.write_text("not an image at all")
    with pytest.raises(SlideReadError, match=re.escape("notes.tif")):
        open_slide(text)
    deep = tmp_path / "deep.tif"  # 16-bit strips: neither backend shows them as RGB
    tifffile.imwrite(deep, np.zeros((64, 64), np.uint16))
    with pytest.raises(SlideReadError, match=re.escape("deep.tif")):
        open_slide(deep)


def test_concurrent_reads_equal_serial_reads(make_pyramid):
    pyramid = make_pyramid(shape=(1100, 2300), tile_shape=(128, 192), level_count=2, compression="jpeg")
    rng = np.random.default_rng(7)
    regions = [
        (
            (int(rng.integers(-100, 2300)), int(rng.integers(-100, 1100))),
            int(rng.integers(0, 3)),
            (int(rng.integers(1, 400)), int(rng.integers(1, 400))),
        )
        for _ in range(150)
    ]
    with quiet_open(pyramid.path) as serial_slide:
        assert serial_slide.file_level_count == 2 and serial_slide.level_count == 3  # level 2 is made lazily
        serial = [serial_slide.read_region(*region) for region in regions]
    with quiet_open(pyramid.path) as slide, ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda region: slide.read_region(*region), regions))
    for expected, got in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_openslide_backend_matches_tifffile_backend(make_pyramid):
    pyramid = make_pyramid(layout="pages", compression="deflate")
    by_openslide = _open_with(get_backend("openslide"), pyramid.path, None)
    with by_openslide, quiet_open(pyramid.path) as by_tifffile:
        assert by_openslide.backend == "openslide" and by_openslide.vendor == "generic-tiff"
        assert by_openslide.file_level_count == 3
        assert by_openslide.dimensions == by_tifffile.dimensions
        assert by_openslide.levels[0].chunksize == (96, 160, 3)
        for k in range(3):
            np.testing.assert_array_equal(by_openslide.levels[k].compute(), pyramid.rgb(k))
        for location, level, size in [
            ((450, 600), 0, (100, 150)),
            ((-30, -20), 1, (80, 60)),
            ((33, 71), 2, (90, 90)),
        ]:
            np.testing.assert_array_equal(
                by_openslide.read_region(location, level, size),
                by_tifffile.read_region(location, level, size),
            )


def test_composite_on_white_blends_unpremultiplied_alpha():
    rgba = np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [200, 100, 0, 128]]], np.uint8)
    np.testing.assert_array_equal(
        composite_on_white(rgba), [[[10, 20, 30], [255, 255, 255], [227, 177, 127]]]
    )


def test_associated_images_of_ome(make_pyramid):
    pyramid = make_pyramid("a.ome.tif", layout="ome", associated=("label", "macro"))
    with quiet_open(pyramid.path) as slide:
        assert slide.file_level_count == 3
        assert sorted(slide.associated_images) == ["label", "macro"]
        assert slide.associated_images["label"].shape == (60, 90, 3)
        assert slide.metadata()["associated_images"] == ["label", "macro"]


def test_thumbnail_fits_max_size(make_pyramid):
    with quiet_open(make_pyramid().path) as slide:
        thumbnail = slide.thumbnail(max_size=200)
        assert thumbnail.shape == (200, 143, 3) and thumbnail.dtype == np.uint8


def test_context_manager_releases_the_file(make_pyramid):
    path = make_pyramid().path

    def is_open() -> bool:
        return any(Path(f.path) == path for f in psutil.Process().open_files())

    with quiet_open(path) as slide:
        slide.read_region((0, 0), 0, (10, 10))
        assert is_open()
    assert not is_open()
    with pytest.raises((RuntimeError, OSError)):
        slide.read_region((0, 0), 0, (300, 300))


def test_tile_cache_is_bounded_and_read_only():
    cache = TileCache(max_bytes=3 * 100)
    loads = []

    def load(key):
        loads.append(key)
        return np.full(100, key, np.uint8)

    for key in (1, 2, 3, 1, 4):  # 1 is used again, so 2 is the oldest when 4 arrives
        tile = cache.get_or_load(key, lambda key=key: load(key))
    assert loads == [1, 2, 3, 4] and cache.nbytes == 300
    assert cache.get(2) is None and cache.get(1)[0] == 1
    cache.get_or_load(2, lambda: load(2))
    assert loads[-1] == 2
    assert not tile.flags.writeable
