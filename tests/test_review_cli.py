"""``napari-care review`` and the core it drives: a segment output on disk against annotations."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click
import numpy as np
import pytest
import shapely
from click.testing import CliRunner

from napari_care.cli.review import register
from napari_care.core.qupath.objects import Annotation
from napari_care.core.qupath.polygons import label_grid_polygons
from napari_care.core.qupath.write import (
    RegionTable,
    region_features,
    roi_features,
    tile_features,
    write_geojson,
)
from napari_care.core.review.run import load_output, locate_output, region_grid, review_files

CELL = 10.0
ORIGIN = (100.0, 50.0)
OFFSET = (7.0, 3.0)  # a slide bounds offset: both files are in QuPath's frame


def square_labels() -> np.ndarray:
    """Region 0: a 4 x 4 block in the middle of 6 x 6 cells; region 1: the top row."""
    labels = np.full((6, 6), -1)
    labels[1:5, 1:5] = 0
    labels[0, :] = 1
    return labels


def write_output(folder: Path, stem: str = "slide", *, tiles: bool = False) -> Path:
    """What `napari-care segment` leaves for one slide (regions, ROI = region 0, summary)."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = square_labels()
    polygons = label_grid_polygons(labels, origin_xy=ORIGIN, cell_size_px=CELL)
    table = RegionTable(
        region_id=np.array([0, 1]),
        n_patches=np.array([16, 6]),
        alpha=np.array([0.7, 0.3]),
        beta=np.array([0.7, 0.3]),
        a=np.array([0.7, 0.3]),
        group=np.array([0, 1]),
        roi_ids=(0,),
    )
    objects = region_features(polygons, table) + roi_features(polygons, (0,), table=table)
    if tiles:
        rows, cols = np.nonzero(labels >= 0)
        coords = np.stack([ORIGIN[0] + cols * CELL, ORIGIN[1] + rows * CELL], axis=1)
        attention = np.where(labels[rows, cols] == 1, 0.01, 0.0)
        attention[(rows == 1) & (cols == 1)] = 0.9  # one hot patch in region 0
        objects += tile_features(
            coords, CELL, {"CARE attention": attention, "CARE region id": labels[rows, cols]}
        )
    write_geojson(folder / f"{stem}.regions.geojson", objects, bounds_offset=OFFSET)
    summary = folder / f"{stem}.care.json"
    summary.write_text(json.dumps({"software": "napari-care", "roi": 0, "patch_size_level0": CELL}))
    return summary


def cells(col0, row0, col1, row1):
    """A box over grid cells, in QuPath's frame (offset subtracted like the regions file)."""
    x0, y0 = ORIGIN[0] - OFFSET[0], ORIGIN[1] - OFFSET[1]
    return shapely.box(x0 + col0 * CELL, y0 + row0 * CELL, x0 + col1 * CELL, y0 + row1 * CELL)


def write_annotations(path: Path, *objects: Annotation) -> Path:
    write_geojson(path, objects)
    return path


@pytest.fixture
def cli():
    group = click.Group("napari-care")
    register(group)
    register(group)  # idempotent
    runner = CliRunner()
    return lambda *args: runner.invoke(group, ["review", *map(str, args)])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_output_is_rebuilt_from_the_geojson(tmp_path):
    summary = write_output(tmp_path / "out")
    output = load_output(summary)
    assert output.stem == "slide" and output.roi_ids == (0,)
    assert output.grid.cell_size_px == pytest.approx(CELL)
    assert output.grid.origin_xy == pytest.approx((ORIGIN[0] - OFFSET[0], ORIGIN[1] - OFFSET[1]))
    assert np.array_equal(
        output.grid.labels, square_labels()[:5]
    )  # cropped to the regions: no empty last row
    # no tiles in the file: attention is a / n per patch (region 0: 0.7 / 16, region 1: 0.3 / 6)
    assert sorted(set(np.round(output.attention.attention, 6))) == [0.04375, 0.05]
    assert output.attention.attention.sum() == pytest.approx(1.0)


def test_region_grid_of_polygons_with_holes_and_parts():
    labels = np.full((5, 7), -1)
    labels[0, :] = 2
    labels[:, 0] = 2
    labels[2:4, 2:6] = 5
    labels[3, 3] = -1  # a hole in region 5
    labels[4, 6] = 5  # a second part of region 5
    grid = region_grid(label_grid_polygons(labels, origin_xy=(3.0, 4.0), cell_size_px=2.5), 2.5)
    assert np.array_equal(grid.labels, labels) and grid.origin_xy == (3.0, 4.0)


def test_tiles_give_the_attention_when_present(tmp_path):
    output = load_output(write_output(tmp_path, tiles=True))
    assert len(output.attention.attention) == 22 and output.attention.attention.max() == pytest.approx(0.9)
    assert output.attention.patch_size_px == pytest.approx(CELL)


def test_locate_output_variants(tmp_path):
    write_output(tmp_path / "one", "a")
    write_output(tmp_path / "two", "a")
    write_output(tmp_path / "two", "b")
    geojson = tmp_path / "one" / "a.regions.geojson"
    assert locate_output(tmp_path / "one" / "a.care.json") == ("a", geojson)
    assert locate_output(geojson) == ("a", geojson)
    assert locate_output(tmp_path / "one") == ("a", geojson)
    assert locate_output(tmp_path / "one" / "a") == ("a", geojson)
    assert locate_output(tmp_path / "two", "b")[0] == "b"
    with pytest.raises(ValueError, match=r"two: holds 2 results \(a, b\)"):
        locate_output(tmp_path / "two")
    with pytest.raises(ValueError, match=r"c\.regions\.geojson: no regions file for slide 'c'"):
        locate_output(tmp_path / "two" / "c")


