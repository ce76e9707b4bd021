"""Read GeoJSON as QuPath (0.2 to 0.5) and other tools write it.

Accepted: a ``FeatureCollection``, a bare array of Features, a single Feature or a bare
geometry; ``.json``, ``.geojson`` and gzip (``.geojson.gz``, detected by its magic bytes,
not the suffix); ``objectType`` or ``object_type``; a classification with ``name`` or
combined ``names`` (joined with ``": "``) and ``color`` as ``[r, g, b]`` or the signed ARGB
``colorRGB``; UUID ids or QuPath 0.2's ``"PathAnnotationObject"``-style ids (a fresh UUID is
given, and the id names the object type when the properties do not); measurements as a map
or as a list of ``{name, value}``. Polygon (holes kept), MultiPolygon, LineString,
MultiLineString, Point and MultiPoint become their shapely types; a GeometryCollection is
split into one Annotation per member. Invalid polygons (self-intersections) are repaired
with ``shapely.make_valid``, with one :class:`GeometryRepairWarning` per file that counts them
(never one per object: a 100,000-polygon export may hold thousands). A malformed file raises
ValueError naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
import math
import os
import uuid
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import LineString, MultiLineString, MultiPoint, MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from napari_care.core.qupath.objects import Annotation, Color, argb_to_rgb, as_uuid

_GZIP_MAGIC = b"\x1f\x8b"
_GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)
_POLYGONAL = (int(shapely.GeometryType.POLYGON), int(shapely.GeometryType.MULTIPOLYGON))
_TYPE_OF_LEGACY_ID = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tmaCore",
}


class GeometryRepairWarning(UserWarning):
    """Invalid geometries of a file were repaired on reading (one warning per file)."""


def read_geojson(
    path: str | os.PathLike[str], *, bounds_offset: Sequence[float] = (0.0, 0.0)
) -> list[Annotation]:
    """Read the objects of a QuPath (or other) GeoJSON file.

    Parameters
    ----------
    path
        ``.geojson``, ``.json`` or gzip-compressed GeoJSON.
    bounds_offset
        The slide's bounds offset (x, y) in level-0 pixels, added to every coordinate (the
        inverse of :func:`~napari_care.core.qupath.write.write_geojson`'s option).

    Returns
    -------
    list of Annotation
        One per Feature (per member of a GeometryCollection), in file order.

    Raises
    ------
    ValueError
        The file is not JSON, not GeoJSON, or has a feature without geometry, an unknown
        geometry type or coordinates that are not numbers.
    """
    path = Path(path)
    with _gc_paused():
        annotations = _read_objects(path)
    _repair_invalid(annotations, path)
    offset = np.asarray(bounds_offset, dtype=np.float64)
    if annotations and offset.any():
        moved = shapely.transform(
            np.array([a.geometry for a in annotations], dtype=object), lambda xy: xy + offset
        )
        for annotation, geometry in zip(annotations, moved.tolist(), strict=True):
            annotation.geometry = geometry
    return annotations


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: parsing makes millions of acyclic containers, and the
    collections they trigger would scan them all again and again (a 50 MB file parses 3x slower)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_objects(path: Path) -> list[Annotation]:
    """The Annotations of a file, in file order, geometries as written."""
    data = _load_json(path)
    batch = PolygonBatch()
    records: list[tuple[dict, BaseGeometry | int]] = []  # (feature, geometry or polygon batch slot)
    for index, feature in enumerate(_feature_list(data, path)):
        where = f"{path}: feature {index}"
        if not isinstance(feature, dict):
            raise ValueError(f"{where} is a {type(feature).__name__}, not a JSON object")
        if feature.get("type") in _GEOMETRY_TYPES:  # a bare geometry inside an array
            feature = {"type": "Feature", "geometry": feature, "properties": {}}
        if feature.get("geometry") is None:
            raise ValueError(f"{where} has no geometry")
        records.extend((feature, geometry) for geometry in _geometry(feature["geometry"], where, batch))
    polygons = batch.build()
    annotations: list[Annotation] = []
    previous = None
    for feature, geometry in records:
        annotation = _annotation(polygons[geometry] if isinstance(geometry, int) else geometry, feature)
        if feature is previous:  # members of a split GeometryCollection need their own ids
            annotation.id = str(uuid.uuid4())
        annotations.append(annotation)
        previous = feature
    return annotations


def _load_json(path: Path) -> object:
    """Parse the file as JSON (gzip detected by magic bytes), with errors that name it."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the file ({error.strerror or error})") from error
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: broken gzip data ({error})") from error
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start})") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from error
    except RecursionError as error:  # the parser recurses once per nesting level
        raise ValueError(f"{path}: JSON nested too deeply to be GeoJSON") from error
    except ValueError as error:  # e.g. an integer of more than 4,300 digits
        raise ValueError(f"{path}: invalid JSON ({error})") from error


