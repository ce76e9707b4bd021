"""napari reader for QuPath GeoJSON (``.geojson``, ``.json``, ``.geojson.gz``): annotations as layers.

Every accepted shape of the file (see :mod:`napari_care.core.qupath.read`) becomes:

- one **Shapes** layer with one shape per polygon ring and per line: the exterior ring of each
  polygon part, each hole as its own outline, lines as paths. napari's Shapes cannot cut holes
  into a filled shape, so faces are transparent and edges take the class colour, as QuPath
  draws annotations: the outlines show a polygon with holes exactly. The layer's features say
  which object, part and ring each shape is (``id``, ``part``, ``ring`` = ``"exterior"``,
  ``"hole"`` or ``"line"``), with the object's ``object_type``, ``name``, ``class`` and one
  column per measurement, so :mod:`napari_care._writer` puts the holes back on export;
- one **Points** layer for Point and MultiPoint objects, when there are any.

Coordinates: shape data stay in level-0 pixels, (row, col) = (y, x); the layer's ``scale`` and
``translate`` (:class:`Level0Frame`) put them over the slide layer, whose level-0 pixel ``i``
is centred at ``i * mpp`` in the world. The frame comes from the selected slide layer of the
current viewer (or the one given), so File > Open lands the annotations on the slide.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import LineString, MultiLineString, MultiPoint, MultiPolygon, Point, Polygon

from napari_care._layers import slide_layers
from napari_care._reader import single_path
from napari_care.core.qupath.objects import Annotation, name_color
from napari_care.core.qupath.read import read_geojson

SUFFIXES = (".geojson", ".json", ".geojson.gz", ".json.gz")
FRAME_KEY = "napari_care_frame"
ROLE_KEY = "napari_care_role"
# Feature columns that describe the object; every other numeric column is a measurement.
RESERVED = ("id", "object_type", "name", "class", "part", "ring", "is_locked", "metadata")
DEFAULT_EDGE = (255, 255, 0)
EDGE_WIDTH_SHARE = 0.002  # outline width as a share of the annotations' extent
_GEOJSON_MARKERS = (b'"Feature', b'"Polygon"', b'"MultiPolygon"', b'"LineString"', b'"Point"', b'"MultiPoint"',
                    b'"MultiLineString"', b'"GeometryCollection"')  # fmt: skip

LayerData = tuple[Any, dict, str]


@dataclass(frozen=True)
class Level0Frame:
    """Where level-0 pixels sit in napari's world, and QuPath's origin shift.

    World (row, col) = ((y - 0.5) * scale[0], (x - 0.5) * scale[1]) for level-0 (x, y): the
    convention of :func:`napari_care._layers.level0_to_world`.

    Attributes
    ----------
    scale
        (row, col) world units per level-0 pixel: (mpp_y, mpp_x), or (1, 1) without mpp.
    bounds_offset
        The slide's bounds offset (x, y) in level-0 pixels: QuPath's coordinates are relative to
        it, so it is added on import and subtracted on export.
    """

    scale: tuple[float, float] = (1.0, 1.0)
    bounds_offset: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def from_slide_metadata(cls, metadata: dict, *, use_bounds: bool = True) -> Level0Frame:
        """The frame of a slide layer from its ``metadata["napari_care"]`` (see ``Slide.metadata``)."""
        info = metadata.get("napari_care") or {}
        mpp = info.get("mpp")
        offset = info.get("bounds_offset") or (0, 0)
        return cls((float(mpp[1]), float(mpp[0])) if mpp else (1.0, 1.0),
                   (float(offset[0]), float(offset[1])) if use_bounds else (0.0, 0.0))  # fmt: skip

    @classmethod
    def from_dict(cls, value: dict) -> Level0Frame:
        """The frame stored in a layer's metadata under :data:`FRAME_KEY`."""
        return cls(tuple(float(v) for v in value["scale"]), tuple(float(v) for v in value["bounds_offset"]))

    def to_dict(self) -> dict:
        """The frame as JSON-ready values (kept in layer metadata under :data:`FRAME_KEY`)."""
        return {"scale": list(self.scale), "bounds_offset": list(self.bounds_offset)}

    def placement(self) -> dict[str, tuple[float, float]]:
        """``scale`` and ``translate`` of a layer whose data are level-0 (y, x) coordinates."""
        return {"scale": self.scale, "translate": (-0.5 * self.scale[0], -0.5 * self.scale[1])}

    def data_to_level0(self, rowcol: np.ndarray, scale: Sequence[float], translate: Sequence[float]) -> np.ndarray:
        """``[N, 2]`` data (row, col) of a layer placed by ``scale``/``translate`` -> level-0 (x, y)."""
        rowcol = np.asarray(rowcol, dtype=np.float64)[:, -2:]
        world = rowcol * np.asarray(scale, dtype=np.float64)[-2:] + np.asarray(translate, dtype=np.float64)[-2:]
        return np.stack([world[:, 1] / self.scale[1] + 0.5, world[:, 0] / self.scale[0] + 0.5], axis=1)


