"""A real screenshot of the viewer: the offline sample, segmented whole-slide, three CARE layers.

    xvfb-run -a python benchmarks/make_screenshot.py [--out docs/images/viewer.png] [--size 1600x1000]

Opens the offline sample through the plugin's sample-data contribution, docks "CARE: segment
regions" through the plugin's widget contribution, runs it on the whole slide with the
default encoder, and saves the window (canvas and widget) as a PNG under 1 MB (quantised to
an adaptive palette when the full-colour image is larger).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np

MAX_BYTES = 1_000_000
REPO = Path(__file__).resolve().parents[1]


def wait(app, condition, timeout_s: float = 600.0) -> None:
    end = time.perf_counter() + timeout_s
    while not condition():
        if time.perf_counter() > end:
            raise TimeoutError("the viewer did not get there in time")
        app.processEvents()
        time.sleep(0.01)


def settle(app, seconds: float) -> None:
    end = time.perf_counter() + seconds
    wait(app, lambda: time.perf_counter() > end)


def save_png(pixels, path: Path) -> int:
    """Write ``pixels`` (h, w, 3 or 4 uint8) as PNG under MAX_BYTES; returns the size in bytes."""
    from PIL import Image

    image = Image.fromarray(pixels[..., :3])
    for colours in (None, 256, 128, 64):
        candidate = image if colours is None else image.quantize(colours, method=Image.Quantize.MEDIANCUT)
        buffer = io.BytesIO()
        candidate.save(buffer, format="PNG", optimize=True)
        if buffer.tell() < MAX_BYTES:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.tell()


def frame_tissue(viewer, result, margin: float = 1.1) -> None:
    """Centre the camera on the segmented patches and zoom until they fill the canvas."""
    from napari_care._layers import level0_to_world

    corners = np.array(
        [
            result.features.coords.min(axis=0),
            result.features.coords.max(axis=0) + result.grid.tile_size_level0,
        ]
    )
    slide = viewer.layers["offline sample"].metadata["slide"]
    (row0, col0), (row1, col1) = level0_to_world(slide, corners)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    canvas = viewer.window._qt_viewer.canvas.native
    camera.center = ((row0 + row1) / 2, (col0 + col1) / 2)
    camera.zoom = min(canvas.height() / (row1 - row0), canvas.width() / (col1 - col0)) / margin


def hover_over_roi(viewer, result) -> None:
    """Put the cursor on the ROI's first patch and let napari (and the widget) say what is there."""
    from napari_care._layers import level0_to_world

    slide = viewer.layers["offline sample"].metadata["slide"]
    patch = int(np.flatnonzero(result.care.roi_mask)[0])
    centre = result.features.coords[patch] + result.grid.tile_size_level0 / 2
    viewer.cursor.position = tuple(level0_to_world(slide, centre[None])[0])
    viewer.mouse_over_canvas = True
    viewer.update_status_from_cursor()


def expand_sections(widget, titles: tuple[str, ...]) -> None:
    """Open the widget's collapsible sections named ``titles`` (they start collapsed)."""
    from superqt import QCollapsible

    for section in widget.native.findChildren(QCollapsible):
        if section.text() in titles:
            section.expand(animate=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "viewer.png")
    parser.add_argument("--widget-out", type=Path, default=REPO / "docs" / "images" / "widget.png")
    parser.add_argument("--size", default="1600x1000", help="window size, WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari CARE: offline sample", show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(width, height)
    viewer.open_sample("napari-care", "offline-sample")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-care", "CARE: segment regions")
    wait(app, lambda: widget.controller.warm_worker is None)
    widget.scope.value = "whole slide"
    widget.colour_by.value = "group"
    widget.roi_threshold.value = 0.9
    widget.normalisation.value = "rank"
    widget.heatmap_threshold.value = 0.7  # the top 30% of the patches by attention
    widget.opacity.value = 0.6
    widget.colormap.value = "inferno"
    started = time.perf_counter()
    widget.controller.run()
    wait(app, lambda: not widget.controller.busy)
    print(f"{widget.status.value} ({time.perf_counter() - started:.1f} s)")
    if "regions over" not in widget.status.value:
        raise SystemExit(f"the run failed: {widget.status.value}")
    viewer.layers["CARE regions"].opacity = 0.3  # the tissue shows through the region colours
    viewer.layers.selection.active = viewer.layers["CARE attention"]
    frame_tissue(viewer, widget.controller.result)
    expand_sections(widget, ("Thresholds", "Display"))
    hover_over_roi(viewer, widget.controller.result)
    settle(app, 2.0)  # let the slide's tiles load at the displayed level
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    size = save_png(pixels, args.out)
    print(f"wrote {args.out} ({pixels.shape[1]} x {pixels.shape[0]} px, {size / 1e6:.2f} MB)")
    dock.widget().grab().save(str(args.widget_out))
    print(f"wrote {args.widget_out} ({args.widget_out.stat().st_size / 1e6:.2f} MB)")
    viewer.close()


if __name__ == "__main__":
    main()
