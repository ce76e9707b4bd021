"""QuPath objects as flat shape tables and back: what a viewer's Shapes and Points layers hold.

A viewer draws an object's geometry as flat items, each with one row of features:

- every polygon ring is an item of its own (the exterior ring of each part, each hole as an
  outline: a filled shape cannot have holes cut into it), lines are open paths, points are
  points; each item's row says which object, part and ring it is (``id``, ``part``, ``ring`` =
  ``"exterior"``, ``"hole"``, ``"line"`` or ``"point"``), with the object's ``object_type``,
  ``name``, ``class`` and one column per measurement (:func:`object_row`);
- :func:`shapes_from_annotations` makes these tables from Annotations,
  :func:`annotations_from_shapes` and :func:`annotations_from_points` put the objects back
  together (parts and holes by ``id``, ``part`` and ``ring``).

Coordinates are level-0 pixels (x, y) both ways; placing them in a layer is
:class:`~napari_care.core.level0_frame.Level0Frame`'s job.
"""

from __future__ import annotations

import json
import math
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import LineString, MultiLineString, MultiPoint, MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from napari_care.core.qupath.objects import Annotation, Color, name_color
from napari_care.core.qupath.read import PolygonBatch

# Feature columns that describe the object; every other numeric column is a measurement.
RESERVED_COLUMNS = ("id", "object_type", "name", "class", "part", "ring", "is_locked", "metadata")
MEASUREMENT_SUFFIX = " (measurement)"  # a measurement named like a reserved column gets this suffix
DEFAULT_COLOR: Color = (255, 255, 0)  # objects with neither a colour nor a class: QuPath's yellow
OUTLINE_WIDTH_SHARE = 0.002  # outline width as a share of the objects' extent
ELLIPSE_VERTICES = 64
POLYGONAL_TYPES = ("polygon", "rectangle", "ellipse")  # shape types that enclose an area


@dataclass(frozen=True)
class ShapeTable:
    """Items (polygon rings, lines or points) as one flat vertex array, each with a feature row.

    Attributes
    ----------
    vertices_xy
        ``[V, 2]`` level-0 (x, y) of every item's vertices, the items one after another; rings
        are open (the viewer closes them).
    vertex_counts
        ``[n]`` vertices per item.
    shape_types
        Per item: ``"polygon"`` (a ring), ``"path"`` (a line) or ``"point"``.
    features
        Column -> ``[n]`` values: the item's object's properties and measurements, ``part``, ``ring``.
    feature_defaults
        The row an item drawn by hand gets: that of a new, unnamed object.
    colors_rgba
        ``[n, 4]`` RGBA in [0, 1]: the object's colour, else its class's, else yellow.
    """

    vertices_xy: np.ndarray
    vertex_counts: np.ndarray
    shape_types: list[str]
    features: dict[str, list]
    feature_defaults: dict[str, object]
    colors_rgba: np.ndarray

    def __len__(self) -> int:
        return len(self.vertex_counts)

    def split(self, values: np.ndarray | None = None) -> list[np.ndarray]:
        """Per-item arrays of ``values`` (``[V, ...]``, aligned with :attr:`vertices_xy`; default: it)."""
        values = self.vertices_xy if values is None else values
        return np.split(values, np.cumsum(self.vertex_counts)[:-1]) if len(self) else []


@dataclass(frozen=True)
class AnnotationShapes:
    """Annotations as a viewer draws them (see :func:`shapes_from_annotations`).

    Attributes
    ----------
    shapes
        Polygon rings and lines.
    points
        Points of Point and MultiPoint objects.
    outline_width_px
        A width for the outlines in level-0 pixels: a share of the shapes' extent, at least 1.
    summary
        One line: objects kept, shapes, holes and points, and what was skipped.
    """

    shapes: ShapeTable
    points: ShapeTable
    outline_width_px: float
    summary: str


