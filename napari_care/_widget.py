"""The "CARE: segment regions" widget: options in, one core call in a thread worker, layers out.

No numerics here: a napari thread worker runs :meth:`~napari_care.core.session.SegmentSession.run`
(then an AB-MIL head, when one is chosen) and builds the layer data (:mod:`napari_care._care_layers`);
the GUI thread puts the three layers in, one per event-loop turn, and the canvas paints them at
once. A warm-up loads what a first run needs (tissue mask, encoder, imports, the ROI labels' glyphs).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import magicgui.widgets as mg

from napari_care._care_layers import COLOUR_BY, DisplayOptions
from napari_care._layers import slide_layers
from napari_care._review_panel import ReviewPanel
from napari_care._segment_controller import RunRequest, SegmentController
from napari_care.core.encoders import list_encoders
from napari_care.core.heatmap import NORMALISATIONS
from napari_care.core.phenotypes import AUTO as AUTO_GROUPS
from napari_care.core.segment import MAGNIFICATION_CHOICES, OPTION_RANGES, SegmentOptions

if TYPE_CHECKING:
    import napari


SCOPES = ("visible field", "whole slide")
COLORMAPS = ("turbo", "inferno", "viridis", "magma", "plasma", "jet")
DEFAULT_OPTIONS = SegmentOptions()  # the fields start at the core's defaults
DEFAULT_DISPLAY = DisplayOptions()


def _ranged(name: str) -> dict:
    """Start and range of the field of option ``name``: the core's default (None, left to the
    core, shows as the range's low end) and :data:`~napari_care.core.segment.OPTION_RANGES`."""
    low, high = OPTION_RANGES[name]
    default = getattr(DEFAULT_OPTIONS, name)
    return {"value": low if default is None else default, "min": low, "max": high}


