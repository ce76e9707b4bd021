"""QuPath GeoJSON: writing CARE objects, reading every shape QuPath and others write."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from shapely.geometry import LineString, MultiLineString, MultiPoint, MultiPolygon, Point, Polygon

from napari_care import __version__
from napari_care.core.qupath.label_objects import (
    annotations_from_labels,
    annotations_from_region_grid,
    raster_polygons,
    region_table_from_columns,
)
from napari_care.core.qupath.objects import Annotation, argb_to_rgb, group_color, rgb_to_argb
from napari_care.core.qupath.polygons import label_grid_polygons
from napari_care.core.qupath.read import read_geojson
from napari_care.core.qupath.shape_table import (
    annotations_from_points,
    annotations_from_shapes,
    shapes_from_annotations,
)
from napari_care.core.qupath.write import (
    RegionTable,
    care_metadata,
    region_features,
    roi_features,
    tile_features,
    write_geojson,
)

ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "annotations"
SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
HOLE = [[2, 2], [2, 4], [4, 4], [4, 2], [2, 2]]


def strict_json(path: Path) -> dict:
    """Parse as strict JSON: NaN or Infinity in the file fails."""
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return json.load(handle, parse_constant=lambda name: pytest.fail(f"{path} contains {name}"))


def care_objects():
    labels = np.array([[0, 0, 1, -1], [0, 2, 1, 1], [-1, 0, 0, 1], [3, 3, -1, -1]])
    polygons = label_grid_polygons(labels, origin_xy=(1000, 2000), cell_size_px=448.25)
    table = RegionTable(
        region_id=np.array([0, 1, 2, 3, 4]),
        n_patches=np.array([5, 4, 1, 2, 0]),
        alpha=np.array([0.1, 0.2, 0.3, 0.4, 0.0]),
        beta=np.array([0.5, np.nan, 0.2, np.inf, 0.0]),
        a=np.array([0.3, 0.3, 0.4, 0.1, 0.0]),
        group=np.array([0, 1, -1, 25, 0]),
        roi_ids=(1,),
    )
    metadata = care_metadata(encoder="resnet18", k=8, mpp=0.5)
    tiles = tile_features(np.array([[1000, 2000], [1448, 2000]]), 448.0, {"Attention": [0.75, np.nan]})
    return (
        polygons,
        table,
        (
            region_features(polygons, table, mpp=0.5, metadata=metadata)
            + roi_features(polygons, table.roi_ids, table=table, metadata=metadata)
            + tiles
        ),
    )


@pytest.mark.parametrize("suffix", [".geojson", ".geojson.gz"])
def test_round_trip_keeps_geometry_and_properties(tmp_path, suffix):
    _, _, features = care_objects()
    path = tmp_path / f"care{suffix}"
    assert write_geojson(path, features, bounds_offset=(100, 50)) == len(features)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == suffix.endswith(".gz")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left
    back = read_geojson(path, bounds_offset=(100, 50))
    assert len(back) == len(features) == 4 + 1 + 2
    for written, read in zip(features, back, strict=True):
        assert read.geometry.equals_exact(written.geometry, 0.01)
        assert (read.object_type, read.name, read.class_name, read.color, read.id) == (
            written.object_type,
            written.name,
            written.class_name,
            written.color,
            written.id,
        )
        finite = {k: v for k, v in written.measurements.items() if np.isfinite(v)}
        assert read.measurements == pytest.approx(finite)
        assert read.metadata == written.metadata
    region_0, region_1, region_2, region_3, roi = back[:5]
    assert (region_0.object_type, region_0.class_name, region_0.color) == (
        "detection",
        "CARE group 0",
        group_color(0),
    )
    assert region_2.class_name == "CARE region"  # no phenotype group
    assert region_3.color == group_color(25) and region_3.color != group_color(0)
    assert "CARE beta" not in region_1.measurements and region_1.measurements["CARE ROI"] == 1
    assert region_0.measurements["Area µm^2"] == pytest.approx(5 * 448.25**2 * 0.25)
    assert (roi.object_type, roi.class_name, roi.name) == ("annotation", "CARE ROI", "CARE ROI (region 1)")
    assert roi.geometry.equals(region_1.geometry)
    assert back[5].object_type == "tile" and back[5].measurements == {"Attention": 0.75}
    assert back[6].measurements == {}
    assert region_0.metadata == {
        "software": f"napari-care {__version__}",
        "encoder": "resnet18",
        "k": "8",
        "mpp": "0.5",
    }


def test_written_file_follows_qupath_rules(tmp_path):
    _, _, features = care_objects()
    write_geojson(tmp_path / "care.geojson", features, bounds_offset=(0.004, 0))
    data = strict_json(tmp_path / "care.geojson")
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 7
    for feature in data["features"]:
        assert feature["type"] == "Feature" and str(uuid.UUID(feature["id"])) == feature["id"]
        properties = feature["properties"]
        assert properties["objectType"] in ("detection", "annotation", "tile")
        classification = properties["classification"]
        assert isinstance(classification["name"], str) and len(classification["color"]) == 3
        assert all(isinstance(v, (int, float)) for v in properties.get("measurements", {}).values())
        geometry = shapely.geometry.shape(feature["geometry"])
        assert geometry.is_valid
        for part in shapely.get_parts(geometry):
            assert part.exterior.is_ccw and not any(ring.is_ccw for ring in part.interiors)
        xy = shapely.get_coordinates(geometry)
        assert np.array_equal(xy, np.round(xy, 2))  # at most two decimals (offset 0.004 rounded away)
    assert (
        data["features"][0]["geometry"]["coordinates"][0][0]
        == data["features"][0]["geometry"]["coordinates"][0][-1]
    )


def test_gzip_option_overrides_the_suffix_and_empty_geometry_is_skipped(tmp_path):
    path = tmp_path / "plain.geojson"
    features = [Annotation(shapely.box(0, 0, 1, 1), class_name="Tumor"), Annotation(Polygon())]
    with pytest.warns(UserWarning, match="empty geometry"):
        assert write_geojson(path, features, gzip=True) == 1
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    [read] = read_geojson(path)  # gzip found by magic bytes despite the suffix
    assert read.class_name == "Tumor" and read.color is not None  # a colour is always given


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_reader_accepts_every_top_level(tmp_path):
    feature = {
        "type": "Feature",
        "id": "PathAnnotationObject",
        "geometry": {"type": "Polygon", "coordinates": [SQUARE, HOLE]},
        "properties": {"name": "a"},
    }
    collection = write_json(
        tmp_path / "c.json", {"type": "FeatureCollection", "features": [feature, feature]}
    )
    array = write_json(tmp_path / "a.json", [feature, {"type": "Point", "coordinates": [1, 2]}])
    single = write_json(tmp_path / "f.json", feature)
    far = [[20, 20], [30, 20], [30, 30], [20, 20]]
    bare = write_json(tmp_path / "g.json", {"type": "MultiPolygon", "coordinates": [[SQUARE, HOLE], [far]]})
    assert len(read_geojson(collection)) == 2
    assert [type(a.geometry) for a in read_geojson(array)] == [Polygon, Point]
    [polygon] = read_geojson(single)
    assert polygon.geometry.area == 96 and len(polygon.geometry.interiors) == 1
    assert polygon.object_type == "annotation" and uuid.UUID(polygon.id)
    [multi] = read_geojson(bare)
    assert isinstance(multi.geometry, MultiPolygon) and multi.object_type == "annotation"
    assert multi.geometry.area == 96 + 50


def test_reader_accepts_older_property_shapes(tmp_path):
    features = [
        {
            "type": "Feature",
            "id": "PathDetectionObject",
            "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
            "properties": {
                "object_type": "detection",
                "classification": {"name": "Tumor", "colorRGB": -3670016},
                "measurements": [{"name": "Area", "value": 5.5}, {"name": "Bad", "value": None}],
            },
        },
        {
            "type": "Feature",
            "id": "PathCellObject",
            "geometry": {"type": "LineString", "coordinates": [[0, 0], [3, 4]]},
            "properties": {
                "classification": {"names": ["Tumor", "Positive"], "color": [1, 2, 3]},
                "measurements": {"Intensity": 0.25, "Nope": "text", "Missing": float("nan")},
                "isLocked": True,
                "metadata": {"note": "x"},
                "color": [9, 9, 9],
            },
        },
        {
            "type": "Feature",
            "geometry": {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]},
            "properties": {"color": [10, 20, 30], "name": "Ünïcödé ✓"},
        },
        {
            "type": "Feature",
            "geometry": {"type": "MultiPoint", "coordinates": [[0, 0], [1, 1]]},
            "properties": None,
        },
        {
            "type": "Feature",
            "geometry": {
                "type": "GeometryCollection",
                "geometries": [
                    {"type": "Point", "coordinates": [5, 5]},
                    {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4]]]},
                ],
            },
            "properties": {"name": "gc"},
        },
    ]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(features), encoding="utf-8")  # json.dumps writes the NaN literal
    tumor, cell, lines, points, gc_point, gc_polygon = read_geojson(path)
    assert (tumor.object_type, tumor.class_name, tumor.color) == ("detection", "Tumor", (200, 0, 0))
    assert tumor.measurements == {"Area": 5.5}
    assert (cell.object_type, cell.class_name, cell.color) == ("cell", "Tumor: Positive", (1, 2, 3))
    assert cell.measurements == {"Intensity": 0.25} and cell.is_locked and cell.metadata == {"note": "x"}
    assert isinstance(cell.geometry, LineString) and cell.geometry.length == 5
    assert isinstance(lines.geometry, MultiLineString) and lines.color == (10, 20, 30)
    assert lines.class_name is None and lines.name == "Ünïcödé ✓"
    assert isinstance(points.geometry, MultiPoint) and len(points.geometry.geoms) == 2
    assert isinstance(gc_point.geometry, Point) and gc_polygon.geometry.area == 16  # open ring closed
    assert gc_point.name == gc_polygon.name == "gc" and gc_point.id != gc_polygon.id


def test_argb_colours():
    assert argb_to_rgb(-3670016) == (200, 0, 0)
    assert argb_to_rgb(-8397766) == (127, 220, 58)
    assert rgb_to_argb((200, 0, 0)) == -3670016


def test_invalid_polygon_is_repaired_with_a_warning(tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    path = write_json(tmp_path / "bowtie.geojson", bowtie)
    with pytest.warns(UserWarning, match="bowtie.geojson.*Self-intersection.*make_valid"):
        [annotation] = read_geojson(path)
    assert annotation.geometry.is_valid and annotation.geometry.area == pytest.approx(50)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"type": "FeatureCollection",\n "features": [\n  {"type": "Feature",,}]}',
            r"invalid JSON at line 3",
        ),
        (
            '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}}]}',
            r"feature 0 has no geometry",
        ),
        (
            '[{"type": "Feature",'
            ' "geometry": {"type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1],[0,0]]]}},'
            ' {"type": "Feature", "geometry": {"type": "Circle", "coordinates": [0, 0]}}]',
            r"feature 1: unknown geometry type 'Circle'",
        ),
        (
            '{"type": "LineString", "coordinates": [["a", "b"], ["c", "d"]]}',
            r"feature 0: LineString coordinates are not numbers",
        ),
        ('{"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}', r"at least 3 positions"),
        ('{"type": "Topology"}', r"top-level type 'Topology'"),
        ('"just a string"', r"top level is a str"),
    ],
)
def test_malformed_files_raise_value_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "broken.geojson"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        read_geojson(path)
    assert "broken.geojson" in str(info.value)


def test_missing_file_and_broken_gzip(tmp_path):
    with pytest.raises(ValueError, match=r"missing\.geojson.*cannot read"):
        read_geojson(tmp_path / "missing.geojson")
    path = tmp_path / "cut.geojson.gz"
    path.write_bytes(gzip.compress(b'{"type": "Point", "coordinates": [1, 2]}')[:20])
    with pytest.raises(ValueError, match=r"cut\.geojson\.gz.*gzip"):
        read_geojson(path)


@pytest.mark.skipif(not ANNOTATIONS.is_dir(), reason="shared test data not present")
def test_real_qupath_exports():
    qupath05 = read_geojson(ANNOTATIONS / "qupath05-featurecollection.geojson")
    assert [a.name for a in qupath05] == ["UT", "I", "I"]
    assert {a.color for a in qupath05} == {(255, 0, 0)} and {a.object_type for a in qupath05} == {
        "annotation"
    }
    assert qupath05[0].id == "6423a977-ffff-48db-affc-cd11632010f0"
    [single] = read_geojson(ANNOTATIONS / "qupath02-polygon-feature.json")
    assert single.name == "polygon" and single.class_name is None and single.measurements == {}
    assert isinstance(single.geometry, Polygon) and single.geometry.is_valid
    classified = read_geojson(ANNOTATIONS / "qupath02-classified-array.json")
    assert [a.class_name for a in classified] == ["Cell", "Cell", "Nucleus", "Nucleus"]
    assert [a.color for a in classified] == [(127, 220, 58)] * 2 + [(184, 115, 67)] * 2  # from colorRGB
    assert len({a.id for a in classified}) == 4  # "PathAnnotationObject" replaced by distinct UUIDs
    for annotation in [*qupath05, single, *classified]:
        assert annotation.geometry.is_valid and annotation.geometry.area > 0


@pytest.mark.skipif(not ANNOTATIONS.is_dir(), reason="shared test data not present")
def test_real_exports_survive_a_round_trip(tmp_path):
    originals = read_geojson(ANNOTATIONS / "qupath02-classified-array.json")
    write_geojson(tmp_path / "again.geojson", originals)
    again = read_geojson(tmp_path / "again.geojson")
    assert [(a.name, a.class_name, a.color) for a in again] == [
        (a.name, a.class_name, a.color) for a in originals
    ]
    for a, b in zip(originals, again, strict=True):
        # Same shape; the ring may start elsewhere and turn the other way (RFC 7946 orientation).
        assert shapely.normalize(b.geometry).equals_exact(shapely.normalize(a.geometry), 0.01)
        assert b.geometry.exterior.is_ccw


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
numbers = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    labels=arrays(np.int64, st.tuples(st.integers(1, 8), st.integers(1, 8)), elements=st.integers(-1, 4)),
    size=st.sampled_from([1.0, 0.37, 448.0, 1000.123]),
    values=st.lists(numbers, min_size=6, max_size=6),
    class_name=names,
    measurement=names,
)
def test_generated_grids_and_values_always_give_valid_files(
    tmp_path, labels, size, values, class_name, measurement
):
    polygons = label_grid_polygons(labels, origin_xy=(3.333, 7.777), cell_size_px=size)
    ids = np.arange(6)  # region 5 never occurs: an empty region, skipped
    table = RegionTable(
        ids,
        np.zeros(6, int),
        np.array(values),
        np.array(values[::-1]),
        np.array(values),
        group=np.array([0, 1, 2, -1, 3, 4]),
    )
    features = region_features(polygons, table)
    features += [
        Annotation(
            shapely.box(0, 0, size, size),
            class_name=class_name,
            name=class_name,
            measurements={measurement: values[0], "count": 3},
        )
    ]
    path = tmp_path / "generated.geojson"
    write_geojson(path, features)
    data = strict_json(path)
    assert len(data["features"]) == len(polygons) + 1
    for feature in data["features"]:
        assert shapely.geometry.shape(feature["geometry"]).is_valid
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to repair in our own output
        back = read_geojson(path)
    assert back[-1].class_name == class_name and back[-1].name == class_name
    assert back[-1].measurements.get("count") == 3
    assert (measurement in back[-1].measurements) == bool(np.isfinite(values[0])) or measurement == "count"


@pytest.mark.skipif(shutil.which("ogrinfo") is None, reason="GDAL's ogrinfo is not installed")
@pytest.mark.parametrize("suffix", [".geojson", ".geojson.gz"])
def test_gdal_reads_every_exported_file(tmp_path, suffix):
    _, _, features = care_objects()
    labels = np.random.default_rng(1).integers(-1, 6, size=(12, 12))
    features += region_features(label_grid_polygons(labels, cell_size_px=224.5))
    path = tmp_path / f"export{suffix}"
    write_geojson(path, features)
    source = f"/vsigzip/{path}" if suffix.endswith(".gz") else str(path)
    result = subprocess.run(
        ["ogrinfo", "-ro", "-al", "-so", source], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert f"Feature Count: {len(features)}" in result.stdout


def test_slivers_thinner_than_the_written_grid_stay_valid(tmp_path):
    """Two decimals can fold a sliver onto itself; the writer snaps first and keeps it valid."""
    bowtie_after_rounding = Polygon([(0, 0), (10, 0.006), (20, 0), (20, 0.02), (10, 0.0149), (0, 0.02)])
    assert not shapely.is_valid(shapely.transform(bowtie_after_rounding, lambda xy: np.round(xy, 2)))
    assert bowtie_after_rounding.is_valid
    grid_polygon = Polygon([(0.25, 0.5), (8.5, 0.5), (8.5, 4.75), (0.25, 4.75)])
    path = tmp_path / "slivers.geojson"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a collapsed sliver is skipped with a warning
        written = write_geojson(
            path, [Annotation(geometry=bowtie_after_rounding), Annotation(geometry=grid_polygon)]
        )
    raw = [shapely.geometry.shape(f["geometry"]) for f in json.loads(path.read_text())["features"]]
    assert len(raw) == written >= 1
    assert all(geometry.is_valid for geometry in raw)  # as written, before any repair on reading
    assert raw[-1].equals_exact(grid_polygon, 0)  # on-grid geometry written vertex for vertex


def test_shape_tables_put_holes_parts_lines_and_points_back_together():
    holed = Polygon(SQUARE, [HOLE])
    two_parts = MultiPolygon([shapely.box(20, 0, 30, 10), shapely.box(40, 0, 50, 10)])
    objects = [
        Annotation(
            holed, "annotation", "T", "Tumor", (200, 0, 0), {"Area": 96.0, "name": 3.0}, is_locked=True
        ),
        Annotation(two_parts, "detection", None, "Stroma", None, {"count": 2}),
        Annotation(LineString([(0, 50), (30, 60)]), name="ruler"),
        Annotation(MultiPoint([(1, 1), (2, 3)]), class_name="Mitosis"),
        Annotation(Polygon()),
    ]
    drawn = shapes_from_annotations(objects)
    shapes, points = drawn.shapes, drawn.points
    assert shapes.shape_types == ["polygon"] * 4 + ["path"] and shapes.vertex_counts.tolist() == [
        4,
        4,
        4,
        4,
        2,
    ]
    assert shapes.features["ring"] == ["exterior", "hole", "exterior", "exterior", "line"]
    assert shapes.features["part"] == [0, 0, 0, 1, 0] and shapes.features["name (measurement)"][0] == 3.0
    assert np.allclose(shapes.colors_rgba[0], [200 / 255, 0, 0, 1]) and np.array_equal(
        shapes.split()[1], HOLE[:-1]
    )
    assert shapes.feature_defaults["id"] == "" and points.feature_defaults["ring"] == "point"
    assert drawn.outline_width_px == 1.0 and drawn.summary == (
        "4 objects as 5 shapes (1 holes as outlines) and 2 points; skipped 1 empty"
    )
    rows = [
        dict(zip(shapes.features, values, strict=True))
        for values in zip(*shapes.features.values(), strict=True)
    ]
    colors = [tuple(int(c) for c in np.rint(rgba[:3] * 255)) for rgba in shapes.colors_rgba]
    back = annotations_from_shapes(shapes.split(), shapes.shape_types, rows, colors)
    assert [a.id for a in back] == [a.id for a in objects[:3]]
    for before, after in zip(objects[:3], back, strict=True):
        assert shapely.normalize(after.geometry).equals(shapely.normalize(before.geometry))
        assert (after.name, after.class_name, after.measurements, after.is_locked) == (
            before.name,
            before.class_name,
            before.measurements,
            before.is_locked,
        )
    point_rows = [
        dict(zip(points.features, v, strict=True)) for v in zip(*points.features.values(), strict=True)
    ]
    [multipoint] = annotations_from_points(points.vertices_xy, point_rows, [None, None])
    assert multipoint.geometry.equals(objects[3].geometry) and multipoint.id == objects[3].id


def test_labels_with_non_square_pixels_and_a_region_grid():
    labels = np.array([[1, 1, 0], [2, 0, 0]])
    polygons = raster_polygons(np.where(labels > 0, labels, -1), (10.0, 20.0), (2.0, 3.0))
    assert polygons[1].equals(shapely.box(10, 20, 14, 23)) and polygons[2].equals(shapely.box(10, 23, 12, 26))
    one, two = annotations_from_labels(
        labels,
        origin_xy=(10.0, 20.0),
        pixel_size_xy=(2.0, 3.0),
        name_prefix="tissue",
        rows=[{"index": 2, "class": "B", "score": 0.5}],
        color_of_label=lambda value: (value, 0, 0),
    )
    assert (one.name, one.class_name, one.color) == ("tissue 1", None, (1, 0, 0))
    assert (two.name, two.class_name, two.measurements) == ("tissue 2", "B", {"score": 0.5})
    columns = {
        "region": np.array([-1, 0, 1]),
        "patches": np.array([-1, 2, 1]),
        "alpha": np.array([np.nan, 0.5, 0.5]),
        "beta": np.array([np.nan, 0.5, 0.5]),
        "a": np.array([np.nan, 0.8, 0.2]),
        "is_roi": np.array([False, True, False]),
    }
    table = region_table_from_columns(columns)
    assert table.region_id.tolist() == [0, 1] and table.roi_ids == (0,) and table.group is None
    objects = annotations_from_region_grid(
        labels - 1,
        table,
        origin_xy=(0.0, 0.0),
        cell_size_xy=(4.0, 4.0),
        mpp=0.5,
        run_info={"encoder": "resnet18"},
        tiles=True,
    )
    assert [a.object_type for a in objects] == [
        "detection",
        "detection",
        "annotation",
        "tile",
        "tile",
        "tile",
    ]
    assert objects[0].metadata["encoder"] == "resnet18" and objects[0].metadata["mpp"] == "0.5"
    assert [t.measurements["CARE attention"] for t in objects[3:]] == pytest.approx([0.4, 0.4, 0.2])
