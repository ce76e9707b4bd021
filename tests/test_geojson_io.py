"""napari side of QuPath GeoJSON: the reader's layers, the writer, and round trips through napari layers."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import uuid
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, MultiLineString, MultiPoint, MultiPolygon, Point, Polygon

from napari_care._geojson_reader import (
    annotation_layers,
    is_geojson_path,
    napari_get_geojson_reader,
    read_geojson_layers,
)
from napari_care._layers import level0_to_world, placement
from napari_care._writer import layer_annotations, write_geojson_layers
from napari_care.core.level0_frame import Level0Frame
from napari_care.core.qupath.objects import ROI_CLASS, Annotation
from napari_care.core.qupath.polygons import label_grid_polygons
from napari_care.core.qupath.read import read_geojson
from napari_care.core.qupath.write import write_geojson

layers_module = pytest.importorskip("napari.layers")
ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "annotations"
FRAME = Level0Frame(scale=(0.25, 0.5), bounds_offset=(30.0, 40.0))
SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
HOLE = [[2, 2], [2, 4], [4, 4], [4, 2], [2, 2]]


def through_napari(layer_data):
    """Make real napari layers and hand back what napari gives a writer."""
    return [layers_module.Layer.create(*item).as_layer_data_tuple() for item in layer_data]


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def feature(geometry: dict, properties: dict | None = None, id_: str | None = None) -> dict:
    value = {"type": "Feature", "geometry": geometry, "properties": properties or {}}
    return value if id_ is None else {**value, "id": id_}


def sample_annotations() -> list[Annotation]:
    holed = Polygon(SQUARE, [HOLE])
    two_parts = MultiPolygon([shapely.box(20, 0, 30, 10), shapely.box(40, 0, 50, 10, ccw=False)])
    return [
        Annotation(
            holed,
            "annotation",
            "Tümor ✓",
            "Tumor",
            (200, 0, 0),
            {"Area": 96.0, "name": 3.0},
            metadata={"note": "ünï"},
            is_locked=True,
        ),
        Annotation(two_parts, "detection", None, "Stroma", (0, 128, 0), {"count": 2}),
        Annotation(LineString([(0, 50), (30, 60), (40, 80)]), "annotation", "ruler", None, (1, 2, 3)),
        Annotation(
            MultiLineString([[(0, 0), (1, 1)], [(5, 5), (9, 9)]]), class_name="Lines", color=(9, 9, 9)
        ),
        Annotation(Point(7.25, 8.5), "annotation", "dot", "Mitosis", (255, 0, 255), {"score": 0.5}),
        Annotation(MultiPoint([(1, 1), (2, 3)]), class_name="Mitosis", color=(255, 0, 255)),
    ]


def test_frame_matches_the_slide_layers_convention():
    slide = SimpleNamespace(mpp=(0.5, 0.25))  # (x, y) micrometres per level-0 pixel
    frame = Level0Frame.from_slide_metadata({"napari_care": {"mpp": [0.5, 0.25], "bounds_offset": [3, 4]}})
    assert frame == Level0Frame((0.25, 0.5), (3.0, 4.0))
    xy = np.array([[10.0, 20.0], [0.0, 0.0], [123.4, 5.6]])
    world = level0_to_world(slide, xy)
    place = frame.placement()
    data = xy[:, [1, 0]]  # the reader keeps level-0 (y, x) as data
    assert np.allclose(data * place["scale"] + place["translate"], world)
    assert np.allclose(frame.data_to_level0(data, place["scale"], place["translate"]), xy)
    # a layer drawn in world coordinates (scale 1): data = world
    assert np.allclose(frame.data_to_level0(world, (1, 1), (0, 0)), xy)
    assert Level0Frame.from_slide_metadata({"napari_care": {"mpp": None}}, use_bounds=False) == Level0Frame()


def test_reader_gate(tmp_path):
    geojson = write_json(tmp_path / "a.geojson", {"type": "Point", "coordinates": [1, 2]})
    summary = write_json(tmp_path / "slide.care.json", {"software": "napari-care", "regions": []})
    plain = write_json(tmp_path / "b.json", [feature({"type": "Point", "coordinates": [1, 2]})])
    packed = tmp_path / "c.geojson.gz"
    packed.write_bytes(gzip.compress(geojson.read_bytes()))
    assert napari_get_geojson_reader(str(geojson)) is read_geojson_layers
    assert napari_get_geojson_reader([str(packed)]) is read_geojson_layers
    assert napari_get_geojson_reader(str(plain)) is read_geojson_layers
    assert napari_get_geojson_reader(str(summary)) is None  # a JSON file that is not GeoJSON
    assert napari_get_geojson_reader(str(tmp_path / "missing.geojson")) is None
    assert napari_get_geojson_reader([str(geojson), str(plain)]) is None
    assert not is_geojson_path(tmp_path / "slide.svs")


@pytest.mark.parametrize("top_level", ["collection", "array", "feature", "geometry"])
def test_every_top_level_gives_a_shapes_layer(tmp_path, top_level):
    polygon = {"type": "Polygon", "coordinates": [SQUARE, HOLE]}
    item = feature(polygon, {"classification": {"name": "Tumor", "color": [200, 0, 0]}}, str(uuid.uuid4()))
    data = {
        "collection": {"type": "FeatureCollection", "features": [item]},
        "array": [item],
        "feature": item,
        "geometry": polygon,
    }[top_level]
    [(shapes, kwargs, kind)] = read_geojson_layers(str(write_json(tmp_path / "x.geojson", data)), frame=FRAME)
    assert kind == "shapes" and len(shapes) == 2  # exterior and hole
    assert list(kwargs["features"]["ring"]) == ["exterior", "hole"]
    assert np.allclose(shapes[0], (np.array(SQUARE[:-1]) + FRAME.bounds_offset)[:, [1, 0]])
    assert kwargs["face_color"] == "transparent" and kwargs["name"] == "x"
    assert kwargs["scale"] == (0.25, 0.5) and kwargs["translate"] == (-0.125, -0.25)


def test_older_property_shapes_lines_and_points(tmp_path):
    items = [
        feature(
            {
                "type": "MultiPolygon",
                "coordinates": [[SQUARE, HOLE], [[[20, 0], [30, 0], [30, 10], [20, 0]]]],
            },
            {
                "object_type": "detection",
                "classification": {"name": "Tumor", "colorRGB": -3670016},
                "measurements": [{"name": "Area", "value": 5.5}],
            },
            "PathDetectionObject",
        ),
        feature({"type": "LineString", "coordinates": [[0, 0], [3, 4]]}, {"name": "ruler"}),
        feature({"type": "MultiPoint", "coordinates": [[1, 1], [2, 2]]}, {"classification": "Mitosis"}),
    ]
    path = write_json(tmp_path / "old.json", items)
    shapes, points = read_geojson_layers(str(path), frame=Level0Frame())
    table = shapes[1]["features"]
    assert shapes[1]["shape_type"] == ["polygon", "polygon", "polygon", "path"]
    assert list(table["ring"]) == ["exterior", "hole", "exterior", "line"] and list(table["part"]) == [
        0,
        0,
        1,
        0,
    ]
    assert list(table["object_type"][:3]) == ["detection"] * 3 and list(table["class"][:3]) == ["Tumor"] * 3
    assert str(uuid.UUID(table["id"][0])) == table["id"][0]  # "PathDetectionObject" got a UUID
    assert table["Area"][0] == 5.5 and np.isnan(table["Area"][3])
    assert np.allclose(shapes[1]["edge_color"][0], [200 / 255, 0, 0, 1])  # from colorRGB
    assert (
        points[2] == "points"
        and len(points[0]) == 2
        and list(points[1]["features"]["class"]) == ["Mitosis"] * 2
    )
    layers, message = annotation_layers(read_geojson(path), name="old", keep_lines=False, keep_points=False)
    assert [kind for *_, kind in layers] == ["shapes"] and len(layers[0][0]) == 3
    assert message.endswith("skipped 1 lines, 1 points")


def test_malformed_file_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "broken.geojson"
    path.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}}]}')
    with pytest.raises(ValueError, match=r"broken\.geojson: feature 0 has no geometry"):
        read_geojson_layers(str(path), frame=Level0Frame())


def assert_same_objects(before: list[Annotation], after: list[Annotation]) -> None:
    assert len(after) == len(before)
    for a, b in zip(before, after, strict=True):
        assert shapely.normalize(b.geometry).equals_exact(shapely.normalize(a.geometry), 0.01), (a, b)
        assert (b.object_type, b.name, b.class_name, b.color, b.id, b.metadata, b.is_locked) == (
            a.object_type,
            a.name,
            a.class_name,
            a.color,
            a.id,
            a.metadata,
            a.is_locked,
        )
        assert b.measurements == pytest.approx({k: v for k, v in a.measurements.items() if np.isfinite(v)})


@pytest.mark.parametrize("suffix", [".geojson", ".geojson.gz"])
def test_round_trip_file_napari_layers_file(tmp_path, suffix):
    written = sample_annotations()
    source = tmp_path / f"in{suffix}"
    write_geojson(source, written, bounds_offset=FRAME.bounds_offset)
    layer_data = read_geojson_layers(str(source), frame=FRAME)
    assert [kind for *_, kind in layer_data] == ["shapes", "points"]
    assert len(layer_data[0][0]) == 2 + 2 + 1 + 2  # holed square (2 rings), two parts, a line, two lines
    target = tmp_path / f"out{suffix}"
    assert write_geojson_layers(str(target), through_napari(layer_data)) == [str(target)]
    assert (target.read_bytes()[:2] == b"\x1f\x8b") == suffix.endswith(".gz")
    # the file is in QuPath's frame: the same coordinates as the input, offset included
    back = read_geojson(target)
    assert_same_objects(read_geojson(source), back)


@pytest.mark.skipif(not ANNOTATIONS.is_dir(), reason="shared test data not present")
@pytest.mark.parametrize(
    "name",
    ["qupath05-featurecollection.geojson", "qupath02-polygon-feature.json", "qupath02-classified-array.json"],
)
def test_real_qupath_exports_through_napari(tmp_path, name):
    path = ANNOTATIONS / name
    assert napari_get_geojson_reader(str(path)) is read_geojson_layers
    original = read_geojson(path)
    [(shapes, kwargs, kind)] = read_geojson_layers(str(path), frame=Level0Frame((0.5, 0.5)))
    assert kind == "shapes" and len(shapes) == len(original)
    assert list(kwargs["features"]["class"]) == [a.class_name or "" for a in original]
    write_geojson_layers(str(tmp_path / "again.geojson"), through_napari([(shapes, kwargs, kind)]))
    again = read_geojson(tmp_path / "again.geojson")
    for a, b, layer_id in zip(original, again, kwargs["features"]["id"], strict=True):
        assert shapely.normalize(b.geometry).equals_exact(shapely.normalize(a.geometry), 0.01)
        assert (b.name, b.class_name, b.id) == (
            a.name,
            a.class_name,
            layer_id,
        )  # legacy ids got a UUID on reading
        assert b.color == (a.color or (255, 255, 0))  # objects without a colour are drawn (and saved) yellow


def labels_layer(labels: np.ndarray, origin, cell, frame: Level0Frame, **kwargs):
    """A Labels layer placed over a slide of ``frame`` like the CARE layers are."""
    slide = SimpleNamespace(mpp=(frame.scale[1], frame.scale[0]))
    place = placement(slide, origin, cell)
    metadata = {"napari_care_frame": frame.to_dict(), **kwargs.pop("metadata", {})}
    return layers_module.Labels(
        labels, scale=place["scale"], translate=place["translate"], metadata=metadata, **kwargs
    )


def test_labels_layer_exports_exact_polygons_with_holes():
    labels = np.zeros((5, 6), dtype=np.int32)
    labels[:, :5] = 1
    labels[1:4, 1:4] = 0  # a 3 x 3 hole
    labels[2, 2] = 2  # an island inside the hole
    frame = Level0Frame((0.5, 0.5))
    layer = labels_layer(
        labels,
        (100.0, 200.0),
        4.0,
        frame,
        name="tissue",
        features={"index": [0, 1, 2], "class": ["", "Tumor", "Necrosis"], "score": [np.nan, 0.25, np.nan]},
    )
    one, two = layer_annotations(*layer.as_layer_data_tuple(), frame)
    expected = Polygon(shapely.box(100, 200, 120, 220).exterior, [shapely.box(104, 204, 116, 216).exterior])
    assert one.geometry.equals(expected) and one.geometry.area == 400 - 144
    assert (one.class_name, one.measurements, one.name) == ("Tumor", {"score": 0.25}, "tissue 1")
    assert two.geometry.equals(shapely.box(108, 208, 112, 212)) and two.measurements == {}
    assert two.color is not None and two.class_name == "Necrosis"


def care_regions_layer(frame: Level0Frame):
    labels = np.full((4, 5), -1)
    labels[0, :3] = 0
    labels[1:, :2] = 1
    labels[2:, 3:] = 2
    table = pd.DataFrame(
        {
            "index": [0, 1, 2, 3],
            "region": [-1, 0, 1, 2],
            "patches": [-1, 3, 6, 4],
            "area_um2": [np.nan, 300.0, 600.0, 400.0],
            "alpha": [np.nan, 0.2, 0.5, 0.3],
            "beta": [np.nan, 0.1, 0.6, 0.3],
            "a": [np.nan, 0.15, 0.55, 0.3],
            "is_roi": [False, False, True, False],
            "group": [-1, 0, 1, 0],
        }
    )
    layer = labels_layer(
        labels + 1,
        (1000.0, 0.0),
        20.0,
        frame,
        name="CARE regions",
        features=table,
        metadata={"napari_care_role": "regions", "encoder": "resnet18", "k": 8},
    )
    return labels, layer


def test_care_regions_layer_is_written_like_the_segment_output(tmp_path):
    frame = Level0Frame((0.5, 0.5))
    labels, layer = care_regions_layer(frame)
    objects = layer_annotations(*layer.as_layer_data_tuple(), frame, tiles=True)
    regions = [a for a in objects if a.object_type == "detection"]
    [roi] = [a for a in objects if a.class_name == ROI_CLASS]
    tiles = [a for a in objects if a.object_type == "tile"]
    expected = label_grid_polygons(labels, origin_xy=(1000, 0), cell_size_px=20)
    assert [a.measurements["CARE region id"] for a in regions] == [0, 1, 2]
    for region in regions:
        assert region.geometry.equals(expected[region.measurements["CARE region id"]])
    assert regions[1].measurements["CARE a"] == 0.55 and regions[1].measurements["Patches"] == 6
    assert regions[0].class_name == "CARE group 0" and regions[0].metadata["encoder"] == "resnet18"
    assert regions[0].metadata["mpp"] == "0.5" and regions[0].metadata["k"] == "8"
    assert roi.geometry.equals(expected[1]) and roi.object_type == "annotation"
    assert len(tiles) == 13 and sum(t.measurements["CARE attention"] for t in tiles) == pytest.approx(1.0)
    first = min(tiles, key=lambda t: t.geometry.bounds)
    assert first.geometry.equals(shapely.box(1000, 0, 1020, 20)) and first.measurements[
        "CARE attention"
    ] == pytest.approx(0.05)


def test_shapes_drawn_by_hand(tmp_path):
    frame = Level0Frame((1.0, 1.0))
    bowtie = np.array([[0, 0], [10, 10], [0, 10], [10, 0]])
    layer = layers_module.Shapes(
        [
            np.array([[0, 0], [0, 4], [2, 4], [2, 0]]),
            np.array([[10, 10], [10, 14], [12, 14], [12, 10]]),
            bowtie,
            np.array([[0, 0], [5, 5]]),
        ],
        shape_type=["rectangle", "ellipse", "polygon", "line"],
        edge_color="red",
        name="drawn",
    )
    box, ellipse, repaired, line = layer_annotations(*layer.as_layer_data_tuple(), frame)
    assert box.geometry.equals(shapely.box(0.5, 0.5, 4.5, 2.5))  # data = world; +0.5: pixel edges
    assert box.color == (255, 0, 0) and box.class_name is None and box.object_type == "annotation"
    assert ellipse.geometry.area == pytest.approx(np.pi * 2 * 1, rel=0.01)
    assert repaired.geometry.is_valid and repaired.geometry.area == pytest.approx(50)
    assert isinstance(line.geometry, LineString) and line.geometry.length == pytest.approx(np.hypot(5, 5))
    roi_layer = layers_module.Shapes(
        [np.array([[0, 0], [0, 4], [2, 4], [2, 0]])],
        shape_type="rectangle",
        metadata={"napari_care_role": "roi"},
    )
    [roi] = layer_annotations(*roi_layer.as_layer_data_tuple(), frame)
    assert roi.class_name == ROI_CLASS


def test_other_layers_and_rotated_layers_are_refused():
    with pytest.raises(ValueError, match="image layer cannot be written"):
        layer_annotations(np.zeros((2, 2)), {"name": "img"}, "image", Level0Frame())
    rotated = layers_module.Shapes(
        [np.array([[0, 0], [0, 4], [2, 4]])], shape_type="polygon", rotate=30, name="turned"
    )
    with pytest.raises(ValueError, match="'turned' is rotated"):
        layer_annotations(*rotated.as_layer_data_tuple(), Level0Frame())


names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)
values = st.floats(allow_nan=True, allow_infinity=True, width=32)
vertices = st.lists(
    st.tuples(st.floats(-50, 500, width=32), st.floats(-50, 500, width=32)), min_size=2, max_size=7
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shapes=st.lists(
        st.tuples(vertices, st.sampled_from(["polygon", "path", "rectangle", "ellipse"]), names, values),
        max_size=6,
    ),
    scale=st.sampled_from([(1.0, 1.0), (0.25, 0.5), (0.499, 0.499)]),
)
def test_generated_layers_always_give_valid_files(tmp_path, shapes, scale):
    data, types, classes, measured = [], [], [], []
    for points, shape_type, class_name, value in shapes:
        points = np.array(points, dtype=np.float64)
        if shape_type in ("rectangle", "ellipse"):  # napari wants 4 corners: use the points' box
            (y0, x0), (y1, x1) = points.min(axis=0), points.max(axis=0) + 1
            points = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])
        data.append(points)
        types.append(shape_type)
        classes.append(class_name)
        measured.append(value)
    frame = Level0Frame(scale)
    # The tuple napari hands a writer (made by hand: napari's own triangulation of random
    # self-intersecting polygons fails before any writer is called).
    attributes = {
        "name": "generated",
        "shape_type": types,
        "edge_color": np.tile([1.0, 0.0, 0.0, 1.0], (len(data), 1)),
        "features": pd.DataFrame({"class": classes, "Ünïcode µm": measured}) if shapes else pd.DataFrame(),
        "metadata": {"napari_care_frame": frame.to_dict()},
        **frame.placement(),
    }
    path = tmp_path / "generated.geojson"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate shapes are skipped with a warning
        write_geojson_layers(str(path), [(data, attributes, "shapes")])
    with open(path, encoding="utf-8") as handle:
        collection = json.load(handle, parse_constant=lambda name: pytest.fail(f"{name} in the file"))
    for item in collection["features"]:
        geometry = shapely.geometry.shape(item["geometry"])
        assert geometry.is_valid and not geometry.is_empty
        assert all(np.isfinite(v) for v in item["properties"].get("measurements", {}).values())
    count = ogrinfo_count(path)  # GDAL reads it (when installed) and finds every feature
    assert count is None or count == len(collection["features"])


def ogrinfo_count(path: Path | str) -> int | None:
    """Features GDAL finds in the file, or None when ogrinfo is not installed."""
    if shutil.which("ogrinfo") is None:
        return None
    done = subprocess.run(
        ["ogrinfo", "-ro", "-al", "-so", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split("Feature Count: ")[1].split()[0])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    labels=st.lists(st.lists(st.integers(0, 4), min_size=6, max_size=6), min_size=1, max_size=6),
    cell=st.sampled_from([1.0, 0.37, 448.0]),
    scale=st.sampled_from([(1.0, 1.0), (0.5, 0.5), (0.26, 0.25)]),
    class_name=names,
)
def test_generated_labels_layers_always_give_valid_files(tmp_path, labels, cell, scale, class_name):
    labels = np.array(labels, dtype=np.int32)
    frame = Level0Frame(scale)
    slide = SimpleNamespace(mpp=(scale[1], scale[0]))
    features = pd.DataFrame(
        {
            "index": np.arange(5),
            "class": ["", class_name, class_name, "B", "C"],
            "value": [np.nan, np.inf, 1.5, np.nan, -2.0],
        }
    )
    attributes = {
        "name": "generated",
        "features": features,
        "metadata": {"napari_care_frame": frame.to_dict()},
        **placement(slide, (12.5, 7.25), cell),
    }
    path = tmp_path / "labels.geojson.gz"
    write_geojson_layers(str(path), [(labels, attributes, "labels")])
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        collection = json.load(handle, parse_constant=lambda name: pytest.fail(f"{name} in the file"))
    present = sorted(set(labels[labels > 0].tolist()))
    assert len(collection["features"]) == len(present)  # labels absent from the grid: no object
    area = 0.0
    for item in collection["features"]:
        geometry = shapely.geometry.shape(item["geometry"])
        assert geometry.is_valid
        area += geometry.area
        assert "value" not in item["properties"].get("measurements", {}) or np.isfinite(
            item["properties"]["measurements"]["value"]
        )
    assert area == pytest.approx((labels > 0).sum() * cell**2, rel=1e-3, abs=0.05)
    count = ogrinfo_count(f"/vsigzip/{path}")  # a str: Path would fold the double slash GDAL needs
    assert count is None or count == len(present)


def test_shapes_and_points_drawn_on_an_imported_layer_are_new_objects(tmp_path):
    """napari copies the last row into a new shape's features; the drawing must not join that object."""
    source = write_json(
        tmp_path / "in.geojson",
        {
            "type": "FeatureCollection",
            "features": [
                feature(
                    {"type": "Polygon", "coordinates": [SQUARE, HOLE]},
                    {"objectType": "annotation"},
                    str(uuid.uuid4()),
                ),
                feature(
                    {"type": "Point", "coordinates": [5, 5]}, {"objectType": "annotation"}, str(uuid.uuid4())
                ),
            ],
        },
    )
    shapes_data, points_data = read_geojson_layers(source, frame=FRAME)
    shapes = layers_module.Layer.create(*shapes_data)
    points = layers_module.Layer.create(*points_data)
    shapes.add_polygons([np.array([[20.0, 20.0], [20.0, 40.0], [40.0, 30.0]])])
    points.add(np.array([[50.0, 50.0]]))
    out = tmp_path / "out.geojson"
    write_geojson_layers(out, [shapes.as_layer_data_tuple(), points.as_layer_data_tuple()])
    back = read_geojson(out)
    assert sorted(a.geometry.geom_type for a in back) == ["Point", "Point", "Polygon", "Polygon"]
    original = next(a for a in back if a.geometry.geom_type == "Polygon" and len(a.geometry.interiors) == 1)
    assert original.geometry.area == pytest.approx(100 - 4)  # still the square with its hole, nothing added
