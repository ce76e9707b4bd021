"""The segment widget's controller: runs in a thread worker, cancel, warm-up, progress and the
layer draw (:mod:`napari_care._layer_draw`), kept apart from the widget's options and layout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer

from napari_care._care_layers import DisplayOptions, care_layers, warm_up_roi_text, with_hover
from napari_care._layer_draw import LayerDraw, warm_up_line_visuals
from napari_care._layers import visible_box_level0
from napari_care.core.progress import Progress
from napari_care.core.segment import SegmentOptions, SegmentResult

if TYPE_CHECKING:
    from napari_care._care_layers import LayerData
    from napari_care._widget import CareSegmentWidget
    from napari_care.core.mil_heatmap import MilHead, MilOutput
    from napari_care.core.session import SegmentSession

FOLLOW_DELAY_MS = 400
PROGRESS_INTERVAL_MS = 250  # each progress change repaints the window: a few a second keep the loop free


def segment_job(session: SegmentSession, options: SegmentOptions, box, cancel: threading.Event,
                mil_head: MilHead | str | None = None, display: DisplayOptions | None = None,
                ) -> Generator[Progress, None, tuple[SegmentResult, MilOutput | None, MilHead | None, list | None]]:
    """One widget run: segment, apply the MIL head (if any), build the layers' data (numpy work
    kept off the GUI thread) when ``display`` is given.

    ``mil_head`` is a loaded head or the path of its checkpoint (loaded here, in the worker). A
    head trained on region tokens (``train-mil --mem``) encodes the regions of the slide (or
    field) and gives each patch its region's attention.
    Returns the result, the MIL output and loaded head (None, None without a head), the layers' data.
    """
    result = yield from session.run(options, box, cancel)
    output = None
    if isinstance(mil_head, str):
        from napari_care.core.mil_heatmap import load_mil_head

        yield Progress("mil", 0, 1, f"loading the MIL head {Path(mil_head).name}")
        mil_head = load_mil_head(mil_head)
    if mil_head is not None and mil_head.encoder == "mixmag":  # a head on region tokens: regions, then patches
        from napari_care.core.mil_heatmap import MilOutput
        from napari_care.core.mil_regions import patch_output

        regions = yield from session.region_attention(options, mil_head, box, cancel)
        if regions is None:  # zoomed in where no region has enough tissue: the segmentation still shows
            output = MilOutput(np.full(len(result.features), np.nan, np.float32), np.zeros(0, np.float32), "")
        else:
            output = patch_output(regions, result.features.coords, result.features.patch_size_level0)
            yield Progress("mil", 1, 1, f"MIL predicts {output.predicted} from {regions.n_regions} regions")
    elif mil_head is not None:
        yield Progress("mil", 0, 1, f"MIL attention over {len(result.features)} patches")
        output = mil_head.apply(result.features.features, encoder=result.features.encoder)
        yield Progress("mil", 1, 1, f"MIL predicts {output.predicted}")
    layers = None if display is None else care_layers(result, session.slide, display, output)
    return result, output, mil_head, layers


def warm_up_job(session: SegmentSession, options: SegmentOptions) -> None:
    """Load what a first run needs: the heavy imports, the tissue mask, the encoder, vispy's lines."""
    import sklearn.cluster  # noqa: F401  (phenotype groups; seconds to import the first time)

    import napari_care.core.extract
    import napari_care.core.models.care_free  # noqa: F401

    warm_up_line_visuals()  # the regions layer's polygon overlay draws lines
    session.tissue(options.tissue_threshold)
    session.encoder(options)


