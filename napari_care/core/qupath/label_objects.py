"""Label rasters as QuPath objects: one object per label, and CARE region grids as
``napari-care segment`` writes them (regions as detections, the ROI outline, optional tiles).

A raster's pixel ``(row, col)`` covers the level-0 box
``[x0 + col * px, x0 + (col + 1) * px] x [y0 + row * py, y0 + (row + 1) * py]`` for origin
``(x0, y0)`` and pixel size ``(px, py)``; polygons are exact on those edges, holes kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from napari_care.core.qupath.objects import Annotation, Color
from napari_care.core.qupath.polygons import label_grid_polygons
from napari_care.core.qupath.shape_table import row_measurements
from napari_care.core.qupath.write import (
    RegionTable,
    care_metadata,
    region_features,
    roi_features,
    tile_features,
)


def raster_polygons(
    labels: np.ndarray, origin_xy: Sequence[float], pixel_size_xy: Sequence[float]
) -> dict[int, BaseGeometry]:
    """Exact level-0 polygons of every label (``>= 0``; ``-1`` = none) of a raster, also with
    non-square pixels.

    Parameters
    ----------
    labels
        ``[rows, cols]`` integer labels.
    origin_xy
        Level-0 (x, y) of the corner of pixel ``(0, 0)``.
    pixel_size_xy
        A raster pixel's (width, height) in level-0 pixels.
    """
    (x0, y0), (width, height) = origin_xy, pixel_size_xy
    if math.isclose(width, height, rel_tol=1e-9):
        return label_grid_polygons(labels, origin_xy=(x0, y0), cell_size_px=width)
    unit = label_grid_polygons(labels)
    stretch = np.array([width, height])
    return {key: shapely.transform(g, lambda xy: xy * stretch + (x0, y0)) for key, g in unit.items()}


def annotations_from_labels(
    labels: np.ndarray,
    *,
    origin_xy: Sequence[float],
    pixel_size_xy: Sequence[float],
    rows: Sequence[Mapping[str, object]] = (),
    name_prefix: str = "label",
    color_of_label: Callable[[int], Color | None] | None = None,
) -> list[Annotation]:
    """One object per label value (> 0) of a raster, in increasing label order.

    Parameters
    ----------
    labels
        ``[rows, cols]`` integer labels, 0 (and below) = none.
    origin_xy, pixel_size_xy
        Where the raster lies in level-0 pixels (see :func:`raster_polygons`).
    rows
        Feature rows, each with an ``index`` = its label value: ``class``, ``name`` and
        ``object_type`` of the object, and its measurements (see
        :func:`~napari_care.core.qupath.shape_table.row_measurements`).
    name_prefix
        Objects without a ``name`` are called ``"<name_prefix> <label>"``.
    color_of_label
        The colour of a label, or None.
    """
    polygons = raster_polygons(np.where(labels > 0, labels, -1), origin_xy, pixel_size_xy)
    by_label = {int(r.get("index", -1)): r for r in rows}
    annotations = []
    for value, geometry in polygons.items():
        row = by_label.get(value, {})
        class_name = str(row.get("class") or "") or None
        name = str(row.get("name") or "") or f"{name_prefix} {value}"
        color = color_of_label(value) if color_of_label is not None else None
        annotations.append(
            Annotation(
                geometry,
                str(row.get("object_type") or "annotation"),
                name,
                class_name,
                color,
                row_measurements(row),
            )
        )
    return annotations


def region_table_from_columns(columns: Mapping[str, object]) -> RegionTable:
    """The :class:`~napari_care.core.qupath.write.RegionTable` of a region table's columns.

    Parameters
    ----------
    columns
        Column -> values as :func:`napari_care.core.regions.region_table` makes them (``region``,
        ``patches``, ``alpha``, ``beta``, ``a``, ``is_roi``, optionally ``area_um2``, ``group`` and
        ``group_name``, the class QuPath shows for the group),
        a dict or a DataFrame; rows with ``region < 0`` (a background label's) are left out.
    """
    keep = np.asarray(columns["region"]) >= 0
    column = lambda name: np.asarray(columns[name])[keep] if name in columns else None  # noqa: E731
    is_roi = column("is_roi")
    return RegionTable(
        region_id=column("region").astype(np.int64),
        n_patches=column("patches").astype(np.int64),
        alpha=column("alpha"),
        beta=column("beta"),
        a=column("a"),
        area_um2=column("area_um2"),
        group=column("group"),
        roi_ids=tuple(int(r) for r in column("region")[is_roi.astype(bool)]) if is_roi is not None else (),
        group_names=_group_names(column("group"), column("group_name")),
    )


def _group_names(groups: np.ndarray | None, names: np.ndarray | None) -> dict[int, str] | None:
    """Group id -> the name a ``group_name`` column gives it (blank names left out), or None."""
    if groups is None or names is None:
        return None
    named = {int(g): str(n) for g, n in zip(groups, names, strict=True) if int(g) >= 0 and str(n).strip()}
    return named or None


def annotations_from_region_grid(
    region_of_cell: np.ndarray,
    table: RegionTable,
    *,
    origin_xy: Sequence[float],
    cell_size_xy: Sequence[float],
    mpp: float | None = None,
    run_info: Mapping[str, object] | None = None,
    tiles: bool = False,
) -> list[Annotation]:
    """A CARE region grid as ``napari-care segment`` writes it: regions, ROI outlines, optional tiles.

    Parameters
    ----------
    region_of_cell
        ``[rows, cols]`` region id per grid cell, ``-1`` = none.
    table
        The regions' measurements and ROI ids.
    origin_xy, cell_size_xy
        Level-0 (x, y) of cell ``(0, 0)``'s corner and a cell's (width, height).
    mpp
        Micrometres per level-0 pixel, or None (uncalibrated).
    run_info
        What the run was (``encoder``, ``k``, ``mode``), written into every object's metadata.
    tiles
        Also one ``"tile"`` object per cell with its attention (its region's ``a`` shared evenly
        over the region's cells) and region id.
    """
    polygons = raster_polygons(region_of_cell, origin_xy, cell_size_xy)
    metadata = care_metadata(mpp=mpp, **dict(run_info or {}))
    annotations = region_features(polygons, table, mpp=mpp, metadata=metadata)
    annotations += roi_features(
        polygons, [r for r in table.roi_ids if r in polygons], table=table, mpp=mpp, metadata=metadata
    )
    if tiles:
        (x0, y0), (width, height) = origin_xy, cell_size_xy
        rows, cols = np.nonzero(region_of_cell >= 0)
        region = region_of_cell[rows, cols]
        weight = dict(
            zip(table.region_id.tolist(), np.asarray(table.a, dtype=np.float64).tolist(), strict=True)
        )
        cells = np.bincount(region)
        attention = np.array([weight.get(int(r), 0.0) for r in region]) / cells[region]
        coords = np.stack([x0 + cols * width, y0 + rows * height], axis=1)
        annotations += tile_features(coords, width, {"CARE attention": attention, "CARE region id": region})
    return annotations
