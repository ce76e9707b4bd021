"""Write QuPath-compatible GeoJSON: CARE regions, the ROI and per-tile attention.

Every file is a ``FeatureCollection`` with one Feature per object, written atomically, one
Feature per line, UTF-8, ``.geojson.gz`` compressed when asked. Each Feature has a UUID
``id``, ``properties.objectType``, a classification with a name and always a colour,
measurements as a flat map of finite numbers (NaN and infinity dropped: they break QuPath
before 0.5), metadata as a string map, and coordinates in level-0 pixels rounded to two
decimals with closed rings, exterior rings counter-clockwise and holes clockwise in numeric
(x, y) order (RFC 7946). See :mod:`napari_care.core.qupath.objects` for the object types chosen.
"""

from __future__ import annotations

import gzip as gzip_module
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import shapely
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from napari_care import __version__
from napari_care.core.atomic import atomic_path
from napari_care.core.qupath.objects import (
    REGION_CLASS,
    REGION_COLOR,
    ROI_CLASS,
    ROI_COLOR,
    TILE_CLASS,
    TILE_COLOR,
    Annotation,
    Color,
    as_uuid,
    group_class_name,
    group_color,
    name_color,
)

COORDINATE_DECIMALS = 2
_POLYGONAL = (3, 6)  # shapely type ids of Polygon and MultiPolygon


@dataclass(frozen=True)
class RegionTable:
    """Per-region CARE measurements: arrays of equal length R, one entry per region.

    Parameters
    ----------
    region_id
        ``[R]`` region ids (the labels of the region grid, ``>= 0``).
    n_patches
        ``[R]`` patches per region.
    alpha, beta, a
        ``[R]`` CARE spatial weight, semantic weight and combined weight.
    area_um2
        ``[R]`` region area in square micrometres; None (or NaN entries) when uncalibrated.
    group
        ``[R]`` phenotype group per region, ``-1`` for none; None when not clustered.
    roi_ids
        Ids of the ROI regions (usually one).
    tissue_share, mean_attention
        ``[R]`` share of the run's tissue (patches) and mean patch attention of each region.
    group_names
        Group id -> the class name QuPath shows (default ``"CARE group <id>"``).
    """

    region_id: np.ndarray
    n_patches: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    a: np.ndarray
    area_um2: np.ndarray | None = None
    group: np.ndarray | None = None
    roi_ids: tuple[int, ...] = ()
    tissue_share: np.ndarray | None = None
    mean_attention: np.ndarray | None = None
    group_names: Mapping[int, str] | None = None

    def __post_init__(self) -> None:
        n = len(self.region_id)
        for name in (
            "n_patches",
            "alpha",
            "beta",
            "a",
            "area_um2",
            "group",
            "tissue_share",
            "mean_attention",
        ):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"RegionTable.{name} has {len(value)} entries; region_id has {n}")

    def measurements(self) -> dict[int, dict[str, float]]:
        """Region id -> QuPath measurement map."""
        columns: dict[str, np.ndarray] = {
            "Patches": self.n_patches,
            "CARE alpha": self.alpha,
            "CARE beta": self.beta,
            "CARE a": self.a,
        }
        if self.area_um2 is not None:
            columns["Area µm^2"] = self.area_um2
        if self.group is not None:
            columns["CARE group"] = self.group
        if self.tissue_share is not None:
            columns["CARE % of tissue"] = 100.0 * np.asarray(self.tissue_share, np.float64)
        if self.mean_attention is not None:
            columns["CARE mean attention"] = self.mean_attention
        roi = {int(r) for r in self.roi_ids}
        # Counts stay integers in the file; weights and areas are floats.
        lists = {
            name: np.asarray(
                values, dtype=np.int64 if name in ("Patches", "CARE group") else np.float64
            ).tolist()
            for name, values in columns.items()
        }
        rows = {}
        for i, region in enumerate(np.asarray(self.region_id).tolist()):
            row: dict[str, float] = {"CARE region id": int(region), "CARE ROI": int(region in roi)}
            row.update((name, values[i]) for name, values in lists.items())
            rows[int(region)] = row
        return rows

    def group_of(self) -> dict[int, int]:
        """Region id -> phenotype group (-1 when none)."""
        if self.group is None:
            return {}
        return dict(
            zip(np.asarray(self.region_id).tolist(), np.asarray(self.group).astype(int).tolist(), strict=True)
        )


