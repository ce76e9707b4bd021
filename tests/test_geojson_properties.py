"""Property-based tests of the QuPath GeoJSON reader and writer (issue 16, item 7).

Random valid files (every top level, every geometry type, QuPath's property shapes, gzip) round-trip
through ``read_geojson`` and ``write_geojson``; random broken files give a ValueError naming the file
and nothing else; self-intersecting polygons are repaired with one warning per file.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import signal
import tempfile
import uuid
import warnings
from pathlib import Path

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, MultiPoint, MultiPolygon, Point, Polygon

from napari_care.core.qupath.objects import OBJECT_TYPES, argb_to_rgb, name_color
from napari_care.core.qupath.read import GeometryRepairWarning, read_geojson
from napari_care.core.qupath.write import write_geojson

ROUNDING = 0.005 * math.sqrt(2) + 1e-9  # the most a vertex moves on the writer's 0.01-px grid
LEGACY_IDS = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
}


@contextlib.contextmanager
def workdir():
    """A fresh folder per example (pytest's tmp_path is one per test, not per example)."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail instead of hanging (SIGALRM: the tests run in the main thread)."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"the reader ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def save(folder: Path, document: object, *, compress: bool = False, name: str = "objects") -> Path:
    """Write a JSON document as the reader would find it (gzip when asked)."""
    path = folder / (f"{name}.geojson.gz" if compress else f"{name}.geojson")
    raw = json.dumps(document).encode("utf-8")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def text_of(path: Path) -> str:
    raw = path.read_bytes()
    return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")


# ---------------------------------------------------------------------------------------------
# Valid geometries. Integer vertex grids plus a fractional offset: vertices stay at least 1 px
# apart, so the writer's 0.01-px rounding never collapses anything, yet they are off its grid.

offsets = st.tuples(
    st.floats(0, 50_000, allow_nan=False, allow_infinity=False),
    st.floats(0, 50_000, allow_nan=False, allow_infinity=False),
)


@st.composite
def polygons(draw, offset=None) -> Polygon:
    """A convex shell with 0..3 disjoint rectangular holes at least 1 px from it and each other."""
    ox, oy = offset if offset is not None else draw(offsets)
    points = draw(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), min_size=3, max_size=12))
    hull = MultiPoint(points).convex_hull
    if not isinstance(hull, Polygon) or hull.area < 50:
        hull = Polygon([(0, 0), (100, 0), (100, 80), (0, 80)])
    shell = shapely.affinity.translate(hull, ox, oy)
    inner = shell.buffer(-1.5)
    holes = []
    for x, y, w, h in draw(
        st.lists(
            st.tuples(st.integers(0, 200), st.integers(0, 200), st.integers(1, 40), st.integers(1, 40)),
            max_size=3,
        )
    ):
        hole = shapely.box(ox + x, oy + y, ox + x + w, oy + y + h)
        if inner.contains(hole) and all(hole.distance(other) > 1.5 for other in holes):
            holes.append(hole)
    polygon = Polygon(shell.exterior.coords, [hole.exterior.coords for hole in holes])
    assert polygon.is_valid
    return polygon


@st.composite
def multipolygons(draw) -> MultiPolygon:
    ox, oy = draw(offsets)
    n = draw(st.integers(1, 3))
    return MultiPolygon([draw(polygons(offset=(ox + 1000 * i, oy))) for i in range(n)])


@st.composite
def distinct_points(draw, min_size: int, max_size: int) -> list[tuple[float, float]]:
    ox, oy = draw(offsets)
    grid = draw(
        st.lists(
            st.tuples(st.integers(0, 500), st.integers(0, 500)),
            min_size=min_size,
            max_size=max_size,
            unique=True,
        )
    )
    return [(ox + x, oy + y) for x, y in grid]


simple_geometries = st.one_of(
    polygons(),
    multipolygons(),
    distinct_points(2, 8).map(LineString),
    distinct_points(1, 1).map(lambda p: Point(p[0])),
    distinct_points(1, 6).map(MultiPoint),
)


def ring_json(coords, *, reverse: bool, close: bool, z: bool) -> list:
    ring = [list(c) for c in coords]  # shapely rings are closed
    if reverse:
        ring = ring[::-1]
    if not close:
        ring = ring[:-1]
    return [[*c, 7.0] for c in ring] if z else ring


