"""The viewer on a big slide: open, pan and zoom to painted, visible-field runs, event-loop stalls.

    flock /tmp/bench.lock xvfb-run -a python benchmarks/bench_viewer_gigapixel.py [SLIDE[:MPP] ...]

Each repeat is a fresh process (napari started, window shown, canvas sized to ``--canvas``)
that opens a slide through the plugin's reader (``viewer.open(path, plugin="napari-care")``)
and times, on the GUI thread's clock:

1. open: from the call to the end of the first canvas paint that shows the slide's last slice;
2. a zoom to 20x on tissue, a half-screen pan at 20x and a zoom out by 2: from the camera move
   to the end of the first paint that started after the layer's last new slice;
3. the longest event-loop stall while panning (a drag of 30 steps of 1/20 screen, one every
   30 ms, then until the canvas is still), over the slide alone and again over the CARE layers;
4. with the "CARE: segment regions" widget docked and its warm-up done: a visible-field run at
   20x (Run to layers painted) and one after a half-screen pan;
5. the longest stall during a whole-slide run (``--whole-slide``; on the gigapixel slide that
   run takes over a minute on two shared cores, so only in its first
   ``--big-whole-slide-repeats`` repeats);
6. a reference: the longest gap while nothing runs but the canvas repainting every 300 ms.

napari gets the slide's own levels (``Slide.tiled_levels``, 4x apart): it slices them on the
GUI thread, so the tiles a pan or zoom lacks are decoded there.

A stall is a gap between the ticks of a 5 ms QTimer. A watchdog thread
(``bench_viewer_watchdog.py``) samples the GUI thread's stack (``sys._current_frames()``) every
5 ms while a gap lasts more than 50 ms, with the innermost frames of the other busy threads (a
worker that held the GIL is among them); each repeat prints its longest stalls with the frames
seen most in them, so each stall names its cause, and the results file keeps them.

Default slides: the gigapixel benchmark slide (``make_gigapixel.py``, 100,000 x 80,000 px at
0.25 um/px) and the largest real slide of ``../shared/data/slides`` (TCGA-CR-7395, which has no
mpp in the file: 0.5 um/px, as its README allows when the user says so). Figures are the
median and the maximum over the repeats, written to ``docs/results/viewer_gigapixel.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings
from bench_viewer import ZOOM_20X, Pump, repaint_stall_ms, size_canvas, timed_run
from bench_viewer_watchdog import StallWatchdog
from result_files import RESULTS, ROOT, write_result

SHARED_SLIDES = ROOT.parent / "shared" / "data" / "slides"
REAL_SLIDE = SHARED_SLIDES / "TCGA-CR-7395-01A-01-TS1.svs"
REAL_SLIDE_MPP = 0.5  # none in the file; its README: 20x / 0.5 when the user says so
TARGETS = {"open_s": 1.0, "painted_s": 0.5, "stall_ms": 100.0, "run_20x_s": 1.0, "run_pan_s": 0.5}


class SliceWatch:
    """When a layer last got a new slice (napari's ``set_data`` after slicing)."""

    def __init__(self, layer) -> None:
        self.times: list[float] = []
        layer.events.set_data.connect(lambda _e: self.times.append(time.perf_counter()))


def painted_after(pump: Pump, watch: SliceWatch, since: float, quiet_s: float = 0.5, timeout_s: float = 30):
    """Seconds from ``since`` to the end of the first paint that started after the layer's last
    new slice (waits until no new slice came for ``quiet_s``, and such a paint ended)."""

    def settled() -> bool:
        now = time.perf_counter()
        last = max([t for t in watch.times if t >= since], default=since)
        if now - last < quiet_s:
            return False
        return any(s >= last for s in pump.paint_starts[-50:])

    pump.until(settled, timeout_s)
    last = max([t for t in watch.times if t >= since], default=since)
    for start, end in zip(pump.paint_starts, pump.draws, strict=False):
        if start >= last:
            return end - since
    raise RuntimeError("no paint after the last slice")


def open_layer(viewer, pump: Pump, slide_path: Path, mpp: float | None):
    """Open ``slide_path`` through the plugin's reader: the layer, its :class:`SliceWatch` and
    the seconds from the call to the end of the first paint after its last slice."""
    inserted: list[float] = []  # its slices are watched from its insertion
    record = lambda _event: inserted.append(time.perf_counter())  # noqa: E731
    viewer.layers.events.inserted.connect(record)
    started = time.perf_counter()
    if mpp is None:
        layers = viewer.open(str(slide_path), plugin="napari-care")
    else:  # a slide without calibration: the reader with its mpp override (as a reopened --mpp run)
        from napari.layers import Layer

        from napari_care._reader import read_slide

        layers = [viewer.add_layer(Layer.create(*read_slide(str(slide_path), mpp=mpp)[0]))]
    viewer.layers.events.inserted.disconnect(record)
    watch = SliceWatch(layers[0])
    watch.times.append(inserted[0])  # sliced as it went in (napari may paint it before open returns)
    return layers[0], watch, painted_after(pump, watch, started)


def move_camera(viewer, center_rowcol: tuple[float, float] | None = None, zoom: float | None = None) -> None:
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    if center_rowcol is not None:
        camera.center = center_rowcol
    if zoom is not None:
        camera.zoom = zoom


def tissue_center_level0(slide) -> tuple[float, float]:
    """A level-0 (x, y) point on tissue, near the middle of the slide (from a small thumbnail)."""
    thumb = slide.thumbnail(256).astype(np.float32)
    saturation = thumb.max(axis=2) - thumb.min(axis=2)
    rows, cols = np.nonzero(saturation > 40)
    h, w = saturation.shape
    if not len(rows):
        return slide.dimensions[0][0] / 2, slide.dimensions[0][1] / 2
    nearest = np.argmin((rows - h / 2) ** 2 + (cols - w / 2) ** 2)
    width0, height0 = slide.dimensions[0]
    return (cols[nearest] + 0.5) / w * width0, (rows[nearest] + 0.5) / h * height0


def one_repeat(
    slide_path: Path,
    mpp: float | None,
    canvas: tuple[int, int],
    whole_slide: bool,
    screenshot: Path | None = None,
) -> dict:
    """One fresh viewer on ``slide_path``: every figure of the module docstring, as a dict."""
    load_start = os.getloadavg()
    import napari

    from napari_care._widget import CareSegmentWidget

    viewer = napari.Viewer(show=True)
    pump = Pump(viewer)
    size = size_canvas(viewer, pump, *canvas)
    watchdog = StallWatchdog()
    watchdog.start()
    pump.settle(0.5)
    figures: dict = {"canvas": list(size), "load_start": list(load_start)}

    since = time.perf_counter()
    layer, watch, figures["open_s"] = open_layer(viewer, pump, slide_path, mpp)
    figures["open_causes"] = watchdog.causes(since)
    # a second slide of the session: napari's one-time costs of a first image layer paid
    viewer.layers.remove(layer)
    pump.settle(0.5)
    since = time.perf_counter()
    layer, watch, figures["open_warm_s"] = open_layer(viewer, pump, slide_path, mpp)
    figures["open_warm_causes"] = watchdog.causes(since)
    slide = layer.metadata["slide"]
    figures["slide"] = {
        "name": slide_path.name,
        "dimensions": [int(v) for v in slide.dimensions[0]],
        "mpp": list(slide.mpp) if slide.mpp is not None else None,
        "levels": len(slide.dimensions),
        "file_bytes": slide_path.stat().st_size,
        "tile_cache_bytes": slide._cache.max_bytes,
        "page_cache_can_hold": slide_path.stat().st_size
        < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    }
    mpp_y, mpp_x = slide.mpp
    x0, y0 = tissue_center_level0(slide)

    def camera_step(name: str, center_level0=None, zoom=None) -> None:
        pump.settle(0.3)
        since = time.perf_counter()
        move_camera(
            viewer,
            None if center_level0 is None else (center_level0[1] * mpp_y, center_level0[0] * mpp_x),
            zoom,
        )
        figures[f"{name}_s"] = painted_after(pump, watch, since)
        figures[f"{name}_stall_ms"] = watchdog.longest_ms(since)
        figures[f"{name}_causes"] = watchdog.causes(since)

    camera_step("zoom_20x", (x0, y0), ZOOM_20X)
    half_screen_level0 = size[0] / 2 / ZOOM_20X / mpp_x
    camera_step("pan_half", (x0 + half_screen_level0, y0))
    camera_step("zoom_out", None, ZOOM_20X / 2)
    camera_step("zoom_back", None, ZOOM_20X)

    # a drag: 30 steps of a 20th of the screen, one every 30 ms (what a mouse drag asks)
    step_level0 = size[0] / 20 / ZOOM_20X / mpp_x
    since = time.perf_counter()
    for i in range(1, 31):
        move_camera(viewer, ((y0) * mpp_y, (x0 + half_screen_level0 + i * step_level0) * mpp_x))
        pump.settle(0.03)
    figures["drag_painted_s"] = painted_after(pump, watch, since)
    figures["drag_stall_ms"] = watchdog.longest_ms(since)
    figures["drag_causes"] = watchdog.causes(since)

    since = time.perf_counter()
    widget = CareSegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="CARE: segment regions")
    pump.until(lambda: not widget.controller.warming_up, 300)
    figures["warm_up_s"] = time.perf_counter() - since
    figures["warm_up_stall_ms"] = watchdog.longest_ms(since)
    figures["warm_up_causes"] = watchdog.causes(since)
    size_canvas(viewer, pump, *canvas)  # the dock took some of the window
    pump.settle(0.5)

    widget.scope.value = "visible field"
    move_camera(viewer, (y0 * mpp_y, x0 * mpp_x), ZOOM_20X)
    pump.settle(1.0)
    since = time.perf_counter()
    seconds, computed, result = timed_run(widget, pump)
    figures["run_20x_s"], figures["run_20x_worker_s"] = seconds, computed
    figures["run_20x_tiles"] = len(result.features)
    figures["run_20x_stall_ms"] = watchdog.longest_ms(since)
    figures["run_20x_causes"] = watchdog.causes(since)
    move_camera(viewer, (y0 * mpp_y, (x0 + half_screen_level0) * mpp_x))
    pump.settle(1.0)
    since = time.perf_counter()
    seconds, computed, result = timed_run(widget, pump)
    figures["run_pan_s"], figures["run_pan_worker_s"] = seconds, computed
    figures["run_pan_tiles"], figures["run_pan_encoded"] = len(result.features), result.encoded_tiles
    figures["run_pan_stall_ms"] = watchdog.longest_ms(since)
    figures["run_pan_causes"] = watchdog.causes(since)

    if screenshot is not None:
        viewer.screenshot(str(screenshot), canvas_only=False)
        figures["screenshot"] = str(screenshot)
        pump.settle(0.5)

    # a second drag, now over the CARE layers too
    since = time.perf_counter()
    for i in range(1, 31):
        move_camera(viewer, (y0 * mpp_y, (x0 + half_screen_level0 - i * step_level0) * mpp_x))
        pump.settle(0.03)
    painted_after(pump, watch, since)
    figures["drag_layers_stall_ms"] = watchdog.longest_ms(since)
    figures["drag_layers_causes"] = watchdog.causes(since)

    since = time.perf_counter()
    figures["reference_ms"] = repaint_stall_ms(pump)
    figures["reference_causes"] = watchdog.causes(since)

    if whole_slide:
        widget.scope.value = "whole slide"
        pump.settle(0.2)
        since = time.perf_counter()
        seconds, computed, result = timed_run(widget, pump)
        pump.settle(0.3)
        figures["whole_slide_s"], figures["whole_slide_worker_s"] = seconds, computed
        figures["whole_slide_patches"] = len(result.features)
        figures["whole_slide_stall_ms"] = watchdog.longest_ms(since)
        figures["whole_slide_causes"] = watchdog.causes(since)
    watchdog.stop()
    figures["load_end"] = list(os.getloadavg())
    viewer.close()
    return figures


