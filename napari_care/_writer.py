"""npe2 writer: Shapes, Labels and Points layers (the CARE layers among them) as QuPath GeoJSON.

``.geojson``, or ``.geojson.gz`` compressed; one FeatureCollection for all the layers saved
together, snapped to the file's 0.01-pixel grid (so rounding never makes a polygon invalid) and
written atomically by :func:`napari_care.core.qupath.write.write_geojson`.

- **Shapes**: one object per ``id`` in the layer's features (as :mod:`napari_care._geojson_reader`
  makes them: exterior rings, holes and parts put back together), else one per shape.
  Polygons, rectangles and ellipses (as 64-gons) become Polygons, paths and lines LineStrings.
  Class, name, object type and the numeric feature columns (measurements, NaN left out) come
  from the features; the colour from the edge colour. The ``"CARE ROI"`` layer's rectangles
  are classified ``"CARE ROI"``. (:func:`napari_care.core.qupath.shape_table.annotations_from_shapes`)
- **Labels**: one object per label value, exact on pixel edges (holes kept). The
  ``"CARE regions"`` layer (``metadata["napari_care_role"] == "regions"``) is written as
  ``napari-care segment`` writes it: regions as detections with their table as measurements,
  the ROI outline as a ``"CARE ROI"`` annotation, optionally per-patch tiles.
  (:mod:`napari_care.core.qupath.label_objects`)
- **Points**: one Point object per point.

Coordinates go from the layer's data through its ``scale``/``translate`` to level-0 pixels with
the :class:`~napari_care.core.level0_frame.Level0Frame` stored in the layer (layers this plugin
made) or of the viewer's slide layer (:func:`napari_care._layers.layer_frame`); the file gets
the slide's bounds offset subtracted.

This module only reads the layers' data and attributes; the objects are made in the core.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from napari_care._layers import (
    ROLE_KEY,
    layer_data_to_level0,
    layer_frame,
    layer_raster_origin,
    layer_shapes_to_level0,
)
from napari_care.core.level0_frame import Level0Frame
from napari_care.core.qupath.label_objects import (
    annotations_from_labels,
    annotations_from_region_grid,
    region_table_from_columns,
)
from napari_care.core.qupath.objects import ROI_CLASS, Annotation, Color
from napari_care.core.qupath.shape_table import annotations_from_points, annotations_from_shapes
from napari_care.core.qupath.write import write_geojson

CARE_RUN_KEYS = ("encoder", "k", "mode")  # what the CARE regions layer's metadata says of its run


def write_geojson_layers(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """npe2 writer: every Shapes, Labels and Points layer given, in one GeoJSON file."""
    annotations: list[Annotation] = []
    offsets = set()
    for data, attributes, layer_type in layer_data:
        frame = layer_frame(attributes)
        offsets.add(frame.bounds_offset)
        annotations += layer_annotations(data, attributes, layer_type, frame)
    if len(offsets) > 1:
        raise ValueError(
            f"{path}: the layers belong to slides with different bounds offsets {sorted(offsets)}"
        )
    write_annotations(path, annotations, bounds_offset=offsets.pop() if offsets else (0.0, 0.0))
    return [path]


def write_annotations(
    path: str | os.PathLike[str],
    annotations: list[Annotation],
    *,
    bounds_offset: tuple[float, float] = (0.0, 0.0),
) -> int:
    """Write objects as QuPath GeoJSON (snapped to the file's 0.01-pixel grid); returns the count."""
    return write_geojson(path, annotations, bounds_offset=bounds_offset)


def layer_annotations(
    data: Any, attributes: dict, layer_type: str, frame: Level0Frame, *, tiles: bool = False
) -> list[Annotation]:
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


def shapes_annotations(
    data: list, attributes: dict, frame: Level0Frame, *, class_name: str | None = None
) -> list[Annotation]:
    """Objects of a Shapes layer (see the module docstring); degenerate shapes are skipped with a warning."""
    return annotations_from_shapes(
        layer_shapes_to_level0(data, attributes, frame),
        list(attributes.get("shape_type") or ["polygon"] * len(data)),
        _records(attributes, len(data)),
        _colours(attributes.get("edge_color"), len(data)),
        class_name=class_name,
        label=f"layer {attributes.get('name')!r}",
    )


def points_annotations(data: np.ndarray, attributes: dict, frame: Level0Frame) -> list[Annotation]:
    """Point objects of a Points layer: one per ``id`` in its features (MultiPoint when shared),
    else per point."""
    data = np.asarray(data, dtype=np.float64)
    data = data.reshape(-1, data.shape[-1] if data.ndim == 2 else 2)
    xy = layer_data_to_level0(data, attributes, frame) if len(data) else np.zeros((0, 2))
    return annotations_from_points(
        xy, _records(attributes, len(data)), _colours(attributes.get("face_color"), len(data))
    )


def labels_annotations(data: Any, attributes: dict, frame: Level0Frame) -> list[Annotation]:
    """One object per label value (> 0) of a Labels layer; class from a ``class`` feature column."""
    origin, pixel_size = layer_raster_origin(attributes, frame)
    colormap = attributes.get("colormap")
    return annotations_from_labels(
        _labels_2d(data, attributes),
        origin_xy=origin,
        pixel_size_xy=pixel_size,
        rows=_records(attributes, None),
        name_prefix=str(attributes.get("name", "label")),
        color_of_label=lambda value: _label_colour(colormap, value),
    )


def care_region_annotations(
    data: Any, attributes: dict, frame: Level0Frame, *, tiles: bool = False
) -> list[Annotation]:
    """The CARE regions layer as ``napari-care segment`` writes it (regions, ROI, optional tiles)."""
    region_of_cell = _labels_2d(data, attributes).astype(np.int64) - 1  # label = region id + 1
    features = attributes.get("features")
    if features is None or "region" not in getattr(features, "columns", ()):
        raise ValueError(
            f"layer {attributes.get('name')!r}: a CARE regions layer needs its region table (features)"
        )
    origin, cell_size = layer_raster_origin(attributes, frame)
    run_info = {k: v for k, v in (attributes.get("metadata") or {}).items() if k in CARE_RUN_KEYS}
    return annotations_from_region_grid(
        region_of_cell,
        region_table_from_columns(features),
        origin_xy=origin,
        cell_size_xy=cell_size,
        mpp=frame.mpp,
        run_info=run_info,
        tiles=tiles,
    )


def _check_axis_aligned(attributes: dict) -> None:
    for key in ("rotate", "shear"):
        value = attributes.get(key)
        if value is not None and not np.allclose(
            np.asarray(value, dtype=np.float64), np.eye(2) if key == "rotate" else 0
        ):
            raise ValueError(
                f"layer {attributes.get('name')!r} is {key}d; GeoJSON export needs an axis-aligned layer"
            )


def _labels_2d(data: Any, attributes: dict) -> np.ndarray:
    if attributes.get("multiscale"):
        data = data[0]
    labels = np.asarray(data)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"layer {attributes.get('name')!r}: GeoJSON export needs 2-D integer labels, "
            f"got shape {labels.shape} {labels.dtype}"
        )
    return labels


