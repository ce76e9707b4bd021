"""npe2 writer: Shapes, Labels and Points layers (the CARE layers among them) as QuPath GeoJSON.

``.geojson``, or ``.geojson.gz`` compressed; one FeatureCollection for all the layers saved
together, snapped to the file's 0.01-pixel grid (so rounding never makes a polygon invalid) and
written atomically by :func:`napari_care.core.qupath.write.write_geojson`.

- **Shapes**: one object per ``id`` in the layer's features (as :mod:`napari_care._geojson_reader`
  makes them: exterior rings, holes and parts put back together), else one per shape.
  Polygons, rectangles and ellipses (as 64-gons) become Polygons, paths and lines LineStrings.
  Class, name, object type and the numeric feature columns (measurements, NaN left out) come
  from the features; the colour from the edge colour. The ``"CARE ROI"`` layer's rectangles
  are classified ``"CARE ROI"``.
- **Labels**: one object per label value, exact on pixel edges (holes kept). The
  ``"CARE regions"`` layer (``metadata["napari_care_role"] == "regions"``) is written as
  ``napari-care segment`` writes it: regions as detections with their table as measurements,
  the ROI outline as a ``"CARE ROI"`` annotation, optionally per-patch tiles.
- **Points**: one Point object per point.

Coordinates go from the layer's data through its ``scale``/``translate`` to the world, then to
level-0 pixels with the :class:`~napari_care._geojson_reader.Level0Frame` stored in the layer
(layers this plugin made) or of the viewer's slide layer, minus the slide's bounds offset.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import warnings
from typing import Any

import numpy as np
import shapely
from shapely.geometry import LineString, MultiLineString, MultiPoint, MultiPolygon, Point, Polygon

from napari_care._geojson_reader import FRAME_KEY, RESERVED, ROLE_KEY, Level0Frame, viewer_frame
from napari_care.core.qupath.objects import ROI_CLASS, Annotation
from napari_care.core.qupath.polygons import label_grid_polygons
from napari_care.core.qupath.read import _PolygonBatch  # the reader's batch polygon builder, reused
from napari_care.core.qupath.write import (
    RegionTable,
    care_metadata,
    region_features,
    roi_features,
    tile_features,
    write_geojson,
)

ELLIPSE_VERTICES = 64
POLYGONAL_TYPES = ("polygon", "rectangle", "ellipse")


def write_geojson_layers(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """npe2 writer: every Shapes, Labels and Points layer given, in one GeoJSON file."""
    annotations: list[Annotation] = []
    offsets = set()
    for data, attributes, layer_type in layer_data:
        frame = layer_frame(attributes)
        offsets.add(frame.bounds_offset)
        annotations += layer_annotations(data, attributes, layer_type, frame)
    if len(offsets) > 1:
        raise ValueError(f"{path}: the layers belong to slides with different bounds offsets {sorted(offsets)}")
    write_annotations(path, annotations, bounds_offset=offsets.pop() if offsets else (0.0, 0.0))
    return [path]


def write_annotations(path: str | os.PathLike[str], annotations: list[Annotation], *,
                      bounds_offset: tuple[float, float] = (0.0, 0.0)) -> int:
    """Write objects as QuPath GeoJSON (snapped to the file's 0.01-pixel grid); returns the count."""
    return write_geojson(path, annotations, bounds_offset=bounds_offset)


def layer_frame(attributes: dict) -> Level0Frame:
    """The frame stored in the layer's metadata, else that of the current viewer's slide."""
    stored = (attributes.get("metadata") or {}).get(FRAME_KEY)
    return Level0Frame.from_dict(stored) if stored else viewer_frame()


def layer_annotations(data: Any, attributes: dict, layer_type: str, frame: Level0Frame, *,
                      tiles: bool = False) -> list[Annotation]:
    """The objects of one layer's data tuple, geometry in level-0 pixels of the slide."""
    _check_axis_aligned(attributes)
    role = (attributes.get("metadata") or {}).get(ROLE_KEY)
    if layer_type == "labels":
        if role == "regions":
            return care_region_annotations(data, attributes, frame, tiles=tiles)
        return labels_annotations(data, attributes, frame)
    if layer_type == "shapes":
        return shapes_annotations(data, attributes, frame, class_name=ROI_CLASS if role == "roi" else None)
    if layer_type == "points":
        return points_annotations(data, attributes, frame)
    raise ValueError(f"layer {attributes.get('name')!r}: a {layer_type} layer cannot be written as GeoJSON")


def _object_key(row: dict, index: int) -> str:
    """The object a shape or point belongs to: its ``id``, or its own when the id is missing, empty or NaN."""
    value = row.get("id")
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
        return f"shape {index}"
    return str(value)


def shapes_annotations(data: list, attributes: dict, frame: Level0Frame, *,
                       class_name: str | None = None) -> list[Annotation]:
    """Objects of a Shapes layer (see the module docstring); degenerate shapes are skipped with a warning."""
    features = _records(attributes, len(data))
    shape_types = list(attributes.get("shape_type") or ["polygon"] * len(data))
    colours = _colours(attributes.get("edge_color"), len(data))
    objects: dict[str, dict] = {}  # id -> {"row", "colour", "parts": {part: [shell, *holes]}, "lines": [...]}
    degenerate = 0
    for index, (xy, shape_type, row) in enumerate(
        zip(_level0_vertices(data, attributes, frame), shape_types, features, strict=True)
    ):
        key = _object_key(row, index)
        entry = objects.setdefault(key, {"row": row, "colour": colours[index], "parts": {}, "lines": []})
        if shape_type not in POLYGONAL_TYPES:
            if len(xy) >= 2:
                entry["lines"].append(xy)
            else:
                degenerate += 1
            continue
        if len(xy) > 1 and (xy[0] == xy[-1]).all():
            xy = xy[:-1]  # napari closes rings itself; a closed copy would count one vertex twice
        if len(xy) < 3:
            degenerate += 1
            continue
        ring = _ellipse(xy) if shape_type == "ellipse" else xy
        part = row.get("part")
        part = int(part) if isinstance(part, (int, float, np.number)) and math.isfinite(part) else index
        rings = entry["parts"].get(part)
        if row.get("ring") == "hole" and rings:
            rings.append(ring)
        else:  # an exterior; a second one with the same part number is a part of its own
            entry["parts"][part if rings is None else (part, index)] = [ring]
    batch = _PolygonBatch()  # every polygon in one vectorised pass (100,000 tiles: see bench_geojson)
    slots = {key: batch.add(list(entry["parts"].values()), key, multi=len(entry["parts"]) > 1)
             for key, entry in objects.items() if entry["parts"]}  # fmt: skip
    polygons = _repaired(batch.build())
    annotations = []
    for key, entry in objects.items():
        polygon = polygons[slots[key]] if key in slots else None
        if polygon is not None and polygon.is_empty:
            degenerate += 1
            polygon = None
        if polygon is not None:
            annotations.append(_annotation(polygon, entry, key, class_name))
        if entry["lines"]:  # a line next to a polygon is an object of its own (fresh id)
            lines = entry["lines"]
            geometry = LineString(lines[0]) if len(lines) == 1 else MultiLineString(lines)
            annotations.append(_annotation(geometry, entry, None if polygon is not None else key, class_name))
    if degenerate:
        warnings.warn(f"layer {attributes.get('name')!r}: skipped {degenerate} shapes without area or length",
                      stacklevel=2)  # fmt: skip
    return annotations


def _level0_vertices(data: list, attributes: dict, frame: Level0Frame) -> list[np.ndarray]:
    """Every shape's vertices in level-0 (x, y), transformed in one pass."""
    if not len(data):
        return []
    scale, translate = _placement(attributes)
    arrays = [np.asarray(vertices, dtype=np.float64) for vertices in data]
    xy = frame.data_to_level0(np.concatenate(arrays), scale, translate)
    return np.split(xy, np.cumsum([len(a) for a in arrays])[:-1])


def _repaired(geometries: list) -> list:
    """Invalid (hand-drawn, self-intersecting) polygons repaired with make_valid, polygonal parts kept."""
    if not geometries:
        return []
    invalid = np.flatnonzero(~shapely.is_valid(np.array(geometries, dtype=object)))
    for i in invalid.tolist():
        parts = [p for p in shapely.get_parts(shapely.make_valid(geometries[i])).tolist()
                 if isinstance(p, (Polygon, MultiPolygon))]  # fmt: skip
        geometries[i] = shapely.union_all(parts) if parts else Polygon()
    return geometries


def points_annotations(data: np.ndarray, attributes: dict, frame: Level0Frame) -> list[Annotation]:
    """Point objects of a Points layer: one per ``id`` in its features (MultiPoint when shared), else per point."""
    data = np.asarray(data, dtype=np.float64)
    data = data.reshape(-1, data.shape[-1] if data.ndim == 2 else 2)
    features = _records(attributes, len(data))
    colours = _colours(attributes.get("face_color"), len(data))
    scale, translate = _placement(attributes)
    xy = frame.data_to_level0(data, scale, translate) if len(data) else np.zeros((0, 2))
    objects: dict[str, dict] = {}
    for index, (point, row, colour) in enumerate(zip(xy.tolist(), features, colours, strict=True)):
        key = _object_key(row, index)
        objects.setdefault(key, {"row": row, "colour": colour, "points": []})["points"].append(point)
    return [_annotation(Point(e["points"][0]) if len(e["points"]) == 1 else MultiPoint(e["points"]), e, key, None)
            for key, e in objects.items()]  # fmt: skip


def labels_annotations(data: Any, attributes: dict, frame: Level0Frame) -> list[Annotation]:
    """One object per label value (> 0) of a Labels layer; class from a ``class`` feature column."""
    labels = _labels_2d(data, attributes)
    polygons = labels_polygons(np.where(labels > 0, labels, -1), attributes, frame)
    by_index = {int(r.get("index", -1)): r for r in _records(attributes, None)}
    colormap = attributes.get("colormap")
    annotations = []
    for value, geometry in polygons.items():
        row = by_index.get(value, {})
        class_name = str(row.get("class") or "") or None
        name = str(row.get("name") or "") or f"{attributes.get('name', 'label')} {value}"
        annotations.append(Annotation(geometry, str(row.get("object_type") or "annotation"), name, class_name,
                                      _label_colour(colormap, value), _measurements(row)))  # fmt: skip
    return annotations


def care_region_annotations(data: Any, attributes: dict, frame: Level0Frame, *,
                            tiles: bool = False) -> list[Annotation]:
    """The CARE regions layer as ``napari-care segment`` writes it (regions, ROI, optional tiles)."""
    labels = _labels_2d(data, attributes).astype(np.int64) - 1  # label = region id + 1
    polygons = labels_polygons(labels, attributes, frame)
    table = _care_table(attributes)
    mpp = frame.scale[1] if frame.scale != (1.0, 1.0) else None
    extra = {k: v for k, v in (attributes.get("metadata") or {}).items() if k in ("encoder", "k", "mode")}
    metadata = care_metadata(mpp=mpp, **extra)
    annotations = region_features(polygons, table, mpp=mpp, metadata=metadata)
    annotations += roi_features(polygons, [r for r in table.roi_ids if r in polygons], table=table, mpp=mpp,
                                metadata=metadata)  # fmt: skip
    if tiles:
        origin, cell = labels_origin(attributes, frame)
        rows, cols = np.nonzero(labels >= 0)
        region = labels[rows, cols]
        weight = dict(zip(table.region_id.tolist(), np.asarray(table.a, dtype=np.float64).tolist(), strict=True))
        cells = np.bincount(region)
        attention = np.array([weight.get(int(r), 0.0) for r in region]) / cells[region]
        coords = np.stack([origin[0] + cols * cell[0], origin[1] + rows * cell[1]], axis=1)
        annotations += tile_features(coords, cell[0], {"CARE attention": attention, "CARE region id": region})
    return annotations


def labels_origin(attributes: dict, frame: Level0Frame) -> tuple[tuple[float, float], tuple[float, float]]:
    """Level-0 (x, y) of a Labels layer's top-left pixel corner and its pixel size (x, y)."""
    scale, translate = _placement(attributes)
    corners = frame.data_to_level0(np.array([[-0.5, -0.5], [0.5, 0.5]]), scale, translate)
    return (float(corners[0, 0]), float(corners[0, 1])), tuple((corners[1] - corners[0]).tolist())


def labels_polygons(labels: np.ndarray, attributes: dict, frame: Level0Frame) -> dict[int, Any]:
    """Exact polygons (level-0) of a region grid (``-1`` = none) shown as a Labels layer."""
    (x0, y0), (cell_x, cell_y) = labels_origin(attributes, frame)
    if math.isclose(cell_x, cell_y, rel_tol=1e-9):
        return label_grid_polygons(labels, origin_xy=(x0, y0), cell_size_px=cell_x)
    unit = label_grid_polygons(labels)
    stretch = np.array([cell_x, cell_y])
    return {key: shapely.transform(g, lambda xy: xy * stretch + (x0, y0)) for key, g in unit.items()}


def _care_table(attributes: dict) -> RegionTable:
    features = attributes.get("features")
    if features is None or "region" not in getattr(features, "columns", ()):
        raise ValueError(f"layer {attributes.get('name')!r}: a CARE regions layer needs its region table (features)")
    table = features[features["region"] >= 0]
    column = lambda name: table[name].to_numpy() if name in table else None  # noqa: E731
    is_roi = column("is_roi")
    return RegionTable(
        region_id=column("region").astype(np.int64), n_patches=column("patches").astype(np.int64),
        alpha=column("alpha"), beta=column("beta"), a=column("a"), area_um2=column("area_um2"),
        group=column("group"),
        roi_ids=tuple(int(r) for r in column("region")[is_roi.astype(bool)]) if is_roi is not None else (),
    )  # fmt: skip


def _check_axis_aligned(attributes: dict) -> None:
    for key in ("rotate", "shear"):
        value = attributes.get(key)
        if value is not None and not np.allclose(np.asarray(value, dtype=np.float64),
                                                 np.eye(2) if key == "rotate" else 0):  # fmt: skip
            raise ValueError(f"layer {attributes.get('name')!r} is {key}d; GeoJSON export needs an axis-aligned layer")


def _placement(attributes: dict) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray(attributes.get("scale", (1.0, 1.0)), dtype=np.float64)
    translate = np.asarray(attributes.get("translate", np.zeros(len(scale))), dtype=np.float64)
    return scale, translate


def _labels_2d(data: Any, attributes: dict) -> np.ndarray:
    if attributes.get("multiscale"):
        data = data[0]
    labels = np.asarray(data)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"layer {attributes.get('name')!r}: GeoJSON export needs 2-D integer labels, "
                         f"got shape {labels.shape} {labels.dtype}")  # fmt: skip
    return labels