def default_slides() -> list[str]:
    """The gigapixel benchmark slide (100,000 x 80,000, seed 0) where built, and TCGA-CR-7395."""
    from make_gigapixel import DEFAULT_OUT, slide_paths

    found = [str(path) for path in [slide_paths(DEFAULT_OUT, 100_000, 80_000, 0).svs] if path.is_file()]
    if REAL_SLIDE.is_file():
        found.append(f"{REAL_SLIDE}:{REAL_SLIDE_MPP}")
    return found


def split_mpp(spec: str) -> tuple[Path, float | None]:
    path, _, mpp = (
        spec.rpartition(":") if spec.rsplit(":", 1)[-1].replace(".", "", 1).isdigit() else (spec, "", "")
    )
    return Path(path), float(mpp) if mpp else None


FIGURES = [
    ("open_s", "open, first slide of a session -> painted", "open_s"),
    ("open_warm_s", "open, a second slide (napari warm) -> painted", "open_s"),
    ("zoom_20x_s", "zoom to 20x -> painted", "painted_s"),
    ("pan_half_s", "half-screen pan at 20x -> painted", "painted_s"),
    ("zoom_out_s", "zoom out x2 -> painted", "painted_s"),
    ("zoom_back_s", "zoom in x2 -> painted", "painted_s"),
    ("drag_stall_ms", "longest stall, dragging (slide only)", "stall_ms"),
    ("drag_layers_stall_ms", "longest stall, dragging (CARE layers on)", "stall_ms"),
    ("run_20x_s", "visible field at 20x: Run -> painted", "run_20x_s"),
    ("run_pan_s", "visible field after a half-screen pan", "run_pan_s"),
    ("whole_slide_stall_ms", "longest stall, whole-slide run", "stall_ms"),
    ("reference_ms", "reference: one plain repaint (longest gap)", None),
]


