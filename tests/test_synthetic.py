"""The synthetic H&E slide generator: pyramid, determinism, ground truth, and that the
tissue types really look different where the truth says they are."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_care.core.progress import Progress
from napari_care.core.synthetic.layouts import LAYOUTS, LayoutCanvas
from napari_care.core.synthetic.slides import (
    TISSUE_TYPES,
    build_synthetic_slide,
    iter_build_synthetic_slide,
    load_synthetic_slide,
    truth_fractions,
    truth_path_for,
)
from napari_care.core.synthetic.textures import TYPE_OF_RENDER_CLASS

SMALL = dict(width=4096, height=3072, swatch_px=512)  # three levels, about a second to build


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return build_synthetic_slide(tmp_path_factory.mktemp("synthetic") / "small.ome.tif", **SMALL)


@pytest.fixture(scope="module")
def slide_1um(tmp_path_factory):
    """4 x 3 mm painted at 1 um/px."""
    return build_synthetic_slide(tmp_path_factory.mktemp("synthetic") / "1um.ome.tif", mpp=1.0, **SMALL)


@pytest.fixture(scope="module")
def slide_2um(tmp_path_factory):
    """8 x 6 mm, the offline sample's extent, painted at 2 um/px."""
    return build_synthetic_slide(tmp_path_factory.mktemp("synthetic") / "2um.ome.tif", mpp=2.0, **SMALL)


def read_level(path, level: int) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[level].asarray()


def interior_cells(labels: np.ndarray, type_id: int, margin: int = 2) -> np.ndarray:
    """(row, col) of truth cells of a type at least ``margin`` cells from any other type."""
    inside = ndimage.binary_erosion(labels == type_id, iterations=margin)
    return np.argwhere(inside)


def test_pyramid_structure(slide):
    with tifffile.TiffFile(slide.path) as tif:
        assert tif.is_ome
        levels = tif.series[0].levels
        assert [level.shape for level in levels] == [(3072, 4096, 3), (1536, 2048, 3), (768, 1024, 3)]
        first = tif.pages[0]
        assert len(first.subifds) == 2
        for level in levels:
            page = level.keyframe
            assert (page.tilewidth, page.tilelength) == (512, 512)
            assert page.compression == tifffile.COMPRESSION.JPEG
        assert first.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        assert first.tags["XResolution"].value == (20000, 1)  # 0.5 um/px = 20000 px/cm
        assert levels[1].keyframe.tags["XResolution"].value == (10000, 1)
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert pixels["PhysicalSizeX"] == 0.5 and pixels["PhysicalSizeY"] == 0.5
        assert pixels["PhysicalSizeXUnit"] == "µm"


def test_same_seed_same_slide_other_seed_other_slide(slide, tmp_path):
    again = build_synthetic_slide(tmp_path / "again.ome.tif", **SMALL)
    np.testing.assert_array_equal(again.labels, slide.labels)
    digest = [hashlib.sha256(read_level(p, 2).tobytes()).hexdigest() for p in (slide.path, again.path)]
    assert digest[0] == digest[1]
    assert again.path.read_bytes() == slide.path.read_bytes()  # even the OME UUID is derived

    other = build_synthetic_slide(tmp_path / "other.ome.tif", seed=1, **SMALL)
    assert (other.labels != slide.labels).mean() > 0.05