def _records(attributes: dict, n: int | None) -> list[dict]:
    """The feature rows of a layer as dicts (``n`` empty rows when it has none)."""
    features = attributes.get("features")
    if features is None or len(getattr(features, "columns", ())) == 0:
        return [{} for _ in range(n or 0)]
    columns = [str(c) for c in features.columns]  # column lists, then rows: 5x faster than to_dict
    records = [
        dict(zip(columns, values, strict=True))
        for values in zip(*(features[c].tolist() for c in features.columns), strict=True)
    ]
    if n is not None and len(records) != n:
        raise ValueError(f"layer {attributes.get('name')!r}: {len(records)} feature rows for {n} items")
    return records


def _colours(value: Any, n: int) -> list[Color | None]:
    """A layer's colours (RGBA in [0, 1], one or one per item) as ``n`` (r, g, b) or None."""
    if value is None:
        return [None] * n
    rgba = np.asarray(value, dtype=np.float64).reshape(-1, 4) if np.size(value) else np.zeros((0, 4))
    if len(rgba) == 1 and n > 1:
        rgba = np.repeat(rgba, n, axis=0)
    rgb = np.rint(rgba[:n, :3] * 255).astype(int).tolist()
    return [tuple(c) for c in rgb] + [None] * (n - len(rgb))


def _label_colour(colormap: Any, value: int) -> Color | None:
    """The colour napari draws label ``value`` in, or None without a colormap."""
    try:
        rgba = np.asarray(colormap.map(np.array([value])), dtype=np.float64).reshape(-1)
    except (AttributeError, TypeError, ValueError):
        return None
    return tuple(round(float(c) * 255) for c in rgba[:3])