def summarise(repeats: list[dict]) -> dict:
    """Median and max over the repeats of every figure, with its target and verdict."""
    reference = statistics.median(r["reference_ms"] for r in repeats)
    rows = {}
    for key, label, target_key in FIGURES:
        values = [r[key] for r in repeats if key in r]
        if not values:
            continue
        target = TARGETS.get(target_key) if target_key else None
        if target_key == "stall_ms":
            target = max(target, reference + 30.0)
        median, worst = statistics.median(values), max(values)
        rows[key] = {
            "label": label,
            "median": median,
            "max": worst,
            "values": values,
            "target": target,
            "met_median": None if target is None else median < target,
            "met_max": None if target is None else worst < target,
        }
    return rows


def print_repeat(figures: dict) -> None:
    for key, label, _ in FIGURES:
        if key in figures:
            unit = "ms" if key.endswith("_ms") else "s"
            print(f"  {label:<46} {figures[key]:8.3f} {unit}")
    for key, value in figures.items():
        if key.endswith("_causes"):
            for stall in value[:2]:
                where = f"{stall['samples']} samples; innermost {stall['innermost']}"
                print(f"  stall {key[:-7]}: {stall['ms']:.0f} ms, {where}")
                for frame in stall["frames"][:10]:
                    print(f"      {frame}")
                if stall.get("other_threads"):
                    print(f"      other threads: {stall['other_threads']}")