def shapes_from_annotations(
    annotations: Sequence[Annotation], *, keep_lines: bool = True, keep_points: bool = True
) -> AnnotationShapes:
    """Polygon rings, lines and points of ``annotations`` as flat tables, and a summary line.

    Parameters
    ----------
    annotations
        The objects, geometry in level-0 pixels.
    keep_lines, keep_points
        Keep lines (as paths) and points, or skip them (counted in the summary).

    Returns
    -------
    AnnotationShapes
        Rings first (every polygon's, in object order), then lines; points apart.
    """
    polygonal = [
        i
        for i, a in enumerate(annotations)
        if isinstance(a.geometry, (Polygon, MultiPolygon)) and not a.geometry.is_empty
    ]
    geometries = np.array([annotations[i].geometry for i in polygonal], dtype=object)
    object_of_ring, part_of_ring, is_hole, ring_xy, ring_counts = _polygon_rings(geometries)
    shape_objects = np.asarray(polygonal, dtype=np.int64)[object_of_ring].tolist()
    shape_parts, kinds = part_of_ring.tolist(), np.where(is_hole, "hole", "exterior").tolist()
    shape_types = ["polygon"] * len(ring_counts)
    line_xy: list[np.ndarray] = []
    point_xy: list[np.ndarray] = []
    point_objects: list[int] = []
    point_parts: list[int] = []
    skipped = {"lines": 0, "points": 0, "empty": 0}
    for index, annotation in enumerate(annotations):
        geometry = annotation.geometry
        if geometry is None or geometry.is_empty:
            skipped["empty"] += 1
        elif isinstance(geometry, (LineString, MultiLineString)):
            if not keep_lines:
                skipped["lines"] += 1
                continue
            for part, line in enumerate(shapely.get_parts(geometry).tolist()):
                line_xy.append(np.asarray(line.coords, dtype=np.float64)[:, :2])
                shape_types.append("path")
                shape_objects.append(index)
                shape_parts.append(part)
                kinds.append("line")
        elif isinstance(geometry, (Point, MultiPoint)):
            if not keep_points:
                skipped["points"] += 1
                continue
            for part, point in enumerate(shapely.get_parts(geometry).tolist()):
                point_xy.append(np.asarray(point.coords, dtype=np.float64)[:1, :2])
                point_objects.append(index)
                point_parts.append(part)
    vertices_xy = np.concatenate([ring_xy, *line_xy]) if line_xy else ring_xy
    shapes = _shape_table(
        annotations,
        vertices_xy,
        [*ring_counts.tolist(), *(len(xy) for xy in line_xy)],
        shape_types,
        shape_objects,
        shape_parts,
        kinds,
        "exterior",
    )
    points = _shape_table(
        annotations,
        np.concatenate(point_xy) if point_xy else np.zeros((0, 2)),
        [1] * len(point_xy),
        ["point"] * len(point_xy),
        point_objects,
        point_parts,
        "point",
        "point",
    )
    extent = float(np.ptp(vertices_xy, axis=0).max()) if len(vertices_xy) else 0.0
    kept = len(set(shape_objects) | set(point_objects))
    summary = (
        f"{kept} objects as {len(shapes)} shapes ({int(is_hole.sum())} holes as outlines) "
        f"and {len(points)} points"
    )
    dropped = ", ".join(f"{n} {what}" for what, n in skipped.items() if n)
    return AnnotationShapes(
        shapes,
        points,
        max(1.0, OUTLINE_WIDTH_SHARE * extent),
        summary + (f"; skipped {dropped}" if dropped else ""),
    )