def _feature_list(data: object, path: Path) -> list:
    """The Features of any accepted top level."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level is a {type(data).__name__}; expected GeoJSON")
    kind = data.get("type")
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise ValueError(f"{path}: FeatureCollection without a 'features' array")
        return features
    if kind == "Feature" or kind in _GEOMETRY_TYPES:
        return [data]
    raise ValueError(
        f"{path}: top-level type {kind!r}; expected a FeatureCollection, a Feature, an array of Features "
        "or a geometry"
    )


def _geometry(obj: object, where: str, batch: PolygonBatch) -> list[BaseGeometry | int]:
    """Shapely geometries of a GeoJSON geometry object (a GeometryCollection gives several).

    Polygons and MultiPolygons go to ``batch`` and are returned as its slot numbers.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: geometry is a {type(obj).__name__}, not a JSON object")
    kind = obj.get("type")
    if kind == "GeometryCollection":
        members = obj.get("geometries")
        if not isinstance(members, list):
            raise ValueError(f"{where}: GeometryCollection without a 'geometries' array")
        return [geometry for member in members for geometry in _geometry(member, where, batch)]
    if kind not in _GEOMETRY_TYPES:
        raise ValueError(f"{where}: unknown geometry type {kind!r}")
    if "coordinates" not in obj:
        raise ValueError(f"{where}: {kind} without coordinates")
    coordinates = obj["coordinates"]
    if kind == "Polygon":
        return [batch.add([_rings(coordinates, where)], where, multi=False)]
    if kind == "MultiPolygon":
        return [batch.add([_rings(part, where) for part in _list(coordinates, where)], where, multi=True)]
    if kind == "Point":
        return [Point(_positions([coordinates], where, kind)[0])]
    if kind == "MultiPoint":
        return [MultiPoint(_positions(coordinates, where, kind, minimum=0))]
    if kind == "LineString":
        return [LineString(_positions(coordinates, where, kind, minimum=2))]
    return [MultiLineString([_positions(line, where, kind, minimum=2) for line in _list(coordinates, where)])]


def _rings(rings: object, where: str) -> list[np.ndarray]:
    return [_positions(ring, where, "Polygon ring", minimum=3) for ring in _list(rings, where)]


