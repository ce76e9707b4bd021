"""The README's screenshot: a pathologist's review session over real tissue.

    xvfb-run -a python benchmarks/make_review_screenshot.py [SLIDE] [--mpp 0.5] [--out PNG]

Segments the shared TCGA-CR-7395 frozen section (head-and-neck carcinoma; the file has no
calibration, so ``--mpp 0.5`` says it is 20x, as ``napari-care segment --mpp`` would) with the
default encoder and the automatic number of groups, writes the run's output set into a
temporary folder, then reopens it as a user does the next day: File > Open of its
``care.json`` (the slide, regions coloured by group, ROI, heatmap), with the "CARE: groups and
corrections" panel docked (legend with swatches, names, measurements per group and region).
Saves the window as a PNG under 1 MB and prints what the run found.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # make_screenshot beside this file
from make_screenshot import save_png, settle, wait

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SLIDE = REPO.parent / "shared" / "data" / "slides" / "TCGA-CR-7395-01A-01-TS1.svs"


def segment_into(slide_path: Path, mpp: float | None, folder: Path) -> Path:
    """Segment the whole slide and write its output set; returns its ``care.json``."""
    from napari_care.core.outputs import write_outputs
    from napari_care.core.progress import run_to_end
    from napari_care.core.segment import SegmentOptions, segment
    from napari_care.core.slide.handle import open_slide

    started = time.perf_counter()
    with open_slide(slide_path, mpp=mpp) as slide:
        result = run_to_end(segment(slide, SegmentOptions()))
        paths = write_outputs(result, slide, folder, slide_path.name.split(".")[0])
    groups = int(result.group_of_region.max()) + 1
    print(
        f"{slide_path.name}: {len(result.features)} patches, {result.care.n_regions} regions in "
        f"{groups} groups, ROI = region {result.care.roi} ({time.perf_counter() - started:.1f} s)"
    )
    return paths["summary"]


def frame_patches(viewer, layer, margin: float = 1.08) -> None:
    """Centre the camera on the regions layer's tissue cells and zoom until they fill the canvas."""
    rows, cols = np.nonzero(np.asarray(layer.data) > 0)
    corners = np.array([[rows.min(), cols.min()], [rows.max() + 1, cols.max() + 1]], dtype=np.float64)
    (row0, col0), (row1, col1) = (layer.data_to_world(corner) for corner in corners)
    canvas = viewer.window._qt_viewer.canvas.native
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = ((row0 + row1) / 2, (col0 + col1) / 2)
    camera.zoom = min(canvas.height() / (row1 - row0), canvas.width() / (col1 - col0)) / margin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slide", nargs="?", type=Path, default=DEFAULT_SLIDE)
    parser.add_argument("--mpp", type=float, default=0.5, help="level-0 um/px when the file has none")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "review_session.png")
    parser.add_argument("--size", default="1700x1000", help="window size, WIDTHxHEIGHT")
    args = parser.parse_args()
    if not args.slide.is_file():
        raise SystemExit(f"{args.slide}: not found (the shared real slides are beside the repository)")
    width, height = (int(v) for v in args.size.split("x"))
    folder = Path(tempfile.mkdtemp(prefix="care_review_"))
    summary = segment_into(args.slide, args.mpp, folder)

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title=f"napari CARE: review of {args.slide.name}", show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(width, height)
    started = time.perf_counter()
    viewer.open(str(summary), plugin="napari-care")
    names = [layer.name for layer in viewer.layers]
    print(f"reopened {summary.name}: {names} ({time.perf_counter() - started:.2f} s)")
    dock, panel = viewer.window.add_plugin_dock_widget("napari-care", "CARE: groups and corrections")
    dock.setMinimumWidth(560)
    regions = viewer.layers["CARE regions"]
    regions.opacity = 0.4  # the tissue shows through the group colours
    viewer.layers["CARE attention"].visible = False  # the groups are the subject here
    viewer.layers.selection.active = regions
    settle(app, 0.5)  # the dock's layout, before the canvas size is read
    frame_patches(viewer, regions)
    settle(app, 2.0)  # the slide's tiles at the displayed level
    wait(app, lambda: panel.worker is None)
    print(f"panel: {panel.status.value}")
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    size = save_png(pixels, args.out)
    print(f"wrote {args.out} ({pixels.shape[1]} x {pixels.shape[0]} px, {size / 1e6:.2f} MB)")
    viewer.close()


if __name__ == "__main__":
    main()