def _records(attributes: dict, n: int | None) -> list[dict]:
    """The feature rows of a layer as dicts (``n`` empty rows when it has none)."""
    features = attributes.get("features")
    if features is None or len(getattr(features, "columns", ())) == 0:
        return [{} for _ in range(n or 0)]
    columns = [str(c) for c in features.columns]  # column lists, then rows: 5x faster than to_dict
    records = [dict(zip(columns, values, strict=True)) for values in zip(*(features[c].tolist() for c in features.columns), strict=True)]
    if n is not None and len(records) != n:
        raise ValueError(f"layer {attributes.get('name')!r}: {len(records)} feature rows for {n} items")
    return records


def _colours(value: Any, n: int) -> list[tuple[int, int, int] | None]:
    if value is None:
        return [None] * n
    rgba = np.asarray(value, dtype=np.float64).reshape(-1, 4) if np.size(value) else np.zeros((0, 4))
    if len(rgba) == 1 and n > 1:
        rgba = np.repeat(rgba, n, axis=0)
    rgb = np.rint(rgba[:n, :3] * 255).astype(int).tolist()
    return [tuple(c) for c in rgb] + [None] * (n - len(rgb))


def _label_colour(colormap: Any, value: int) -> tuple[int, int, int] | None:
    try:
        rgba = np.asarray(colormap.map(np.array([value])), dtype=np.float64).reshape(-1)
    except (AttributeError, TypeError, ValueError):
        return None
    return tuple(round(float(c) * 255) for c in rgba[:3])