@st.composite
def geometry_json(draw, geometry) -> dict:
    """GeoJSON of a shapely geometry, as other tools write it: either ring orientation, open
    rings, a z value."""
    style = {"reverse": draw(st.booleans()), "close": draw(st.booleans()), "z": draw(st.booleans())}

    def polygon_json(polygon: Polygon) -> list:
        return [ring_json(r.coords, **style) for r in (polygon.exterior, *polygon.interiors)]

    if isinstance(geometry, Polygon):
        return {"type": "Polygon", "coordinates": polygon_json(geometry)}
    if isinstance(geometry, MultiPolygon):
        return {"type": "MultiPolygon", "coordinates": [polygon_json(p) for p in geometry.geoms]}
    return json.loads(json.dumps(shapely.geometry.mapping(geometry)))


@st.composite
def features(draw):
    """(GeoJSON Feature, [expected shapely geometry per annotation], expected properties)."""
    if draw(st.integers(0, 5)) == 0:
        members = draw(st.lists(simple_geometries, min_size=0, max_size=3))
        geometry = {
            "type": "GeometryCollection",
            "geometries": [draw(geometry_json(member)) for member in members],
        }
    else:
        members = [draw(simple_geometries)]
        geometry = draw(geometry_json(members[0]))
    properties: dict = {}
    expected: dict = {"object_type": "annotation", "name": None, "class_name": None, "color": None}
    feature: dict = {"type": "Feature", "geometry": geometry, "properties": properties}
    id_kind = draw(st.sampled_from(["uuid", "legacy", "none"]))
    if id_kind == "uuid":
        feature["id"] = str(uuid.uuid4())  # unique: no two Features share an id
    elif id_kind == "legacy":
        feature["id"] = draw(st.sampled_from(sorted(LEGACY_IDS)))
        expected["object_type"] = LEGACY_IDS[feature["id"]]
    object_type = draw(st.none() | st.sampled_from(OBJECT_TYPES))
    if object_type is not None:
        properties[draw(st.sampled_from(["objectType", "object_type"]))] = object_type
        expected["object_type"] = object_type
    if draw(st.booleans()):
        properties["name"] = expected["name"] = draw(st.text(min_size=1, max_size=12))
    rgb = draw(st.tuples(*[st.integers(0, 255)] * 3))
    colour_kind = draw(st.sampled_from(["rgb", "argb", "none"]))
    if draw(st.booleans()):
        class_name = draw(st.text(min_size=1, max_size=12))
        classification: dict = {"name": class_name}
        if colour_kind == "rgb":
            classification["color"] = list(rgb)
        elif colour_kind == "argb":
            alpha = draw(st.integers(0, 255))
            argb = (alpha << 24) | (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
            classification["colorRGB"] = argb - (1 << 32) if argb >= 1 << 31 else argb  # signed, as QuPath
            assert argb_to_rgb(classification["colorRGB"]) == rgb
        properties["classification"] = classification
        expected["class_name"] = class_name
        expected["color"] = rgb if colour_kind != "none" else None
    elif colour_kind != "none":
        properties["color"] = list(rgb)
        expected["color"] = rgb
    names = draw(st.lists(st.text(min_size=1, max_size=8), unique=True, max_size=4))
    values = [
        draw(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**62), 2**62)) for _ in names
    ]
    if names:
        if draw(st.booleans()):
            properties["measurements"] = dict(zip(names, values, strict=True))
        else:
            properties["measurements"] = [{"name": n, "value": v} for n, v in zip(names, values, strict=True)]
    expected["measurements"] = {n: float(v) for n, v in zip(names, values, strict=True) if math.isfinite(v)}
    return feature, members, expected


@st.composite
def documents(draw):
    """(JSON document at any accepted top level, [(expected geometry, expected properties)])."""
    wrap = draw(st.sampled_from(["collection", "array", "feature", "geometry"]))
    if wrap in ("feature", "geometry"):
        chosen = [draw(features())]
    else:
        chosen = draw(st.lists(features(), min_size=0, max_size=5))
    if wrap == "geometry":
        feature, members, _ = chosen[0]
        plain = {
            "object_type": "annotation",
            "name": None,
            "class_name": None,
            "color": None,
            "measurements": {},
        }
        return feature["geometry"], [(member, plain) for member in members]
    items = [(member, expected) for _, members, expected in chosen for member in members]
    if wrap == "feature":
        return chosen[0][0], items
    listed = [feature for feature, _, _ in chosen]
    return ({"type": "FeatureCollection", "features": listed} if wrap == "collection" else listed), items


