"""Agreement metrics between annotations and CARE regions, ROI and attention."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely import affinity

from napari_care.core.qupath.objects import Annotation
from napari_care.core.review.metrics import (
    PatchAttention,
    RegionGrid,
    class_geometries,
    rasterize,
    review_agreement,
    write_review_csv,
)
from napari_care.core.review.run import review_region_table

CELL = 10.0
ORIGIN = (100.0, 50.0)


def square_grid() -> RegionGrid:
    """A 4 x 4 region 0 in the middle of a 6 x 6 grid, region 1 along the top row."""
    labels = np.full((6, 6), -1)
    labels[1:5, 1:5] = 0
    labels[0, :] = 1
    return RegionGrid(labels, ORIGIN, CELL)


def cell_box(col0, row0, col1, row1):
    """Level-0 box over grid cells [col0, col1) x [row0, row1)."""
    x0, y0 = ORIGIN
    return shapely.box(x0 + col0 * CELL, y0 + row0 * CELL, x0 + col1 * CELL, y0 + row1 * CELL)


def test_hand_computed_4x4_region_against_2x4_annotation():
    annotations = [Annotation(cell_box(1, 1, 5, 3), class_name="Tumor")]  # 2 rows x 4 cols of region 0
    rows = review_agreement(annotations, square_grid(), roi_ids=[0])
    assert [(r["target"], r["region_id"]) for r in rows] == [
        ("roi", "0"),
        ("region", 0),
    ]  # region 1 only touches
    for row in rows:
        for suffix in ("", "_grid"):
            assert row[f"iou{suffix}"] == pytest.approx(0.5)
            assert row[f"dice{suffix}"] == pytest.approx(2 / 3)
            assert row[f"target_in_annotation{suffix}"] == pytest.approx(0.5)
            assert row[f"annotation_in_target{suffix}"] == pytest.approx(1.0)
        assert (row["intersection_cells"], row["target_cells"], row["annotation_cells"]) == (8, 16, 8)
        assert row["intersection_area_px2"] == pytest.approx(800.0)
        assert row["dice_grid_bound"] == 0.0  # edges on grid lines: nothing can differ
        assert row["attention_inside"] is None


def test_half_cells_are_counted_by_centre_and_the_bound_covers_them():
    # Covers region 0's columns 1..4 fully and 60 % of row 3: centres of row 3 are inside.
    annotation = Annotation(cell_box(1, 1, 5, 2.6), class_name="A")
    [roi] = [r for r in review_agreement([annotation], square_grid(), roi_ids=[0]) if r["target"] == "roi"]
    assert roi["intersection_cells"] == 8 and roi["intersection_area_px2"] == pytest.approx(640.0)
    assert roi["dice_grid"] == pytest.approx(2 / 3)
    assert roi["dice"] == pytest.approx(2 * 6.4 / (16 + 6.4))
    assert abs(roi["dice"] - roi["dice_grid"]) <= roi["dice_grid_bound"]


def test_attention_mass_and_pointing_game():
    coords = np.array([[110, 60], [140, 90], [0, 0], [120, 60]], dtype=float)  # top-left corners
    attention = PatchAttention(coords, np.array([0.1, 0.5, 0.3, 0.1]), CELL)
    inside = Annotation(cell_box(1, 1, 3, 2), class_name="A")  # holds patches 0 and 3
    [row] = review_agreement([inside], square_grid(), attention=attention)
    assert row["attention_inside"] == pytest.approx(0.2) and row["attention_outside"] == pytest.approx(0.8)
    assert row["pointing_game"] is False  # the top patch (0.5) is at (140, 90): outside
    hit = Annotation(cell_box(4, 4, 5, 5), class_name="B")
    [row] = review_agreement([hit], square_grid(), attention=attention)
    assert row["pointing_game"] is True and row["attention_inside"] == pytest.approx(0.5)


def test_classes_lines_and_disjoint_regions():
    annotations = [
        Annotation(cell_box(1, 1, 2, 2), class_name="A"),
        Annotation(cell_box(2, 1, 3, 2), class_name="A"),
        Annotation(cell_box(1, 4, 2, 5)),
        Annotation(shapely.LineString([(0, 0), (500, 500)]), class_name="Line only"),
    ]
    shapes = class_geometries(annotations)
    assert list(shapes) == ["A", "Unclassified"] and shapes["A"].area == 2 * CELL**2
    rows = review_agreement(annotations, square_grid())
    assert [(r["class"], r["n_objects"], r["region_id"]) for r in rows] == [
        ("A", 2, 0),
        ("Unclassified", 1, 0),
    ]
    rows = review_agreement(annotations, square_grid(), include_disjoint=True)
    assert [(r["class"], r["region_id"], r["dice"]) for r in rows if r["region_id"] == 1] == [
        ("A", 1, 0.0),
        ("Unclassified", 1, 0.0),
    ]


def test_rasterize_by_cell_centre():
    mask = rasterize(cell_box(1, 1, 2.4, 3.6), square_grid())
    assert mask.sum() == 3 and mask[1:4, 1].all()


def test_csv_round_trip(tmp_path):
    attention = PatchAttention(np.array([[110.0, 60.0]]), np.array([1.0]), CELL)
    rows = review_agreement(
        [Annotation(cell_box(1, 1, 5, 3), class_name="Tümor")],
        square_grid(),
        roi_ids=[0],
        attention=attention,
    )
    write_review_csv(tmp_path / "review.csv", rows)
    with open(tmp_path / "review.csv", newline="", encoding="utf-8") as handle:
        back = list(csv.DictReader(handle))
    assert len(back) == 2 and back[0]["class"] == "Tümor" and back[0]["pointing_game"] == "True"
    assert float(back[0]["iou"]) == pytest.approx(0.5)
    assert list(back[0])[:4] == ["class", "n_objects", "target", "region_id"]


def test_bad_inputs_are_named():
    annotation = Annotation(cell_box(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"roi_ids.*7"):
        review_agreement([annotation], square_grid(), roi_ids=[7])
    negative = PatchAttention(np.zeros((1, 2)), np.array([-1.0]), CELL)
    with pytest.raises(ValueError, match="attention must be"):
        review_agreement([annotation], square_grid(), attention=negative)


@settings(max_examples=60, deadline=None)
@given(
    blocks=st.lists(st.integers(-1, 3), min_size=16, max_size=16),
    centre=st.tuples(st.floats(80, 260), st.floats(30, 210)),
    radius=st.floats(3, 90),
    stretch=st.floats(0.3, 3),
)
def test_grid_and_exact_agree_within_the_stated_bound(blocks, centre, radius, stretch):
    labels = np.repeat(np.repeat(np.array(blocks).reshape(4, 4), 4, axis=0), 4, axis=1)  # 16 x 16 cells
    labels[0, 0] = 0  # region 0 always exists
    ellipse = affinity.scale(shapely.Point(centre).buffer(radius), xfact=stretch)
    rows = review_agreement(
        [Annotation(ellipse, class_name="A")], RegionGrid(labels, ORIGIN, CELL), roi_ids=[0]
    )
    for row in rows:
        assert abs(row["dice"] - row["dice_grid"]) <= row["dice_grid_bound"] + 1e-9


def test_large_region_and_smooth_annotation_agree_within_005():
    labels = np.full((30, 30), -1)
    labels[5:25, 3:27] = 0  # 480 patches
    disc = shapely.Point(ORIGIN[0] + 150.3, ORIGIN[1] + 140.7).buffer(87.0)
    for annotation in (disc, affinity.rotate(shapely.box(120, 110, 300, 200), 23)):
        [row] = review_agreement([Annotation(annotation)], RegionGrid(labels, ORIGIN, CELL), roi_ids=[0])[:1]
        assert abs(row["dice"] - row["dice_grid"]) <= 0.05
        assert abs(row["iou"] - row["iou_grid"]) <= 0.05
        assert row["dice"] > 0.3


def test_review_of_a_region_table_takes_roi_and_attention_from_its_columns():
    annotations = [Annotation(cell_box(1, 1, 5, 3), class_name="Tumor")]
    columns = {
        "region": np.array([-1, 0, 1]),
        "is_roi": np.array([False, True, False]),
        "a": np.array([np.nan, 0.7, 0.3]),
    }
    rows = review_region_table(annotations, square_grid(), columns)
    assert [(r["target"], r["region_id"]) for r in rows] == [("roi", "0"), ("region", 0)]
    assert rows[0]["attention_inside"] == pytest.approx(8 * 0.7 / 16)
    with pytest.raises(KeyError):
        review_region_table(annotations, square_grid(), {"region": np.array([0])})
