"""Review by annotation class: which phenotype group is the tumour, where the pointing game is
played, annotations off the slide, and one ROI in every output when CARE's weights tie."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import click
import numpy as np
import pytest
import shapely
from click.testing import CliRunner
from shapely import affinity

from napari_care.cli.review import register
from napari_care.core.outputs import geojson_features, write_outputs
from napari_care.core.progress import run_to_end
from napari_care.core.qupath.objects import ROI_CLASS, Annotation
from napari_care.core.qupath.polygons import label_grid_polygons
from napari_care.core.qupath.write import RegionTable, region_features, roi_features, write_geojson
from napari_care.core.regions import region_table, roi_boxes, roi_regions
from napari_care.core.review.bounds import (
    AnnotationsOutsideError,
    AnnotationsPartlyOutsideWarning,
    check_annotations_overlap,
)
from napari_care.core.review.exact import review_agreement_exact
from napari_care.core.review.groups import PhenotypeGroups, best_group
from napari_care.core.review.metrics import PatchAttention, RegionGrid, iter_review_tables, review_agreement
from napari_care.core.review.pointing import pointing_rule
from napari_care.core.review.run import (
    attention_from_region_weights,
    class_table_path,
    load_output,
    review_files,
)
from napari_care.core.segment import SegmentOptions, segment
from napari_care.core.slide.handle import open_slide
from napari_care.core.synthetic.slides import build_synthetic_slide

CELL = 10.0
ORIGIN = (100.0, 50.0)


# --- a generated slide with one annotation per planted tissue type --------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A generated slide (4096 x 3072 px), segmented (4 groups) and written as `segment` does, and
    its truth traced as one annotation per planted type (glass left out)."""
    folder = tmp_path_factory.mktemp("planted")
    slide_truth = build_synthetic_slide(
        folder / "s.ome.tif", width=4096, height=3072, seed=0, swatch_px=512, tile_size=256
    )
    with open_slide(slide_truth.path) as slide:
        result = run_to_end(segment(slide, SegmentOptions(k=4, n_groups=4)))
        write_outputs(result, slide, folder, "s")
    labels = slide_truth.labels.astype(np.int64)
    labels[labels == 0] = -1
    traced = label_grid_polygons(labels, origin_xy=(0.0, 0.0), cell_size_px=float(slide_truth.downsample))
    annotations = [Annotation(g, class_name=slide_truth.type_names[t]) for t, g in traced.items()]
    return folder, slide_truth, result, annotations


@pytest.fixture
def cli():
    group = click.Group("napari-care")
    register(group)
    runner = CliRunner()
    return lambda *args: runner.invoke(group, ["review", *map(str, args)])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_tumour_class_finds_the_group_that_holds_the_tumour(planted, cli, tmp_path):
    folder, truth, result, annotations = planted
    write_geojson(tmp_path / "truth.geojson", annotations)
    out = tmp_path / "agreement.csv"
    run = cli(folder / "s.care.json", tmp_path / "truth.geojson", "--out", out)
    assert run.exit_code == 0, run.output
    assert "pointing game on the regions" in run.output
    assert f"-> {tmp_path / 'agreement.class_by_group.csv'}" in run.output

    rows = read_csv(out)
    tumour_groups = [r for r in rows if r["class"] == "tumour" and r["target"] == "group"]
    [best] = [r for r in tumour_groups if r["best_group"] == "True"]
    others = [float(r["dice"]) for r in tumour_groups if r is not best]
    # the group that holds most patches whose truth is tumour, found without the annotations
    truth_of_patch = truth.truth_at(result.features.coords, result.grid.tile_size_level0)
    group_of_patch = result.group_of_region[result.care.region_of_patch]
    tumour_group = np.bincount(group_of_patch[truth_of_patch == 1]).argmax()
    assert int(best["group_id"]) == tumour_group
    assert float(best["dice"]) > 0.4 and float(best["dice"]) > 5 * max(others, default=0.0)
    assert {r["pointing_on"] for r in rows} == {"region"}  # training-free attention: a / n per region

    table = read_csv(class_table_path(out))
    tumour = [r for r in table if r["class"] == "tumour"]
    assert [int(r["group_id"]) for r in tumour] == [0, 1, 2, 3, -1]
    assert sum(float(r["share_of_class"]) for r in tumour) == pytest.approx(1.0)
    [in_best] = [r for r in tumour if r["best_group"] == "True"]
    assert int(in_best["group_id"]) == tumour_group and float(in_best["share_of_class"]) > 0.8
    # um^2 through the slide's 0.5 um/px
    assert float(in_best["area_um2"]) == pytest.approx(float(in_best["area_px2"]) * 0.25)
    assert {r["class"] for r in table} == {a.class_name for a in annotations}