def viewer_frame(viewer=None, *, use_bounds: bool = True) -> Level0Frame:
    """The frame of the selected slide layer (else the first one) of ``viewer`` or the current viewer.

    ``Level0Frame()`` (pixels, no offset) when there is no viewer or no slide.
    """
    if viewer is None:
        try:
            import napari  # napari's GUI loads with the viewer

            viewer = napari.current_viewer()
        except ImportError:
            viewer = None
    if viewer is None:
        return Level0Frame()

    slides = slide_layers(viewer)
    active = viewer.layers.selection.active
    layer = active if active in slides else (slides[0] if slides else None)
    return Level0Frame.from_slide_metadata(layer.metadata, use_bounds=use_bounds) if layer else Level0Frame()


def napari_get_geojson_reader(path: str | list[str]):
    """Return :func:`read_geojson_layers` for a GeoJSON file, else None (never raises)."""
    path = single_path(path)
    return read_geojson_layers if path is not None and is_geojson_path(path) else None


def is_geojson_path(path: Path) -> bool:
    """A GeoJSON suffix; a ``.json`` must also mention a Feature or geometry type early on."""
    name = path.name.lower()
    if not name.endswith(SUFFIXES) or not path.is_file():
        return False
    if not name.endswith(".json"):
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(65536)
    except OSError:
        return False
    return any(marker in head for marker in _GEOJSON_MARKERS)  # not e.g. a <stem>.care.json summary


def read_geojson_layers(path: str | list[str], *, frame: Level0Frame | None = None) -> list[LayerData]:
    """Read a GeoJSON file as napari layer data placed in ``frame`` (default: :func:`viewer_frame`)."""
    if isinstance(path, list):
        path = path[0]
    frame = frame if frame is not None else viewer_frame()
    annotations = read_geojson(path, bounds_offset=frame.bounds_offset)
    layers, message = annotation_layers(annotations, name=Path(path).name.split(".")[0], frame=frame,
                                        source=str(path))  # fmt: skip
    _notify(f"{Path(path).name}: {message}")
    return layers


def annotation_layers(annotations: Sequence[Annotation], *, name: str, frame: Level0Frame = Level0Frame(),
                      source: str = "", keep_lines: bool = True,
                      keep_points: bool = True) -> tuple[list[LayerData], str]:
    """Shapes (polygon rings, lines) and Points layer data of ``annotations``, and a summary line.

    Parameters
    ----------
    annotations
        The objects, geometry in level-0 pixels (as placed in the slide, offset applied).
    name
        Base name of the layers.
    frame
        Where level-0 pixels are in the world.
    source
        The file, kept in the layers' metadata.
    keep_lines, keep_points
        Keep lines (as paths) and points (as a Points layer), or skip them (counted in the summary).
    """
    polygonal = [i for i, a in enumerate(annotations)
                 if isinstance(a.geometry, (Polygon, MultiPolygon)) and not a.geometry.is_empty]  # fmt: skip
    geometries = np.array([annotations[i].geometry for i in polygonal], dtype=object)
    object_of_ring, part_of_ring, is_hole, shapes = _polygon_rings(geometries)
    shape_objects = np.asarray(polygonal, dtype=np.int64)[object_of_ring].tolist()
    shape_parts, kinds = part_of_ring.tolist(), np.where(is_hole, "hole", "exterior").tolist()
    shape_types = ["polygon"] * len(shapes)
    points, point_objects, point_parts = [], [], []
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
                shapes.append(_rowcol(np.asarray(line.coords)))
                shape_types.append("path")
                shape_objects.append(index)
                shape_parts.append(part)
                kinds.append("line")
        elif isinstance(geometry, (Point, MultiPoint)):
            if not keep_points:
                skipped["points"] += 1
                continue
            for part, point in enumerate(shapely.get_parts(geometry).tolist()):
                points.append(_rowcol(np.asarray(point.coords))[0])
                point_objects.append(index)
                point_parts.append(part)
    metadata = {FRAME_KEY: frame.to_dict(), ROLE_KEY: "annotations", "source": source}
    layers: list[LayerData] = []
    if shapes:
        extent = np.ptp(np.concatenate(shapes), axis=0).max()
        table = _table(annotations, shape_objects, shape_parts, kinds)
        layers.append((shapes, {
            "name": name, "shape_type": shape_types,
            "features": table, "feature_defaults": _new_object_defaults(table, "exterior"),
            "edge_color": _object_colours(annotations, shape_objects), "face_color": "transparent",
            "edge_width": max(1.0, EDGE_WIDTH_SHARE * float(extent)), "metadata": dict(metadata),
            **frame.placement(),
        }, "shapes"))  # fmt: skip
    if points:
        table = _table(annotations, point_objects, point_parts, "point")
        layers.append((np.array(points), {
            "name": f"{name} points", "features": table, "feature_defaults": _new_object_defaults(table, "point"),
            "face_color": _object_colours(annotations, point_objects), "size": 10.0, "metadata": dict(metadata),
            **frame.placement(),
        }, "points"))  # fmt: skip
    kept = len(set(shape_objects) | set(point_objects))
    message = (f"{kept} objects as {len(shapes)} shapes ({int(is_hole.sum())} holes as outlines) "
               f"and {len(points)} points")  # fmt: skip
    dropped = ", ".join(f"{n} {what}" for what, n in skipped.items() if n)
    return layers, message + (f"; skipped {dropped}" if dropped else "")


