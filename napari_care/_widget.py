"""The "CARE: segment regions" widget: options in, one core call in a thread worker, layers out.

No numerics here: the widget builds a :class:`~napari_care.core.segment.SegmentOptions`,
runs :meth:`~napari_care.core.session.SegmentSession.run` in a napari thread worker, and
hands the result to :mod:`napari_care._care_layers`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, ProgressBar, PushButton,
    RadioButtons, SpinBox,
)  # fmt: skip
from qtpy.QtCore import QTimer

from napari_care._care_layers import COLOUR_BY, DisplayOptions, care_layers
from napari_care._layers import put_layer, visible_box_level0
from napari_care.core.heatmap import NORMALISATIONS
from napari_care.core.progress import Progress
from napari_care.core.segment import SegmentOptions

if TYPE_CHECKING:
    import napari

SCOPES = ("visible field", "whole slide")
MAGNIFICATIONS = (40.0, 20.0, 10.0, 5.0)
COLORMAPS = ("turbo", "inferno", "viridis", "magma", "plasma", "jet")
FOLLOW_DELAY_MS = 400


class CareSegmentWidget(Container):
    """Segment the selected slide into CARE's adaptive regions, ROI and attention heatmap."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        from napari_care.core.encoders import list_encoders

        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.slide_layer = ComboBox(label="slide", choices=self._slide_layers)
        self.encoder = ComboBox(label="encoder", choices=list_encoders(), value="default")
        self.timm_name = LineEdit(label="timm model", tooltip="any timm model name; overrides the encoder")
        self.weights = FileEdit(label="weights", mode="r", filter="*.safetensors *.pth *.pt *.bin")
        self.care_checkpoint = FileEdit(label="CARE checkpoint", mode="r", filter="*.safetensors",
                                        tooltip="empty: the training-free generator")
        self.k = SpinBox(label="k (block side)", value=8, min=1, max=64)
        self.colour_by = ComboBox(label="colour by", choices=COLOUR_BY, value="region")
        self.n_groups = SpinBox(label="groups (N)", value=6, min=2, max=12)
        self.tissue_threshold = FloatSpinBox(label="tissue threshold", value=0.0, min=0.0, max=1.0, step=0.01,
                                             tooltip="HSV saturation; 0 chooses it by Otsu")
        self.min_tissue = FloatSpinBox(label="min tissue / tile", value=0.25, min=0.0, max=1.0, step=0.05)
        self.roi_threshold = FloatSpinBox(label="ROI threshold", value=1.0, min=0.0, max=1.0, step=0.05,
                                          tooltip="draw regions with a >= threshold x the ROI's a")
        self.heatmap_threshold = FloatSpinBox(label="heatmap threshold", value=0.0, min=0.0, max=1.0, step=0.05)
        self.normalisation = ComboBox(label="normalisation", choices=NORMALISATIONS, value="min-max")
        self.colormap = ComboBox(label="colormap", choices=COLORMAPS, value="turbo")
        self.opacity = FloatSpinBox(label="heatmap opacity", value=0.6, min=0.0, max=1.0, step=0.05)
        self.blur = FloatSpinBox(label="blur (patches)", value=0.0, min=0.0, max=10.0, step=0.5)
        self.e_star = FloatSpinBox(label="E*", value=0.5, min=0.0, max=2.0, step=0.05,
                                   tooltip="target expected candidate rank of the region structuring loss")
        self.lambda_spf = FloatSpinBox(label="lambda_spf", value=0.5, min=0.0, max=1.0, step=0.05,
                                       tooltip="share of the coverage prior in the region weight a")
        self.scope = RadioButtons(label="scope", choices=SCOPES, value="whole slide")
        self.follow_view = CheckBox(text="follow view", value=False)
        self.magnification = ComboBox(label="magnification", choices=MAGNIFICATIONS, value=20.0)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status = Label(label="status", value="ready")
        self.extend([self.slide_layer, self.scope, self.follow_view, self.magnification, self.k])
        self._add_section("Encoder and model", [self.encoder, self.timm_name, self.weights, self.care_checkpoint])
        self._add_section("Thresholds", [self.tissue_threshold, self.min_tissue, self.roi_threshold,
                                         self.heatmap_threshold])
        self._add_section("Display", [self.colour_by, self.n_groups, self.normalisation, self.colormap,
                                      self.opacity, self.blur])
        self._add_section("Advanced", [self.e_star, self.lambda_spf])
        # the run controls go under the sections, so they join the native layout the same way
        controls = Container(widgets=[self.run_button, self.cancel_button, self.progress, self.status], labels=True)
        self.native.layout().addWidget(controls.native)
        self.status.native.setWordWrap(True)
        self.controller = SegmentController(self)
        self.run_button.changed.connect(self.controller.run)
        self.cancel_button.changed.connect(self.controller.cancel)
        for widget in (self.colour_by, self.roi_threshold, self.heatmap_threshold, self.normalisation,
                       self.colormap, self.opacity, self.blur):
            widget.changed.connect(self.controller.redraw)
        self.follow_view.changed.connect(self.controller.follow)
        napari_viewer.layers.events.inserted.connect(self.slide_layer.reset_choices)
        napari_viewer.layers.events.removed.connect(self.slide_layer.reset_choices)

    def _slide_layers(self, _widget=None) -> list:
        return [layer for layer in self.viewer.layers if "slide" in getattr(layer, "metadata", {})]

    def _add_section(self, title: str, widgets: list) -> None:
        """A collapsible section (collapsed at first) holding ``widgets`` with their labels."""
        from superqt import QCollapsible

        section = QCollapsible(title)
        section.addWidget(Container(widgets=widgets, labels=True).native)
        self.native.layout().addWidget(section)

    def segment_options(self) -> SegmentOptions:
        """The core options the widget's fields say."""
        timm_name = self.timm_name.value.strip()
        weights = str(self.weights.value) if _is_file(self.weights.value) else None
        checkpoint = str(self.care_checkpoint.value) if _is_file(self.care_checkpoint.value) else None
        return SegmentOptions(
            encoder=f"timm:{timm_name}" if timm_name else self.encoder.value,
            encoder_weights=weights,
            care_checkpoint=checkpoint,
            magnification=float(self.magnification.value),
            k=int(self.k.value),
            tissue_threshold=self.tissue_threshold.value or None,
            min_tissue=float(self.min_tissue.value),
            e_star=float(self.e_star.value),
            lambda_spf=float(self.lambda_spf.value),
            n_groups=int(self.n_groups.value),
        )

    def display_options(self) -> DisplayOptions:
        """How the layers should look, from the widget's fields."""
        return DisplayOptions(
            colour_by=self.colour_by.value,
            roi_threshold=float(self.roi_threshold.value),
            heatmap_threshold=float(self.heatmap_threshold.value),
            normalisation=self.normalisation.value,
            colormap=self.colormap.value,
            opacity=float(self.opacity.value),
            blur_patches=float(self.blur.value),
        )