def care_metadata(
    *, encoder: str | None = None, k: int | None = None, mpp: float | None = None, **extra: object
) -> dict[str, str]:
    """The string map written as ``properties.metadata`` on CARE objects."""
    values = {"software": f"napari-care {__version__}", "encoder": encoder, "k": k, "mpp": mpp, **extra}
    return {key: str(value) for key, value in values.items() if value is not None}


def region_features(
    polygons: Mapping[int, BaseGeometry],
    table: RegionTable | None = None,
    *,
    mpp: float | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[Annotation]:
    """One ``"detection"`` per region, classified by phenotype group.

    Parameters
    ----------
    polygons
        Region id -> polygon in level-0 pixels
        (from :func:`~napari_care.core.qupath.polygons.label_grid_polygons`).
        Regions with an empty geometry are skipped.
    table
        Per-region measurements; regions missing from it get only their id.
    mpp
        Micrometres per level-0 pixel: adds ``"Area µm^2"`` from the polygon when the table has none.
    metadata
        Written on every region (e.g. :func:`care_metadata`).
    """
    rows = table.measurements() if table is not None else {}
    group_of = table.group_of() if table is not None else {}
    features = []
    for region, geometry in polygons.items():
        if geometry is None or geometry.is_empty:
            continue
        group = group_of.get(int(region), -1)
        names = (table.group_names if table is not None else None) or {}
        class_name, color = (
            (names.get(group, group_class_name(group)), group_color(group))
            if group >= 0
            else (REGION_CLASS, REGION_COLOR)
        )
        measurements = _region_measurements(region, geometry, rows, mpp)
        name, copied = f"CARE region {region}", dict(metadata or {})
        features.append(
            Annotation(geometry, "detection", name, class_name, color, measurements, metadata=copied)
        )
    return features


def roi_features(
    polygons: Mapping[int, BaseGeometry],
    roi_ids: Iterable[int],
    *,
    table: RegionTable | None = None,
    mpp: float | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[Annotation]:
    """One ``"annotation"`` classified ``"CARE ROI"`` per ROI region: the region's outline.

    The outline, not a bounding rectangle: the rectangle would also cover tissue CARE did not
    pick, and the outline is what a pathologist compares with their own annotations.
    """
    rows = table.measurements() if table is not None else {}
    features = []
    for region in roi_ids:
        geometry = polygons.get(int(region))
        if geometry is None or geometry.is_empty:
            raise ValueError(f"roi_ids: region {region} has no polygon")
        measurements = _region_measurements(region, geometry, rows, mpp)
        name, copied = f"CARE ROI (region {region})", dict(metadata or {})
        features.append(
            Annotation(geometry, "annotation", name, ROI_CLASS, ROI_COLOR, measurements, metadata=copied)
        )
    return features


def _region_measurements(
    region: int, geometry: BaseGeometry, rows: Mapping[int, dict[str, float]], mpp: float | None
) -> dict[str, float]:
    """The table's measurements of a region, with its area from the polygon when missing."""
    measurements = dict(rows.get(int(region), {"CARE region id": int(region)}))
    if mpp is not None and not math.isfinite(measurements.get("Area µm^2", math.nan)):
        measurements["Area µm^2"] = geometry.area * float(mpp) ** 2
    return measurements


def tile_features(
    coords_xy: np.ndarray,
    patch_size_px: float,
    measurements: Mapping[str, Sequence[float] | np.ndarray],
    *,
    class_name: str = TILE_CLASS,
    color: Color = TILE_COLOR,
) -> list[Annotation]:
    """One ``"tile"`` object per patch with its values (e.g. attention) as measurements.

    Parameters
    ----------
    coords_xy
        ``[N, 2]`` level-0 (x, y) of each patch's top-left corner.
    patch_size_px
        Patch side in level-0 pixels.
    measurements
        Measurement name -> ``[N]`` values (NaN entries are left out when writing).
    """
    coords_xy = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
    columns = {
        str(name): np.asarray(values, dtype=np.float64).ravel() for name, values in measurements.items()
    }
    for name, values in columns.items():
        if len(values) != len(coords_xy):
            raise ValueError(f"measurements[{name!r}] has {len(values)} values for {len(coords_xy)} tiles")
    x, y = coords_xy[:, 0], coords_xy[:, 1]
    boxes = shapely.box(x, y, x + patch_size_px, y + patch_size_px)
    names, value_rows = list(columns), zip(*(values.tolist() for values in columns.values()), strict=True)
    if not names:
        value_rows = iter([()] * len(boxes))
    return [
        Annotation(box, "tile", None, class_name, color, dict(zip(names, values, strict=True)))
        for box, values in zip(boxes.tolist(), value_rows, strict=True)
    ]


def write_geojson(
    path: str | os.PathLike[str],
    features: Iterable[Annotation],
    *,
    gzip: bool | None = None,
    bounds_offset: Sequence[float] = (0.0, 0.0),
) -> int:
    """Write Annotations as a QuPath-readable GeoJSON FeatureCollection, atomically.

    Parameters
    ----------
    path
        Target file; ``.geojson`` (or ``.json``), ``.geojson.gz`` for gzip.
    features
        The objects to write. Features with an empty geometry are skipped with a warning.
    gzip
        Compress; None decides from the ``.gz`` suffix.
    bounds_offset
        The slide's bounds offset (x, y) in level-0 pixels (``openslide.bounds-x/y``),
        subtracted from every coordinate so that QuPath, which places objects relative to
        the bounds by default, shows them in place.

    Returns
    -------
    int
        The number of Features written.
    """
    path = os.fspath(path)
    compress = path.endswith(".gz") if gzip is None else bool(gzip)
    features = _on_written_grid(list(features), bounds_offset)
    empty = [i for i, f in enumerate(features) if f.geometry is None or f.geometry.is_empty]
    if empty:
        message = f"{path}: skipped {len(empty)} features with an empty geometry (first: index {empty[0]})"
        warnings.warn(message, stacklevel=2)
        features = [f for f in features if f.geometry is not None and not f.geometry.is_empty]
    geometries = encode_geometries([f.geometry for f in features])
    with atomic_path(path) as tmp:
        opener = gzip_module.open if compress else open
        with opener(tmp, "wt", encoding="utf-8") as handle:
            handle.write('{"type": "FeatureCollection", "features": [\n')
            for i, (feature, geometry) in enumerate(zip(features, geometries, strict=True)):
                record = _feature_json(feature, geometry)
                text = json.dumps(record, ensure_ascii=False, allow_nan=False)
                try:  # a string that came from a "\ud800" escape (a lone surrogate) has no UTF-8
                    handle.write(text if i == 0 else ",\n" + text)
                except UnicodeEncodeError:  # nothing was written: escape it as the file had it
                    text = json.dumps(record, ensure_ascii=True, allow_nan=False)
                    handle.write(text if i == 0 else ",\n" + text)
            handle.write("\n]}\n")
    return len(features)


def _feature_json(feature: Annotation, geometry: dict) -> dict:
    """The GeoJSON Feature of one Annotation (geometry already encoded)."""
    properties: dict = {"objectType": feature.object_type or "annotation"}
    if feature.name:
        properties["name"] = str(feature.name)
    if feature.class_name:
        # QuPath fails on a classification without a colour: always give one.
        color = feature.color if feature.color is not None else name_color(feature.class_name)
        properties["classification"] = {"name": str(feature.class_name), "color": _rgb(color)}
    elif feature.color is not None:
        properties["color"] = _rgb(feature.color)
    if feature.is_locked:
        properties["isLocked"] = True
    measurements = _finite_measurements(feature.measurements)
    if measurements:
        properties["measurements"] = measurements
    if feature.metadata:
        properties["metadata"] = {str(k): str(v) for k, v in feature.metadata.items()}
    return {"type": "Feature", "id": as_uuid(feature.id), "geometry": geometry, "properties": properties}


def _finite_measurements(measurements: Mapping[str, object]) -> dict[str, float | int]:
    """Keep finite real numbers only; NaN, infinity and non-numbers are dropped."""
    kept: dict[str, float | int] = {}
    for name, value in measurements.items():
        if isinstance(value, (bool, np.bool_)):
            kept[str(name)] = int(value)
        elif isinstance(value, (int, np.integer)):
            kept[str(name)] = int(value)
        elif isinstance(value, (float, np.floating)) and math.isfinite(value):
            kept[str(name)] = float(value)
    return kept


def _on_written_grid(features: list[Annotation], offset_xy: Sequence[float]) -> list[Annotation]:
    """The features moved by the bounds offset and snapped to the 0.01-pixel grid that is written.

    Rounding a sliver to two decimals can make it self-intersect; ``shapely.set_precision``
    snaps and keeps every polygon valid (what collapses becomes empty, and is skipped).
    """
    if not features:
        return features
    geometries = np.array([f.geometry for f in features], dtype=object)
    offset = np.asarray(offset_xy, dtype=np.float64)
    if offset.any():
        geometries = shapely.transform(geometries, lambda xy: xy - offset)
    # Only geometries off the grid are snapped: set_precision also renumbers rings' vertices.
    xy, geometry_of_xy = shapely.get_coordinates(geometries, return_index=True)
    off = np.abs(xy - np.round(xy, COORDINATE_DECIMALS)).max(axis=1) > 1e-9
    index = np.unique(geometry_of_xy[off])
    geometries[index] = shapely.set_precision(geometries[index], 10.0**-COORDINATE_DECIMALS)
    return [replace(f, geometry=g) for f, g in zip(features, geometries.tolist(), strict=True)]


def _rgb(color: Sequence[int]) -> list[int]:
    return [min(255, max(0, int(c))) for c in color[:3]]


def encode_geometries(
    geometries: Sequence[BaseGeometry],
    *,
    offset_xy: Sequence[float] = (0.0, 0.0),
    decimals: int = COORDINATE_DECIMALS,
) -> list[dict]:
    """GeoJSON geometry objects: ``offset_xy`` subtracted, rounded, RFC 7946 ring orientation.

    Polygons and MultiPolygons (the bulk: regions, tiles) go through one vectorized pass;
    other types one by one.
    """
    geometries = np.asarray(list(geometries), dtype=object).reshape(-1)
    offset = np.asarray(offset_xy, dtype=np.float64)
    encoded: list[dict] = [{}] * len(geometries)
    polygonal = np.isin(shapely.get_type_id(geometries), _POLYGONAL)
    for i in np.flatnonzero(~polygonal).tolist():
        encoded[i] = _round_mapping(
            mapping(shapely.transform(geometries[i], lambda xy: xy - offset)), decimals
        )
    index = np.flatnonzero(polygonal)
    for i, geometry in zip(
        index.tolist(), _encode_polygonal(geometries[index], offset, decimals), strict=True
    ):
        encoded[i] = geometry
    return encoded


def _encode_polygonal(geometries: np.ndarray, offset: np.ndarray, decimals: int) -> list[dict]:
    parts, geometry_of_part = shapely.get_parts(geometries, return_index=True)
    rings, part_of_ring = shapely.get_rings(parts, return_index=True)
    xy, ring_of_xy = shapely.get_coordinates(rings, return_index=True)
    xy = np.round(xy - offset, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    # Signed ring areas (shoelace): shells must be counter-clockwise (> 0), holes clockwise.
    same_ring = ring_of_xy[:-1] == ring_of_xy[1:]
    cross = xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]
    area2 = np.bincount(ring_of_xy[:-1][same_ring], weights=cross[same_ring], minlength=len(rings))
    is_shell = np.r_[True, part_of_ring[1:] != part_of_ring[:-1]] if len(rings) else np.zeros(0, bool)
    flip = np.where(is_shell, area2 < 0, area2 > 0).tolist()
    bounds = np.r_[0, np.cumsum(np.bincount(ring_of_xy, minlength=len(rings)))].tolist()
    xy_list = xy.tolist()
    part_rings: list[list] = [[] for _ in range(len(parts))]
    for ring, part in enumerate(part_of_ring.tolist()):
        coords = xy_list[bounds[ring] : bounds[ring + 1]]
        part_rings[part].append(coords[::-1] if flip[ring] else coords)
    geometry_parts: list[list] = [[] for _ in range(len(geometries))]
    for part, geometry in enumerate(geometry_of_part.tolist()):
        geometry_parts[geometry].append(part_rings[part])
    type_ids = shapely.get_type_id(geometries).tolist()
    return [
        {"type": "Polygon", "coordinates": polys[0]}
        if type_id == 3
        else {"type": "MultiPolygon", "coordinates": polys}
        for type_id, polys in zip(type_ids, geometry_parts, strict=True)
    ]


def _round_mapping(value: object, decimals: int) -> object:
    """Round every number of a ``shapely.geometry.mapping`` result; tuples become lists."""
    if isinstance(value, dict):
        return {key: _round_mapping(item, decimals) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_round_mapping(item, decimals) for item in value]
    if isinstance(value, float):
        return round(value, decimals) + 0.0
    return value
