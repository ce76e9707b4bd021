"""The "CARE: review annotations" panel and the GeoJSON reader/writer inside napari (run under xvfb)."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
import shapely

from napari_care._layers import level0_to_world, placement
from napari_care.core.qupath.objects import ROI_CLASS, Annotation
from napari_care.core.qupath.polygons import label_grid_polygons
from napari_care.core.qupath.read import read_geojson
from napari_care.core.qupath.write import write_geojson

pytestmark = pytest.mark.gui

CELL = 40.0
ORIGIN = (80.0, 120.0)


def cells(col0, row0, col1, row1):
    x0, y0 = ORIGIN
    return shapely.box(x0 + col0 * CELL, y0 + row0 * CELL, x0 + col1 * CELL, y0 + row1 * CELL)


@pytest.fixture
def scene(make_napari_viewer, make_pyramid):
    """A viewer with a calibrated slide (0.5 um/px) and a CARE regions layer over it."""
    from napari.layers import Layer

    from napari_care._reader import read_slide

    pyramid = make_pyramid("slide.tif", resolution=(20000, "centimeter"))
    viewer = make_napari_viewer()
    [item] = read_slide(str(pyramid.path))
    slide = item[1]["metadata"]["slide"]
    slide_layer = viewer.add_layer(Layer.create(*item))
    labels = np.full((6, 6), -1)
    labels[1:5, 1:5] = 0
    labels[0, :] = 1
    table = pd.DataFrame(
        {
            "index": [0, 1, 2],
            "region": [-1, 0, 1],
            "patches": [-1, 16, 6],
            "area_um2": [np.nan, 6400.0, 2400.0],
            "alpha": [np.nan, 0.7, 0.3],
            "beta": [np.nan, 0.7, 0.3],
            "a": [np.nan, 0.7, 0.3],
            "is_roi": [False, True, False],
            "group": [-1, 0, 1],
        }
    )
    regions = viewer.add_labels(
        labels + 1,
        name="CARE regions",
        features=table,
        metadata={"napari_care_role": "regions"},
        **placement(slide, ORIGIN, CELL),
    )
    yield viewer, slide, slide_layer, regions, labels
    slide.close()


def test_panel_imports_computes_exports(scene, tmp_path, qtbot):
    from napari_care._review_panel import ReviewPanel

    viewer, slide, slide_layer, _regions, labels = scene
    panel = ReviewPanel(viewer)
    viewer.window.add_dock_widget(panel, name="review")
    assert panel.slide_layer.value is slide_layer and slide.mpp == pytest.approx((0.5, 0.5))
    source = tmp_path / "pathologist.geojson"
    write_geojson(
        source,
        [
            Annotation(cells(1, 1, 5, 3), class_name="Tumor", color=(200, 0, 0)),
            Annotation(shapely.Point(100, 100), class_name="Mitosis"),
        ],
    )
    shapes, points = panel.import_annotations(source)
    assert panel.annotation_layer.value is shapes and type(points).__name__ == "Points"
    corners = np.asarray(cells(1, 1, 5, 3).exterior.coords)[:-1]
    world = shapes.data[0] * shapes.scale + shapes.translate
    assert np.allclose(np.sort(world, axis=0), np.sort(level0_to_world(slide, corners), axis=0))
    assert np.allclose(shapes.edge_color[0], [200 / 255, 0, 0, 1]) and "2 objects" in panel.status.value

    worker = panel.compute()  # in a worker thread: the tables fill when it returns
    assert worker is not None
    qtbot.waitUntil(lambda: panel.worker is None, timeout=20_000)  # its result (or error) shown
    rows = panel.rows
    assert [(r["class"], r["target"], r["region_id"]) for r in rows] == [
        ("Tumor", "roi", "0"),
        ("Tumor", "group", "0"),
        ("Tumor", "region", 0),
    ]
    for row in rows:
        assert row["dice"] == pytest.approx(2 / 3) and row["iou"] == pytest.approx(0.5)
        assert row["attention_inside"] == pytest.approx(8 * 0.7 / 16)
        # a / n is constant within each region: the game is on the top-weight region 0, in the box
        assert row["pointing_game"] is True and row["pointing_on"] == "region"
    assert panel.table.shape == (3, 14) and panel.table.data[0][5] == pytest.approx(0.667)
    assert panel.class_table.shape == (3, 8)  # groups 0, 1 and "outside the groups"

    panel.save_table(tmp_path / "agreement.csv")
    with open(tmp_path / "agreement.csv", newline="", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 3
    with open(tmp_path / "agreement.class_by_group.csv", newline="", encoding="utf-8") as handle:
        assert [row["group_id"] for row in csv.DictReader(handle)] == ["0", "1", "-1"]

    panel.tiles.value = True
    count = panel.export_regions(tmp_path / "care.geojson.gz")
    objects = read_geojson(tmp_path / "care.geojson.gz")
    assert count == len(objects) == 2 + 1 + 22
    expected = label_grid_polygons(labels, origin_xy=ORIGIN, cell_size_px=CELL)
    detections = {int(a.measurements["CARE region id"]): a for a in objects if a.object_type == "detection"}
    assert all(detections[r].geometry.equals(expected[r]) for r in (0, 1))
    [roi] = [a for a in objects if a.class_name == ROI_CLASS]
    assert roi.geometry.equals(expected[0]) and roi.metadata["mpp"] == "0.5"


def test_file_open_and_save_go_through_the_plugin(scene, tmp_path):
    import napari

    viewer, _slide, slide_layer, regions, _labels = scene
    viewer.layers.selection.active = slide_layer
    source = tmp_path / "hole.geojson"
    holed = shapely.Polygon(cells(0, 0, 4, 4).exterior, [cells(1, 1, 3, 3).exterior.coords[::-1]])
    write_geojson(source, [Annotation(holed, class_name="Tumor", measurements={"score": 2.5})])
    [shapes] = viewer.open(source, plugin="napari-care")
    assert list(shapes.features["ring"]) == ["exterior", "hole"]
    assert np.allclose(shapes.scale, (0.5, 0.5))  # placed over the slide in micrometres
    written = napari.save_layers(str(tmp_path / "saved.geojson"), [shapes, regions], plugin="napari-care")
    assert written == [str(tmp_path / "saved.geojson")]
    objects = read_geojson(tmp_path / "saved.geojson")
    assert objects[0].geometry.equals(holed) and objects[0].measurements == {"score": 2.5}
    assert [a.object_type for a in objects[1:]] == ["detection", "detection", "annotation"]