def _measurements(row: dict) -> dict[str, float]:
    kept = {}
    for key, value in row.items():
        if key in RESERVED or key == "index" or isinstance(value, (str, bytes)) or value is None:
            continue
        if isinstance(value, (bool, np.bool_, int, np.integer, float, np.floating)) and math.isfinite(value):
            name = key[: -len(" (measurement)")] if str(key).endswith(" (measurement)") else str(key)
            kept[name] = int(value) if isinstance(value, (bool, np.bool_)) else value
    return kept


def _annotation(geometry, entry: dict, key: str | None, class_name: str | None) -> Annotation:
    """An object from a layer's feature row; ``key`` (its ``id``) is kept when it is a UUID (write_geojson checks)."""
    row = entry["row"]
    metadata = row.get("metadata")
    return Annotation(
        geometry, str(row.get("object_type") or "annotation"), str(row.get("name") or "") or None,
        class_name or (str(row.get("class") or "") or None), entry["colour"], _measurements(row),
        id=key if key and not key.startswith("shape ") else str(uuid.uuid4()),
        metadata=json.loads(metadata) if isinstance(metadata, str) and metadata else {},
        is_locked=bool(row.get("is_locked", False) == True),  # noqa: E712 (numpy bools, NaN)
    )  # fmt: skip


def _ellipse(corners: np.ndarray) -> np.ndarray:
    """A napari ellipse (its 4 bounding-box corners, possibly rotated) as a polygon ring."""
    centre = corners.mean(axis=0)
    u, v = (corners[1] - corners[0]) / 2, (corners[3] - corners[0]) / 2
    t = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)[:, None]
    return centre + np.cos(t) * u + np.sin(t) * v
