"""The "CARE: groups and corrections" panel: the phenotype groups' legend and measurements, their
names, and a pathologist's corrections of the regions, saved as a new version of the run.

- **groups**: one row per phenotype group, its colour swatch (the regions' colour when they
  are coloured by group), an editable name, its regions, area (um^2), share of the tissue and
  mean attention (:func:`~napari_care.core.measurements.group_measurements`). A new name is
  in the regions layer's table at once (column ``group_name``: an export from the layer, the
  review's class x group table and a saved version carry it).
- **regions**: the same measurements per region, with its group and whether it is the ROI;
  rows selected here are the regions the buttons act on when none are typed.
- **corrections** (:mod:`napari_care.core.region_edits`): merge the regions typed (``3, 7``)
  or selected, split one in two by its patches' features, move regions to a group, and apply
  what the Labels brush painted on the regions layer (paint label L on patches: they move to
  region L - 1, or to a new region with a label no region has). The weights, the ROI, the
  heatmap, both tables and the legend follow each edit; **Undo** steps back.
- **Save as new version** writes the corrected, renamed run beside the original as
  ``<stem>.v2.care.json`` and its set (:func:`~napari_care.core.run_versions.save_version`);
  the original's files are never touched. A run not saved yet (fresh from the segment widget)
  is saved as a run of its own first ("Save run...").

Edits and saves run in a worker thread; the layers are redrawn on the GUI thread. No
numerics here: the panel reads the regions layer's result (metadata ``napari_care_result``)
and calls the core.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, LineEdit, PushButton, SpinBox, Table
from qtpy.QtCore import QAbstractTableModel, Qt
from qtpy.QtWidgets import QStyledItemDelegate, QTableView
from superqt.utils import create_worker

from napari_care._care_layers import ATTENTION, COLOUR_BY, RESULT_KEY, DisplayOptions, care_layers
from napari_care._layer_draw import LayerDraw
from napari_care._layers import ROLE_KEY, slide_layers
from napari_care.core.measurements import group_measurements, region_measurements
from napari_care.core.outputs import write_outputs
from napari_care.core.region_edits import (
    Edit,
    edit_of,
    edited_result,
    merge_regions,
    move_patches,
    painted_patches,
    set_group,
    split_region,
)
from napari_care.core.run_versions import save_version
from napari_care.core.saved_run import load_run
from napari_care.core.segment import SegmentResult

if TYPE_CHECKING:
    import napari

GROUP_COLUMNS = ("colour", "name", "regions", "area_um2", "% tissue", "mean attention")
REGION_COLUMNS = (
    "region",
    "group",
    "group name",
    "patches",
    "area_um2",
    "% tissue",
    "a",
    "mean attention",
    "ROI",
)
NAME_COLUMN = GROUP_COLUMNS.index("name")


class RowsModel(QAbstractTableModel):
    """A read-only table of text columns for a ``QTableView``, which asks only for the rows in
    sight (thousands of regions cost nothing until they are scrolled to)."""

    def __init__(self, columns: tuple[str, ...]) -> None:
        super().__init__()
        self.columns = columns
        self.cells: dict[str, list] = {column: [] for column in columns}

    def set_cells(self, cells: dict[str, list]) -> None:
        """Show ``cells`` (column -> one value per row)."""
        self.beginResetModel()
        self.cells = {column: list(cells[column]) for column in self.columns}
        self.endResetModel()

    def rowCount(self, parent=None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self.cells[self.columns[0]])

    def columnCount(self, parent=None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self.columns)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if role != Qt.ItemDataRole.DisplayRole or not index.isValid():
            return None
        return str(self.cells[self.columns[index.column()]][index.row()])

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        return self.columns[section] if orientation == Qt.Orientation.Horizontal else str(section)


class GroupsPanel(Container):
    """The groups' legend, names and measurements, and corrections of a CARE run's regions."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.run_layer = ComboBox(label="run", choices=self._run_layers)
        self.colour_by = ComboBox(label="colour by", choices=list(COLOUR_BY), value="group")
        self.groups_table = Table(label="groups", value={column: [] for column in GROUP_COLUMNS})
        self.region_ids = LineEdit(label="regions", value="")
        self.target_group = SpinBox(label="to group", min=0, max=999, value=0)
        self.merge_button = PushButton(text="Merge regions")
        self.split_button = PushButton(text="Split region")
        self.regroup_button = PushButton(text="Move regions to group")
        self.painted_button = PushButton(text="Apply painted patches")
        self.undo_button = PushButton(text="Undo", enabled=False)
        self.save_button = PushButton(text="Save as new version")
        self.status = Label(label="status", value="")
        self.extend(
            [
                self.run_layer,
                self.colour_by,
                self.groups_table,
                self.region_ids,
                self.target_group,
                self.merge_button,
                self.split_button,
                self.regroup_button,
                self.painted_button,
                self.undo_button,
                self.save_button,
                self.status,
            ]
        )
        self.regions_model = RowsModel(REGION_COLUMNS)  # a view draws only the rows in sight
        self.regions_view = QTableView()
        self.regions_view.setModel(self.regions_model)
        self.regions_view.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.regions_view.horizontalHeader().setResizeContentsPrecision(50)
        self.regions_view.setMinimumHeight(180)
        self.native.layout().insertWidget(self.index(self.groups_table) + 1, self.regions_view)
        self.layer = None  # the regions layer shown, and what it holds:
        self.result: SegmentResult | None = None
        self.names: dict[int, str] = {}
        self.run_path: Path | None = None  # its care.json; None until the run is saved
        self.drawn: np.ndarray | None = None  # the labels as last drawn (painting is told from them)
        self.history: list[tuple[SegmentResult, dict[int, str]]] = []
        self.worker = None  # the edit or save under way; a result of an older one is dropped
        # Edited layers go in one per event-loop turn, the tables refilled in a turn of their own.
        self.drawing = LayerDraw(napari_viewer, on_done=self._drawn, also_held=[self.native])
        self._drawn_names: dict[int, str] = {}  # the names the layers being drawn were built with
        self._filling = False
        self.merge_button.changed.connect(lambda: self.merge())
        self.split_button.changed.connect(lambda: self.split())
        self.regroup_button.changed.connect(lambda: self.regroup())
        self.painted_button.changed.connect(lambda: self.apply_painted())
        self.undo_button.changed.connect(lambda: self.undo())
        self.save_button.changed.connect(lambda: self.save())
        self.colour_by.changed.connect(lambda: self.recolour())
        self.run_layer.changed.connect(lambda layer: self.attach(layer))
        self.groups_table.native.itemChanged.connect(self._name_edited)
        # Qt's plain delegate: magicgui's shows every number-like text with 4 decimals (52.1000).
        self.groups_table.native.setItemDelegate(QStyledItemDelegate(self.groups_table.native))
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._layers_changed)
        self.attach(self.run_layer.value)

    # --- which run -------------------------------------------------------------------------

    def _run_layers(self, _widget=None) -> list:
        return [
            layer
            for layer in self.viewer.layers
            if type(layer).__name__ == "Labels"
            and layer.metadata.get(ROLE_KEY) == "regions"
            and isinstance(layer.metadata.get(RESULT_KEY), SegmentResult)
        ]

    def _layers_changed(self, _event=None) -> None:
        self.run_layer.reset_choices()
        layer = self.run_layer.value
        if layer is not self.layer or (
            layer is not None and layer.metadata.get(RESULT_KEY) is not self.result
        ):
            self.attach(layer)

    def attach(self, layer) -> None:
        """Show the run drawn in ``layer`` (a "CARE regions" layer), forgetting any earlier edits."""
        self.layer, self.history = layer, []
        self.undo_button.enabled = False
        if layer is None:
            self.result, self.names, self.run_path, self.drawn = None, {}, None, None
            self._fill_tables()
            self._say("open a saved run (File > Open of a .care.json) or segment a slide")
            return
        self.result = layer.metadata[RESULT_KEY]
        self.names = {int(g): str(n) for g, n in (layer.metadata.get("group_names") or {}).items()}
        run = layer.metadata.get("run")
        self.run_path = Path(run) if run else None
        self.drawn = np.array(layer.data, copy=True)
        self.save_button.text = "Save as new version" if self.run_path else "Save run..."
        self._fill_tables()
        where = self.run_path.name if self.run_path else "not saved yet"
        self._say(f"{self.result.care.n_regions} regions in {self._group_count()} groups ({where})")

    # --- tables ----------------------------------------------------------------------------

    def _group_count(self) -> int:
        groups = self.result.group_of_region if self.result is not None else np.zeros(0)
        return int(groups.max()) + 1 if groups.size else 0

    def group_rows(self) -> dict[str, np.ndarray]:
        """The groups' measurements as shown (``group_measurements`` of the current result)."""
        return group_measurements(self.result, self.names) if self.result is not None else {}

    def _fill_tables(self) -> None:
        self._filling = True
        try:
            if self.result is None:
                self.groups_table.value = {column: [] for column in GROUP_COLUMNS}
                self.regions_model.set_cells({column: [] for column in REGION_COLUMNS})
                return
            groups = self.group_rows()
            self.groups_table.value = {
                "colour": list(groups["color"]),
                "name": list(groups["name"]),
                "regions": [str(int(v)) for v in groups["regions"]],
                "area_um2": [_area(v) for v in groups["area_um2"]],
                "% tissue": [f"{100 * float(v):.1f}" for v in groups["tissue_share"]],
                "mean attention": [_number(v) for v in groups["mean_attention"]],
            }
            self._style_groups_table(list(groups["color"]))
            _fit_rows(self.groups_table.native, len(groups["group"]), most=12)
            regions = region_measurements(self.result)
            names = dict(zip(groups["group"].tolist(), groups["name"].tolist(), strict=True))
            self.regions_model.set_cells(
                {
                    "region": regions["region"].tolist(),
                    "group": regions["group"].tolist(),
                    "group name": [names[int(g)] for g in regions["group"]],
                    "patches": regions["patches"].tolist(),
                    "area_um2": [_area(v) for v in regions["area_um2"]],
                    "% tissue": [f"{100 * float(v):.1f}" for v in regions["tissue_share"]],
                    "a": [_number(v) for v in regions["a"]],
                    "mean attention": [_number(v) for v in regions["mean_attention"]],
                    "ROI": ["ROI" if v else "" for v in regions["is_roi"]],
                }
            )
            self.regions_view.resizeColumnsToContents()  # from the first rows (contents precision)
        finally:
            self._filling = False

    def _style_groups_table(self, colours: list[str]) -> None:
        """Swatches in the colour column; only the names editable."""
        from qtpy.QtGui import QBrush, QColor  # lazy: Qt only in a running viewer

        native = self.groups_table.native
        editable = Qt.ItemFlag.ItemIsEditable
        for row, colour in enumerate(colours):
            for column in range(native.columnCount()):
                item = native.item(row, column)
                if item is None:
                    continue
                if column != NAME_COLUMN:
                    item.setFlags(item.flags() & ~editable)
                if column == 0:
                    item.setBackground(QBrush(QColor(colour)))
                    item.setForeground(QBrush(QColor(colour)))

    def _name_edited(self, item) -> None:
        if self._filling or item.column() != NAME_COLUMN:
            return
        self.rename(item.row(), item.text())

    def rename(self, group: int, name: str) -> None:
        """Name phenotype group ``group`` (a blank name goes back to ``"CARE group <id>"``)."""
        if self.result is None or not 0 <= group < self._group_count():
            return
        self.history.append((self.result, dict(self.names)))
        self.undo_button.enabled = True
        if name.strip():
            self.names[int(group)] = name.strip()
        else:
            self.names.pop(int(group), None)
        self._show_names()
        self._say(f"group {group} is {self.group_rows()['name'][group]!r}")

    def _show_names(self) -> None:
        """Put the names into the regions layer's table and metadata, and refill the tables."""
        layer, groups = self.layer, self.group_rows()
        if layer is not None:
            features = layer.features.copy()
            named = groups["name"]
            features["group_name"] = [named[g] if g >= 0 else "" for g in features["group"].astype(int)]
            layer.features = features
            layer.metadata = {**layer.metadata, "group_names": dict(self.names)}
        self._fill_tables()

    # --- corrections -----------------------------------------------------------------------

    def chosen_regions(self) -> list[int]:
        """The region ids typed (``"3, 7"``), else those of the rows selected in the regions table."""
        text = self.region_ids.value.strip()
        if text:
            return [int(v) for v in re.findall(r"-?\d+", text)]
        rows = sorted({index.row() for index in self.regions_view.selectionModel().selectedRows()})
        return [int(self.regions_model.cells["region"][row]) for row in rows]

    def merge(self):
        """Merge the chosen regions into one."""
        regions = self.chosen_regions()
        return self._edit(f"merged regions {regions}", lambda edit: merge_regions(edit, regions))

    def split(self):
        """Split the first chosen region in two."""
        regions = self.chosen_regions()
        if not regions:
            return self._say("type the region to split")
        return self._edit(f"split region {regions[0]}", lambda edit: split_region(edit, regions[0]))

    def regroup(self):
        """Move the chosen regions to the group in "to group" (the next id makes a new group)."""
        regions, group = self.chosen_regions(), int(self.target_group.value)

        def regrouped(edit: Edit) -> Edit:
            if not regions:
                raise ValueError("type the regions to move to the group")
            for region in regions:
                edit = set_group(edit, region, group)
            return edit

        return self._edit(f"regions {regions} -> group {group}", regrouped)

    def apply_painted(self):
        """Move the patches painted with the Labels brush since the last draw to the painted region."""
        self._in_step()
        if self.layer is None or self.result is None or self.drawn is None:
            return self._say("no CARE regions layer")
        moves = painted_patches(self.result.features.grid, self.drawn, np.asarray(self.layer.data))
        if not moves:
            return self._say("nothing painted: paint region labels on the CARE regions layer first")
        by_region = {label - 1: patches for label, patches in moves.items()}
        count = sum(len(patches) for patches in by_region.values())
        return self._edit(f"moved {count} painted patches", lambda edit: move_patches(edit, by_region))

    def undo(self):
        """Go back to the result and names before the last edit or rename (its layers built in a
        worker). Returns the worker."""
        if not self.history:
            return None
        if self.busy:
            return self._say("an edit is under way")
        self.result, self.names = self.history.pop()
        self.undo_button.enabled = bool(self.history)
        layers_of, result = self._layers_builder(), self.result
        return self._start(lambda: layers_of(result), lambda layers: self._undone(layers))

    def _undone(self, layers: list) -> None:
        self.redraw(layers)
        self._say("undone")

    @property
    def busy(self) -> bool:
        """True while an edit, a save or the drawing of edited layers is under way."""
        return self.worker is not None or self.drawing.pending

    def _in_step(self) -> None:
        """Follow the layer when something else drew a new result into it (the segment widget)."""
        if self.layer is not None and self.layer.metadata.get(RESULT_KEY) is not self.result:
            self.attach(self.layer)

    def _edit(self, what: str, change: Callable[[Edit], Edit]):
        """Run ``change`` on the current result, and build its layers, in a worker; then draw
        them. Returns the worker."""
        self._in_step()
        if self.result is None:
            return self._say("no CARE run to correct")
        if self.busy:
            return self._say("an edit is under way")
        result, layers_of = self.result, self._layers_builder()

        def job() -> tuple[SegmentResult, list]:
            edited = edited_result(result, change(edit_of(result)))
            return edited, layers_of(edited)

        return self._start(job, lambda done: self._edited(what, result, *done))

    def _edited(self, what: str, before: SegmentResult, edited: SegmentResult, layers: list) -> None:
        self.history.append((before, dict(self.names)))
        self.undo_button.enabled = True
        self.result = edited
        self.redraw(layers)
        self._say(f"{what}: {edited.care.n_regions} regions, ROI = region {edited.care.roi}")

    def _layers_builder(self) -> Callable[[SegmentResult], list]:
        """What builds the three CARE layers of a result as they are shown now (callable in a worker)."""
        slide = self._slide()
        attention = self.viewer.layers[ATTENTION] if ATTENTION in self.viewer.layers else None
        display = DisplayOptions(
            colour_by=self.colour_by.value,
            normalisation=(attention.metadata.get("normalisation") if attention else None) or "min-max",
        )
        names, run = dict(self.names), str(self.run_path) if self.run_path else None
        return lambda result: care_layers(result, slide, display, group_names=names, run=run)

    def recolour(self):
        """Draw the layers coloured as "colour by" says (built in a worker). Returns the worker."""
        if self.result is None or self.layer is None:
            return None
        if self.busy:
            return self._say("an edit is under way: choose the colours again after it")
        layers_of, result = self._layers_builder(), self.result
        return self._start(lambda: layers_of(result), self.redraw)

    def redraw(self, layers: list | None = None) -> None:
        """Draw the current result in the three CARE layers, in place, one layer per event-loop
        turn (``layers`` when built already), then refill the tables (:meth:`_drawn`)."""
        if self.result is None or self.layer is None:
            return
        self._drawn_names = dict(self.names)
        self.drawing.start(layers or self._layers_builder()(self.result))

    def _drawn(self, complete: bool) -> None:
        if not complete or self.layer is None:
            return
        self.drawn = np.array(self.layer.data, copy=True)
        if self.names != self._drawn_names:
            self._show_names()  # names typed while the worker ran
        else:
            self._fill_tables()

    def _slide(self):
        layers = slide_layers(self.viewer)
        if not layers:
            raise ValueError("the slide layer is gone: open the slide again")
        return layers[0].metadata["slide"]

    # --- saving ----------------------------------------------------------------------------

    def save(self, folder: str | Path | None = None):
        """Save the run: as a new version beside the saved one, or (never saved) into ``folder``
        (asked for). Returns the worker; its result is the new ``care.json``."""
        self._in_step()
        if self.result is None:
            return self._say("no CARE run to save")
        result, names, slide = self.result, dict(self.names), self._slide()
        if self.run_path is not None:
            run_path = self.run_path

            def job() -> Path:
                return save_version(load_run(run_path), result, slide=slide, group_names=names)

        else:
            folder = folder or _ask_folder("Save the CARE run into")
            if not folder:
                return None
            stem = Path(slide.path).name.split(".")[0]

            def job() -> Path:
                return write_outputs(result, slide, folder, stem, group_names=names)["summary"]

        self._say("saving...")
        return self._start(job, self._saved)

    def _saved(self, summary: Path) -> None:
        self.run_path = Path(summary)
        self.save_button.text = "Save as new version"
        if self.layer is not None:
            self.layer.metadata = {**self.layer.metadata, "run": str(summary)}
        self._say(f"saved {summary.name} beside the original" if ".v" in summary.name else f"saved {summary}")

    # --- worker and status -----------------------------------------------------------------

    def _start(self, job: Callable[[], Any], done: Callable[[Any], None]):
        worker = create_worker(job, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda value, w=worker: self._returned(w, done, value))
        worker.errored.connect(lambda error, w=worker: self._errored(w, error))
        self.worker = worker
        worker.start()
        return worker

    def _returned(self, worker, done: Callable[[Any], None], value: Any) -> None:
        if worker is self.worker:
            self.worker = None
            try:
                done(value)
            except (OSError, ValueError) as error:
                self._say(f"failed: {error}")

    def _errored(self, worker, error: Exception) -> None:
        if worker is self.worker:
            self.worker = None
            self._say(f"failed: {error}")

    def _say(self, text: str) -> None:
        self.status.value = text


def _number(value: float) -> str:
    """Table text: 3 significant digits, blank for NaN."""
    value = float(value)
    return f"{value:.3g}" if np.isfinite(value) else ""


def _area(value: float) -> str:
    """An area in whole square micrometres, thousands apart (blank without a calibration)."""
    value = float(value)
    return f"{value:,.0f}" if np.isfinite(value) else ""


def _fit_rows(table, rows: int, most: int) -> None:
    """Size a table to its columns' contents and to ``rows`` rows (at most ``most``, then it scrolls)."""
    table.resizeColumnsToContents()
    header = table.horizontalHeader().height()
    row = table.verticalHeader().defaultSectionSize()
    scrollbar = table.horizontalScrollBar().sizeHint().height()
    table.setFixedHeight(header + row * max(1, min(rows, most)) + scrollbar + 4)


def _ask_folder(caption: str) -> str | None:
    from magicgui.application import use_app  # napari's GUI loads with the viewer
    from magicgui.types import FileDialogMode  # napari's GUI loads with the viewer

    return use_app().get_obj("show_file_dialog")(FileDialogMode.EXISTING_DIRECTORY, caption=caption)
