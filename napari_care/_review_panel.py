"""The "CARE: review annotations" panel: QuPath GeoJSON in and out, agreement metrics as a table.

- **Import annotations...** reads a GeoJSON file (:mod:`napari_care._geojson_reader`) and places it
  over the selected slide layer: level-0 pixels through the slide's mpp (and its bounds offset,
  when "relative to slide bounds" is on, as QuPath exports by default).
- **Export regions/ROI...** writes the "CARE regions" layer as ``napari-care segment`` does
  (regions, ROI outline, optionally per-patch tiles) through :mod:`napari_care._writer`.
- **Compute agreement** compares the chosen annotation layer with the CARE regions, ROI,
  phenotype groups and attention (:func:`napari_care.core.review.run.iter_review_layers`) in a
  worker thread (the event loop stays live; progress in the status line) and fills the
  agreement table and the class x group table ("which group is the tumour", the best group
  per class marked); **Save table...** writes both as CSV (the second beside the first,
  ``<stem>.class_by_group.csv``).

No numerics here; the panel gathers layer data and calls the core. It is its own dock
widget and a section of the segment widget.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, Table
from superqt.utils import create_worker

from napari_care._geojson_reader import annotation_layers
from napari_care._layers import ROLE_KEY, layer_raster_origin, slide_layers
from napari_care._writer import care_region_annotations, shapes_annotations, write_annotations
from napari_care.core.atomic import output_set
from napari_care.core.level0_frame import Level0Frame
from napari_care.core.progress import Progress
from napari_care.core.qupath.read import read_geojson
from napari_care.core.review.metrics import RegionGrid, ReviewTables, write_review_csv
from napari_care.core.review.run import class_table_path, iter_review_layers

if TYPE_CHECKING:
    import napari

COLUMNS = (
    "class",
    "target",
    "region_id",
    "group_id",
    "best_group",
    "dice",
    "iou",
    "target_in_annotation",
    "annotation_in_target",
    "dice_grid",
    "iou_grid",
    "attention_inside",
    "pointing_game",
    "pointing_on",
)
CLASS_COLUMNS = (
    "class",
    "group_id",
    "group_name",
    "area_um2",
    "share_of_class",
    "share_of_group",
    "dice",
    "best_group",
)
GEOJSON_FILTER = "GeoJSON (*.geojson *.json *.geojson.gz *.json.gz)"


class ReviewPanel(Container):
    """Import/export QuPath GeoJSON over a slide and measure agreement with an annotation layer."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.slide_layer = ComboBox(label="slide", choices=self._slide_layers)
        self.relative_to_bounds = CheckBox(text="relative to slide bounds (QuPath)", value=True)
        self.import_button = PushButton(text="Import annotations...")
        self.tiles = CheckBox(text="export per-patch attention tiles", value=False)
        self.export_button = PushButton(text="Export regions/ROI...")
        self.annotation_layer = ComboBox(label="annotations", choices=self._annotation_layers)
        self.compute_button = PushButton(text="Compute agreement")
        self.save_button = PushButton(text="Save table...", enabled=False)
        self.table = Table(value={column: [] for column in COLUMNS})
        self.table.read_only = True
        self.class_table = Table(label="class x group", value={column: [] for column in CLASS_COLUMNS})
        self.class_table.read_only = True
        self.status = Label(label="status", value="")
        self.rows: list[dict[str, object]] = []
        self.class_rows: list[dict[str, object]] = []
        self.worker = None  # the review under way; a result of an older one is dropped
        self.extend(
            [
                self.slide_layer,
                self.relative_to_bounds,
                self.import_button,
                self.tiles,
                self.export_button,
                self.annotation_layer,
                self.compute_button,
                self.table,
                self.class_table,
                self.save_button,
                self.status,
            ]
        )
        self.import_button.changed.connect(lambda: self.import_annotations())
        self.export_button.changed.connect(lambda: self.export_regions())
        self.compute_button.changed.connect(lambda: self.compute())
        self.save_button.changed.connect(lambda: self.save_table())
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self.reset_choices)

    def _slide_layers(self, _widget=None) -> list:
        return slide_layers(self.viewer)

    def _annotation_layers(self, _widget=None) -> list:
        return [
            layer
            for layer in self.viewer.layers
            if type(layer).__name__ == "Shapes" and layer.metadata.get(ROLE_KEY) != "roi"
        ]

    def frame(self, *, use_bounds: bool | None = None) -> Level0Frame:
        """The selected slide's frame (pixels and no offset without a slide)."""
        layer = self.slide_layer.value
        if layer is None:
            return Level0Frame()
        bounds = self.relative_to_bounds.value if use_bounds is None else use_bounds
        return Level0Frame.from_slide_metadata(layer.metadata, use_bounds=bounds)

    def import_annotations(self, path: str | Path | None = None) -> list:
        """Add the file's annotations as layers over the selected slide; returns the new layers."""
        from napari.layers import Layer  # napari's GUI loads with the viewer

        path = path or _ask_path("open", "Import annotations (QuPath GeoJSON)")
        if not path:
            return []
        frame = self.frame()
        try:
            annotations = read_geojson(path, bounds_offset=frame.bounds_offset)
        except ValueError as error:
            return self._fail(error, [])
        layer_data, message = annotation_layers(
            annotations, name=Path(path).name.split(".")[0], frame=frame, source=str(path)
        )
        layers = [self.viewer.add_layer(Layer.create(*item)) for item in layer_data]
        shapes = [layer for layer in layers if type(layer).__name__ == "Shapes"]
        if shapes:
            self.annotation_layer.value = shapes[0]
        self._say(f"{Path(path).name}: {message}")
        return layers

    def regions_layer(self):
        """The "CARE regions" Labels layer, or None before a run."""
        for layer in self.viewer.layers:
            if layer.metadata.get(ROLE_KEY) == "regions" and type(layer).__name__ == "Labels":
                return layer
        return None

    def export_regions(self, path: str | Path | None = None) -> int:
        """Write the CARE regions, ROI and optionally tiles as QuPath GeoJSON; returns the feature count."""
        layer = self.regions_layer()
        if layer is None:
            self._say("run CARE first: no CARE regions layer to export")
            return 0
        path = path or _ask_path("save", "Export CARE regions and ROI (QuPath GeoJSON)")
        if not path:
            return 0
        frame = self.frame()
        try:
            _, attributes, _ = layer.as_layer_data_tuple()
            annotations = care_region_annotations(layer.data, attributes, frame, tiles=self.tiles.value)
            count = write_annotations(path, annotations, bounds_offset=frame.bounds_offset)
        except (OSError, ValueError) as error:
            return self._fail(error, 0)
        self._say(f"wrote {count} objects to {Path(path).name}")
        return count

    def review_job(self):
        """The review of the chosen annotation layer as a core generator (see
        :func:`~napari_care.core.review.run.iter_review_layers`), its inputs read from the layers
        here on the GUI thread; None (with a status line) when a layer is missing or unreadable."""
        regions, shapes = self.regions_layer(), self.annotation_layer.value
        if regions is None or shapes is None:
            self._say("needs a CARE regions layer and an annotation layer")
            return None
        frame = self.frame(use_bounds=False)  # both layers are in the slide's own level-0 pixels
        slide = self.slide_layer.value.metadata.get("slide") if self.slide_layer.value is not None else None
        try:
            _, region_attributes, _ = regions.as_layer_data_tuple()
            _, shape_attributes, _ = shapes.as_layer_data_tuple()
            origin, (cell_x, _) = layer_raster_origin(region_attributes, frame)
            labels = np.asarray(regions.data).astype(np.int64) - 1  # label = region + 1
            features = regions.features
            columns = {name: features[name].to_numpy() for name in features.columns}
        except (KeyError, ValueError) as error:
            return self._fail(error, None)
        names = None
        if "group_name" in columns and "group" in columns:  # names the user gave the groups, when kept
            names = {int(g): str(n) for g, n in zip(columns["group"], columns["group_name"], strict=True)}
        width, height = slide.dimensions[0] if slide is not None else (None, None)
        return _review_shapes(
            (list(shapes.data), shape_attributes, frame),
            RegionGrid(labels, origin, cell_x),
            columns,
            source=f"layer {shapes.name!r}",
            slide_bounds=(0.0, 0.0, float(width), float(height)) if slide is not None else None,
            group_names=names,
            mpp_xy=tuple(slide.mpp) if slide is not None and slide.mpp else None,
        )

    def compute(self):
        """Start the review of the chosen annotation layer in a worker thread; returns the worker
        (its ``returned`` signal carries the :class:`~napari_care.core.review.metrics.ReviewTables`),
        or None when there is nothing to review. The tables fill when it is done."""
        job = self.review_job()
        if job is None:
            return None
        # superqt's worker, not napari's: an error comes to _failed only (one status line, one toast)
        worker = create_worker(_run, job, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(lambda report, w=worker: self._progress(w, report))
        worker.returned.connect(lambda tables, w=worker: self._done(w, tables))
        worker.errored.connect(lambda error, w=worker: self._failed(w, error))
        self.worker = worker
        self.compute_button.enabled = False
        self._say("reviewing...")
        worker.start()
        return worker

    def show_tables(self, tables: ReviewTables) -> None:
        """Fill the agreement and class x group tables with a review's result."""
        self.rows, self.class_rows = tables.rows, tables.class_by_group
        self.table.value = {column: [_cell(row.get(column)) for row in self.rows] for column in COLUMNS}
        self.class_table.value = {
            column: [_cell(row.get(column)) for row in self.class_rows] for column in CLASS_COLUMNS
        }
        self.save_button.enabled = bool(self.rows)
        classes = len({r["class"] for r in self.rows})
        text = f"{len(self.rows)} rows for {classes} classes"
        if tables.pointing_on:
            text += f"; pointing game on the {tables.pointing_on}s"
        self._say("; ".join([text, *tables.notes]))

    def _progress(self, worker, report: Progress) -> None:
        if worker is self.worker:
            self._say(f"{report.stage}: {report.message}" if report.message else report.stage)

    def _done(self, worker, tables: ReviewTables) -> None:
        if worker is self.worker:
            self.worker = None
            self.compute_button.enabled = True
            self.show_tables(tables)

    def _failed(self, worker, error: Exception) -> None:
        if worker is self.worker:
            self.worker = None
            self.compute_button.enabled = True
            self._fail(error, None)

    def save_table(self, path: str | Path | None = None) -> None:
        """Write the last agreement rows (every column) as CSV, and the class x group table beside it."""
        path = path or _ask_path("save", "Save agreement table", file_filter="CSV (*.csv)")
        if not path:
            return
        try:
            with output_set(Path(path).name) as files:
                write_review_csv(files.temporary(path), self.rows)
                if self.class_rows:
                    write_review_csv(files.temporary(class_table_path(path)), self.class_rows)
        except OSError as error:
            return self._fail(error, None)
        self._say(f"wrote {len(self.rows)} rows to {Path(path).name}")

    def _fail(self, error: Exception, value):
        from napari.utils.notifications import show_error  # napari's GUI loads with the viewer

        self._say(f"failed: {error}")
        show_error(f"CARE review: {error}")
        return value

    def _say(self, text: str) -> None:
        self.status.value = text


def _review_shapes(shapes: tuple, *args, **kwargs):
    """The shapes (data, attributes, frame) as annotations, then their review (in the worker: a
    layer of many polygons takes a while to convert)."""
    annotations = shapes_annotations(*shapes)
    return (yield from iter_review_layers(annotations, *args, **kwargs))


def _run(job):
    """The worker's body: pass on the job's progress, return its result."""
    return (yield from job)


def _cell(value: object) -> object:
    """Table text: floats to 3 decimals, None blank."""
    if value is None:
        return ""
    return round(value, 3) if isinstance(value, float) else value


def _ask_path(mode: str, caption: str, file_filter: str = GEOJSON_FILTER) -> str | None:
    from magicgui.application import use_app  # napari's GUI loads with the viewer
    from magicgui.types import FileDialogMode  # napari's GUI loads with the viewer

    dialog_mode = FileDialogMode.EXISTING_FILE if mode == "open" else FileDialogMode.OPTIONAL_FILE
    return use_app().get_obj("show_file_dialog")(dialog_mode, caption=caption, filter=file_filter)