def assert_same_geometry(got, want, tolerance: float) -> None:
    assert got.geom_type == want.geom_type
    assert got.is_valid
    assert shapely.hausdorff_distance(got, want) <= tolerance
    if isinstance(want, (Polygon, MultiPolygon)):
        perimeter = want.length
        assert abs(got.area - want.area) <= perimeter * tolerance + 1e-6
        assert len(shapely.get_parts(got)) == len(shapely.get_parts(want))
        assert shapely.get_num_interior_rings(shapely.get_parts(got)).sum() == (
            shapely.get_num_interior_rings(shapely.get_parts(want)).sum()
        )
    for g, w in zip(got.bounds, want.bounds, strict=True):
        assert abs(g - w) <= tolerance


def assert_properties(annotation, expected, *, written: bool) -> None:
    assert annotation.object_type == expected["object_type"]
    assert annotation.name == expected["name"]
    assert annotation.class_name == expected["class_name"]
    colour = expected["color"]
    if written and colour is None and expected["class_name"] is not None:
        colour = name_color(expected["class_name"])  # the writer always gives a class a colour
    assert annotation.color == colour
    assert annotation.measurements == expected["measurements"]
    uuid.UUID(annotation.id)


@settings(max_examples=120, deadline=None)
@given(documents(), st.booleans())
def test_valid_files_round_trip_and_rewrite_identically(document_items, compress):
    document, items = document_items
    with workdir() as folder:
        path = save(folder, document, compress=compress)
        with warnings.catch_warnings():
            warnings.simplefilter("error", GeometryRepairWarning)  # every generated geometry is valid
            first = read_geojson(path)
        assert len(first) == len(items)
        for annotation, (geometry, expected) in zip(first, items, strict=True):
            assert_same_geometry(annotation.geometry, geometry, 1e-9)
            assert_properties(annotation, expected, written=False)
        assert len({a.id for a in first}) == len(first)  # split collections get ids of their own

        suffix = ".geojson.gz" if compress else ".geojson"
        written = folder / f"written{suffix}"
        assert write_geojson(written, first) == len(first)
        second = read_geojson(written)
        assert len(second) == len(items)
        for annotation, before, (geometry, expected) in zip(second, first, items, strict=True):
            assert_same_geometry(annotation.geometry, geometry, ROUNDING)
            assert_properties(annotation, expected, written=True)
            assert annotation.id == before.id

        again = folder / f"again{suffix}"
        write_geojson(again, second)
        assert text_of(again) == text_of(written)  # gzip headers hold times and names: compare the JSON
        if compress:
            assert written.read_bytes()[:2] == b"\x1f\x8b"


# ---------------------------------------------------------------------------------------------
# Invalid input: a ValueError naming the file, or annotations; nothing else, and no hang.

junk_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e300, -1e300, 0, -1, 3]),
    st.text(max_size=8),
    st.lists(st.integers(0, 3), max_size=3),
    st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3), max_size=4),
    st.dictionaries(
        st.sampled_from(["type", "coordinates", "name", "value", "color"]), st.integers(), max_size=2
    ),
    st.sampled_from(
        ["Polygon", "Feature", "FeatureCollection", "GeometryCollection", "MultiPolygon", "Point", "Circle"]
    ),
    st.just([[[0, 0], [1, 1], [0, 0]]]),  # a ring of 3 positions
    st.just([[[0, 0], [1, 0], [1, 1]]]),  # unclosed: closed by the reader
    st.just([[[0, 0], [10, 0], [10, 10], [0, 10]], [[2, 2], [3, 2]]]),  # a hole of 2 positions
    st.just([[0, 0], [1e300, 0], [1e300, 1e300], [0, 1e300], [0, 0]]),
)


def paths_of(value, prefix=()):
    """Every (path, value) of a JSON document, the root included."""
    yield prefix, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths_of(item, (*prefix, index))


def replaced(document, path, value):
    if not path:
        return value
    copy = json.loads(json.dumps(document))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return copy


@st.composite
def mutated_documents(draw):
    """A valid document with one value anywhere (root, geometry, coordinates, properties) replaced."""
    document, _ = draw(documents())
    all_paths = [path for path, _ in paths_of(document)]
    path = draw(st.sampled_from(all_paths))
    return replaced(document, path, draw(junk_values))


def assert_reads_or_names_the_file(path: Path, *, write_back: bool = True) -> None:
    try:
        with time_limit(10), warnings.catch_warnings():
            warnings.simplefilter("ignore", GeometryRepairWarning)
            annotations = read_geojson(path)
    except ValueError as error:
        assert str(path) in str(error), f"the message does not name the file: {error}"
    else:
        assert isinstance(annotations, list)
        assert all(a.geometry is not None for a in annotations)
        if write_back:  # whatever the reader returns, the writer writes, and reads back
            written = path.with_name("written.geojson")
            with time_limit(10), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # empty geometries are skipped with a warning
                n = write_geojson(written, annotations)
                assert len(read_geojson(written)) == n