def _is_file(value) -> bool:
    return value is not None and str(value) not in ("", ".") and Path(value).is_file()


class SegmentController:
    """Runs, cancels and draws for the widget; one worker at a time, stale ones cancelled."""

    def __init__(self, widget: CareSegmentWidget) -> None:
        self.widget = widget
        self.viewer = widget.viewer
        self.sessions: dict[int, object] = {}
        self.worker = None
        self.cancel_event: threading.Event | None = None
        self.result = None
        self.result_layer = None
        self._stage_started: dict[str, float] = {}
        self._follow_timer = QTimer()
        self._follow_timer.setSingleShot(True)
        self._follow_timer.setInterval(FOLLOW_DELAY_MS)
        self._follow_timer.timeout.connect(self.run)

    def session(self, layer):
        """The :class:`SegmentSession` of a slide layer (one per slide, kept between runs)."""
        from napari_care.core.session import SegmentSession

        slide = layer.metadata["slide"]
        if id(slide) not in self.sessions:
            self.sessions[id(slide)] = SegmentSession(slide)
        return self.sessions[id(slide)]

    def run(self, *_args) -> None:
        """Start a run with the widget's options, cancelling a stale one."""
        from napari.qt.threading import create_worker

        layer = self.widget.slide_layer.value
        if layer is None:
            self._say("open a slide first")
            return
        self.cancel()
        box = visible_box_level0(layer) if self.widget.scope.value == "visible field" else None
        session = self.session(layer)
        self.cancel_event = cancel_event = threading.Event()
        worker = create_worker(session.run, self.widget.segment_options(), box, cancel_event, _start_thread=False)
        worker.yielded.connect(lambda report, w=worker: self._on_progress(w, report))
        worker.returned.connect(lambda result, w=worker, lyr=layer: self._on_result(w, lyr, result))
        worker.errored.connect(lambda error, w=worker: self._on_error(w, error))
        worker.finished.connect(lambda w=worker: self._on_finished(w))
        self.worker = worker
        self._stage_started = {}
        self.widget.cancel_button.enabled = True
        self._say(f"running on {'the visible field' if box else 'the whole slide'}")
        worker.start()

    def cancel(self, *_args) -> None:
        """Stop the running worker within one batch; the layers stay as they were."""
        if self.worker is not None:
            if self.cancel_event is not None:
                self.cancel_event.set()
            self.worker.quit()
            self.worker = None
            self._say("cancelled")
        self.widget.cancel_button.enabled = False

    def redraw(self, *_args) -> None:
        """Redraw the last result's layers with the current display options (no recomputing)."""
        if self.result is not None:
            self._draw(self.result_layer, self.result)

    def follow(self, on: bool) -> None:
        """Rerun on the visible field whenever the camera settles."""
        camera = self.viewer.camera
        for event in (camera.events.center, camera.events.zoom):
            if on:
                event.connect(self._camera_moved)
            else:
                event.disconnect(self._camera_moved)

    def _camera_moved(self, _event=None) -> None:
        if self.widget.scope.value == "visible field":
            self._follow_timer.start()  # restarts: the run starts FOLLOW_DELAY_MS after the last move

    def _on_progress(self, worker, report: Progress) -> None:
        if worker is not self.worker:
            return
        started = self._stage_started.setdefault(report.stage, time.monotonic())
        bar = self.widget.progress
        bar.max, bar.value = max(report.total, 1), min(report.done, max(report.total, 1))
        text = report.message or report.stage
        if report.total > 1 and 0 < report.done < report.total:
            left = (time.monotonic() - started) / report.done * (report.total - report.done)
            text = f"{report.stage}: {report.done}/{report.total}, about {left:.0f} s left"
        self._say(text)

    def _on_result(self, worker, layer, result) -> None:
        if worker is not self.worker:
            return  # a stale run finished after a newer one started
        self.result, self.result_layer = result, layer
        self._draw(layer, result)
        cached = len(result.features) - result.encoded_tiles
        self._say(f"{result.care.n_regions} regions over {len(result.features)} patches "
                  f"({result.encoded_tiles} encoded, {cached} from cache); ROI = region {result.care.roi}")

    def _on_error(self, worker, error: Exception) -> None:
        from napari.utils.notifications import show_error

        from napari_care.core.segment import NoTissueError

        if worker is not self.worker:
            return
        if isinstance(error, NoTissueError):
            self._say("no tissue in view" if self.widget.scope.value == "visible field" else "no tissue on the slide")
            return
        self._say(f"failed: {error}")
        show_error(f"CARE: {error}")

    def _on_finished(self, worker) -> None:
        if worker is self.worker:
            self.worker = None
            self.widget.cancel_button.enabled = False

    def _draw(self, layer, result) -> None:
        slide = layer.metadata["slide"]
        for data, kwargs, layer_type in care_layers(result, slide, self.widget.display_options()):
            put_layer(self.viewer, data, kwargs, layer_type)

    def _say(self, text: str) -> None:
        self.widget.status.value = text
