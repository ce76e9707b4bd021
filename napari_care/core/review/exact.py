"""The reference review: each annotation class's union against every region polygon.

:func:`review_agreement_exact` computes the same rows as
:func:`~napari_care.core.review.metrics.review_agreement` the direct way: the union of a
class's polygons, intersected with each region polygon and the ROI, and rasterised over the
whole lattice window with the union's boundary. Its cost grows with (polygons x cells), so
it is for small cases: tests compare the fast path with it, and it takes region polygons
that are not unions of grid cells.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from napari_care.core.qupath.objects import Annotation
from napari_care.core.qupath.polygons import label_grid_polygons
from napari_care.core.review.coverage import MAX_LATTICE_CELLS, GridCounts
from napari_care.core.review.groups import PhenotypeGroups
from napari_care.core.review.metrics import (
    UNCLASSIFIED,
    PatchAttention,
    RegionGrid,
    attention_columns,
    class_geometries,
    patch_centres,
)
from napari_care.core.review.pointing import pointing_rule
from napari_care.core.review.targets import ClassTargets, groups_on_grid, overlap_on_grid


def review_agreement_exact(
    annotations: Iterable[Annotation],
    grid: RegionGrid,
    *,
    roi_ids: Sequence[int] = (),
    attention: PatchAttention | None = None,
    region_polygons: Mapping[int, BaseGeometry] | None = None,
    include_disjoint: bool = False,
    groups: PhenotypeGroups | None = None,
) -> list[dict[str, object]]:
    """The rows of :func:`~napari_care.core.review.metrics.review_agreement`, from exact unions.

    Same parameters and rows; the exact columns come from ``region_polygons`` themselves
    (the fast path counts them cell by cell on ``grid``), a group's from the union of its
    regions' polygons.
    """
    annotations = list(annotations)
    labels = np.asarray(grid.labels)
    if region_polygons is None:
        origin, size = grid.origin_xy, grid.cell_size_px
        region_polygons = label_grid_polygons(labels, origin_xy=origin, cell_size_px=size)
    region_ids = np.array(sorted(region_polygons), dtype=np.int64)
    region_shapes = np.array([region_polygons[r] for r in region_ids.tolist()], dtype=object)
    n_labels = int(max(labels.max(initial=-1), region_ids.max(initial=-1))) + 1
    region_cells = np.bincount(labels[labels >= 0], minlength=n_labels)
    roi_ids = [int(r) for r in roi_ids]
    missing = [r for r in roi_ids if r not in region_polygons]
    if missing:
        raise ValueError(f"roi_ids: regions {missing} are not on the region grid")
    roi_shape = shapely.union_all([region_polygons[r] for r in roi_ids]) if roi_ids else None
    cell_area = float(grid.cell_size_px) ** 2
    counts: dict[str, int] = {}
    for annotation in annotations:
        if isinstance(annotation.geometry, (Polygon, MultiPolygon)) and not annotation.geometry.is_empty:
            name = annotation.class_name or UNCLASSIFIED
            counts[name] = counts.get(name, 0) + 1
    shapes = class_geometries(annotations)
    centres = patch_centres(attention) if shapes else None
    rule = None if centres is None else pointing_rule(attention, grid)
    groups = groups_on_grid(groups, region_polygons)
    group_shapes = {
        group: shapely.union_all([region_polygons[r] for r in members])
        for group, members in (groups.regions_of_group.items() if groups else ())
    }
    area_of_region = np.zeros(n_labels)
    area_of_region[region_ids] = shapely.area(region_shapes)

    rows: list[dict[str, object]] = []
    for name, shape in shapes.items():
        shapely.prepare(shape)
        raster = rasterise_on_lattice(shape, grid, n_labels)
        inside = None if centres is None else shapely.intersects_xy(shape, centres[0], centres[1])
        intersection = np.zeros(n_labels)
        hits = np.flatnonzero(shapely.intersects(region_shapes, shape))
        intersection[region_ids[hits]] = shapely.area(shapely.intersection(region_shapes[hits], shape))
        meets = (intersection > 0) | (raster.inside_per_label > 0)
        attention_values = attention_columns(attention, inside, rule, meets)
        targets = ClassTargets(name, counts[name], float(shape.area), intersection, meets, area_of_region)
        class_rows, _ = targets.rows(
            roi_ids,
            None if roi_shape is None else float(roi_shape.area),
            region_ids,
            groups,
            functools.partial(overlap_on_grid, raster, region_cells, cell_area),
            attention_values,
            include_disjoint,
            roi_intersection=None if roi_shape is None else _exact(shape, roi_shape)[0],
            group_intersection={g: _exact(shape, union)[0] for g, union in group_shapes.items()},
        )
        rows += class_rows
    return rows


def _exact(annotation: BaseGeometry, target: BaseGeometry) -> tuple[float, float, float]:
    """(|T∩A|, |T|, |A|) in level-0 pixels squared."""
    return float(shapely.intersection(target, annotation).area), float(target.area), float(annotation.area)


def rasterise_on_lattice(shape: BaseGeometry, grid: RegionGrid, n_labels: int) -> GridCounts:
    """Rasterise ``shape`` by cell centre on the grid's lattice, extended to the shape's bounds."""
    labels = np.asarray(grid.labels)
    size, (x0, y0) = float(grid.cell_size_px), grid.origin_xy
    min_x, min_y, max_x, max_y = shape.bounds
    col0, col1 = math.floor((min_x - x0) / size), math.ceil((max_x - x0) / size)
    row0, row1 = math.floor((min_y - y0) / size), math.ceil((max_y - y0) / size)
    if (col1 - col0) * (row1 - row0) > MAX_LATTICE_CELLS:
        raise ValueError(
            f"annotation spans {(col1 - col0) * (row1 - row0)} grid cells: are its coordinates in "
            f"level-0 pixels and cell_size_px = {size} right?"
        )
    cols, rows = np.arange(col0, col1), np.arange(row0, row1)
    inside = shapely.intersects_xy(
        shape, x0 + (cols[None, :] + 0.5) * size, y0 + (rows[:, None] + 0.5) * size
    )
    boxes = shapely.box(
        x0 + cols[None, :] * size,
        y0 + rows[:, None] * size,
        x0 + (cols[None, :] + 1) * size,
        y0 + (rows[:, None] + 1) * size,
    )
    # A cell is crossed when the boundary runs through its interior (not just along its edge):
    # only there can the centre rule and the exact area fraction disagree.
    boundary = shape.boundary
    shapely.prepare(boundary)
    crossed = shapely.intersects(boxes, boundary)
    crossed[crossed] = shapely.relate_pattern(boxes[crossed], boundary, "T********")
    # The part of the lattice window that lies on the label grid.
    r_lo, r_hi = max(row0, 0), min(row1, labels.shape[0])
    c_lo, c_hi = max(col0, 0), min(col1, labels.shape[1])
    on_grid = labels[r_lo:r_hi, c_lo:c_hi] if r_lo < r_hi and c_lo < c_hi else np.zeros((0, 0), np.int64)
    window = (slice(r_lo - row0, r_hi - row0), slice(c_lo - col0, c_hi - col0))

    def per_label(mask: np.ndarray) -> np.ndarray:
        selected = on_grid[mask[window] & (on_grid >= 0)] if on_grid.size else np.zeros(0, np.int64)
        return np.bincount(selected, minlength=n_labels)

    return GridCounts(int(inside.sum()), int(crossed.sum()), per_label(inside), per_label(crossed))