@settings(max_examples=200, deadline=None)
@given(mutated_documents(), st.booleans())
def test_a_wrong_value_anywhere_gives_annotations_or_a_value_error(document, compress):
    with workdir() as folder:
        assert_reads_or_names_the_file(save(folder, document, compress=compress))


@settings(max_examples=100, deadline=None)
@given(documents(), st.data())
def test_truncated_files_give_a_value_error_naming_the_file(document_items, data):
    document, _ = document_items
    raw = json.dumps(document).encode("utf-8")
    cut = data.draw(st.integers(0, max(len(raw) - 1, 0)))
    compress = data.draw(st.booleans())
    with workdir() as folder:
        path = folder / "cut.geojson"
        content = raw[:cut]
        if compress:  # a gzip stream cut short, or whole gzip data of cut JSON
            whole = gzip.compress(raw)
            content = (
                whole[: data.draw(st.integers(2, len(whole) - 1))]
                if data.draw(st.booleans())
                else (gzip.compress(raw[:cut]))
            )
        path.write_bytes(content)
        with pytest.raises(ValueError) as info:
            read_geojson(path)
        assert str(path) in str(info.value)


top_level_junk = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [b"", b"   \n", b"\xef\xbb\xbf", b"\xff\xfe{\x00}\x00", b"\x80abc", b'{"type": "Feature"\xff}']
    ),
    st.one_of(st.integers(), st.floats(), st.text(max_size=10), st.none(), st.booleans()).map(
        lambda v: json.dumps(v).encode()
    ),
    st.sampled_from(
        [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"[]", b"{}", b"[[]]", b"[null]", b"[1, 2]"]
    ),
)


@settings(max_examples=150, deadline=None)
@given(top_level_junk, st.booleans())
def test_junk_bytes_and_top_levels_give_a_value_error_or_nothing(raw, compress):
    with workdir() as folder:
        path = folder / "junk.geojson"
        path.write_bytes(gzip.compress(raw) if compress else raw)
        assert_reads_or_names_the_file(path)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10_000 + "]" * 10_000,
        '{"type": "Point", "coordinates": ' + "[" * 10_000 + "]" * 10_000 + "}",
        '{"type": "Feature", "properties": ' + '{"a": ' * 10_000 + "1" + "}" * 10_000 + "}",
    ],
    ids=["nested-lists", "nested-coordinates", "nested-properties"],
)
def test_deeply_nested_json_gives_a_value_error_naming_the_file(tmp_path, text):
    path = tmp_path / "deep.geojson"
    path.write_text(text, encoding="utf-8")
    assert_reads_or_names_the_file(path)


def test_nested_geometry_collections_are_read(tmp_path):
    """Nesting that json.loads accepts must not exhaust the reader's own recursion."""
    depth = 400
    point = '{"type": "Point", "coordinates": [1, 2]}'
    text = '{"type": "GeometryCollection", "geometries": [' * depth + point + "]}" * depth
    path = tmp_path / "nested.geojson"
    path.write_text(text, encoding="utf-8")
    [annotation] = read_geojson(path)
    assert annotation.geometry.equals(Point(1, 2))


SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}


def feature_with(properties: dict, geometry: dict = SQUARE) -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


# Values that once escaped the reader as OverflowError, TypeError or an unnamed ValueError.
KNOWN_BAD_VALUES = [
    pytest.param(
        json.dumps(feature_with({"classification": {"name": "a", "color": [float("inf"), 0, 0]}})),
        id="infinite-class-colour",
    ),
    pytest.param(
        json.dumps(feature_with({"color": [0, 0, 0]})).replace("[0, 0, 0]", "[1e400, 0, 0]"),
        id="overflowing-colour",
    ),
    pytest.param(
        json.dumps(feature_with({"measurements": [{"name": [1], "value": 1}]})),
        id="list-measurement-name",
    ),
    pytest.param(
        json.dumps(feature_with({"measurements": {"a": 10**400}})),
        id="huge-integer-measurement",
    ),
    pytest.param(
        json.dumps(feature_with({"measurements": {"a": 1}})).replace('"a": 1', '"a": ' + "9" * 5000),
        id="integer-over-4300-digits",
    ),
]