def test_annotations_outside_the_slide_exit_2_naming_the_file_and_the_bounds(planted, cli, tmp_path):
    folder, _truth, _result, annotations = planted
    moved = [dataclasses.replace(a, geometry=affinity.translate(a.geometry, 50_000, 0)) for a in annotations]
    path = tmp_path / "other_slide.geojson"
    write_geojson(path, moved)
    run = cli(folder / "s.care.json", path, "--out", tmp_path / "r.csv")
    assert run.exit_code == 2
    [line] = run.output.strip().splitlines()
    assert line.startswith(f"napari-care: {path}: none of its {len(moved)} annotations overlaps the slide")
    assert "the slide's level-0 bounds are x 0..4096, y 0..3072" in line
    x0, y0, x1, y1 = shapely.union_all([a.geometry for a in moved]).bounds
    assert f"they span x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f};" in line  # the annotations' bounds
    assert x0 >= 50_000
    assert not (tmp_path / "r.csv").exists() and not class_table_path(tmp_path / "r.csv").exists()


def test_annotations_partly_outside_warn_then_give_the_table(planted, cli, tmp_path):
    folder, _truth, _result, annotations = planted
    stray = Annotation(shapely.box(4000, 3000, 4300, 3300), class_name="tumour")  # past the corner
    path = tmp_path / "partly.geojson"
    write_geojson(path, [*annotations, stray])
    run = cli(folder / "s.care.json", path, "--out", tmp_path / "r.csv")
    assert run.exit_code == 0, run.output
    [warning] = [line for line in run.stderr.splitlines() if line.startswith("warning:")]
    expected = f"{path}: 1 of {len(annotations) + 1} annotations lie partly or wholly outside the slide"
    assert expected in warning
    assert "x 0..4096, y 0..3072" in warning
    assert read_csv(tmp_path / "r.csv")


def test_the_overlap_check_on_its_own():
    inside = Annotation(shapely.box(0, 0, 10, 10))
    edge = Annotation(shapely.box(-10, 0, 0, 10))  # shares an edge with the patches: no overlap
    with pytest.raises(AnnotationsOutsideError, match=r"a\.geojson: none of its 1 annotations overlaps"):
        check_annotations_overlap([edge], "a.geojson", patch_bounds=(0, 0, 100, 100))
    with pytest.raises(AnnotationsOutsideError, match=r"overlaps the run's patches.*bounds are unknown"):
        check_annotations_overlap([edge], "a.geojson", patch_bounds=(0, 0, 100, 100), slide_bounds=None)
    with pytest.warns(AnnotationsPartlyOutsideWarning, match="1 of 2 annotations lie off the box"):
        check_annotations_overlap([inside, edge], "a.geojson", patch_bounds=(0, 0, 100, 100))
    check_annotations_overlap(
        [inside], "a.geojson", patch_bounds=(0, 0, 100, 100), slide_bounds=(0, 0, 50, 50)
    )


# --- the pointing game ------------------------------------------------------------------------


def three_regions() -> RegionGrid:
    """Region 0: 4 x 4 cells; region 1: the 6 cells of the top row; region 2: one cell."""
    labels = np.full((6, 6), -1)
    labels[1:5, 1:5] = 0
    labels[0, :] = 1
    labels[5, 5] = 2
    return RegionGrid(labels, ORIGIN, CELL)


def cell_box(col0, row0, col1, row1):
    x0, y0 = ORIGIN
    return shapely.box(x0 + col0 * CELL, y0 + row0 * CELL, x0 + col1 * CELL, y0 + row1 * CELL)