def test_review_by_hand(tmp_path, cli):
    summary = write_output(tmp_path / "out")
    annotations = write_annotations(
        tmp_path / "tumor.geojson",
        Annotation(cells(1, 1, 5, 3), class_name="Tumor"),
        Annotation(shapely.Point(0, 0), class_name="Tumor"),
    )
    result = cli(summary, annotations, "--out", tmp_path / "review.csv")
    assert result.exit_code == 0, result.output
    assert "3 rows ->" in result.output and "Tumor" in result.output
    roi, group, region = read_csv(tmp_path / "review.csv")
    assert (group["target"], group["region_id"], group["group_id"], group["best_group"]) == (
        "group",
        "0",
        "0",
        "True",
    )  # group 0 is region 0 alone
    assert (roi["slide"], roi["class"], roi["n_objects"], roi["target"], roi["region_id"]) == (
        "slide",
        "Tumor",
        "1",
        "roi",
        "0",
    )
    assert (region["target"], region["region_id"]) == ("region", "0")  # region 1 only touches the box
    for row in (roi, group, region):
        # 8 of region 0's 16 cells; the annotation is those 8 cells
        assert float(row["dice"]) == pytest.approx(2 / 3) and float(row["iou"]) == pytest.approx(0.5)
        assert float(row["target_in_annotation"]) == pytest.approx(0.5)
        assert float(row["annotation_in_target"]) == pytest.approx(1.0)
        assert float(row["dice_grid"]) == pytest.approx(2 / 3)
        # attention: 8 cells x 0.7 / 16 inside; a / n is constant within each region, so the game
        # is played on the regions: the top-weight region 0 (a = 0.7) meets the annotation (the
        # argmax patch, 0.3 / 6 = 0.05 of region 1, would not)
        assert float(row["attention_inside"]) == pytest.approx(0.35)
        assert float(row["attention_outside"]) == pytest.approx(0.65)
        assert (row["pointing_game"], row["pointing_on"], row["pointing_region"]) == ("True", "region", "0")


def test_review_folder_with_stem_all_regions_and_tiles(tmp_path, cli):
    write_output(tmp_path / "out", "a")
    write_output(tmp_path / "out", "b", tiles=True)
    annotations = write_annotations(tmp_path / "a.geojson", Annotation(cells(1, 1, 2, 2), class_name="Hit"))
    result = cli(
        tmp_path / "out", annotations, "--out", tmp_path / "r.csv", "--stem", "b", "--all-regions", "--quiet"
    )
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "r.csv")
    assert [(r["slide"], r["target"], r["region_id"]) for r in rows] == [
        ("b", "roi", "0"),
        ("b", "group", "0"),
        ("b", "group", "1"),
        ("b", "region", "0"),
        ("b", "region", "1"),
    ]
    assert rows[0]["pointing_game"] == "True"  # the 0.9 tile is cell (1, 1)
    assert rows[0]["pointing_on"] == "patch"  # the tiles' attention varies within region 0
    assert float(rows[0]["attention_inside"]) == pytest.approx(0.9 / (0.9 + 6 * 0.01))
    assert float(rows[2]["dice"]) == 0.0 and float(rows[4]["dice"]) == 0.0


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", r"nowhere\.care\.json: no such file"),
        ("malformed", r"bad\.geojson: invalid JSON at line 1"),
        ("points only", r"points\.geojson: no polygon annotations"),
        ("not care", r"other\.regions\.geojson: no CARE regions"),
    ],
)
def test_bad_input_exits_2_naming_the_file(tmp_path, cli, setup, message):
    summary = write_output(tmp_path / "out")
    annotations = write_annotations(tmp_path / "a.geojson", Annotation(cells(1, 1, 2, 2)))
    if setup == "missing":
        summary = tmp_path / "nowhere.care.json"
    elif setup == "malformed":
        annotations = tmp_path / "bad.geojson"
        annotations.write_text('{"type": "FeatureCollection", "features": [}')
    elif setup == "points only":
        annotations = write_annotations(tmp_path / "points.geojson", Annotation(shapely.Point(1, 2)))
    else:
        summary = write_annotations(tmp_path / "other.regions.geojson", Annotation(cells(1, 1, 2, 2)))
    result = cli(summary, annotations, "--out", tmp_path / "r.csv")
    assert result.exit_code == 2
    assert result.output.startswith("napari-care: ") and len(result.output.strip().splitlines()) == 1
    assert __import__("re").search(message, result.output), result.output
    assert not (tmp_path / "r.csv").exists()


def test_unwritable_csv_exits_1(tmp_path, cli):
    summary = write_output(tmp_path / "out")
    annotations = write_annotations(tmp_path / "a.geojson", Annotation(cells(1, 1, 2, 2)))
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = cli(summary, annotations, "--out", blocker / "r.csv")  # a file where a folder should be
    assert result.exit_code == 1 and "cannot write" in result.output


def test_review_files_core_entry(tmp_path):
    summary = write_output(tmp_path / "out")
    annotations = write_annotations(tmp_path / "a.geojson", Annotation(cells(0, 0, 6, 1), class_name="Top"))
    rows = review_files(summary, annotations, tmp_path / "r.csv")
    [roi, group, top] = rows
    assert roi["target"] == "roi" and roi["dice"] == 0.0 and roi["region_id"] == "0"
    assert (group["target"], group["group_id"], group["dice"]) == ("group", 1, pytest.approx(1.0))
    assert top["region_id"] == 1 and top["dice"] == pytest.approx(1.0)
    # the game is on the regions: the top-weight region 0 only shares an edge with the annotation
    assert top["pointing_game"] is False and top["pointing_on"] == "region"
    assert top["attention_inside"] == pytest.approx(0.3)