class PolygonBatch:
    """Rings of many Polygons and MultiPolygons, made into shapely geometries in one pass.

    Building them one by one costs more than parsing the JSON; one ragged-array call makes
    100,000 tiles in a fraction of a second.
    """

    def __init__(self) -> None:
        self.rings: list[np.ndarray] = []
        self.rings_per_polygon: list[int] = []
        self.slot_of_polygon: list[int] = []
        self.slots: list[tuple[str, bool]] = []  # (where, is multi)

    def add(self, polygons: list[list[np.ndarray]], where: str, *, multi: bool) -> int:
        """Queue one geometry (a list of polygons, each a list of rings); returns its slot."""
        slot = len(self.slots)
        self.slots.append((where, multi))
        for rings in polygons:
            if rings:  # a Polygon without rings is empty
                self.slot_of_polygon.append(slot)
                self.rings.extend(rings)
                self.rings_per_polygon.append(len(rings))
        return slot

    def build(self) -> list[BaseGeometry]:
        """The geometry of every slot, in slot order (open rings closed)."""
        result: list[BaseGeometry | None] = [None] * len(self.slots)
        if self.rings:
            polygons = self._polygons()
            slot_of_polygon = np.array(self.slot_of_polygon)
            multi = np.array([self.slots[slot][1] for slot in self.slot_of_polygon], dtype=bool)
            for slot, polygon in zip(
                slot_of_polygon[~multi].tolist(), polygons[~multi].tolist(), strict=True
            ):
                result[slot] = polygon
            if multi.any():
                slots, grouped = np.unique(slot_of_polygon[multi], return_inverse=True)
                multipolygons = shapely.multipolygons(polygons[multi], indices=grouped)
                for slot, multipolygon in zip(slots.tolist(), multipolygons.tolist(), strict=True):
                    result[slot] = multipolygon
        return [
            (MultiPolygon() if self.slots[i][1] else Polygon()) if geometry is None else geometry
            for i, geometry in enumerate(result)
        ]

    def _polygons(self) -> np.ndarray:
        """All queued polygons, from one ragged coordinate array."""
        lengths = np.array([len(ring) for ring in self.rings])
        xy = np.concatenate(self.rings)
        first = np.cumsum(lengths) - lengths
        open_rings = np.flatnonzero((xy[first] != xy[first + lengths - 1]).any(axis=1))
        if len(open_rings):  # GeoJSON wants closed rings; some tools do not close them
            xy = np.insert(xy, (first + lengths)[open_rings], xy[first[open_rings]], axis=0)
            lengths[open_rings] += 1
        short = np.flatnonzero(lengths < 4)
        if len(short):
            polygon = np.searchsorted(np.cumsum(self.rings_per_polygon), short[0], side="right")
            where = self.slots[self.slot_of_polygon[polygon]][0]
            raise ValueError(
                f"{where}: a Polygon ring needs at least 4 positions once closed; got {lengths[short[0]]}"
            )
        ring_offsets = np.r_[0, np.cumsum(lengths)]
        polygon_offsets = np.r_[0, np.cumsum(self.rings_per_polygon)]
        return shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, (ring_offsets, polygon_offsets))


