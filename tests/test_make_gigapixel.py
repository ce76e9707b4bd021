"""The gigapixel benchmark slide's layout, checked on a tiny one (benchmarks/make_gigapixel.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from napari_care.core.slide.handle import open_slide
from napari_care.core.synthetic.writer import fourfold_level_sizes, write_svs_pair

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import make_gigapixel

WIDTH, HEIGHT = 4096, 3072


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> make_gigapixel.GigapixelPaths:
    out = tmp_path_factory.mktemp("gigapixel")
    return make_gigapixel.build_gigapixel(
        out, width=WIDTH, height=HEIGHT, min_level_side_px=256, report=lambda line: None
    )


def test_svs_layout_as_openslide_sees_it(tiny):
    with openslide.OpenSlide(str(tiny.svs)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert slide.level_dimensions == ((4096, 3072), (1024, 768), (256, 192))
        assert slide.level_downsamples == (1.0, 4.0, 16.0)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(slide.properties["openslide.objective-power"]) == 40
        assert "thumbnail" in slide.associated_images
    with openslide.OpenSlide(str(tiny.tiff)) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_dimensions == ((4096, 3072), (1024, 768), (256, 192))


def test_tiles_are_256_px_jpeg(tiny):
    for path in (tiny.svs, tiny.tiff):
        with tifffile.TiffFile(path) as tif:
            tiled = [page for page in tif.pages if page.is_tiled]
            assert len(tiled) == 3
            assert all((page.tilelength, page.tilewidth) == (256, 256) for page in tiled)
            assert all(page.compression == 7 for page in tiled)  # JPEG


def test_both_files_hold_the_same_pixels_and_mpp(tiny):
    with open_slide(tiny.svs) as svs, open_slide(tiny.tiff) as tif:
        assert svs.vendor == "aperio" and tif.vendor == "generic-tiff"
        assert svs.mpp == pytest.approx((0.25, 0.25)) and tif.mpp == pytest.approx((0.25, 0.25))
        for level in range(3):
            size = svs.dimensions[level]
            assert tif.dimensions[level] == size
            pixels = svs.read_region((0, 0), level, size)
            np.testing.assert_array_equal(pixels, tif.read_region((0, 0), level, size))
    with openslide.OpenSlide(str(tiny.svs)) as reference:
        region = np.asarray(reference.read_region((1000, 700), 0, (600, 500)))[..., :3]
    with open_slide(tiny.tiff) as tif:
        np.testing.assert_array_equal(tif.read_region((1000, 700), 0, (600, 500)), region)


def test_reduced_levels_are_4x4_means_of_the_level_above(tiny):
    with open_slide(tiny.svs) as slide:
        level0 = slide.read_region((0, 0), 0, (1024, 1024)).astype(np.float64)
        level1 = slide.read_region((0, 0), 1, (256, 256)).astype(np.float64)
    means = level0.reshape(256, 4, 256, 4, 3).mean(axis=(1, 3))
    assert np.abs(means - level1).mean() < 3  # JPEG round trips on both sides


def test_tissue_covers_at_least_40_percent(tiny):
    truth = np.load(tiny.truth)
    assert truth["labels"].shape == (HEIGHT // 64, WIDTH // 64)
    assert np.mean(truth["labels"] > 0) >= 0.4
    assert len(np.unique(truth["labels"])) == make_gigapixel.N_TYPES + 1
    with open_slide(tiny.svs) as slide:
        smallest = slide.read_region((0, 0), 2, slide.dimensions[2]).astype(np.int16)
    saturation = smallest.max(axis=-1) - smallest.min(axis=-1)
    assert np.mean(saturation > 25) >= 0.4  # glass is grey-white, tissue is stained


def test_tissue_tiles_are_not_repeated(tiny):
    with tifffile.TiffFile(tiny.svs) as tif:
        page = tif.pages[0]
        with open(tiny.svs, "rb") as handle:
            chunks = []
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                handle.seek(offset)
                chunks.append(handle.read(count))
    labels = np.load(tiny.truth)["labels"]
    on_tissue = (labels.reshape(HEIGHT // 256, 4, WIDTH // 256, 4) > 0).any(axis=(1, 3)).ravel()
    tissue_chunks = [chunk for chunk, keep in zip(chunks, on_tissue, strict=True) if keep]
    assert len(tissue_chunks) > 100
    assert len(set(tissue_chunks)) == len(tissue_chunks)  # blank glass may repeat, as on scanners


def test_a_second_build_keeps_the_files(tiny):
    before = [path.stat().st_mtime_ns for path in (tiny.svs, tiny.tiff, tiny.truth)]
    again = make_gigapixel.build_gigapixel(
        tiny.svs.parent, width=WIDTH, height=HEIGHT, min_level_side_px=256, report=lambda line: None
    )
    assert again == tiny
    assert [path.stat().st_mtime_ns for path in (tiny.svs, tiny.tiff, tiny.truth)] == before


def test_fourfold_level_sizes():
    assert fourfold_level_sizes(100_000, 80_000) == [
        (100_000, 80_000),
        (25_000, 20_000),
        (6250, 5000),
        (1563, 1250),
    ]
    assert fourfold_level_sizes(2000, 1500) == [(2000, 1500)]


def test_tile_size_must_allow_4x_levels(tmp_path):
    with pytest.raises(ValueError, match="multiple of 64"):
        next(
            write_svs_pair(
                tmp_path / "a.svs",
                tmp_path / "a.tif",
                lambda tx, ty: np.zeros((96, 96, 3), np.uint8),
                width=1024,
                height=1024,
                mpp=0.25,
                app_mag=40,
                tile_size=96,
            )
        )
    assert not list(tmp_path.iterdir())