def test_constant_attention_plays_the_pointing_game_on_the_top_weight_region():
    grid = three_regions()
    # a / n: region 0 has the largest weight, the lone cell of region 2 the largest per-patch value
    attention = attention_from_region_weights(grid, {0: 0.6, 1: 0.25, 2: 0.15})
    assert np.argmax(attention.attention) == np.flatnonzero(attention.attention == 0.15)[0]
    rule = pointing_rule(attention, grid)
    assert (rule.on, rule.top_region) == ("region", 0)
    rows = review_agreement(
        [Annotation(cell_box(2, 2, 3, 3), class_name="In region 0"), Annotation(cell_box(5, 5, 6, 6))],
        grid,
        attention=attention,
    )
    hit = {(r["class"], r["pointing_game"], r["pointing_on"], r["pointing_region"]) for r in rows}
    # the argmax patch (region 2's cell) would have said the opposite of both
    assert hit == {("In region 0", True, "region", 0), ("Unclassified", False, "region", 0)}


def test_varying_attention_plays_it_on_the_patch_and_ties_go_to_the_lowest_region():
    grid = three_regions()
    attention = attention_from_region_weights(grid, {0: 0.6, 1: 0.25, 2: 0.15})
    varied = attention.attention.copy()
    varied[0] *= 1.001  # no longer constant within its region
    rule = pointing_rule(PatchAttention(attention.coords_xy, varied, CELL), grid)
    assert rule.on == "patch" and varied[rule.top_patch] == varied.max() and rule.top_region == 2
    tied = attention_from_region_weights(grid, {0: 0.3, 1: 0.3, 2: 0.3})
    assert pointing_rule(tied, grid).top_region == 0  # as CARE's argmax a
    off_grid = PatchAttention(np.array([[0.0, 0.0]]), np.array([1.0]), CELL)  # a patch in no region
    assert pointing_rule(off_grid, grid).on == "patch"


# --- groups: rows, table, and the exact path --------------------------------------------------


def test_group_rows_and_the_class_table_by_hand():
    grid = three_regions()
    groups = PhenotypeGroups.from_regions({0: 1, 1: 0, 2: 1}, {1: "tumour-like"})
    annotation = Annotation(cell_box(1, 1, 5, 3), class_name="Tumor")  # 8 cells of region 0
    tables = run_to_end(iter_review_tables([annotation], grid, roi_ids=[0], groups=groups, mpp_xy=(0.5, 0.5)))
    assert [(r["target"], r["region_id"], r["group_id"]) for r in tables.rows] == [
        ("roi", "0", None),
        ("group", "0;2", 1),
        ("region", 0, 1),
    ]
    group_row = tables.rows[1]
    assert group_row["group_name"] == "tumour-like" and group_row["best_group"] is True
    assert group_row["dice"] == pytest.approx(2 * 8 / (17 + 8)) and group_row["target_cells"] == 17
    table = {row["group_id"]: row for row in tables.class_by_group}
    assert list(table) == [0, 1, -1] and table[0]["group_name"] == "group 0"
    assert table[1]["area_px2"] == pytest.approx(800.0) and table[1]["area_um2"] == pytest.approx(200.0)
    assert table[1]["share_of_class"] == pytest.approx(1.0)
    assert table[1]["share_of_group"] == pytest.approx(8 / 17)
    assert table[0]["share_of_class"] == 0.0 and table[-1]["area_px2"] == pytest.approx(0.0)
    assert best_group({0: 0.5, 3: 0.5, 1: 0.2}) == 0 and best_group({0: 0.0}) is None