class CareSegmentWidget(mg.Container):
    """Segment the selected slide into CARE's adaptive regions, ROI and attention heatmap."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.slide_layer = mg.ComboBox(label="slide", choices=self._slide_layers)
        self.encoder = mg.ComboBox(label="encoder", choices=list_encoders(), value=DEFAULT_OPTIONS.encoder)
        self.timm_name = mg.LineEdit(label="timm model", tooltip="any timm model name; overrides the encoder")
        self.weights = mg.FileEdit(label="weights", mode="r", filter="*.safetensors *.pth *.pt *.bin")
        self.care_checkpoint = mg.FileEdit(
            label="CARE checkpoint",
            mode="r",
            filter="*.safetensors",
            tooltip="empty: CARE (training-free regions); a checkpoint of `napari-care pretrain "
            "care-stage1` or `care-stage2`: CARE (trained checkpoint); or the authors' model as "
            "the slide encoder: type hf:Zipper-1/CARE (from the Hugging Face cache) or pick a "
            "snapshot folder of it",
        )
        self.features_file = mg.FileEdit(
            label="features file",
            mode="r",
            filter="*.h5 *.pt",
            tooltip="patch features of this slide made earlier (TRIDENT, CLAM, napari-care extract): "
            "segmented without encoding; the encoder and magnification are the file's",
        )
        self.mil_head = mg.FileEdit(
            label="MIL head",
            mode="r",
            filter="*.json *.safetensors",
            tooltip="an AB-MIL checkpoint from `napari-care train-mil`: its attention "
            "becomes the heatmap and its prediction is reported; empty: CARE's",
        )
        self.k = mg.SpinBox(label="k (block side)", **_ranged("k"))
        self.colour_by = mg.ComboBox(label="colour by", choices=COLOUR_BY, value=DEFAULT_DISPLAY.colour_by)
        low, high = OPTION_RANGES["n_groups"]
        self.n_groups = mg.ComboBox(
            label="groups (N)",
            choices=[AUTO_GROUPS, *range(int(low), int(high) + 1)],
            value=DEFAULT_OPTIONS.n_groups,
            tooltip="auto: per run, the smallest number (2-12) whose k-means grouping of the regions "
            "has a patch-weighted Calinski-Harabasz index within 20% of the best; or a fixed number",
        )
        self.tissue_threshold = mg.FloatSpinBox(
            label="tissue threshold",
            **_ranged("tissue_threshold"),
            step=0.01,
            tooltip="HSV saturation; 0 chooses it by Otsu",
        )
        self.min_tissue = mg.FloatSpinBox(label="min tissue / tile", **_ranged("min_tissue"), step=0.05)
        self.roi_threshold = mg.FloatSpinBox(
            label="ROI threshold",
            value=DEFAULT_DISPLAY.roi_threshold,
            min=0.0,
            max=1.0,
            step=0.05,
            tooltip="draw regions with a >= threshold x the ROI's a",
        )
        self.heatmap_threshold = mg.FloatSpinBox(
            label="heatmap threshold", value=DEFAULT_DISPLAY.heatmap_threshold, min=0.0, max=1.0, step=0.05
        )
        self.normalisation = mg.ComboBox(
            label="normalisation", choices=NORMALISATIONS, value=DEFAULT_DISPLAY.normalisation
        )
        self.colormap = mg.ComboBox(label="colormap", choices=COLORMAPS, value=DEFAULT_DISPLAY.colormap)
        self.opacity = mg.FloatSpinBox(
            label="heatmap opacity", value=DEFAULT_DISPLAY.opacity, min=0.0, max=1.0, step=0.05
        )
        self.blur = mg.FloatSpinBox(
            label="blur (patches)", value=DEFAULT_DISPLAY.blur_patches, min=0.0, max=10.0, step=0.5
        )
        self.e_star = mg.FloatSpinBox(
            label="E*",
            **_ranged("e_star"),
            step=0.05,
            tooltip="target expected candidate rank of the region structuring loss",
        )
        self.lambda_spf = mg.FloatSpinBox(
            label="lambda_spf",
            **_ranged("lambda_spf"),
            step=0.05,
            tooltip="share of the coverage prior in the region weight a",
        )
        self.scope = mg.RadioButtons(label="scope", choices=SCOPES, value="whole slide")
        self.follow_view = mg.CheckBox(text="follow view", value=False)
        self.magnification = mg.ComboBox(
            label="magnification", choices=MAGNIFICATION_CHOICES, value=DEFAULT_OPTIONS.magnification
        )
        self.run_button = mg.PushButton(text="Run")
        self.cancel_button = mg.PushButton(text="Cancel", enabled=False)
        self.progress = mg.ProgressBar(label="progress", value=0, min=0, max=1)
        self.status = mg.Label(label="status", value="ready")
        self.extend([self.slide_layer, self.scope, self.follow_view, self.magnification, self.k])
        self._add_section(
            "Encoder and model",
            [
                self.encoder,
                self.timm_name,
                self.weights,
                self.features_file,
                self.care_checkpoint,
                self.mil_head,
            ],
        )
        self._add_section(
            "Thresholds", [self.tissue_threshold, self.min_tissue, self.roi_threshold, self.heatmap_threshold]
        )
        self._add_section(
            "Display",
            [self.colour_by, self.n_groups, self.normalisation, self.colormap, self.opacity, self.blur],
        )
        self._add_section("Advanced", [self.e_star, self.lambda_spf])
        # the run controls go under the sections, so they join the native layout the same way
        controls = mg.Container(
            widgets=[self.run_button, self.cancel_button, self.progress, self.status], labels=True
        )
        self.native.layout().addWidget(controls.native)
        self.status.native.setWordWrap(True)
        # QuPath exchange and agreement with annotations, also a dock widget of its own
        self.review = ReviewPanel(napari_viewer)
        self._add_section("Review and export (QuPath)", [self.review])
        self.controller = SegmentController(
            napari_viewer, self.run_request, self.display_options, self.native
        )
        self.controller.status_changed.connect(self._show_status)
        self.controller.progress_changed.connect(self._show_progress)
        self.controller.cancellable_changed.connect(self._set_cancellable)
        self.run_button.changed.connect(self.controller.run)
        self.cancel_button.changed.connect(self.controller.cancel)
        for widget in (
            self.colour_by,
            self.roi_threshold,
            self.heatmap_threshold,
            self.normalisation,
            self.colormap,
            self.opacity,
            self.blur,
        ):
            widget.changed.connect(self.controller.redraw)
        self.follow_view.changed.connect(self.controller.follow)
        napari_viewer.layers.events.inserted.connect(self.slide_layer.reset_choices)
        napari_viewer.layers.events.removed.connect(self.slide_layer.reset_choices)
        napari_viewer.events.status.connect(self.controller.add_hover_status)
        for widget in (self.slide_layer, self.tissue_threshold):
            widget.changed.connect(self.controller.warm_up)
        self.controller.warm_up()

    def _slide_layers(self, _widget=None) -> list:
        return slide_layers(self.viewer)

    def _add_section(self, title: str, widgets: list) -> None:
        """A collapsible section (collapsed at first) holding ``widgets`` with their labels."""
        from superqt import QCollapsible  # napari's GUI loads with the viewer

        section = QCollapsible(title)
        section.addWidget(mg.Container(widgets=widgets, labels=True).native)
        self.native.layout().addWidget(section)

    def segment_options(self) -> SegmentOptions:
        """The core options the widget's fields say."""
        timm_name = self.timm_name.value.strip()
        weights = str(self.weights.value) if _is_file(self.weights.value) else None
        checkpoint = _care_source(self.care_checkpoint.value)
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
            n_groups=self.n_groups.value if self.n_groups.value == AUTO_GROUPS else int(self.n_groups.value),
        )

    def run_request(self) -> RunRequest:
        """What a run should do, from the widget's fields."""
        return RunRequest(
            self.slide_layer.value,
            self.scope.value == "visible field",
            self.segment_options(),
            self.display_options(),
            self.mil_head_path(),
            self.features_path(),
        )

    def _show_status(self, text: str) -> None:
        self.status.value = text

    def _show_progress(self, done: int, total: int) -> None:
        self.progress.max, self.progress.value = total, done

    def _set_cancellable(self, on: bool) -> None:
        self.cancel_button.enabled = on

    def mil_head_path(self) -> str | None:
        """The chosen AB-MIL checkpoint, or None for CARE's own attention."""
        return str(self.mil_head.value) if _is_file(self.mil_head.value) else None

    def features_path(self) -> str | None:
        """The chosen feature file of the slide, or None to encode its tiles."""
        return str(self.features_file.value) if _is_file(self.features_file.value) else None

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


def _care_source(value) -> str | None:
    """The CARE field's model: a checkpoint file, a snapshot folder of the authors' model, or
    ``hf:<id>`` typed in; None (training-free) when empty or nothing is there."""
    text = "" if value is None else str(value)
    if text.startswith("hf:"):
        return text
    snapshot = text not in ("", ".") and (Path(text) / "config.json").is_file()
    return text if snapshot or _is_file(value) else None


def _is_file(value) -> bool:
    return value is not None and str(value) not in ("", ".") and Path(value).is_file()