class SegmentController:
    """Runs, cancels and draws for the widget; one worker at a time, stale ones cancelled."""

    def __init__(self, widget: CareSegmentWidget) -> None:
        self.widget = widget
        self.viewer = widget.viewer
        self.sessions: dict[int, SegmentSession] = {}
        self.worker = None
        self.warm_worker = None
        self.cancel_event: threading.Event | None = None
        self.result: SegmentResult | None = None
        self.mil_output: MilOutput | None = None
        self.result_layer = None
        self._drawing = LayerDraw(self.viewer, also_held=[widget.native])  # its bar and status: one repaint
        widget.native.destroyed.connect(self._closed)
        self._glyphs = warm_up_roi_text(self.viewer)  # on the GUI thread, while the user looks around
        self._mil_heads: dict[tuple[str, int], MilHead] = {}
        self._stage_started: dict[str, tuple[float, int]] = {}
        self._latest_progress: Progress | None = None
        self._progress_shown_at = 0.0
        self._progress_timer = QTimer()
        self._progress_timer.setSingleShot(True)
        self._progress_timer.timeout.connect(self._show_progress)
        self._follow_timer = QTimer()
        self._follow_timer.setSingleShot(True)
        self._follow_timer.setInterval(FOLLOW_DELAY_MS)
        self._follow_timer.timeout.connect(self.run)

    def session(self, layer) -> SegmentSession:
        """The :class:`SegmentSession` of a slide layer (one per slide, kept between runs)."""
        from napari_care.core.session import SegmentSession

        slide = layer.metadata["slide"]
        if id(slide) not in self.sessions:
            self.sessions[id(slide)] = SegmentSession(slide)
        return self.sessions[id(slide)]

    def run(self, *_args) -> None:
        """Start a run with the widget's options, cancelling a stale one."""
        from superqt.utils import create_worker

        layer = self.widget.slide_layer.value
        if layer is None:
            self._say("open a slide first")
            return
        self.cancel()
        box = visible_box_level0(layer) if self.widget.scope.value == "visible field" else None
        self.cancel_event = cancel_event = threading.Event()
        mil_path = self.widget.mil_head_path()
        mil_key = None if mil_path is None else (mil_path, Path(mil_path).stat().st_mtime_ns)
        mil_head = None if mil_key is None else self._mil_heads.get(mil_key, mil_path)
        # superqt's worker, not napari's: errors come to _on_error only (no pop-up for "no tissue")
        display = self.widget.display_options()
        worker = create_worker(segment_job, self.session(layer), self.widget.segment_options(), box, cancel_event,
                               mil_head, display, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(lambda report, w=worker: self._on_progress(w, report))
        worker.returned.connect(lambda out, w=worker, lyr=layer, key=mil_key: self._on_result(w, lyr, key, display, *out))
        worker.errored.connect(lambda error, w=worker: self._on_error(w, error))
        worker.finished.connect(lambda w=worker: self._on_finished(w))
        self.worker = worker
        self._stage_started = {}
        self.widget.cancel_button.enabled = True
        self._say(f"running on {'the visible field' if box else 'the whole slide'}")
        worker.start()

    def cancel(self, *_args) -> None:
        """Stop the running worker within one batch; the layers stay as they were (a draw under way,
        its run being over, completes: the three layers always show one result)."""
        if self.worker is not None:
            # the run sees the event within one batch and raises, closing its tile readers; its
            # late result or error is ignored, since it is no longer self.worker
            if self.cancel_event is not None:
                self.cancel_event.set()
            self.worker = None
            self._drop_progress()
            self._say("cancelled")
        self.widget.cancel_button.enabled = False

    def _closed(self, *_args) -> None:
        """The widget is gone: stop its run, and its draw (what that held repaints again)."""
        if self.cancel_event is not None:
            self.cancel_event.set()
        self.worker = None
        self._drawing.stop()

    def warm_up(self, *_args) -> None:
        """Load the selected slide's tissue mask and the encoder in the background (once each)."""
        from superqt.utils import create_worker

        layer = self.widget.slide_layer.value
        if layer is None or self.worker is not None or self.warm_worker is not None:
            return
        # errors are ignored here: a Run meets the same error and reports it
        worker = create_worker(warm_up_job, self.session(layer), self.widget.segment_options(),
                               _start_thread=False, _ignore_errors=True)
        worker.finished.connect(lambda: setattr(self, "warm_worker", None))
        self.warm_worker = worker
        worker.start()

    @property
    def busy(self) -> bool:
        """True while a run computes or its layers are being put in (they are drawn when it is not)."""
        return self.worker is not None or self._drawing.pending

    @property
    def warming_up(self) -> bool:
        """True while the warm-up (background loading, then glyphs on the GUI thread) goes on."""
        return self.warm_worker is not None or self._glyphs.pending

    def redraw(self, *_args) -> None:
        """Redraw the last result's layers with the current display options (no recomputing)."""
        if self.result is not None:
            self._draw()

    def add_hover_status(self, _event=None) -> None:
        """Append what the CARE layers hold under the cursor to napari's status bar."""
        if self.result is not None:
            status = with_hover(self.viewer.status, self.viewer.layers, self.viewer.cursor.position)
            if status is not None:
                self.viewer.status = status  # calls this again, and with_hover says None then

    def follow(self, on: bool) -> None:
        """Rerun on the visible field whenever the camera settles."""
        camera = getattr(self.viewer, "scene", self.viewer).camera  # viewer.scene.camera since napari 0.9
        for event in (camera.events.center, camera.events.zoom):
            if on:
                event.connect(self._camera_moved)
            else:
                event.disconnect(self._camera_moved)

    def _camera_moved(self, _event=None) -> None:
        if self.widget.scope.value == "visible field":
            self._follow_timer.start()  # restarts: the run starts FOLLOW_DELAY_MS after the last move

    def _on_progress(self, worker, report: Progress) -> None:
        """Keep the latest report; show it now, or when PROGRESS_INTERVAL_MS has passed."""
        if worker is not self.worker:
            return
        self._stage_started.setdefault(report.stage, (time.monotonic(), report.done))
        self._latest_progress = report
        wait_ms = PROGRESS_INTERVAL_MS - 1000 * (time.monotonic() - self._progress_shown_at)
        if wait_ms <= 0:
            self._show_progress()
        elif not self._progress_timer.isActive():
            self._progress_timer.start(int(wait_ms))

    def _drop_progress(self) -> None:
        """Forget a progress report not shown yet: the run's outcome is what the status says now."""
        self._progress_timer.stop()
        self._latest_progress = None

    def _show_progress(self) -> None:
        report, self._latest_progress = self._latest_progress, None
        if report is None or self.worker is None:
            return
        self._progress_shown_at = time.monotonic()
        bar = self.widget.progress
        bar.max, bar.value = max(report.total, 1), min(report.done, max(report.total, 1))
        text = report.message or report.stage
        started, done_then = self._stage_started[report.stage]
        if report.total > 1 and done_then < report.done < report.total:
            rate = (report.done - done_then) / max(time.monotonic() - started, 1e-6)  # cached tiles excluded
            text = f"{report.stage}: {report.done}/{report.total}, about {(report.total - report.done) / rate:.0f} s left"
        self._say(text)

    def _on_result(self, worker, layer, mil_key, display: DisplayOptions, result: SegmentResult,
                   mil_output: MilOutput | None, mil_head: MilHead | None, layers: list[LayerData]) -> None:
        if worker is not self.worker:
            return  # a stale run finished after a newer one started
        self._drop_progress()
        self.worker, self.widget.cancel_button.enabled = None, False  # nothing left to cancel: the draw completes
        self.result, self.mil_output, self.result_layer = result, mil_output, layer
        # first, as it holds repaints: the bar and the status below join the layers' repaint
        self._draw(layers if display == self.widget.display_options() else None)  # else built for other options
        self.widget.progress.value = self.widget.progress.max  # a throttled last report may not have shown
        cached = len(result.features) - result.encoded_tiles
        text = (f"{result.care.n_regions} regions over {len(result.features)} patches "
                f"({result.encoded_tiles} encoded, {cached} from cache); ROI = region {result.care.roi}")
        if mil_output is not None:
            self._mil_heads = {mil_key: mil_head}  # the next run with this file skips loading it
            text += (f"; MIL predicts {mil_output.predicted} (p={float(max(mil_output.probabilities)):.2f})"
                     if len(mil_output.probabilities) else "; MIL: no region of the head on tissue here")
        self._say(text)

    def _on_error(self, worker, error: Exception) -> None:
        from napari.utils.notifications import show_error

        from napari_care.core.segment import NoTissueError

        if worker is not self.worker:
            return
        self._drop_progress()
        if isinstance(error, NoTissueError):
            self._say("no tissue in view" if self.widget.scope.value == "visible field" else "no tissue on the slide")
            return
        self._say(f"failed: {error}")
        show_error(f"CARE: {error}")

    def _on_finished(self, worker) -> None:
        if worker is self.worker:
            self.worker, self.widget.cancel_button.enabled = None, False

    def _draw(self, layers: list[LayerData] | None = None) -> None:
        """Put the result's layers in, one per event-loop turn, in place of a draw still under way
        (this one puts all three); the canvas is held until the last, then paints them at once."""
        if layers is None:
            slide = self.result_layer.metadata["slide"]
            layers = care_layers(self.result, slide, self.widget.display_options(), self.mil_output)
        self._drawing.start(layers)

    def _say(self, text: str) -> None:
        self.widget.status.value = text