def _list(value: object, where: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{where}: coordinates are a {type(value).__name__}, not an array")
    return value


def _positions(value: object, where: str, kind: str, minimum: int = 1) -> np.ndarray:
    """``[n, 2]`` float positions (a third value, z, is dropped)."""
    try:
        xy = np.array(value)
    except ValueError as error:  # ragged nesting
        raise ValueError(f"{where}: {kind} coordinates are not an array of [x, y] positions") from error
    if xy.size == 0 and minimum == 0:
        return np.zeros((0, 2))
    if xy.dtype.kind not in "iuf":
        raise ValueError(f"{where}: {kind} coordinates are not numbers")
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise ValueError(f"{where}: {kind} coordinates are not [x, y] positions (array shape {xy.shape})")
    if len(xy) < minimum:
        raise ValueError(f"{where}: {kind} needs at least {minimum} positions; got {len(xy)}")
    if xy.dtype.kind == "f" and not np.isfinite(xy).all():
        raise ValueError(f"{where}: {kind} coordinates are not finite numbers")
    return xy[:, :2].astype(np.float64, copy=False)


def _annotation(geometry: BaseGeometry, feature: dict) -> Annotation:
    """An Annotation from one Feature's properties (lenient about their shapes)."""
    properties = feature.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    feature_id = feature.get("id")
    object_type = properties.get("objectType") or properties.get("object_type")
    if not isinstance(object_type, str) or not object_type:
        object_type = _TYPE_OF_LEGACY_ID.get(str(feature_id), "annotation")
    class_name, color = _classification(properties.get("classification"))
    if color is None:
        color = _color(properties.get("color"))
    name = properties.get("name")
    metadata = properties.get("metadata")
    return Annotation(
        geometry,
        object_type,
        name=None if name is None else str(name),
        class_name=class_name,
        color=color,
        measurements=_measurements(properties.get("measurements")),
        id=as_uuid(feature_id),
        metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {},
        is_locked=bool(properties.get("isLocked", False)),
    )


def _classification(value: object) -> tuple[str | None, Color | None]:
    if isinstance(value, str):
        return value or None, None
    if not isinstance(value, dict):
        return None, None
    name = value.get("name")
    names = value.get("names")
    if not name and isinstance(names, list) and names:
        name = ": ".join(str(n) for n in names)
    color = _color(value.get("color"))
    if color is None:
        color = _color(value.get("colorRGB"))
    return (str(name) if name else None), color


def _color(value: object) -> Color | None:
    """``[r, g, b]`` or a signed ARGB integer -> (r, g, b); anything else -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return argb_to_rgb(value)
    if isinstance(value, list) and len(value) >= 3:
        r, g, b = value[:3]
        if type(r) is int and type(g) is int and type(b) is int and 0 <= min(r, g, b) and max(r, g, b) <= 255:
            return (r, g, b)  # the common case, without the clamping below
        try:
            return tuple(min(255, max(0, int(c))) for c in value[:3])  # type: ignore[return-value]
        except (TypeError, ValueError, OverflowError):  # not numbers, NaN, or infinite
            return None
    return None


def _measurements(value: object) -> dict[str, float]:
    """A flat map of finite numbers from a map or a QuPath 0.2 list of ``{name, value}``."""
    if isinstance(value, list):  # names that are not text (lists, maps) name nothing
        value = {
            item.get("name"): item.get("value")
            for item in value
            if isinstance(item, dict) and isinstance(item.get("name"), (str, int, float))
        }
    if not isinstance(value, dict):
        return {}
    return {
        str(name): float(number)
        for name, number in value.items()
        if name is not None and _is_finite_number(number)
    }


def _is_finite_number(value: object) -> bool:
    """A JSON number that is finite as a float (a 400-digit integer is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _repair_invalid(annotations: list[Annotation], path: Path) -> None:
    """Repair invalid geometries in place with make_valid; one summary warning for the file."""
    if not annotations:
        return
    geometries = np.array([a.geometry for a in annotations], dtype=object)
    invalid = np.flatnonzero(~shapely.is_valid(geometries))
    if not len(invalid):
        return
    reasons = shapely.is_valid_reason(geometries[invalid]).tolist()
    repaired = shapely.make_valid(geometries[invalid])
    collections = shapely.get_type_id(repaired) == int(shapely.GeometryType.GEOMETRYCOLLECTION)
    polygonal = np.isin(shapely.get_type_id(geometries[invalid]), _POLYGONAL)
    for i in np.flatnonzero(collections & polygonal).tolist():
        # Drop the lines and points make_valid leaves from collapsed parts of a polygon.
        parts = [p for p in shapely.get_parts(repaired[i]).tolist() if isinstance(p, (Polygon, MultiPolygon))]
        if parts:
            repaired[i] = shapely.union_all(parts)
    for index, geometry in zip(invalid.tolist(), repaired.tolist(), strict=True):
        annotations[index].geometry = geometry
    warnings.warn(
        _repair_summary(path, annotations, invalid.tolist(), reasons, bool(polygonal.all())),
        GeometryRepairWarning,
        stacklevel=3,
    )


def _repair_summary(
    path: Path, annotations: list[Annotation], invalid: list[int], reasons: list[str], all_polygons: bool
) -> str:
    """One line: how many were repaired, of which kinds, and where the first one is."""
    kinds = Counter(reason.split("[", 1)[0] for reason in reasons)
    what = ("polygon", "polygons") if all_polygons else ("geometry", "geometries")
    first = annotations[invalid[0]]
    label = first.name or first.class_name or first.object_type
    counts = ", ".join(f"{n:,} {kind}" for kind, n in kinds.most_common())
    return (
        f"{path}: {len(invalid):,} invalid {what[len(invalid) > 1]} ({counts}) repaired with make_valid; "
        f"first: object {invalid[0]} ({label}), {reasons[0]}"
    )