def test_the_fast_path_gives_the_exact_paths_group_rows():
    rng = np.random.default_rng(11)
    for case in range(25):
        rows, cols = (int(v) for v in rng.integers(3, 12, 2))
        labels = rng.integers(-1, 6, (rows, cols))
        labels[0, 0] = 0
        grid = RegionGrid(labels, ORIGIN, CELL)
        present = sorted(set(labels[labels >= 0].tolist()))
        groups = PhenotypeGroups.from_regions({r: int(rng.integers(-1, 3)) for r in present})
        annotations = [
            Annotation(
                shapely.Point(*(np.array(ORIGIN) + rng.uniform(0, [cols * CELL, rows * CELL]))).buffer(
                    rng.uniform(3, 40)
                ),
                class_name=str(rng.choice(["A", "B"])),
            )
            for _ in range(int(rng.integers(1, 6)))
        ]
        r, c = np.nonzero(labels >= 0)
        corners = np.stack([ORIGIN[0] + c * CELL, ORIGIN[1] + r * CELL], 1)
        values = rng.random(len(r)) if case % 2 else np.ones(len(r))
        options = {
            "roi_ids": present[:1],
            "attention": PatchAttention(corners, values, CELL),
            "include_disjoint": bool(case % 3 == 0),
            "groups": groups if groups.regions_of_group else None,
        }
        fast = review_agreement(annotations, grid, **options)
        exact = review_agreement_exact(annotations, grid, **options)
        assert [(x["class"], x["target"], x["region_id"]) for x in fast] == [
            (x["class"], x["target"], x["region_id"]) for x in exact
        ], case
        for got, want in zip(fast, exact, strict=True):
            assert got.keys() == want.keys()
            for key, value in want.items():
                if isinstance(value, float):
                    assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (case, key)
                else:
                    assert got[key] == value, (case, key)


# --- one ROI everywhere, also when weights tie ------------------------------------------------


def write_tied_output(folder: Path, *, summary_roi: int | None) -> Path:
    """Regions 0..2 with a tie on a between regions 1 and 2, both drawn as "CARE ROI"."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = three_regions()
    polygons = label_grid_polygons(np.asarray(grid.labels), origin_xy=ORIGIN, cell_size_px=CELL)
    a = np.array([0.2, 0.4, 0.4])
    table = RegionTable(
        region_id=np.arange(3), n_patches=np.array([16, 6, 1]), alpha=a, beta=a, a=a, roi_ids=(1, 2)
    )
    objects = region_features(polygons, table) + roi_features(polygons, (2, 1), table=table)
    write_geojson(folder / "s.regions.geojson", objects)
    summary = (
        {"software": "napari-care"}
        if summary_roi is None
        else {"software": "napari-care", "roi": summary_roi}
    )
    (folder / "s.care.json").write_text(json.dumps(summary))
    return folder / "s.care.json"


def test_the_review_takes_one_roi_the_lowest_id_of_a_tie_or_the_summarys(tmp_path):
    assert load_output(write_tied_output(tmp_path / "geojson only", summary_roi=None)).roi_ids == (1,)
    output = load_output(write_tied_output(tmp_path / "with summary", summary_roi=2))
    assert output.roi_ids == (2,) and output.drawn_roi_ids == (1, 2)
    annotations = tmp_path / "a.geojson"
    write_geojson(annotations, [Annotation(cell_box(0, 0, 6, 1), class_name="Top")])
    [roi] = [
        r
        for r in review_files(tmp_path / "with summary", annotations, tmp_path / "r.csv")
        if r["target"] == "roi"
    ]
    assert roi["region_id"] == "2"


@pytest.fixture(scope="module")
def tied(planted):
    """The planted run with CARE's weight of two regions raised to the same, largest value."""
    _folder, truth, result, _annotations = planted
    a = result.care.a.copy()
    low, high = 3, 7
    a[[low, high]] = a.max() + 0.05
    care = dataclasses.replace(result.care, a=a, roi=int(np.argmax(a)))  # as care_free picks it
    return dataclasses.replace(result, care=care), low, truth.path


def test_care_json_the_table_and_the_layers_boxes_name_the_same_roi_when_weights_tie(tied, tmp_path):
    result, low, slide_path = tied
    assert result.care.roi == low  # argmax: the first, the lowest region id
    assert int(roi_regions(result)[0]) == low
    assert [b.region for b in roi_boxes(result) if b.is_top] == [low]  # the layer's gold box
    assert np.flatnonzero(region_table(result)["is_roi"]).tolist() == [low]  # the regions layer
    with open_slide(slide_path) as slide:
        write_outputs(result, slide, tmp_path, "tied")
    assert json.loads((tmp_path / "tied.care.json").read_text())["roi"] == low
    assert load_output(tmp_path / "tied.care.json").roi_ids == (low,)  # the review's ROI


def test_the_geojson_draws_one_roi_when_weights_tie(tied):
    result, low, _slide_path = tied
    rois = [a for a in geojson_features(result) if a.class_name == ROI_CLASS]
    assert [int(a.measurements["CARE region id"]) for a in rois] == [low]


# --- the review panel: off the GUI thread, the class x group table, annotations off the slide --


