"""The "CARE: groups and corrections" panel over a reopened run (run under xvfb): the legend and
measurements, renaming into the export and a reopened version, merges, painting, undo, saving."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_care._care_layers import ATTENTION, REGIONS, ROI
from napari_care.core.measurements import group_measurements
from napari_care.core.outputs import write_outputs
from napari_care.core.progress import run_to_end
from napari_care.core.qupath.read import read_geojson
from napari_care.core.segment import SegmentOptions, segment
from napari_care.core.slide.handle import open_slide

pytestmark = pytest.mark.gui

TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def saved_run(widget_slide_path, tmp_path_factory):
    """A run of the small slide written as ``segment`` writes it (group 1 named "stroma")."""
    out = tmp_path_factory.mktemp("groups_run")
    with open_slide(widget_slide_path) as slide:
        result = run_to_end(segment(slide, SegmentOptions(k=6, n_groups=3)))
        write_outputs(result, slide, out, "small", group_names={1: "stroma"})
    return out, result


@pytest.fixture
def panel(make_napari_viewer, saved_run, qtbot, tmp_path):
    """A viewer with the saved run opened (File > Open of its care.json) and the panel docked."""
    import shutil

    from napari_care._groups_panel import GroupsPanel

    out, _ = saved_run
    folder = tmp_path / "run"
    shutil.copytree(out, folder)  # each test saves versions of its own copy
    viewer = make_napari_viewer(show=True)
    viewer.open(str(folder / "small.care.json"), plugin="napari-care")
    widget = GroupsPanel(viewer)
    viewer.window.add_dock_widget(widget, name="groups")
    return viewer, widget, folder


def wait(widget, qtbot) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


def test_the_table_is_the_runs_groups_with_their_names_and_measurements(panel, saved_run):
    viewer, widget, folder = panel
    _, result = saved_run
    assert widget.layer is viewer.layers[REGIONS]
    assert widget.run_path == folder / "small.care.json"
    want = group_measurements(result, {1: "stroma"})
    table = widget.groups_table.to_dict("list")
    assert table["name"] == list(want["name"])
    assert table["name"][1] == "stroma" and table["name"][0] == "CARE group 0"
    assert table["regions"] == [str(v) for v in want["regions"]]
    assert table["colour"] == list(want["color"])
    assert sum(float(v) for v in table["% tissue"]) == pytest.approx(100.0, abs=0.2)
    regions = widget.regions_model.cells
    assert regions["region"] == list(range(result.care.n_regions))
    assert regions["ROI"].count("ROI") == 1 and regions["ROI"][result.care.roi] == "ROI"
    swatch = widget.groups_table.native.item(1, 0).background().color().name()
    assert swatch == want["color"][1]


def test_a_renamed_group_is_in_the_saved_version_and_its_geojson(panel, qtbot):
    viewer, widget, folder = panel
    widget.groups_table.native.item(0, 1).setText("tumour")  # the user types a name in the table
    assert widget.names[0] == "tumour"
    layer_names = viewer.layers[REGIONS].features
    assert set(layer_names.loc[layer_names["group"] == 0, "group_name"]) == {"tumour"}
    from napari_care._layers import viewer_frame
    from napari_care._writer import care_region_annotations

    layer = viewer.layers[REGIONS]  # File > Save of the layer (the review panel's export) names it too
    exported = care_region_annotations(layer.data, layer.as_layer_data_tuple()[1], viewer_frame(viewer))
    assert {"tumour", "stroma"} <= {a.class_name for a in exported}
    original = (folder / "small.regions.geojson").read_bytes()
    widget.save()
    wait(widget, qtbot)
    version = folder / "small.v2.care.json"
    assert widget.run_path == version, widget.status.value
    assert (folder / "small.regions.geojson").read_bytes() == original  # the original stays
    classes = {a.class_name for a in read_geojson(folder / "small.v2.regions.geojson")}
    assert {"tumour", "stroma"} <= classes
    summary = json.loads(version.read_text())
    assert "tumour" in json.dumps(summary["groups"])

    from napari_care._groups_panel import GroupsPanel

    viewer.open(str(version), plugin="napari-care")  # reopened: the name comes back
    reopened = GroupsPanel(viewer)
    assert reopened.groups_table.to_dict("list")["name"][:2] == ["tumour", "stroma"]


def test_merging_two_regions_changes_the_layers_and_the_measurements(panel, qtbot):
    viewer, widget, _ = panel
    before_regions = widget.result.care.n_regions
    sizes = widget.result.care.region_sizes
    widget.region_ids.value = "0, 1"
    widget.merge()
    wait(widget, qtbot)
    assert widget.result.care.n_regions == before_regions - 1, widget.status.value
    assert widget.result.care.mode == "edited"
    labels = np.asarray(viewer.layers[REGIONS].data)
    assert len(np.unique(labels[labels > 0])) == before_regions - 1
    table = widget.regions_model.cells
    assert table["patches"][0] == sizes[0] + sizes[1]
    assert len(table["region"]) == before_regions - 1
    assert viewer.layers[REGIONS].metadata["mode"] == "edited"
    assert len(viewer.layers[ROI].data) >= 1
    attention = np.asarray(viewer.layers[ATTENTION].data)
    assert np.isfinite(attention).all()
    widget.undo()
    wait(widget, qtbot)
    assert widget.result.care.n_regions == before_regions
    assert len(np.unique(np.asarray(viewer.layers[REGIONS].data))) == before_regions + 1


def test_a_bad_merge_says_why_and_changes_nothing(panel, qtbot):
    _, widget, _ = panel
    before = widget.result
    widget.region_ids.value = "999"
    widget.merge()
    wait(widget, qtbot)
    assert widget.result is before
    assert "failed" in widget.status.value and "does not exist" in widget.status.value


def test_painted_patches_move_to_the_painted_region(panel, qtbot):
    viewer, widget, _ = panel
    layer = viewer.layers[REGIONS]
    result = widget.result
    cells = result.features.grid
    victims = np.flatnonzero(result.care.region_of_patch == 1)[:3]
    data = np.array(layer.data)
    data[cells[victims, 1], cells[victims, 0]] = 1  # label 1 = region 0, as the brush paints it
    data[0, 0] = 1 if data[0, 0] == 0 else data[0, 0]  # painting off tissue moves nothing
    layer.data = data
    widget.apply_painted()
    wait(widget, qtbot)
    moved = widget.result.care.region_of_patch[victims]
    assert (
        moved == widget.result.care.region_of_patch[np.flatnonzero(result.care.region_of_patch == 0)[0]]
    ).all()
    assert widget.result.care.region_sizes.sum() == result.care.region_sizes.sum()
    widget.apply_painted()  # nothing painted since the redraw
    assert "nothing painted" in widget.status.value


def test_moving_regions_to_a_group_recolours_and_saves(panel, qtbot):
    _, widget, folder = panel
    widget.region_ids.value = "0"
    widget.target_group.value = int(widget.result.group_of_region.max()) + 1  # a new group
    widget.regroup()
    wait(widget, qtbot)
    groups = widget.groups_table.to_dict("list")
    assert len(groups["name"]) == int(widget.result.group_of_region.max()) + 1
    assert groups["regions"][-1] == "1"
    widget.save()
    wait(widget, qtbot)
    widget.save()  # a second save is the next version, never over the first
    wait(widget, qtbot)
    assert (folder / "small.v2.care.json").is_file() and (folder / "small.v3.care.json").is_file()


def test_an_unsaved_run_is_saved_into_a_folder_first(make_napari_viewer, widget_slide_path, qtbot, tmp_path):
    from napari.layers import Layer

    from napari_care._care_layers import DisplayOptions, care_layers
    from napari_care._groups_panel import GroupsPanel
    from napari_care._reader import read_slide

    viewer = make_napari_viewer()
    data, kwargs, kind = read_slide(str(widget_slide_path))[0]
    viewer.add_layer(Layer.create(data, kwargs, kind))
    slide = kwargs["metadata"]["slide"]
    result = run_to_end(segment(slide, SegmentOptions(k=4, n_groups=2)))
    for item in care_layers(result, slide, DisplayOptions()):
        viewer.add_layer(Layer.create(*item))
    widget = GroupsPanel(viewer)
    assert widget.result is result and widget.run_path is None
    assert widget.save_button.text == "Save run..."
    widget.rename(1, "necrosis")
    widget.save(tmp_path)
    wait(widget, qtbot)
    assert widget.run_path == tmp_path / "small.care.json"
    classes = {a.class_name for a in read_geojson(tmp_path / "small.regions.geojson")}
    assert "necrosis" in classes


def test_a_reopened_run_draws_the_layers_the_run_drew(panel, saved_run, widget_slide_path):
    from napari_care._care_layers import DisplayOptions, care_layers

    viewer, widget, _ = panel
    _, result = saved_run
    with open_slide(widget_slide_path) as slide:
        want = care_layers(result, slide, DisplayOptions(colour_by="group"), group_names={1: "stroma"})
    (labels, regions_kwargs, _), (heatmap, _, _), (boxes, roi_kwargs, _) = want
    np.testing.assert_array_equal(np.asarray(viewer.layers[REGIONS].data), labels)
    np.testing.assert_allclose(np.asarray(viewer.layers[ATTENTION].data), heatmap)
    assert len(viewer.layers[ROI].data) == len(boxes)
    for shape, box in zip(viewer.layers[ROI].data, boxes, strict=True):
        np.testing.assert_allclose(shape, box)
    assert list(viewer.layers[ROI].features["label"]) == list(roi_kwargs["features"]["label"])
    names = viewer.layers[REGIONS].features["group_name"].tolist()
    assert names == list(regions_kwargs["features"]["group_name"])
    assert widget.result.care.roi == result.care.roi


def test_colour_by_redraws_the_layers_in_a_worker_and_the_tables_stay(panel, qtbot):
    viewer, widget, _ = panel
    wait(widget, qtbot)
    rows = list(widget.regions_model.cells["region"])
    widget.colour_by.value = "region"
    assert widget.busy  # built off the GUI thread, drawn one layer per turn
    wait(widget, qtbot)
    assert viewer.layers[REGIONS].metadata["colour_by"] == "region"
    assert widget.regions_model.cells["region"] == rows
    widget.colour_by.value = "group"
    wait(widget, qtbot)
    assert viewer.layers[REGIONS].metadata["colour_by"] == "group"
