"""The segment widget's controller: runs in a thread worker, cancel, warm-up, progress and the
layer draw (:mod:`napari_care._layer_draw`), kept apart from the widget's options and layout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psygnal import Signal
from qtpy.QtCore import QTimer
from superqt.utils import create_worker

from napari_care._care_layers import DisplayOptions, care_layers, warm_up_roi_text, with_hover
from napari_care._layer_draw import LayerDraw, warm_up_line_visuals
from napari_care._layers import visible_box_level0
from napari_care.core.progress import Progress
from napari_care.core.segment import NoTissueError, SegmentOptions, SegmentResult
from napari_care.core.session import MilRun, SegmentSession
from napari_care.core.stage_clock import StageClock

if TYPE_CHECKING:
    from qtpy.QtWidgets import QWidget

    from napari_care._care_layers import LayerData
    from napari_care.core.mil.heads import MilHead, MilOutput

FOLLOW_DELAY_MS = 400
PROGRESS_INTERVAL_MS = 250  # each progress change repaints the window: a few a second keep the loop free


@dataclass(frozen=True)
class RunRequest:
    """What the widget asks a run for, read from its fields when Run is pressed.

    Attributes
    ----------
    layer
        The slide layer to segment (None when no slide is open).
    visible_field
        True for the tiles in view, False for the whole slide.
    options
        The core options of the run.
    display
        How the layers should look.
    mil_head_path
        The AB-MIL checkpoint whose attention becomes the heatmap, or None for CARE's.
    features_path
        A file of the slide's patch features (TRIDENT, CLAM, ``napari-care extract``) to
        segment instead of encoding tiles, or None.
    """

    layer: Any
    visible_field: bool
    options: SegmentOptions
    display: DisplayOptions
    mil_head_path: str | None = None
    features_path: str | None = None


def viewer_job(
    session: SegmentSession,
    options: SegmentOptions,
    box,
    cancel: threading.Event,
    mil_head: MilHead | str | None = None,
    display: DisplayOptions | None = None,
    features_path: str | None = None,
) -> Generator[Progress, None, tuple[MilRun, list | None]]:
    """One widget run: the core's :meth:`~napari_care.core.session.SegmentSession.run_with_mil`
    (on the features of ``features_path`` when given), then the layers' data (numpy work kept
    off the GUI thread) when ``display`` is given."""
    run = yield from session.run_with_mil(options, box, cancel, mil_head, features_path)
    layers = None if display is None else care_layers(run.result, session.slide, display, run.mil_output)
    return run, layers


def warm_up_job(session: SegmentSession, options: SegmentOptions) -> None:
    """Load what a first run needs: the heavy imports, the tissue mask, the encoder, vispy's lines."""
    import sklearn.cluster  # noqa: F401  (phenotype groups; seconds to import the first time)

    warm_up_line_visuals()  # the regions layer's polygon overlay draws lines
    session.tissue(options.tissue_threshold)
    session.encoder(options)


