"""The review at scale: progress, one repair warning per file, the indexed path against the exact one."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely import affinity

from napari_care.core.progress import Progress, run_to_end
from napari_care.core.qupath.objects import Annotation
from napari_care.core.qupath.polygons import label_grid_polygons
from napari_care.core.qupath.read import GeometryRepairWarning, read_geojson
from napari_care.core.qupath.write import RegionTable, region_features, roi_features, write_geojson
from napari_care.core.review.bounds import AnnotationsPartlyOutsideWarning
from napari_care.core.review.coverage import cover_lattice, disjoint_parts, polygons_of
from napari_care.core.review.exact import review_agreement_exact
from napari_care.core.review.metrics import (
    PatchAttention,
    RegionGrid,
    iter_review_agreement,
    review_agreement,
)
from napari_care.core.review.run import iter_review_files, review_files

CELL = 10.0
ORIGIN = (100.0, 50.0)


def block_labels(rows: int = 8, cols: int = 12) -> np.ndarray:
    """Four regions in 2 x 2 blocks of a rows x cols grid, the last column empty."""
    labels = np.repeat(np.repeat(np.array([[0, 1], [2, 3]]), rows // 2, axis=0), cols // 2, axis=1)
    labels[:, -1] = -1
    return labels


def write_output(folder: Path, labels: np.ndarray) -> Path:
    """A segment output of ``labels`` (ROI: regions 0 and 3) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    polygons = label_grid_polygons(labels, origin_xy=ORIGIN, cell_size_px=CELL)
    ids = np.array(sorted(polygons))
    a = np.linspace(1, 2, len(ids)) / np.linspace(1, 2, len(ids)).sum()
    table = RegionTable(
        region_id=ids,
        n_patches=np.bincount(labels[labels >= 0])[ids],
        alpha=a,
        beta=a,
        a=a,
        group=ids % 2,
        roi_ids=(0, 3),
    )
    objects = region_features(polygons, table) + roi_features(polygons, (0, 3))
    write_geojson(folder / "s.regions.geojson", objects)
    summary = folder / "s.care.json"
    summary.write_text(json.dumps({"software": "napari-care"}))
    return summary


def bowtie(x: float, y: float, d: float) -> list[list[float]]:
    return [[x, y], [x + d, y + d], [x + d, y], [x, y + d], [x, y]]


def write_features(path: Path, rings: list[tuple[list[list[float]], str]]) -> Path:
    """A FeatureCollection of one-ring Polygons written as given (invalid ones stay invalid)."""
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": name, "color": [1, 2, 3]}},
        }
        for ring, name in rings
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def random_annotations(rng: np.random.Generator, rows: int, cols: int, size: float, origin) -> list:
    """Discs, rotated boxes, cell-aligned boxes, bow-ties, rings, multipolygons, duplicates and
    nested copies of two classes, some past the grid's edge."""
    annotations: list[Annotation] = []
    for _ in range(int(rng.integers(1, 20))):
        cx, cy = origin[0] + rng.uniform(-2, cols + 2) * size, origin[1] + rng.uniform(-2, rows + 2) * size
        kind = int(rng.integers(0, 8)) if annotations else 0
        name = str(rng.choice(["A", "B"]))
        if kind == 0:
            disc = shapely.Point(cx, cy).buffer(rng.uniform(0.2, 6) * size)
            geometry = affinity.scale(disc, xfact=rng.uniform(0.3, 3))
        elif kind == 1:
            w, h = rng.uniform(0.1, 5, 2) * size
            geometry = affinity.rotate(shapely.box(cx, cy, cx + w, cy + h), rng.uniform(0, 90))
        elif kind == 2:
            c0, r0 = int(rng.integers(-2, cols)), int(rng.integers(-2, rows))
            c1, r1 = c0 + int(rng.integers(1, 4)), r0 + int(rng.integers(1, 4))
            x0, y0 = origin
            geometry = shapely.box(x0 + c0 * size, y0 + r0 * size, x0 + c1 * size, y0 + r1 * size)
        elif kind == 3:
            geometry = shapely.Polygon(bowtie(cx, cy, rng.uniform(0.5, 4) * size))
        elif kind == 4:
            outer = shapely.Point(cx, cy).buffer(rng.uniform(1, 5) * size)
            geometry = outer.difference(shapely.Point(cx, cy).buffer(rng.uniform(0.2, 1) * size))
        elif kind == 5:  # a duplicate
            geometry, name = annotations[-1].geometry, annotations[-1].class_name
        elif kind == 6:  # inside the previous one
            previous, name = annotations[-1].geometry, annotations[-1].class_name
            geometry = previous.buffer(-rng.uniform(0.1, 2) * size)
            geometry = previous if geometry.is_empty else geometry
        else:
            discs = [shapely.Point(cx, cy).buffer(size), shapely.Point(cx + 3 * size, cy).buffer(0.7 * size)]
            geometry = shapely.MultiPolygon(discs)
        annotations.append(Annotation(geometry, class_name=name))
    return annotations