def _polygon_rings(
    geometries: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every ring of (Multi)Polygons in one vectorised pass: which geometry and part it belongs to,
    whether it is a hole, and its vertices (x, y) without the closing vertex, with their counts."""
    if not len(geometries):
        return (
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, bool),
            np.zeros((0, 2)),
            np.zeros(0, np.int64),
        )
    parts, object_of_part = shapely.get_parts(geometries, return_index=True)
    part_number = np.arange(len(parts)) - np.searchsorted(object_of_part, object_of_part)
    rings, part_of_ring = shapely.get_rings(parts, return_index=True)
    is_hole = np.r_[False, part_of_ring[1:] == part_of_ring[:-1]]  # a part's first ring is its exterior
    xy, ring_of_xy = shapely.get_coordinates(rings, return_index=True)
    counts = np.bincount(ring_of_xy, minlength=len(rings))
    open_xy = np.delete(xy, np.cumsum(counts) - 1, axis=0)  # viewers close polygons themselves
    return object_of_part[part_of_ring], part_number[part_of_ring], is_hole, open_xy, counts - 1


def _shape_table(
    annotations: Sequence[Annotation],
    vertices_xy: np.ndarray,
    counts: list[int],
    shape_types: list[str],
    objects: list[int],
    parts: list[int],
    kinds: list[str] | str,
    new_kind: str,
) -> ShapeTable:
    table = _features(annotations, objects, parts, kinds) if objects else {}
    return ShapeTable(
        vertices_xy,
        np.asarray(counts, dtype=np.int64),
        shape_types,
        table,
        _new_object_defaults(table, new_kind),
        _object_colors(annotations, objects),
    )


def _features(
    annotations: Sequence[Annotation], objects: list[int], parts: list[int], kinds: list[str] | str
) -> dict[str, list]:
    """The features table of shapes or points: their object's properties and measurements, part and ring.

    Built per object, then spread over its items (a region with holes has several rings).
    """
    unique, position = np.unique(np.asarray(objects, dtype=np.int64), return_inverse=True)
    rows = [object_row(annotations[i]) for i in unique.tolist()]
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    fill = {"is_locked": False, "metadata": ""}
    table: dict[str, list] = {}
    for column in names:
        values = np.asarray([row.get(column, fill.get(column, math.nan)) for row in rows], dtype=object)
        table[column] = values[position].tolist()
        if column == "class":
            table["part"], table["ring"] = (
                list(parts),
                [kinds] * len(objects) if isinstance(kinds, str) else kinds,
            )
    return table


def _new_object_defaults(table: dict[str, list], kind: str) -> dict[str, object]:
    """The features a shape or point drawn by the user gets: those of a new, unnamed object.

    napari would otherwise copy the last row, id included, and the writer would then save the
    drawing as a part (or a hole) of the last imported object.
    """
    defaults: dict[str, object] = {}
    for column, values in table.items():
        sample = next((v for v in values if v is not None), "")
        if isinstance(sample, (bool, np.bool_)):
            defaults[column] = False
        else:
            defaults[column] = "" if isinstance(sample, str) else math.nan
    defaults.update(id="", object_type="annotation", part=math.nan, ring=kind)
    return defaults


def object_row(annotation: Annotation) -> dict[str, object]:
    """An object's feature row: id, type, name, class, lock, metadata (JSON) and its measurements."""
    row: dict[str, object] = {
        "id": annotation.id,
        "object_type": annotation.object_type,
        "name": annotation.name or "",
        "class": annotation.class_name or "",
    }
    if annotation.is_locked:
        row["is_locked"] = True
    if annotation.metadata:
        row["metadata"] = json.dumps(annotation.metadata, ensure_ascii=False)
    for key, value in annotation.measurements.items():
        row[key if key not in RESERVED_COLUMNS else f"{key}{MEASUREMENT_SUFFIX}"] = value
    return row


def _object_colors(annotations: Sequence[Annotation], objects: list[int]) -> np.ndarray:
    """``[n, 4]`` RGBA of each item: its object's colour, else its class's, else yellow."""
    unique, position = np.unique(np.asarray(objects, dtype=np.int64), return_inverse=True)
    colors = [
        annotations[i].color
        or (name_color(annotations[i].class_name) if annotations[i].class_name else DEFAULT_COLOR)
        for i in unique.tolist()
    ]
    rgba = np.ones((len(unique), 4))
    rgba[:, :3] = np.asarray(colors, dtype=np.float64).reshape(-1, 3) / 255.0
    return rgba[position]


# ---- and back: flat shapes and points -> objects ------------------------------------------------------


def annotations_from_shapes(
    vertices_xy: Sequence[np.ndarray],
    shape_types: Sequence[str],
    rows: Sequence[Mapping[str, object]],
    colors: Sequence[Color | None],
    *,
    class_name: str | None = None,
    label: str = "shapes",
) -> list[Annotation]:
    """Objects of drawn shapes: one per ``id`` in their rows (rings, holes and parts put back together).

    Parameters
    ----------
    vertices_xy
        Each shape's ``[n, 2]`` level-0 (x, y) vertices.
    shape_types
        Each shape's type: ``"polygon"``, ``"rectangle"`` or ``"ellipse"`` (its 4 bounding-box
        corners; written as a 64-gon) enclose an area, any other (``"path"``, ``"line"``) is a line.
    rows
        Each shape's feature row (see :func:`object_row`); a shape whose ``id`` is missing, empty
        or NaN is an object of its own. ``ring == "hole"`` makes a polygon a hole of the part
        numbered ``part`` of its object.
    colors
        Each shape's colour (r, g, b), or None.
    class_name
        The class of every object (instead of the rows' ``class``).
    label
        What the shapes are, for the warning.

    Returns
    -------
    list of Annotation
        Polygons (invalid, self-intersecting ones repaired with make_valid) and lines, in order of
        first appearance; shapes without area or length are skipped with a warning.
    """
    objects: dict[str, dict] = {}  # id -> {"row", "color", "parts": {part: [shell, *holes]}, "lines": [...]}
    degenerate = 0
    for index, (xy, shape_type, row, color) in enumerate(
        zip(vertices_xy, shape_types, rows, colors, strict=True)
    ):
        key = object_key(row, index)
        entry = objects.setdefault(key, {"row": row, "color": color, "parts": {}, "lines": []})
        if shape_type not in POLYGONAL_TYPES:
            if len(xy) >= 2:
                entry["lines"].append(xy)
            else:
                degenerate += 1
            continue
        if len(xy) > 1 and (xy[0] == xy[-1]).all():
            xy = xy[:-1]  # viewers close rings themselves; a closed copy would count one vertex twice
        if len(xy) < 3:
            degenerate += 1
            continue
        ring = ellipse_ring(xy) if shape_type == "ellipse" else xy
        part = row.get("part")
        part = int(part) if isinstance(part, (int, float, np.number)) and math.isfinite(part) else index
        rings = entry["parts"].get(part)
        if row.get("ring") == "hole" and rings:
            rings.append(ring)
        else:  # an exterior; a second one with the same part number is a part of its own
            entry["parts"][part if rings is None else (part, index)] = [ring]
    batch = PolygonBatch()  # every polygon in one vectorised pass (100,000 tiles: see bench_geojson)
    slots = {
        key: batch.add(list(entry["parts"].values()), key, multi=len(entry["parts"]) > 1)
        for key, entry in objects.items()
        if entry["parts"]
    }
    polygons = _repaired(batch.build())
    annotations = []
    for key, entry in objects.items():
        polygon = polygons[slots[key]] if key in slots else None
        if polygon is not None and polygon.is_empty:
            degenerate += 1
            polygon = None
        if polygon is not None:
            annotations.append(annotation_from_row(polygon, entry["row"], entry["color"], key, class_name))
        if entry["lines"]:  # a line next to a polygon is an object of its own (fresh id)
            lines = entry["lines"]
            geometry = LineString(lines[0]) if len(lines) == 1 else MultiLineString(lines)
            annotations.append(
                annotation_from_row(
                    geometry, entry["row"], entry["color"], None if polygon is not None else key, class_name
                )
            )
    if degenerate:
        warnings.warn(f"{label}: skipped {degenerate} shapes without area or length", stacklevel=3)
    return annotations


def annotations_from_points(
    points_xy: np.ndarray, rows: Sequence[Mapping[str, object]], colors: Sequence[Color | None]
) -> list[Annotation]:
    """Point objects: one per ``id`` in the points' rows (a MultiPoint when shared), else one per point.

    Parameters
    ----------
    points_xy
        ``[n, 2]`` level-0 (x, y).
    rows, colors
        Each point's feature row and colour (see :func:`annotations_from_shapes`).
    """
    objects: dict[str, dict] = {}
    for index, (point, row, color) in enumerate(
        zip(np.asarray(points_xy).tolist(), rows, colors, strict=True)
    ):
        key = object_key(row, index)
        objects.setdefault(key, {"row": row, "color": color, "points": []})["points"].append(point)
    return [
        annotation_from_row(
            Point(e["points"][0]) if len(e["points"]) == 1 else MultiPoint(e["points"]),
            e["row"],
            e["color"],
            key,
            None,
        )
        for key, e in objects.items()
    ]


def object_key(row: Mapping[str, object], index: int) -> str:
    """The object a shape or point belongs to: its ``id``, or its own when the id is missing, empty or NaN."""
    value = row.get("id")
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
        return f"shape {index}"
    return str(value)


def row_measurements(row: Mapping[str, object]) -> dict[str, float]:
    """The finite numbers of a feature row that are not reserved columns (nor a Labels ``index``)."""
    kept = {}
    for key, value in row.items():
        if key in RESERVED_COLUMNS or key == "index" or isinstance(value, (str, bytes)) or value is None:
            continue
        if isinstance(value, (bool, np.bool_, int, np.integer, float, np.floating)) and math.isfinite(value):
            name = key[: -len(MEASUREMENT_SUFFIX)] if str(key).endswith(MEASUREMENT_SUFFIX) else str(key)
            kept[name] = int(value) if isinstance(value, (bool, np.bool_)) else value
    return kept


def annotation_from_row(
    geometry: BaseGeometry,
    row: Mapping[str, object],
    color: Color | None,
    key: str | None,
    class_name: str | None,
) -> Annotation:
    """An object from a feature row; ``key`` (its ``id``) is kept unless made up
    (write_geojson checks it is a UUID)."""
    metadata = row.get("metadata")
    return Annotation(
        geometry,
        str(row.get("object_type") or "annotation"),
        str(row.get("name") or "") or None,
        class_name or (str(row.get("class") or "") or None),
        color,
        row_measurements(row),
        id=key if key and not key.startswith("shape ") else str(uuid.uuid4()),
        metadata=json.loads(metadata) if isinstance(metadata, str) and metadata else {},
        is_locked=bool(row.get("is_locked", False) == True),  # noqa: E712 (numpy bools, NaN)
    )


def ellipse_ring(corners_xy: np.ndarray) -> np.ndarray:
    """An ellipse given by its 4 bounding-box corners (possibly rotated) as a 64-vertex ring."""
    centre = corners_xy.mean(axis=0)
    u, v = (corners_xy[1] - corners_xy[0]) / 2, (corners_xy[3] - corners_xy[0]) / 2
    t = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)[:, None]
    return centre + np.cos(t) * u + np.sin(t) * v


def _repaired(geometries: list) -> list:
    """Invalid (hand-drawn, self-intersecting) polygons repaired with make_valid, polygonal parts kept."""
    if not geometries:
        return []
    invalid = np.flatnonzero(~shapely.is_valid(np.array(geometries, dtype=object)))
    for i in invalid.tolist():
        parts = [
            p
            for p in shapely.get_parts(shapely.make_valid(geometries[i])).tolist()
            if isinstance(p, (Polygon, MultiPolygon))
        ]
        geometries[i] = shapely.union_all(parts) if parts else Polygon()
    return geometries