def _polygon_rings(geometries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Every ring of (Multi)Polygons in one vectorised pass: which geometry and part it belongs to,
    whether it is a hole, and its vertices as (row, col) without the closing vertex."""
    if not len(geometries):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool), []
    parts, object_of_part = shapely.get_parts(geometries, return_index=True)
    part_number = np.arange(len(parts)) - np.searchsorted(object_of_part, object_of_part)
    rings, part_of_ring = shapely.get_rings(parts, return_index=True)
    is_hole = np.r_[False, part_of_ring[1:] == part_of_ring[:-1]]  # a part's first ring is its exterior
    xy, ring_of_xy = shapely.get_coordinates(rings, return_index=True)
    ends = np.cumsum(np.bincount(ring_of_xy, minlength=len(rings)))
    open_xy = np.delete(xy, ends - 1, axis=0)  # napari closes polygons itself
    shapes = np.split(_rowcol(open_xy), (ends - np.arange(1, len(rings) + 1))[:-1])
    return object_of_part[part_of_ring], part_number[part_of_ring], is_hole, shapes


def _rowcol(xy: np.ndarray) -> np.ndarray:
    """Level-0 (x, y) -> napari data (row, col): the one place the axes swap on import."""
    return np.asarray(xy, dtype=np.float64)[:, [1, 0]]


def _table(annotations: Sequence[Annotation], objects: list[int], parts: list[int],
           kinds: list[str] | str) -> dict[str, object]:
    """The features table of shapes or points: their object's properties and measurements, part and ring.

    Built per object, then spread over its shapes (a region with holes has several rings).
    """
    unique, position = np.unique(np.asarray(objects, dtype=np.int64), return_inverse=True)
    rows = [_object_row(annotations[i]) for i in unique.tolist()]
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    fill = {"is_locked": False, "metadata": ""}
    table: dict[str, object] = {}
    for column in names:
        values = np.asarray([row.get(column, fill.get(column, math.nan)) for row in rows], dtype=object)
        table[column] = values[position].tolist()
        if column == "class":
            table["part"], table["ring"] = list(parts), [kinds] * len(objects) if isinstance(kinds, str) else kinds
    return table


def _new_object_defaults(table: dict[str, object], kind: str) -> dict[str, object]:
    """The features a shape or point drawn by the user gets: those of a new, unnamed object.

    napari would otherwise copy the last row, id included, and the writer would then save the
    drawing as a part (or a hole) of the last imported object.
    """
    defaults: dict[str, object] = {}
    for column, values in table.items():
        sample = next((v for v in values if v is not None), "")  # type: ignore[union-attr]
        if isinstance(sample, (bool, np.bool_)):
            defaults[column] = False
        else:
            defaults[column] = "" if isinstance(sample, str) else math.nan
    defaults.update(id="", object_type="annotation", part=math.nan, ring=kind)
    return defaults


def _object_row(annotation: Annotation) -> dict[str, object]:
    row: dict[str, object] = {
        "id": annotation.id, "object_type": annotation.object_type, "name": annotation.name or "",
        "class": annotation.class_name or "",
    }  # fmt: skip
    if annotation.is_locked:
        row["is_locked"] = True
    if annotation.metadata:
        row["metadata"] = json.dumps(annotation.metadata, ensure_ascii=False)
    for key, value in annotation.measurements.items():
        row[key if key not in RESERVED else f"{key} (measurement)"] = value
    return row


def _object_colours(annotations: Sequence[Annotation], objects: list[int]) -> np.ndarray:
    """``[n, 4]`` RGBA of each shape: its object's colour, else its class's, else yellow."""
    unique, position = np.unique(np.asarray(objects, dtype=np.int64), return_inverse=True)
    colours = [
        annotations[i].color or (name_color(annotations[i].class_name) if annotations[i].class_name else DEFAULT_EDGE)
        for i in unique.tolist()
    ]
    rgba = np.ones((len(unique), 4))
    rgba[:, :3] = np.asarray(colours, dtype=np.float64).reshape(-1, 3) / 255.0
    return rgba[position]


def _notify(message: str) -> None:
    try:
        from napari.utils.notifications import show_info  # napari's GUI loads with the viewer
    except ImportError:  # pragma: no cover - napari is a dependency
        return
    show_info(message)