def test_the_indexed_path_gives_the_exact_paths_numbers():
    rng = np.random.default_rng(7)
    for case in range(60):
        rows, cols = (int(v) for v in rng.integers(3, 16, 2))
        labels = rng.integers(-1, 5, (rows, cols))
        labels[0, 0] = 0
        size, origin = float(rng.uniform(3, 20)), tuple(rng.uniform(-50, 50, 2))
        grid = RegionGrid(labels, origin, size)
        annotations = random_annotations(rng, rows, cols, size, origin)
        r, c = np.nonzero(labels >= 0)
        corners = np.stack([origin[0] + c * size, origin[1] + r * size], 1)
        attention = PatchAttention(corners, rng.random(len(r)), size)
        options = {
            "roi_ids": sorted(set(labels[labels >= 0].tolist()))[:2],
            "attention": attention,
            "include_disjoint": bool(case % 2),
        }
        fast = review_agreement(annotations, grid, **options)
        exact = review_agreement_exact(annotations, grid, **options)
        assert [(row["class"], row["target"], row["region_id"]) for row in fast] == [
            (row["class"], row["target"], row["region_id"]) for row in exact
        ], case
        for got, want in zip(fast, exact, strict=True):
            assert got.keys() == want.keys()
            for key, value in want.items():
                if isinstance(value, float):
                    assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (case, key)
                else:
                    assert got[key] == value, (case, key)


def test_disjoint_parts_keep_the_union_and_do_not_overlap():
    discs = [shapely.Point(x, 0).buffer(10) for x in (0, 5, 40, 45, 100)]
    nested = [shapely.box(-200, -200, 200, 200), shapely.box(0, 0, 1, 1), shapely.box(150, 150, 160, 160)]
    touching = [shapely.box(300, 0, 310, 10), shapely.box(310, 0, 320, 10)]  # share an edge: kept apart
    polygons = polygons_of([*discs, discs[0], *nested, *touching])
    parts = disjoint_parts(polygons)
    union = shapely.union_all(polygons)
    assert shapely.area(parts).sum() == pytest.approx(union.area)
    assert shapely.union_all(parts).symmetric_difference(union).area == pytest.approx(0, abs=1e-6)
    left, right = shapely.STRtree(parts).query(parts)
    pairs = left < right
    assert not shapely.relate_pattern(parts[left[pairs]], parts[right[pairs]], "T********").any()
    assert len(parts) == 3  # the big box (holding discs and boxes) and the two touching boxes


def test_cover_marks_full_crossed_and_centre_cells():
    # Two boxes that meet in the middle of cell (0, 0) cover it together; a sliver gap of
    # 1e-6 px^2 at the corner of cell (0, 1) leaves it crossed, not full.
    halves = [shapely.box(0, 0, 4.3, 10), shapely.box(4.3, 0, 10, 10)]
    notched = shapely.box(10, 0, 20, 10).difference(shapely.box(19.999, 9.999, 20, 10))
    cover = run_to_end(cover_lattice(disjoint_parts(polygons_of([*halves, notched])), (0.0, 0.0), 10.0))
    assert list(zip(cover.rows.tolist(), cover.cols.tolist(), strict=True)) == [(0, 0), (0, 1)]
    assert cover.full.tolist() == [True, False] and cover.crossed.tolist() == [False, True]
    assert cover.inside.tolist() == [True, True]
    assert cover.area_px2 == pytest.approx([100.0, 100.0 - 1e-6])


def test_iter_review_agreement_yields_progress_and_returns_the_rows():
    labels = block_labels()
    annotations = [
        Annotation(shapely.Point(130, 80).buffer(25), class_name="Tumor"),
        Annotation(shapely.box(150, 60, 190, 120), class_name="Stroma"),
        Annotation(shapely.box(150, 60, 160, 70), class_name="Stroma"),
    ]
    grid = RegionGrid(labels, ORIGIN, CELL)
    work = iter_review_agreement(annotations, grid, roi_ids=[0, 3])
    reports: list[Progress] = []
    rows = run_to_end(work, reports.append)
    assert rows == review_agreement(annotations, grid, roi_ids=[0, 3])
    assert {report.stage for report in reports} == {"review"}
    assert all(0 <= r.done <= r.total == 3 for r in reports) and reports[-1].done == 3
    assert [r.done for r in reports] == sorted(r.done for r in reports)
    assert reports[0].message.startswith("Stroma: 2 polygons")  # classes in name order