@pytest.mark.parametrize("text", KNOWN_BAD_VALUES)
def test_known_bad_values_give_a_value_error_naming_the_file(tmp_path, text):
    path = tmp_path / "bad.geojson"
    path.write_text(text, encoding="utf-8")
    assert_reads_or_names_the_file(path)


def test_a_lone_surrogate_read_from_a_file_can_be_written_back(tmp_path):
    """A name read from the escape "\\ud800" (no UTF-8 of its own) is written back escaped."""
    path = tmp_path / "surrogate.geojson"
    path.write_text(json.dumps(feature_with({"name": "\ud800", "classification": {"name": "a"}})), "utf-8")
    [annotation] = read_geojson(path)
    assert annotation.name == "\ud800"
    write_geojson(tmp_path / "written.geojson", [annotation])
    [again] = read_geojson(tmp_path / "written.geojson")
    assert (again.name, again.class_name) == ("\ud800", "a")


def test_non_finite_and_huge_coordinates(tmp_path):
    """NaN and infinity are refused with the file's name; 1e300 is a number and is read."""
    for value in ("NaN", "Infinity", "-Infinity", "1e400"):
        path = tmp_path / "coordinates.geojson"
        path.write_text(f'{{"type": "Point", "coordinates": [{value}, 0]}}', encoding="utf-8")
        with pytest.raises(ValueError, match="not finite") as info:
            read_geojson(path)
        assert str(path) in str(info.value)
    path = tmp_path / "huge.geojson"
    path.write_text(json.dumps({"type": "Point", "coordinates": [1e300, -1e300]}), encoding="utf-8")
    [annotation] = read_geojson(path)
    assert annotation.geometry.equals(Point(1e300, -1e300))


# ---------------------------------------------------------------------------------------------
# Self-intersecting polygons: repaired, valid out, one warning per file.


@st.composite
def bowtie_files(draw):
    """Features of which some are bow ties (self-intersecting); returns (features, n_invalid)."""
    kinds = draw(st.lists(st.booleans(), min_size=1, max_size=40))
    found = []
    for i, bowtie in enumerate(kinds):
        x, y = 100.0 * i, draw(st.floats(0, 1000, allow_nan=False))
        w, h = draw(st.integers(2, 50)), draw(st.integers(2, 50))
        ring = (
            [[x, y], [x + w, y + h], [x + w, y], [x, y + h], [x, y]]
            if bowtie
            else [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        )
        found.append(
            feature_with(
                {"classification": {"name": "bow" if bowtie else "box"}},
                {
                    "type": "Polygon",
                    "coordinates": [ring],
                },
            )
        )
    return found, sum(kinds)


@st.composite
def random_rings(draw):
    """Random (mostly self-intersecting) rings on a small integer grid."""
    found = []
    for _ in range(draw(st.integers(1, 20))):
        points = draw(
            st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=4, max_size=9, unique=True)
        )
        if Polygon(points).area < 1:  # collinear: nothing polygonal to repair to
            points = [(0, 0), (5, 5), (5, 0), (0, 5)]
        found.append(feature_with({}, {"type": "Polygon", "coordinates": [[list(p) for p in points]]}))
    invalid = sum(not Polygon(f["geometry"]["coordinates"][0]).is_valid for f in found)
    return found, invalid


def assert_one_repair_warning(path: Path, n_features: int, n_invalid: int) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        annotations = read_geojson(path)
    repairs = [w for w in caught if issubclass(w.category, GeometryRepairWarning)]
    assert len(repairs) == (1 if n_invalid else 0), [str(w.message) for w in repairs]
    if n_invalid:
        message = str(repairs[0].message)
        assert str(path) in message and f"{n_invalid:,} invalid" in message and "make_valid" in message
    assert len(annotations) == n_features
    for annotation in annotations:
        assert annotation.geometry.is_valid
        assert isinstance(annotation.geometry, (Polygon, MultiPolygon))
        assert not annotation.geometry.is_empty


@settings(max_examples=60, deadline=None)
@given(bowtie_files() | random_rings())
def test_self_intersecting_polygons_are_repaired_with_one_warning_per_file(found_invalid):
    found, n_invalid = found_invalid
    with workdir() as folder:
        path = save(folder, {"type": "FeatureCollection", "features": found})
        assert_one_repair_warning(path, len(found), n_invalid)
        # what was repaired writes and reads back valid, without a second repair
        written = folder / "repaired.geojson"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GeometryRepairWarning)
            write_geojson(written, read_geojson(path))
        with warnings.catch_warnings():
            warnings.simplefilter("error", GeometryRepairWarning)
            again = read_geojson(written)
        assert all(a.geometry.is_valid for a in again)
