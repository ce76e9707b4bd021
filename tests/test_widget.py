"""The "CARE: segment regions" widget in a real viewer: runs, cancel, visible field, layers.

A small generated H&E slide (4096 x 3072 px at 0.5 um/px, about a hundred tissue tiles at
20x) keeps every run well under a second. Encoders are wrapped to count (or hold) the tiles
they encode, so "only the tiles in view" is a number, not a timing.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from gui_helpers import RUN_TIMEOUT_MS, run_and_wait

from napari_care._care_layers import ATTENTION, REGIONS, ROI
from napari_care._layers import level0_to_world, visible_box_level0
from napari_care.core.segment import SegmentOptions
from napari_care.core.tiling import tile_grid

pytestmark = pytest.mark.gui


def slide_layer(viewer):
    return viewer.layers[0]


class CountingEncode:
    """Wraps an encoder's ``encode``: counts tiles, and can hold a batch until released."""

    def __init__(self, encoder, *, hold: bool = False) -> None:
        self.encode = encoder.encode
        self.tiles = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.release.wait(timeout=30)
        self.tiles += len(tiles)
        return self.encode(tiles)


def count_encodes(widget, monkeypatch, *, hold: bool = False) -> CountingEncode:
    session = widget.controller.session(widget.slide_layer.value)
    encoder = session.encoder(widget.segment_options())
    counter = CountingEncode(encoder, hold=hold)
    monkeypatch.setattr(encoder, "encode", counter)
    return counter


def show_view(viewer, qtbot, *, center_level0: tuple[float, float], zoom: float):
    """Move the camera (level-0 (x, y) centre; zoom = screen px per um) and wait for the redraw."""
    layer = slide_layer(viewer)
    before = np.asarray(layer.corner_pixels).copy()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (center_level0[1] * 0.5, center_level0[0] * 0.5)
    camera.zoom = zoom
    qtbot.waitUntil(lambda: not np.array_equal(layer.corner_pixels, before), timeout=5000)
    qtbot.wait(50)
    return visible_box_level0(layer)