def test_iter_review_files_yields_read_review_write_and_returns_review_files_rows(tmp_path):
    summary = write_output(tmp_path / "out", block_labels())
    rings = [
        (shapely.get_coordinates(shapely.Point(130, 80).buffer(25)).tolist(), "Tumor"),
        ([[150, 60], [190, 60], [190, 120], [150, 120], [150, 60]], "Stroma"),
    ]
    annotations = write_features(tmp_path / "a.geojson", rings)
    reports: list[Progress] = []
    rows = run_to_end(iter_review_files(summary, annotations, tmp_path / "gen.csv"), reports.append)
    assert list(dict.fromkeys(r.stage for r in reports)) == ["read", "review", "write"]
    assert [(r.done, r.total) for r in reports if r.stage == "read"] == [
        (0, 2),
        (2, 2),
    ]  # both read, then checked
    assert reports[-1] == Progress("write", 1, 1, f"{len(rows)} rows")
    assert rows == review_files(summary, annotations, tmp_path / "sync.csv")
    assert rows[0]["slide"] == "s" and {row["class"] for row in rows} == {"Stroma", "Tumor"}
    with open(tmp_path / "gen.csv", newline="", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    assert (tmp_path / "gen.csv").read_bytes() == (tmp_path / "sync.csv").read_bytes()


def test_many_self_intersecting_polygons_give_one_warning(tmp_path):
    rings = [(bowtie(100 + 3 * i, 50 + 2 * (i % 7), 2.0), "Tumor") for i in range(300)]
    rings += [([[100, 50], [140, 50], [140, 90], [100, 90], [100, 50]], "Stroma")]
    path = write_features(tmp_path / "many.geojson", rings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        objects = read_geojson(path)
    [warning] = caught
    assert warning.category is GeometryRepairWarning and issubclass(GeometryRepairWarning, UserWarning)
    message = str(warning.message)
    expected = f"{path}: 300 invalid polygons (300 Self-intersection) repaired with make_valid; "
    assert message.startswith(expected)
    assert "first: object 0 (Tumor)" in message and "\n" not in message
    assert all(o.geometry.is_valid for o in objects) and objects[0].geometry.area == pytest.approx(2.0)

    summary = write_output(tmp_path / "out", block_labels())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = review_files(summary, path, tmp_path / "r.csv")
    # one repair warning; the bow-ties past the grid's right edge give the (one) bounds warning
    assert [type(w.message) for w in caught] == [GeometryRepairWarning, AnnotationsPartlyOutsideWarning]
    [tumor_roi] = [r for r in rows if r["class"] == "Tumor" and r["target"] == "roi"]
    assert tumor_roi["n_objects"] == 300 and tumor_roi["annotation_area_px2"] == pytest.approx(300 * 2.0)


def test_a_larger_review_matches_the_exact_path_and_counts_every_polygon():
    rng = np.random.default_rng(3)
    labels = block_labels(20, 30)
    centres = ORIGIN + rng.uniform(0, 1, (400, 2)) * [29 * CELL, 20 * CELL]
    annotations = [
        Annotation(shapely.Point(x, y).buffer(rng.uniform(1, 12), quad_segs=3), class_name=f"C{i % 3}")
        for i, (x, y) in enumerate(centres)
    ]
    annotations.append(Annotation(shapely.Point(200, 150).buffer(90), class_name="C0"))  # holds many C0 cells
    grid = RegionGrid(labels, ORIGIN, CELL)
    fast = review_agreement(annotations, grid, roi_ids=[1], include_disjoint=True)
    exact = review_agreement_exact(annotations, grid, roi_ids=[1], include_disjoint=True)
    assert len(fast) == len(exact) == 3 * 5
    assert sum(row["n_objects"] for row in fast if row["target"] == "roi") == 401
    for got, want in zip(fast, exact, strict=True):
        for key in ("dice", "iou", "intersection_area_px2", "annotation_area_px2", "dice_grid_bound"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-9)
        for key in ("intersection_cells", "annotation_cells", "target_cells"):
            assert got[key] == want[key]