def test_truth_file_round_trip(slide):
    assert slide.truth_path == truth_path_for(slide.path) == slide.path.with_name("small.truth.npz")
    loaded = load_synthetic_slide(slide.path)
    np.testing.assert_array_equal(loaded.labels, slide.labels)
    assert (loaded.downsample, loaded.mpp, loaded.width, loaded.height) == (16, 0.5, 4096, 3072)
    assert loaded.type_names == TISSUE_TYPES
    assert loaded.path == slide.path
    assert slide.labels.shape == (3072 // 16, 4096 // 16) and slide.labels.dtype == np.uint8
    with np.load(slide.truth_path) as npz:
        assert npz["type_colours"].shape == (7, 3)


def test_every_type_present_in_sizeable_regions(slide):
    counts = np.bincount(slide.labels.ravel(), minlength=7)
    assert counts.min() > 0, dict(zip(TISSUE_TYPES, counts, strict=True))
    # Every type holds at least one 224 px patch at 0.5 um/px that is pure (14 x 14 cells).
    for type_id in range(7):
        assert len(interior_cells(slide.labels, type_id, margin=7)) > 0, TISSUE_TYPES[type_id]


def test_truth_aligns_with_pixels(slide):
    level0 = read_level(slide.path, 0)

    def cell_pixels(cells: np.ndarray) -> np.ndarray:
        rows, cols = cells[:, 0] * 16 + 8, cells[:, 1] * 16 + 8
        return level0[rows, cols].astype(np.float32)

    glass = cell_pixels(interior_cells(slide.labels, 0, margin=4))
    assert glass.mean() > 235 and glass.std() < 6
    tumour = cell_pixels(interior_cells(slide.labels, 1))
    stroma = cell_pixels(interior_cells(slide.labels, 2))
    assert (tumour.mean(axis=1) < 150).mean() > 0.15  # dark nuclei...
    assert (stroma.mean(axis=1) < 150).mean() < 0.03  # ...which stroma lacks
    assert tumour[:, 2].mean() > tumour[:, 1].mean() + 30  # purple: blue well above green


def tile_statistics(slide, level: int, tile_px: int = 224, purity: float = 0.97):
    """Mean and std of RGB of ``tile_px`` tiles at a level that are mostly one type.

    Returns [N, 6] features and [N] majority types.
    """
    image = read_level(slide.path, level)
    side_level0 = tile_px * 2**level
    ys, xs = np.mgrid[
        0 : image.shape[0] - tile_px + 1 : tile_px // 2, 0 : image.shape[1] - tile_px + 1 : tile_px // 2
    ]
    corners = np.stack([xs.ravel(), ys.ravel()], axis=1)
    fractions = slide.truth_fractions(corners * 2**level, side_level0)
    keep = fractions.max(axis=1) >= purity
    features = []
    for x, y in corners[keep]:
        tile = image[y : y + tile_px, x : x + tile_px].reshape(-1, 3).astype(np.float32)
        features.append(np.concatenate([tile.mean(axis=0), tile.std(axis=0)]))
    return np.array(features), fractions[keep].argmax(axis=1)


def check_types_told_apart(features: np.ndarray, types: np.ndarray, min_types: int, min_accuracy: float):
    """A nearest-centroid rule on tile mean/std RGB sorts the types, whose colours rank as in H&E."""
    present = np.unique(types)
    assert len(present) >= min_types, present
    centroids = np.stack([features[types == t].mean(axis=0) for t in present])
    scale = features.std(axis=0)
    distance = (((features[:, None] - centroids[None]) / scale) ** 2).sum(axis=2)
    accuracy = (present[distance.argmin(axis=1)] == types).mean()
    assert accuracy >= min_accuracy, accuracy

    mean_of = {t: features[types == t, :3].mean() for t in present}
    texture_of = {t: features[types == t, 3:].mean() for t in present}
    blue_minus_red = {t: (features[types == t, 2] - features[types == t, 0]).mean() for t in present}
    glass, tumour, stroma, fat, necrosis, _epidermis, lymphocytes = range(7)
    assert mean_of[tumour] < mean_of[stroma] - 25  # tumour darker than stroma...
    assert blue_minus_red[tumour] > blue_minus_red[stroma] + 10  # ...and more purple
    assert set(sorted(mean_of, key=mean_of.get)[-2:]) == {glass, fat}  # glass and fat brightest
    assert mean_of[lymphocytes] < mean_of[tumour]  # packed dark nuclei
    assert mean_of[necrosis] > mean_of[tumour] + 20  # pale debris
    assert texture_of[fat] > texture_of[glass] + 2  # membranes, not blank glass


@pytest.mark.parametrize("which", ["slide", "slide_1um", "slide_2um"])
def test_types_are_told_apart_by_tile_colour_statistics(which, request):
    # 224 px tiles at 0.5, 1 and 2 um/px (the slow test checks the full sample's own levels).
    features, types = tile_statistics(request.getfixturevalue(which), 0)
    check_types_told_apart(features, types, 7, 0.95)


def test_truth_fractions_and_majority(slide):
    labels = np.zeros((10, 10), np.uint8)
    labels[:, 5:] = 1
    labels[8:, :] = 2
    coords = np.array([[0, 0], [80, 0], [32, 0], [1000, 1000], [48, 112]])
    fractions = truth_fractions(labels, 16, coords, 64)
    np.testing.assert_allclose(fractions.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(fractions[0, :3], [1, 0, 0])
    np.testing.assert_allclose(fractions[1, :3], [0, 1, 0])
    np.testing.assert_allclose(fractions[2, :3], [0.75, 0.25, 0])  # columns 2..5
    np.testing.assert_allclose(fractions[3, :3], [1, 0, 0])  # off the map: glass
    np.testing.assert_allclose(fractions[4, :3], [1 / 6, 1 / 6, 2 / 3], rtol=1e-6)  # rows 7..9 only

    # On the real slide: the majority of a patch deep inside a region is that region's type.
    for type_id in range(7):
        row, col = interior_cells(slide.labels, type_id, margin=3)[0]
        corner = np.array([[col * 16 - 32, row * 16 - 32]])
        assert slide.truth_at(corner, 64)[0] == type_id


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layouts_hold_every_type_with_organic_outlines(layout, seed):
    canvas = LayoutCanvas(96, 128, 64.0, np.random.default_rng([seed, 1]))  # 6 x 8 mm
    types = TYPE_OF_RENDER_CLASS[LAYOUTS[layout](canvas)]
    counts = np.bincount(types.ravel(), minlength=7)
    assert (counts[1:] > 20).all(), (layout, seed, counts)
    # Organic, not straight: along a row, tissue boundaries do not all sit in one column.
    tissue = types > 0
    first_tissue_col = np.array([np.argmax(row) for row in tissue if row.any()])
    assert len(np.unique(first_tissue_col)) > 5


def test_other_layouts_build_and_differ(slide, tmp_path):
    islands = build_synthetic_slide(tmp_path / "islands.ome.tif", layout="islands", **SMALL)
    assert (islands.labels != slide.labels).mean() > 0.2
    # Separate fragments: several connected pieces of tissue.
    _, pieces = ndimage.label(islands.labels > 0)
    assert pieces >= 4


def test_progress_cancel_and_pen_marks(tmp_path):
    path = tmp_path / "pen.ome.tif"
    work = iter_build_synthetic_slide(path, width=2048, height=1536, swatch_px=512, pen_marks=True)
    reports = []
    while True:
        try:
            reports.append(next(work))
        except StopIteration as stop:
            result = stop.value
            break
    assert all(isinstance(r, Progress) for r in reports) and reports[-1].done == reports[-1].total
    assert [r.stage for r in reports][:9] == ["textures"] * 9 and reports[-1].stage == "pyramid"
    image = read_level(path, 0).astype(np.int16)
    green = (image[..., 1] - image[..., 0] > 40) & (image[..., 1] - image[..., 2] > 10)
    assert green.sum() > 2000  # the marker loop...
    cells = np.unique(np.argwhere(green) // 16, axis=0)
    assert (result.labels[cells[:, 0], cells[:, 1]] == 0).all()  # ...lies on what the truth calls glass

    stopped = tmp_path / "stopped.ome.tif"
    work = iter_build_synthetic_slide(stopped, width=4096, height=3072, swatch_px=512)
    for report in work:
        if report.message.startswith("level 0"):
            break
    work.close()
    assert not stopped.exists() and not truth_path_for(stopped).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".stopped")]  # no temp files left


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="layout 'nope'"):
        build_synthetic_slide(tmp_path / "x.ome.tif", layout="nope")
    with pytest.raises(ValueError, match="tile_size"):
        build_synthetic_slide(tmp_path / "x.ome.tif", tile_size=500)
    with pytest.raises(ValueError, match="jpeg_quality"):
        build_synthetic_slide(tmp_path / "x.ome.tif", jpeg_quality=0)
    with pytest.raises(ValueError, match="width and height"):
        build_synthetic_slide(tmp_path / "x.ome.tif", width=100, height=100)
    with pytest.raises(FileNotFoundError, match="no ground truth"):
        load_synthetic_slide(tmp_path / "missing.ome.tif")


@pytest.mark.slow
def test_full_size_default_build(tmp_path):
    # its build time is measured by benchmarks/bench_sample_build.py, not here
    full = build_synthetic_slide(tmp_path / "full.ome.tif")
    with tifffile.TiffFile(full.path) as tif:
        assert [level.shape[:2] for level in tif.series[0].levels] == [
            (12288, 16384),
            (6144, 8192),
            (3072, 4096),
            (1536, 2048),
            (768, 1024),
        ]
    assert full.labels.shape == (768, 1024)
    assert (np.bincount(full.labels.ravel(), minlength=7) > 1000).all()
    for level in (1, 2):  # 1 and 2 um/px (0.5 is checked on small slides)
        features, types = tile_statistics(full, level)
        check_types_told_apart(features, types, 7, 0.95)
