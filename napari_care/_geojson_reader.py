"""napari reader for QuPath GeoJSON (``.geojson``, ``.json``, ``.geojson.gz``): annotations as layers.

Every accepted shape of the file (see :mod:`napari_care.core.qupath.read`) becomes:

- one **Shapes** layer with one shape per polygon ring and per line: the exterior ring of each
  polygon part, each hole as its own outline, lines as paths. napari's Shapes cannot cut holes
  into a filled shape, so faces are transparent and edges take the class colour, as QuPath
  draws annotations: the outlines show a polygon with holes exactly. The layer's features say
  which object, part and ring each shape is (see :mod:`napari_care.core.qupath.shape_table`),
  so :mod:`napari_care._writer` puts the holes back on export;
- one **Points** layer for Point and MultiPoint objects, when there are any.

Coordinates: shape data stay in level-0 pixels, (row, col) = (y, x); the layer's ``scale`` and
``translate`` (:class:`~napari_care.core.level0_frame.Level0Frame`) put them over the slide
layer. The frame comes from the selected slide layer of the current viewer (or the one given,
see :func:`napari_care._layers.viewer_frame`), so File > Open lands the annotations on the slide.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_care._layers import FRAME_KEY, ROLE_KEY, viewer_frame
from napari_care._reader import single_path
from napari_care._run_reader import is_run_file, read_run_layers
from napari_care.core.level0_frame import Level0Frame
from napari_care.core.qupath.objects import Annotation
from napari_care.core.qupath.read import read_geojson
from napari_care.core.qupath.shape_table import shapes_from_annotations

SUFFIXES = (".geojson", ".json", ".geojson.gz", ".json.gz")
_GEOJSON_MARKERS = (
    b'"Feature',
    b'"Polygon"',
    b'"MultiPolygon"',
    b'"LineString"',
    b'"Point"',
    b'"MultiPoint"',
    b'"MultiLineString"',
    b'"GeometryCollection"',
)

LayerData = tuple[Any, dict, str]


def napari_get_geojson_reader(path: str | list[str]):
    """Return :func:`read_geojson_layers` for a GeoJSON file, the saved run's reader
    (:func:`~napari_care._run_reader.read_run_layers`) for a ``<stem>.care.json`` or a
    ``<stem>.regions.geojson`` beside its run's files, else None (never raises)."""
    path = single_path(path)
    if path is None:
        return None
    if is_run_file(path):
        return read_run_layers
    return read_geojson_layers if is_geojson_path(path) else None


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
    layers, message = annotation_layers(
        annotations, name=Path(path).name.split(".")[0], frame=frame, source=str(path)
    )
    _notify(f"{Path(path).name}: {message}")
    return layers


def annotation_layers(
    annotations: Sequence[Annotation],
    *,
    name: str,
    frame: Level0Frame | None = None,
    source: str = "",
    keep_lines: bool = True,
    keep_points: bool = True,
) -> tuple[list[LayerData], str]:
    """Shapes (polygon rings, lines) and Points layer data of ``annotations``, and a summary line.

    Parameters
    ----------
    annotations
        The objects, geometry in level-0 pixels (as placed in the slide, offset applied).
    name
        Base name of the layers.
    frame
        Where level-0 pixels are in the world (default: pixels, no offset).
    source
        The file, kept in the layers' metadata.
    keep_lines, keep_points
        Keep lines (as paths) and points (as a Points layer), or skip them (counted in the summary).
    """
    frame = frame if frame is not None else Level0Frame()
    drawn = shapes_from_annotations(annotations, keep_lines=keep_lines, keep_points=keep_points)
    shapes, points = drawn.shapes, drawn.points
    metadata = {FRAME_KEY: frame.to_dict(), ROLE_KEY: "annotations", "source": source}
    layers: list[LayerData] = []
    if len(shapes):
        layers.append(
            (
                shapes.split(frame.level0_to_data(shapes.vertices_xy)),
                {
                    "name": name,
                    "shape_type": shapes.shape_types,
                    "features": shapes.features,
                    "feature_defaults": shapes.feature_defaults,
                    "edge_color": shapes.colors_rgba,
                    "face_color": "transparent",
                    "edge_width": drawn.outline_width_px,
                    "metadata": dict(metadata),
                    **frame.placement(),
                },
                "shapes",
            )
        )
    if len(points):
        layers.append(
            (
                frame.level0_to_data(points.vertices_xy),
                {
                    "name": f"{name} points",
                    "features": points.features,
                    "feature_defaults": points.feature_defaults,
                    "face_color": points.colors_rgba,
                    "size": 10.0,
                    "metadata": dict(metadata),
                    **frame.placement(),
                },
                "points",
            )
        )
    return layers, drawn.summary


def _notify(message: str) -> None:
    try:
        from napari.utils.notifications import show_info  # napari's GUI loads with the viewer
    except ImportError:  # pragma: no cover - napari is a dependency
        return
    show_info(message)