def test_whole_slide_run_draws_three_aligned_layers(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    widget.scope.value = "whole slide"
    run_and_wait(widget, qtbot)
    result = widget.controller.result
    assert [layer.name for layer in viewer.layers[1:]] == [REGIONS, ATTENTION, ROI]
    assert widget.status.value.startswith("CARE (training-free regions): ")  # which CARE ran, by name
    assert "regions over" in widget.status.value and len(result.features) > 50
    assert widget.progress.value == widget.progress.max  # a finished run shows a full bar
    image, regions, heatmap = slide_layer(viewer), viewer.layers[REGIONS], viewer.layers[ATTENTION]
    stride = result.grid.stride_level0
    for i in range(0, len(result.features), 7):
        (x, y), (gx, gy) = result.features.coords[i], result.features.grid[i]
        cell = (gy, gx)  # the layers cover the slide's whole patch grid, from cell (0, 0)
        for dy, dx in ((0, 0), (stride - 1, stride - 1)):  # the tile's first and last level-0 pixel
            world = image.data_to_world((y + dy, x + dx))
            np.testing.assert_array_equal(np.round(regions.world_to_data(world)).astype(int), cell)
            np.testing.assert_array_equal(np.round(heatmap.world_to_data(world)).astype(int), cell)
            assert regions.get_value(world, world=True) == result.care.region_of_patch[i] + 1
        centre = image.data_to_world((y + stride / 2 - 0.5, x + stride / 2 - 0.5))
        np.testing.assert_allclose(regions.data_to_world(cell), centre)
    x0, y0, x1, y1 = next(box for box in _roi_boxes(result) if box[4])[:4]
    slide = image.metadata["slide"]
    corners = level0_to_world(slide, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
    np.testing.assert_allclose(viewer.layers[ROI].data[0], corners)

    widget.opacity.value = 0.3  # a display option: redrawn within a few event-loop turns, no rerun
    assert widget.controller.busy
    qtbot.waitUntil(lambda: not widget.controller.busy, timeout=5000)
    assert heatmap.opacity == pytest.approx(0.3)

    # hovering: napari's status thread sets the status; the widget adds region, weight, attention
    (x, y), region = result.features.coords[0], result.care.region_of_patch[0]
    viewer.cursor.position = image.data_to_world((y + stride / 2, x + stride / 2))
    napari_status = image.get_status(viewer.cursor.position, world=True)
    viewer.status = napari_status
    assert viewer.status["coordinates"].startswith(
        f"{napari_status['coordinates']} | CARE region {region} (a={result.care.a[region]:.3g}) · attention "
    )

    layers_before = list(viewer.layers)
    widget.k.value = 4
    run_and_wait(widget, qtbot)
    assert list(viewer.layers) == layers_before  # updated in place: the same four layer objects
    assert widget.controller.result.care.k == 4


def care_layers_now(widget):
    """The layer data of the controller's last result, rebuilt here with the current display options."""
    from napari_care._care_layers import care_layers

    controller = widget.controller
    return care_layers(
        controller.result,
        controller.result_layer.metadata["slide"],
        widget.display_options(),
        controller.mil_output,
    )


def assert_layers_show_the_last_result(viewer, widget) -> None:
    """All three CARE layers hold the controller's last result (none left from another run)."""
    regions, attention, roi = care_layers_now(widget)
    np.testing.assert_array_equal(viewer.layers[REGIONS].data, regions[0])
    np.testing.assert_array_equal(viewer.layers[ATTENTION].data, attention[0])
    assert viewer.layers[ATTENTION].opacity == pytest.approx(attention[1]["opacity"])
    shapes = viewer.layers[ROI]
    assert len(shapes.data) == len(roi[0]) and all(
        np.allclose(a, b) for a, b in zip(shapes.data, roi[0], strict=True)
    )
    assert list(shapes.features["label"]) == roi[1]["features"]["label"]


def test_a_draw_puts_one_layer_per_turn_and_the_window_repaints_them_at_once(viewer_widget, qtbot):
    from qtpy.QtCore import QTimer

    viewer, widget = viewer_widget
    controller, window = widget.controller, viewer.window._qt_window
    turns = QTimer()  # a zero-interval timer ticks once per event-loop turn
    turns.setInterval(0)
    ticks = []
    turns.timeout.connect(lambda: ticks.append(1))
    inserted = []  # (name, event-loop turn, window repainting?, busy?) as each layer goes in

    def on_inserted(event):
        inserted.append((event.value.name, len(ticks), window.updatesEnabled(), controller.busy))
        turns.start()  # from the first layer on

    viewer.layers.events.inserted.connect(on_inserted)
    widget.scope.value = "whole slide"
    controller.run()
    qtbot.waitUntil(lambda: not controller.busy, timeout=RUN_TIMEOUT_MS)
    turns.stop()
    viewer.layers.events.inserted.disconnect(on_inserted)  # it holds the window: the viewer could not go
    assert [name for name, *_ in inserted] == [REGIONS, ATTENTION, ROI]
    assert all(not repainting and busy for _, _, repainting, busy in inserted)  # window held, still busy
    turn_of_layer = [turn for _, turn, _, _ in inserted]
    assert turn_of_layer == sorted(set(turn_of_layer))  # each layer in a turn of its own
    assert window.updatesEnabled() and "regions over" in widget.status.value
    assert viewer.layers.selection.active is slide_layer(viewer)  # the new layers did not take it
    assert_layers_show_the_last_result(viewer, widget)
    regions, image = viewer.layers[REGIONS], slide_layer(viewer)
    result = controller.result
    (x, y), (gx, gy) = result.features.coords[0], result.features.grid[0]
    np.testing.assert_array_equal(
        np.round(regions.world_to_data(image.data_to_world((y, x)))).astype(int), (gy, gx)
    )

    # in place (the layers exist): one layer per turn again, the canvas held, not the whole window
    canvas, updated = viewer.window._qt_viewer.canvas.native, []

    def on_data(_event):
        updated.append((canvas.updatesEnabled(), window.updatesEnabled()))

    viewer.layers[REGIONS].events.data.connect(on_data)
    widget.k.value = 4
    run_and_wait(widget, qtbot)
    viewer.layers[REGIONS].events.data.disconnect(on_data)
    assert updated == [(False, True)] and canvas.updatesEnabled()
    assert_layers_show_the_last_result(viewer, widget)


def test_cancel_a_new_run_or_a_redraw_during_a_draw_leave_one_results_layers(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    controller = widget.controller
    widget.scope.value = "whole slide"
    run_and_wait(widget, qtbot)

    # Cancel while the layers go in: the run is over, the draw completes and says so
    widget.k.value = 4
    controller.run()
    controller.worker.returned.connect(lambda _out: widget.cancel_button.changed.emit(True))
    qtbot.waitUntil(lambda: not controller.busy, timeout=RUN_TIMEOUT_MS)
    assert controller.result.care.k == 4 and "regions over" in widget.status.value
    assert not widget.cancel_button.enabled
    assert_layers_show_the_last_result(viewer, widget)

    # a new run while the layers of the last go in: they complete, then the new run's replace them
    widget.k.value = 2
    controller.run()

    def rerun(_out):
        widget.k.value = 6
        controller.run()

    controller.worker.returned.connect(rerun)
    qtbot.waitUntil(lambda: controller.result.care.k == 6 and not controller.busy, timeout=RUN_TIMEOUT_MS)
    assert_layers_show_the_last_result(viewer, widget)
    assert viewer.window._qt_window.updatesEnabled()

    # a display option changed while the layers go in: a new draw replaces the rest of the stale one
    widget.k.value = 3
    controller.run()
    controller.worker.returned.connect(lambda _out: setattr(widget.opacity, "value", 0.25))
    qtbot.waitUntil(lambda: controller.result.care.k == 3 and not controller.busy, timeout=RUN_TIMEOUT_MS)
    assert viewer.layers[ATTENTION].opacity == pytest.approx(0.25)
    assert_layers_show_the_last_result(viewer, widget)
    assert len(viewer.layers) == 4


def _roi_boxes(result):
    from napari_care.core.regions import roi_boxes

    return [(*box.box_level0, box.is_top) for box in roi_boxes(result)]


def test_widget_options_reach_the_core_call(viewer_widget, qtbot):
    _, widget = viewer_widget
    widget.k.value = 5
    widget.magnification.value = 10.0
    widget.min_tissue.value = 0.5
    widget.tissue_threshold.value = 0.08
    widget.e_star.value = 0.3
    widget.lambda_spf.value = 0.2
    widget.n_groups.value = 3
    expected = SegmentOptions(
        encoder="default",
        magnification=10.0,
        k=5,
        tissue_threshold=0.08,
        min_tissue=0.5,
        e_star=0.3,
        lambda_spf=0.2,
        n_groups=3,
    )
    assert widget.segment_options() == expected
    session = widget.controller.session(widget.slide_layer.value)
    assert None in session._tissue and session._encoders  # the warm-up made them before any Run
    widget.scope.value = "whole slide"
    run_and_wait(widget, qtbot)
    result = widget.controller.result
    assert result.options == expected
    assert result.grid.tile_size_level0 == pytest.approx(448.0)  # 224 px at 10x on a 0.5 um/px slide
    assert result.care.k == 5 and result.group_of_region.max() < 3
    widget.timm_name.value = "resnet18"
    assert widget.segment_options().encoder == "timm:resnet18"


def test_visible_field_encodes_only_the_tiles_in_view_then_only_new_ones_after_a_pan(
    viewer_widget, qtbot, monkeypatch
):
    viewer, widget = viewer_widget
    session = widget.controller.session(widget.slide_layer.value)
    slide = session.slide
    counter = count_encodes(widget, monkeypatch)
    widget.scope.value = "visible field"
    box = show_view(viewer, qtbot, center_level0=(1700, 1300), zoom=1.0)
    assert box[2] - box[0] < 3000  # zoomed in: part of the 4096 px wide slide
    run_and_wait(widget, qtbot)
    in_view = tile_grid(slide, magnification=20.0, tissue=session.tissue(None), min_tissue=0.25, box=box)
    whole = tile_grid(slide, magnification=20.0, tissue=session.tissue(None), min_tissue=0.25)
    result = widget.controller.result
    assert 0 < len(in_view) < len(whole)
    assert counter.tiles == result.encoded_tiles == len(result.features) == len(in_view)
    np.testing.assert_array_equal(np.sort(result.features.coords, axis=0), np.sort(in_view.coords, axis=0))

    width = box[2] - box[0]
    counter.tiles = 0
    panned = show_view(
        viewer, qtbot, center_level0=((box[0] + box[2]) / 2 + width / 2, (box[1] + box[3]) / 2), zoom=1.0
    )
    run_and_wait(widget, qtbot)
    now = tile_grid(slide, magnification=20.0, tissue=session.tissue(None), min_tissue=0.25, box=panned)
    seen = {tuple(cell) for cell in in_view.grid}
    new = [tuple(cell) for cell in now.grid if tuple(cell) not in seen]
    result = widget.controller.result
    assert 0 < len(new) < len(now)
    assert counter.tiles == result.encoded_tiles == len(new)
    assert len(result.features) == len(now)


def test_follow_view_reruns_once_after_the_camera_settles(viewer_widget, qtbot, monkeypatch):
    import napari_care._segment_controller as controller_module

    viewer, widget = viewer_widget
    jobs = []
    job = controller_module.viewer_job

    def counting_job(*args):
        jobs.append(args[2])  # the box
        return (yield from job(*args))

    monkeypatch.setattr(controller_module, "viewer_job", counting_job)
    widget.scope.value = "visible field"
    widget.follow_view.value = True
    for x in (1500, 1600, 1700):  # three quick moves: one run, on the last view
        box = show_view(viewer, qtbot, center_level0=(x, 1300), zoom=1.0)
    qtbot.waitUntil(lambda: bool(jobs) and not widget.controller.busy, timeout=RUN_TIMEOUT_MS)
    qtbot.wait(2 * controller_module.FOLLOW_DELAY_MS)
    assert jobs == [box]
    widget.follow_view.value = False
    show_view(viewer, qtbot, center_level0=(1900, 1300), zoom=1.0)
    qtbot.wait(2 * controller_module.FOLLOW_DELAY_MS)
    assert len(jobs) == 1


def test_cancel_mid_run_keeps_the_earlier_layers(viewer_widget, qtbot, monkeypatch):
    viewer, widget = viewer_widget
    widget.scope.value = "whole slide"
    run_and_wait(widget, qtbot)
    before = {name: np.array(viewer.layers[name].data, copy=True) for name in (REGIONS, ATTENTION)}
    roi_before = [np.array(shape) for shape in viewer.layers[ROI].data]
    counter = count_encodes(widget, monkeypatch, hold=True)
    widget.magnification.value = 10.0  # other tiles: nothing cached, the encoder must run
    widget.controller.run()
    worker = widget.controller.worker
    errors = []
    worker.errored.connect(errors.append)
    assert counter.entered.wait(timeout=30)
    widget.cancel_button.changed.emit(True)  # as a click would
    counter.release.set()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=RUN_TIMEOUT_MS)
    qtbot.wait(50)
    assert [type(error).__name__ for error in errors] == ["Cancelled"]  # stopped after the batch it was in
    assert counter.tiles <= SegmentOptions().batch_size
    assert widget.status.value == "cancelled"
    assert widget.controller.result.options.magnification == 20.0
    assert len(viewer.layers) == 4
    for name, data in before.items():
        np.testing.assert_array_equal(viewer.layers[name].data, data)
    assert all(np.array_equal(a, b) for a, b in zip(viewer.layers[ROI].data, roi_before, strict=True))


def test_event_loop_runs_while_the_worker_encodes(viewer_widget, qtbot, monkeypatch):
    from qtpy.QtCore import QTimer

    _, widget = viewer_widget
    counter = count_encodes(widget, monkeypatch, hold=True)
    widget.scope.value = "whole slide"
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start()
    widget.controller.run()
    assert counter.entered.wait(timeout=30)  # the worker is inside the encoder now, and held there
    qtbot.waitUntil(lambda: len(ticks) >= 10, timeout=5000)
    assert widget.controller.worker is not None and widget.controller.worker.is_running
    counter.release.set()
    qtbot.waitUntil(lambda: not widget.controller.busy, timeout=RUN_TIMEOUT_MS)
    timer.stop()
    assert "regions over" in widget.status.value


def test_errors_are_said_in_the_status_line_not_raised(viewer_widget, qtbot, monkeypatch):
    viewer, widget = viewer_widget
    widget.scope.value = "visible field"
    show_view(viewer, qtbot, center_level0=(60, 60), zoom=8.0)  # the glass in the top-left corner
    run_and_wait(widget, qtbot)
    assert widget.status.value == "no tissue in view"
    assert len(viewer.layers) == 1

    session = widget.controller.session(widget.slide_layer.value)
    encoder = session.encoder(widget.segment_options())
    monkeypatch.setattr(encoder, "encode", lambda tiles: np.full((len(tiles), encoder.embed_dim), np.nan))
    widget.scope.value = "whole slide"
    run_and_wait(widget, qtbot)
    assert widget.status.value.startswith("failed: slide small.ome.tif: encoder")
    assert "NaN/inf" in widget.status.value and len(viewer.layers) == 1


def test_the_review_panel_is_a_section_of_the_widget(make_napari_viewer):
    from napari_care._review_panel import ReviewPanel
    from napari_care._widget import CareSegmentWidget

    widget = CareSegmentWidget(make_napari_viewer())
    assert isinstance(widget.review, ReviewPanel)
    assert widget.review.viewer is widget.viewer


def test_the_widget_from_the_plugin_menu_runs_through_naparis_proxy(
    make_napari_viewer, widget_slide_path, qtbot
):
    """napari hands plugin widgets a PublicOnlyProxy of the viewer: a run must draw through it
    without touching private attributes via the proxy (which warns, and once crashed the draw)."""
    import warnings

    from napari_care._reader import read_slide

    viewer = make_napari_viewer(show=True)
    data, kwargs, _ = read_slide(str(widget_slide_path))[0]
    viewer.add_image(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-care", "CARE: segment regions")
    assert type(widget.viewer).__name__ == "PublicOnlyProxy"
    qtbot.waitUntil(lambda: not widget.controller.warming_up, timeout=RUN_TIMEOUT_MS)
    widget.scope.value = "whole slide"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*[Pp]rivate attribute.*")
        run_and_wait(widget, qtbot)
    assert [layer.name for layer in viewer.layers[1:]] == [REGIONS, ATTENTION, ROI]
    assert "regions over" in widget.status.value


def test_closing_the_widget_mid_draw_stops_it_and_the_window_repaints_again(viewer_widget, qtbot):
    from napari_care._layer_draw import repainted_widgets

    viewer, widget = viewer_widget
    widget.scope.value = "whole slide"
    run_and_wait(widget, qtbot)
    controller = widget.controller
    controller.redraw()  # a draw of three layers over three turns, repaints held meanwhile
    window, canvas, docks = repainted_widgets(viewer)
    assert controller._drawing.pending and not canvas.updatesEnabled()
    widget.native.deleteLater()
    qtbot.waitUntil(lambda: not controller._drawing.pending, timeout=RUN_TIMEOUT_MS)
    assert (
        window.updatesEnabled() and canvas.updatesEnabled() and all(dock.updatesEnabled() for dock in docks)
    )