def run_child(spec: str, canvas: str, options: list[str], name: str) -> dict:
    """One repeat in a fresh process (``--one``): its figures, printed as they come."""
    command = [sys.executable, __file__, "--one", spec, "--canvas", canvas, *options]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        print(done.stdout[-3000:], done.stderr[-6000:])
        raise SystemExit(f"{name} on {spec} failed")
    figures = json.loads(lines[-1][7:])
    load = f"load {figures['load_start'][0]:.2f} -> {figures['load_end'][0]:.2f}"
    print(f"{Path(split_mpp(spec)[0]).name}, {name} ({load}):")
    print_repeat(figures)
    sys.stdout.flush()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slides", nargs="*", help="SLIDE or SLIDE:MPP (default: gigapixel + TCGA-CR-7395)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--canvas", default="1600x1000")
    parser.add_argument("--whole-slide", choices=("all", "none", "first", "last"), default="all")
    parser.add_argument(
        "--big-whole-slide-repeats",
        type=int,
        default=1,
        help="on a slide of over 10^9 level-0 px, a whole-slide run in this many repeats only (minutes each)",
    )
    parser.add_argument("--screenshot", type=Path, help="a PNG of the viewer after the visible-field runs")
    parser.add_argument("--json", type=Path, default=RESULTS / "viewer_gigapixel.json")
    parser.add_argument("--no-json", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child: one repeat on this slide, JSON to stdout
    args = parser.parse_args()
    canvas = tuple(int(v) for v in args.canvas.split("x"))

    if args.one:
        path, mpp = split_mpp(args.one)
        figures = one_repeat(path, mpp, canvas, args.whole_slide != "none", args.screenshot)
        print("RESULT " + json.dumps(figures))
        return

    specs = args.slides or default_slides()
    if not specs:
        raise SystemExit("no slide: pass one, or run make_gigapixel.py first")
    load_start = os.getloadavg()
    print(f"load average at start {'/'.join(f'{v:.2f}' for v in load_start)}; 2 shared CPU cores")
    slides = []
    for index, spec in enumerate(specs):
        whole = (
            args.whole_slide == "all"
            or (args.whole_slide == "first" and index == 0)
            or (args.whole_slide == "last" and index == len(specs) - 1)
        )
        path = split_mpp(spec)[0]
        big = path.stat().st_size > 2**29 or "gigapixel" in path.name
        repeats = []
        for repeat in range(args.repeats):
            options = [
                "--whole-slide",
                "all" if whole and (not big or repeat < args.big_whole_slide_repeats) else "none",
            ]
            if args.screenshot and repeat == 0:
                options += [
                    "--screenshot",
                    str(args.screenshot.with_name(f"{path.stem}_{args.screenshot.name}")),
                ]
            repeats.append(run_child(spec, args.canvas, options, f"repeat {repeat + 1}"))
        summary = summarise(repeats)
        print(f"{repeats[0]['slide']['name']}: median / max over {len(repeats)} repeats")
        for row in summary.values():
            target = "" if row["target"] is None else f"target < {row['target']:g}"
            verdict = (
                ""
                if row["target"] is None
                else ("PASS" if row["met_max"] else "median PASS" if row["met_median"] else "FAIL")
            )
            print(f"  {row['label']:<46} {row['median']:8.3f} / {row['max']:8.3f}   {target}   {verdict}")
        slides.append(
            {"slide": repeats[0]["slide"], "whole_slide_run": whole, "summary": summary, "repeats": repeats}
        )
    load_end = os.getloadavg()
    print(f"load average at end {'/'.join(f'{v:.2f}' for v in load_end)}")
    if not args.no_json:
        path = write_result(
            args.json,
            "viewer_gigapixel",
            {
                "canvas": args.canvas,
                "repeats": args.repeats,
                "load_average_at_start": list(load_start),
                "targets": TARGETS,
                "slides": slides,
            },
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
