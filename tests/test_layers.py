"""The napari boundary: the visible field as a level-0 box, and layers updated in place."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_care._layers import put_layer, visible_box_level0


def test_visible_box_scales_the_displayed_levels_corners_to_level0():
    slide = SimpleNamespace(level_downsamples=[1.0, 4.0, 16.0], dimensions=[(10_000, 8_000)])
    layer = SimpleNamespace(
        metadata={"slide": slide},
        multiscale=True,
        data_level=1,
        corner_pixels=np.array([[100, 200], [299, 2_999]]),
    )  # (row, col) at level 1
    # columns 200..2999 of level 1 cover level-0 x 800..12000, clipped to the slide's 10000
    assert visible_box_level0(layer) == (800.0, 400.0, 10_000.0, 1_200.0)
    layer.data_level = 0
    assert visible_box_level0(layer) == (200.0, 100.0, 3_000.0, 300.0)


@pytest.mark.parametrize("kind", ["labels", "image"])
def test_put_layer_updates_in_place_keeping_what_the_user_set(kind):
    from napari.components import ViewerModel

    viewer = ViewerModel()
    data = np.arange(12, dtype=np.int32 if kind == "labels" else np.float32).reshape(3, 4)
    kwargs = {
        "name": "CARE x",
        "scale": (2.0, 2.0),
        "translate": (1.0, 1.0),
        "opacity": 0.5,
        "metadata": {"napari_care_role": "x", "source": "CARE"},
    }
    first = put_layer(viewer, data, kwargs, kind)
    first.visible = False  # by hand
    first.opacity = 0.9
    second = put_layer(
        viewer, data[:2] * 2, {**kwargs, "scale": (4.0, 4.0), "metadata": {"source": "MIL"}}, kind
    )
    assert second is first and len(viewer.layers) == 1
    np.testing.assert_array_equal(second.data, data[:2] * 2)
    assert tuple(second.scale) == (4.0, 4.0) and not second.visible
    assert second.metadata == {"napari_care_role": "x", "source": "MIL"}
    # an image's opacity is a widget option (the heatmap's); a labels layer keeps the user's
    assert second.opacity == pytest.approx(0.5 if kind == "image" else 0.9)


def test_put_layer_updates_roi_rectangles_in_place_as_their_number_changes():
    from napari.components import ViewerModel

    viewer = ViewerModel()

    def roi(n: int, shift: float):
        rectangles = [np.array([[0, 0], [0, 10], [5, 10], [5, 0]], float) + shift + 20 * i for i in range(n)]
        labels = [f"region {i}" for i in range(n)]
        kwargs = {
            "name": "CARE ROI",
            "shape_type": "rectangle",
            "edge_width": 2.0,
            "face_color": "transparent",
            "edge_color": ["#ffd700"] + ["#00e5ff"] * (n - 1),
            "features": {"region": list(range(n)), "label": labels},
            "text": {"string": "{label}", "size": 11, "color": "white"},
        }
        return rectangles, kwargs

    first = put_layer(viewer, *roi(1, 0.0), "shapes")
    for n, shift in ((3, 1.0), (2, 2.0), (1, 3.0)):
        rectangles, kwargs = roi(n, shift)
        layer = put_layer(viewer, rectangles, kwargs, "shapes")
        assert layer is first and len(viewer.layers) == 1
        assert layer.shape_type == ["rectangle"] * n
        assert all(np.allclose(a, b) for a, b in zip(layer.data, rectangles, strict=True))
        assert layer.edge_width == [2.0] * n
        np.testing.assert_allclose(
            layer.edge_color[:, :3], [[1, 215 / 255, 0]] + [[0, 229 / 255, 1]] * (n - 1)
        )
        assert list(layer.features["label"]) == [f"region {i}" for i in range(n)]
        assert list(layer.text.values) == [f"region {i}" for i in range(n)]  # the text template stays

    highlights = []
    first.events.highlight.connect(lambda _event: highlights.append(1))
    put_layer(viewer, *roi(2, 4.0), "shapes")
    assert highlights == []  # nothing selected: the empty highlight is not redrawn
    first.selected_data = {0}
    highlights.clear()
    put_layer(viewer, *roi(2, 5.0), "shapes")
    assert highlights and first.selected_data == set()  # a selection is cleared, and its outline with it


def test_one_call_per_turn_runs_later_in_order_and_a_new_start_replaces_what_waits(qtbot):
    from napari_care._layer_draw import OneCallPerTurn

    calls, done = [], []
    turns = OneCallPerTurn(on_done=done.append)

    def first():
        calls.append(0)
        turns.start([lambda i=i: calls.append(i) for i in (10, 11)])  # 1 and 2 are stale now

    turns.start([first, lambda: calls.append(1), lambda: calls.append(2)])
    assert calls == [] and turns.pending  # nothing runs in the turn that started it
    qtbot.waitUntil(lambda: not turns.pending, timeout=1000)
    assert calls == [0, 10, 11] and done == [True]
    turns.start([])  # nothing to do: done at once
    assert done == [True, True] and not turns.pending


def test_one_call_per_turn_drops_the_rest_after_an_error(qtbot):
    from napari_care._layer_draw import OneCallPerTurn

    calls, done = [], []
    turns = OneCallPerTurn(on_done=done.append)

    def fail():
        raise RuntimeError("boom")

    turns.start([fail, lambda: calls.append(1)])
    with qtbot.captureExceptions() as exceptions:
        qtbot.waitUntil(lambda: not turns.pending, timeout=1000)
    assert [str(error) for _, error, _ in exceptions] == ["boom"]  # on to Qt's (napari's) handler
    assert calls == [] and done == [False]


def test_layer_draw_puts_layers_one_per_turn(qtbot):
    from napari.components import ViewerModel

    from napari_care._layer_draw import LayerDraw

    viewer = ViewerModel()  # no window: nothing to hold
    first = put_layer(viewer, np.zeros((2, 3), np.float32), {"name": "slide"}, "image")
    assert viewer.layers.selection.active is first
    draw = LayerDraw(viewer)
    layers = [
        (np.zeros((2, 3), np.int32), {"name": "a"}, "labels"),
        (np.ones((2, 3), np.float32), {"name": "b"}, "image"),
    ]
    draw.start(layers)
    assert len(viewer.layers) == 1 and draw.pending
    qtbot.waitUntil(lambda: not draw.pending, timeout=1000)
    assert [layer.name for layer in viewer.layers] == ["slide", "a", "b"]
    assert viewer.layers.selection.active is first  # the drawn layers did not take the selection
    put_layer(viewer, np.ones((2, 3), np.float32), {"name": "c"}, "image")
    assert viewer.layers.selection.active is viewer.layers["c"]  # napari's way otherwise
