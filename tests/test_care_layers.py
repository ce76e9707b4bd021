"""The CARE layer data (regions, ROI, attention) and the hover text, without a viewer.

The results here are built by hand on a known patch grid, so every expected number is
computed from the layout, not read back from the code under test.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_care._care_layers import (
    ATTENTION,
    REGIONS,
    ROI,
    DisplayOptions,
    attention_layer,
    care_layers,
    hover_text,
    regions_layer,
    roi_layer,
    with_hover,
)
from napari_care._layers import level0_to_world
from napari_care.core.care_result import CareResult
from napari_care.core.features import PatchFeatures
from napari_care.core.segment import SegmentOptions, SegmentResult
from napari_care.core.tiling import TileGrid
from napari_care.core.tissue import TissueMask

STRIDE = 448.0  # level-0 pixels per patch (224 px at 20x on a 40x slide)
MPP = 0.25


def hand_made_result(
    grid: np.ndarray, region_of_patch: np.ndarray, a: np.ndarray, attention: np.ndarray
) -> SegmentResult:
    """A SegmentResult whose patches sit at ``grid`` (gx, gy) with the given regions and weights."""
    n, r = len(grid), len(a)
    grid = np.asarray(grid, dtype=np.int64)
    coords = (grid * STRIDE).astype(np.int64)
    features = PatchFeatures(
        np.zeros((n, 4), np.float32), coords, 224, STRIDE, 0.5, "test", stride_level0=STRIDE
    )
    alpha = np.bincount(region_of_patch, minlength=r) / n
    care = CareResult(
        region_of_patch=np.asarray(region_of_patch, np.int64),
        region_features=np.zeros((r, 4), np.float32),
        alpha=alpha,
        beta=np.full(r, 1.0 / r),
        a=np.asarray(a, np.float64),
        roi=int(np.argmax(a)),
        roi_feature=np.zeros(4, np.float32),
        slide_embedding=np.zeros(4, np.float32),
        patch_attention=np.asarray(attention, np.float32),
        rsl=0.0,
        expected_rank=0.0,
        block_of_patch=np.zeros(n, np.int64),
        candidate_rank=np.zeros(n, np.int64),
        grid=grid,
        k=8,
        mode="training-free",
    )
    tiles = TileGrid(
        coords=coords,
        grid=grid,
        tile_size_px=224,
        tile_size_level0=STRIDE,
        stride_level0=STRIDE,
        target_mpp=0.5,
        read_level=0,
        read_downsample=1.0,
        tissue_fraction=np.ones(n),
    )
    return SegmentResult(
        features=features,
        care=care,
        group_of_region=np.arange(r) % 2,
        grid=tiles,
        tissue=TissueMask(np.ones((4, 4), bool), 1024.0),
        options=SegmentOptions(),
        box=None,
        encoded_tiles=n,
        slide_mpp=(MPP, MPP),
    )


@pytest.fixture
def result() -> SegmentResult:
    """Six patches on a 4 x 3 grid window starting at (gx, gy) = (2, 5); three regions; a hole at (3, 6)."""
    grid = np.array([[2, 5], [3, 5], [4, 5], [2, 6], [5, 7], [4, 7]])
    region_of_patch = np.array([0, 0, 1, 1, 2, 2])
    a = np.array([0.2, 0.5, 0.3])
    attention = np.array([0.1, 0.1, 0.25, 0.25, 0.15, 0.15])
    return hand_made_result(grid, region_of_patch, a, attention)


@pytest.fixture
def slide() -> SimpleNamespace:
    return SimpleNamespace(dimensions=[(4096, 4096)], mpp=(MPP, MPP))


def test_regions_raster_placement_and_table(result, slide):
    data, kwargs, kind = regions_layer(result, slide, DisplayOptions())
    assert kind == "labels" and kwargs["name"] == REGIONS
    assert data.shape == (10, 10)  # the slide's whole patch grid: ceil(4096 / 448) cells a side
    expected = np.zeros((10, 10), np.int64)
    for (gx, gy), region in zip(result.features.grid, result.care.region_of_patch, strict=True):
        expected[gy, gx] = region + 1
    np.testing.assert_array_equal(data, expected)
    assert data[6, 3] == 0  # the hole (3, 6) is no region
    # pixel (row, col) centre lands at the centre of patch (gx, gy) = (col, row), in micrometres
    assert kwargs["scale"] == (STRIDE * MPP, STRIDE * MPP)
    assert kwargs["translate"] == pytest.approx(((STRIDE / 2 - 0.5) * MPP, (STRIDE / 2 - 0.5) * MPP))
    table = kwargs["features"]
    assert {"index", "region", "patches", "area_um2", "alpha", "beta", "a", "is_roi"} <= set(table)
    np.testing.assert_array_equal(table["index"], [0, 1, 2, 3])  # label = region id + 1, row 0 = background
    np.testing.assert_array_equal(table["region"][1:], [0, 1, 2])
    np.testing.assert_array_equal(table["patches"][1:], [2, 2, 2])
    np.testing.assert_allclose(table["area_um2"][1:], 2 * (STRIDE * MPP) ** 2)
    np.testing.assert_allclose(table["a"][1:], [0.2, 0.5, 0.3])
    np.testing.assert_allclose(table["alpha"][1:], [1 / 3] * 3)
    np.testing.assert_array_equal(table["is_roi"][1:], [False, True, False])


def test_group_colouring_gives_regions_their_group_colour(result, slide):
    _, kwargs, _ = regions_layer(result, slide, DisplayOptions(colour_by="group"))
    colours = kwargs["colormap"].color_dict
    np.testing.assert_allclose(colours[1], colours[3])  # regions 0 and 2 are in group 0
    assert not np.allclose(colours[1], colours[2])


def test_roi_rectangles_cover_the_regions_boxes(result, slide):
    rectangles, kwargs, kind = roi_layer(result, slide, DisplayOptions(roi_threshold=1.0))
    assert kind == "shapes" and kwargs["name"] == ROI and len(rectangles) == 1
    x0, y0, x1, y1 = 2 * STRIDE, 5 * STRIDE, 5 * STRIDE, 7 * STRIDE  # region 1 = patches (4, 5) and (2, 6)
    corners = level0_to_world(slide, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
    np.testing.assert_allclose(rectangles[0], corners)
    assert kwargs["features"]["is_roi"] == [True] and kwargs["edge_color"] == ["#ffd700"]
    assert kwargs["features"]["label"][0].startswith("ROI: region 1")
    rectangles, kwargs, _ = roi_layer(result, slide, DisplayOptions(roi_threshold=0.6))  # a >= 0.3
    assert kwargs["features"]["region"] == [1, 2] and len(rectangles) == 2


@pytest.mark.parametrize("mode", ["raw", "min-max", "rank"])
def test_attention_normalisations_clipped_to_tissue(result, slide, mode):
    data, kwargs, kind = attention_layer(result, slide, DisplayOptions(normalisation=mode))
    assert kind == "image" and kwargs["name"] == ATTENTION
    grid = result.features.grid
    on_patch = data[grid[:, 1], grid[:, 0]]
    attention = result.care.patch_attention
    expected = {
        "raw": attention,
        "min-max": (attention - 0.1) / 0.15,
        "rank": np.array([1.5, 1.5, 5.5, 5.5, 3.5, 3.5]) / 6,  # average ranks of ties, over N
    }[mode]
    np.testing.assert_allclose(on_patch, expected, rtol=1e-6)
    floor, _ = kwargs["contrast_limits"]
    off = np.ones(data.shape, bool)
    off[grid[:, 1], grid[:, 0]] = False
    assert off.sum() == 100 - 6 and (data[off] < floor).all()  # off tissue: below the transparent floor
    assert (on_patch >= floor).all()
    assert kwargs["metadata"]["source"] == "CARE"


def test_heatmap_threshold_raises_the_transparent_floor(result, slide):
    data, kwargs, _ = attention_layer(
        result, slide, DisplayOptions(normalisation="min-max", heatmap_threshold=0.5)
    )
    assert kwargs["contrast_limits"][0] == pytest.approx(0.5)
    assert np.count_nonzero(data >= 0.5) == 2  # only the two patches of attention 0.25 stay opaque
    from napari.components import LayerList
    from napari.layers import Image

    layers = LayerList([Image(data, **kwargs)])  # patch (2, 5): below the floor, transparent, yet on tissue
    assert hover_text(layers, ((5 * STRIDE + 1) * MPP, (2 * STRIDE + 1) * MPP)) == "attention 0 (min-max)"


def test_mil_attention_replaces_care_attention(result, slide):
    mil = SimpleNamespace(attention=np.array([0.5, 0.1, 0.1, 0.1, 0.1, 0.1], np.float32))
    data, kwargs, _ = attention_layer(result, slide, DisplayOptions(normalisation="raw"), mil)
    assert data[5, 2] == pytest.approx(0.5) and data[5, 3] == pytest.approx(0.1)
    assert kwargs["metadata"]["source"] == "MIL"
    with pytest.raises(ValueError, match="5 values for 6 patches"):
        attention_layer(result, slide, DisplayOptions(), SimpleNamespace(attention=np.ones(5)))


def test_hover_text_names_region_weight_and_attention(result, slide):
    from napari.components import LayerList
    from napari.layers import Layer

    layers = LayerList()
    for data, kwargs, kind in care_layers(result, slide, DisplayOptions(normalisation="raw")):
        layers.append(Layer.create(data, kwargs, kind))
    # the centre of patch (gx, gy) = (2, 6), region 1, attention 0.25, in world (row, col) micrometres
    centre = ((6 * STRIDE + STRIDE / 2) * MPP, (2 * STRIDE + STRIDE / 2) * MPP)
    assert hover_text(layers, centre) == "CARE region 1 (a=0.5) · attention 0.25 (raw)"
    hole = ((6 * STRIDE + STRIDE / 2) * MPP, (3 * STRIDE + STRIDE / 2) * MPP)
    assert hover_text(layers, hole) == ""
    assert hover_text(LayerList(), centre) == ""
    # appended to napari's status (a layer's dict or a string), once
    status = with_hover({"coordinates": "[1 2]: 3", "layer_name": "slide"}, layers, centre)
    assert status == {
        "coordinates": "[1 2]: 3 | CARE region 1 (a=0.5) · attention 0.25 (raw)",
        "layer_name": "slide",
    }
    assert with_hover(status, layers, centre) is None
    assert with_hover("Ready", layers, centre) == "Ready | CARE region 1 (a=0.5) · attention 0.25 (raw)"
    assert with_hover("Ready", layers, hole) is None
