"""The napari boundary: the visible field as a level-0 box, and layers updated in place."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_care._layers import put_layer, visible_box_level0


def test_visible_box_scales_the_displayed_levels_corners_to_level0():
    slide = SimpleNamespace(level_downsamples=[1.0, 4.0, 16.0], dimensions=[(10_000, 8_000)])
    layer = SimpleNamespace(metadata={"slide": slide}, multiscale=True, data_level=1,
                            corner_pixels=np.array([[100, 200], [299, 2_999]]))  # (row, col) at level 1
    # columns 200..2999 of level 1 cover level-0 x 800..12000, clipped to the slide's 10000
    assert visible_box_level0(layer) == (800.0, 400.0, 10_000.0, 1_200.0)
    layer.data_level = 0
    assert visible_box_level0(layer) == (200.0, 100.0, 3_000.0, 300.0)


@pytest.mark.parametrize("kind", ["labels", "image"])
def test_put_layer_updates_in_place_keeping_what_the_user_set(kind):
    from napari.components import ViewerModel

    viewer = ViewerModel()
    data = np.arange(12, dtype=np.int32 if kind == "labels" else np.float32).reshape(3, 4)
    kwargs = {"name": "CARE x", "scale": (2.0, 2.0), "translate": (1.0, 1.0), "opacity": 0.5,
              "metadata": {"napari_care_role": "x", "source": "CARE"}}
    first = put_layer(viewer, data, kwargs, kind)
    first.visible = False  # by hand
    first.opacity = 0.9
    second = put_layer(viewer, data[:2] * 2, {**kwargs, "scale": (4.0, 4.0), "metadata": {"source": "MIL"}}, kind)
    assert second is first and len(viewer.layers) == 1
    np.testing.assert_array_equal(second.data, data[:2] * 2)
    assert tuple(second.scale) == (4.0, 4.0) and not second.visible
    assert second.metadata == {"napari_care_role": "x", "source": "MIL"}
    # an image's opacity is a widget option (the heatmap's); a labels layer keeps the user's
    assert second.opacity == pytest.approx(0.5 if kind == "image" else 0.9)