class SegmentController:
    """Runs, cancels and draws for the widget; one worker at a time, stale ones cancelled.

    It reads what to run through ``request`` and reports back through its signals, never by
    touching the widget's children.

    Parameters
    ----------
    viewer
        The napari viewer the layers go into.
    request
        Called when a run (or the warm-up) starts: what the widget's fields ask for.
    display
        Called when the layers are (re)drawn: how they should look now.
    held
        The widget, repainted with the layers at once (its bar and status: one repaint).
    """

    status_changed = Signal(str)
    """A line for the status field."""
    progress_changed = Signal(int, int)
    """(done, total) for the progress bar."""
    cancellable_changed = Signal(bool)
    """Whether there is a run to cancel."""

    def __init__(
        self, viewer, request: Callable[[], RunRequest], display: Callable[[], DisplayOptions], held: QWidget
    ) -> None:
        self.viewer = viewer
        self._request = request
        self._display = display
        self._visible_field = False
        self.sessions: dict[int, SegmentSession] = {}
        self.worker = None
        self.warm_worker = None
        self.cancel_event: threading.Event | None = None
        self.result: SegmentResult | None = None
        self.mil_output: MilOutput | None = None
        self.result_layer = None
        self._drawing = LayerDraw(self.viewer, also_held=[held])  # its bar and status: one repaint
        held.destroyed.connect(self._closed)
        self._glyphs = warm_up_roi_text(self.viewer)  # on the GUI thread, while the user looks around
        self._mil_heads: dict[tuple[str, int], MilHead] = {}
        self._stage_clock = StageClock()
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
        slide = layer.metadata["slide"]
        if id(slide) not in self.sessions:
            self.sessions[id(slide)] = SegmentSession(slide)
        return self.sessions[id(slide)]

    def run(self, *_args) -> None:
        """Start a run with the widget's options, cancelling a stale one."""
        request = self._request()
        layer = request.layer
        if layer is None:
            self._say("open a slide first")
            return
        self.cancel()
        self._visible_field = request.visible_field
        box = visible_box_level0(layer) if request.visible_field else None
        self.cancel_event = cancel_event = threading.Event()
        mil_path = request.mil_head_path
        mil_key = None if mil_path is None else (mil_path, Path(mil_path).stat().st_mtime_ns)
        mil_head = None if mil_key is None else self._mil_heads.get(mil_key, mil_path)
        # superqt's worker, not napari's: errors come to _on_error only (no pop-up for "no tissue")
        display = request.display
        worker = create_worker(
            viewer_job,
            self.session(layer),
            request.options,
            box,
            cancel_event,
            mil_head,
            display,
            request.features_path,
            _start_thread=False,
            _ignore_errors=True,
        )
        worker.yielded.connect(lambda report, w=worker: self._on_progress(w, report))
        worker.returned.connect(
            lambda out, w=worker, lyr=layer, key=mil_key: self._on_result(w, lyr, key, display, *out)
        )
        worker.errored.connect(lambda error, w=worker: self._on_error(w, error))
        worker.finished.connect(lambda w=worker: self._on_finished(w))
        self.worker = worker
        self._stage_clock.reset()
        self.cancellable_changed.emit(True)
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
        self.cancellable_changed.emit(False)

    def _closed(self, *_args) -> None:
        """The widget is gone: stop its run, and its draw (what that held repaints again); nobody
        is left to report to."""
        if self.cancel_event is not None:
            self.cancel_event.set()
        self.worker = None
        self._drawing.stop()
        for signal in (self.status_changed, self.progress_changed, self.cancellable_changed):
            signal.disconnect()

    def warm_up(self, *_args) -> None:
        """Load the selected slide's tissue mask and the encoder in the background (once each)."""
        if self.worker is not None or self.warm_worker is not None:
            return
        request = self._request()
        if request.layer is None:
            return
        # errors are ignored here: a Run meets the same error and reports it
        worker = create_worker(
            warm_up_job,
            self.session(request.layer),
            request.options,
            _start_thread=False,
            _ignore_errors=True,
        )
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
        if self._request().visible_field:
            self._follow_timer.start()  # restarts: the run starts FOLLOW_DELAY_MS after the last move

    def _on_progress(self, worker, report: Progress) -> None:
        """Keep the latest report; show it now, or when PROGRESS_INTERVAL_MS has passed."""
        if worker is not self.worker:
            return
        self._stage_clock.saw(report)
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
        total = max(report.total, 1)
        self.progress_changed.emit(min(report.done, total), total)
        self._say(self._stage_clock.status_line(report))

    def _on_result(
        self, worker, layer, mil_key, display: DisplayOptions, run: MilRun, layers: list[LayerData]
    ) -> None:
        if worker is not self.worker:
            return  # a stale run finished after a newer one started
        self._drop_progress()
        self.worker = None  # nothing left to cancel: the draw completes
        self.cancellable_changed.emit(False)
        result, mil_output, mil_head = run
        self.result, self.mil_output, self.result_layer = result, mil_output, layer
        # first, as it holds repaints: the bar and the status below join the layers' repaint
        self._draw(layers if display == self._display() else None)  # else built for other options
        self.progress_changed.emit(1, 1)  # a throttled last report may not have shown
        source = (
            "from the features file"
            if result.from_features
            else f"{result.encoded_tiles} encoded, {result.cached_tiles} from cache"
        )
        text = (
            f"{result.care.method_label}: {result.care.n_regions} regions over {len(result.features)} "
            f"patches ({source}); ROI = region {result.care.roi}"
        )
        if mil_output is not None:
            self._mil_heads = {mil_key: mil_head}  # the next run with this file skips loading it
            text += (
                f"; MIL predicts {mil_output.predicted} (p={float(max(mil_output.probabilities)):.2f})"
                if len(mil_output.probabilities)
                else "; MIL: no region of the head on tissue here"
            )
        self._say(text)

    def _on_error(self, worker, error: Exception) -> None:
        from napari.utils.notifications import show_error  # napari's GUI parts load with the viewer

        if worker is not self.worker:
            return
        self._drop_progress()
        if isinstance(error, NoTissueError):
            self._say("no tissue in view" if self._visible_field else "no tissue on the slide")
            return
        self._say(f"failed: {error}")
        show_error(f"CARE: {error}")

    def _on_finished(self, worker) -> None:
        if worker is self.worker:
            self.worker = None
            self.cancellable_changed.emit(False)

    def _draw(self, layers: list[LayerData] | None = None) -> None:
        """Put the result's layers in, one per event-loop turn, in place of a draw still under way
        (this one puts all three); the canvas is held until the last, then paints them at once."""
        if layers is None:
            slide = self.result_layer.metadata["slide"]
            layers = care_layers(self.result, slide, self._display(), self.mil_output)
        self._drawing.start(layers)

    def _say(self, text: str) -> None:
        self.status_changed.emit(text)