@pytest.fixture
def panel_scene(make_napari_viewer, make_pyramid):
    """A viewer with a calibrated slide, a CARE regions layer (groups 0: region 1, 1: regions 0
    and 2) and the review panel."""
    import pandas as pd
    from napari.layers import Layer

    from napari_care._layers import placement
    from napari_care._reader import read_slide
    from napari_care._review_panel import ReviewPanel

    pyramid = make_pyramid("slide.tif", resolution=(20000, "centimeter"))
    viewer = make_napari_viewer()
    [item] = read_slide(str(pyramid.path))
    slide = item[1]["metadata"]["slide"]
    viewer.add_layer(Layer.create(*item))
    labels = np.asarray(three_regions().labels)
    table = pd.DataFrame(
        {
            "region": [-1, 0, 1, 2],
            "a": [np.nan, 0.6, 0.25, 0.15],
            "is_roi": [False, True, False, False],
            "group": [-1, 1, 0, 1],
        }
    )
    viewer.add_labels(
        labels + 1,
        name="CARE regions",
        features=table,
        metadata={"napari_care_role": "regions"},
        **placement(slide, ORIGIN, CELL),
    )
    panel = ReviewPanel(viewer)
    viewer.window.add_dock_widget(panel, name="review")
    yield viewer, panel, slide
    slide.close()


def add_annotations(viewer, panel, tmp_path: Path, name: str, annotations: list[Annotation]):
    path = tmp_path / f"{name}.geojson"
    write_geojson(path, annotations)
    panel.relative_to_bounds.value = False
    shapes, *_ = panel.import_annotations(path)
    return shapes


@pytest.mark.gui
def test_the_panel_reviews_in_a_worker_and_shows_the_class_by_group_table(panel_scene, tmp_path, qtbot):
    from qtpy.QtCore import QElapsedTimer, QTimer

    viewer, panel, _slide = panel_scene
    rng = np.random.default_rng(5)
    many = [  # enough polygons for the review to take a while
        Annotation(shapely.Point(ORIGIN[0] + x, ORIGIN[1] + y).buffer(2.0), class_name="Tumor")
        for x, y in rng.uniform(13, 47, (3000, 2))
    ]
    add_annotations(
        viewer, panel, tmp_path, "tumour", [Annotation(cell_box(1, 1, 5, 3), class_name="Tumor"), *many]
    )
    gaps, clock = [], QElapsedTimer()
    timer = QTimer()
    timer.timeout.connect(lambda: gaps.append(clock.restart()) if clock.isValid() else clock.start())
    timer.start(10)
    worker = panel.compute()
    assert panel.compute_button.enabled is False  # the call returned before the work is done
    assert worker is not None
    qtbot.waitUntil(lambda: panel.worker is None, timeout=60_000)  # its result (or error) shown
    timer.stop()
    assert gaps and max(gaps) < 500  # the event loop kept running (a tick every 10 ms asked)
    groups = [(r["group_id"], r["best_group"]) for r in panel.rows if r["target"] == "group"]
    assert groups == [(1, True)]  # regions 0 and 2 hold the annotation
    assert [row[1] for row in panel.class_table.data] == [0, 1, -1]
    best_column = list(panel.class_table.column_headers).index("best_group")
    assert [str(row[best_column]) for row in panel.class_table.data] == ["False", "True", "False"]
    assert "pointing game on the regions" in panel.status.value
    assert panel.compute_button.enabled is True


@pytest.mark.gui
def test_the_panel_refuses_annotations_off_the_slide(panel_scene, tmp_path, qtbot):
    viewer, panel, _slide = panel_scene
    far = affinity.translate(cell_box(1, 1, 5, 3), 100_000, 100_000)
    add_annotations(viewer, panel, tmp_path, "elsewhere", [Annotation(far, class_name="Tumor")])
    worker = panel.compute()
    assert worker is not None
    qtbot.waitUntil(lambda: panel.worker is None, timeout=20_000)  # its result (or error) shown
    assert panel.rows == [] and panel.class_table.shape[0] == 0
    assert panel.status.value.startswith(
        "failed: layer 'elsewhere': none of its 1 annotations overlaps the slide"
    )
    assert "the slide's level-0 bounds are x 0.." in panel.status.value
