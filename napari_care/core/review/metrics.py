"""Agreement between a pathologist's annotations and CARE's regions, ROI and attention.

For every annotation class (the union of that class's polygons; lines and points are left
out) the review compares the annotation with the ROI (the union of the ROI regions) and
with each CARE region it touches:

- ``dice`` = 2|T∩A| / (|T| + |A|), ``iou`` = |T∩A| / |T∪A| for target T and annotation A;
- ``target_in_annotation`` = |T∩A| / |T| (for the ROI: the share of the ROI inside the
  annotation) and ``annotation_in_target`` = |T∩A| / |A| (the share of the annotation
  covered by the ROI);
- ``attention_inside`` / ``attention_outside``: the share of the total patch attention on
  patches whose centre lies inside / outside the annotation, and ``pointing_game``: whether
  the highest-attention patch's centre lies inside it (per class, repeated on its rows).

Each overlap metric is computed twice:

- exactly, with shapely, from the region polygons (exact unions of grid cells) and the
  annotation polygons (columns without suffix, areas in level-0 pixels squared);
- on the patch grid (suffix ``_grid``): the annotation is rasterised by cell centre, a cell
  counts as inside when its centre lies inside the annotation or on its edge, and areas are
  cell counts.

Agreement: the region is the same in both (a union of cells), so the two differ only in the
cells the annotation's boundary crosses. With ``B`` such cells, ``B_T`` of them in the target
T, the exact intersection ``I`` and ``S = |T| + |A|`` (all in cells),
``|dice_grid - dice| <= 2 (B_T + I B / S) / (S - B)`` whenever ``S > B``; every row reports
this bound as ``dice_grid_bound``. For a smooth annotation and a target of >= 100 patches the
difference is in practice below 0.05.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from napari_care.core.atomic import atomic_open
from napari_care.core.qupath.objects import Annotation
from napari_care.core.qupath.polygons import label_grid_polygons

UNCLASSIFIED = "Unclassified"
_MAX_LATTICE_CELLS = 50_000_000  # an annotation this many cells large means mismatched units


@dataclass(frozen=True)
class RegionGrid:
    """CARE regions on the patch grid.

    Parameters
    ----------
    labels
        ``[rows, cols]`` region id per cell (row = grid y, col = grid x), ``-1`` = no region.
    origin_xy
        Level-0 (x, y) of the top-left corner of cell ``(0, 0)``.
    cell_size_px
        Cell (patch) side in level-0 pixels.
    """

    labels: np.ndarray
    origin_xy: tuple[float, float] = (0.0, 0.0)
    cell_size_px: float = 1.0


@dataclass(frozen=True)
class PatchAttention:
    """Per-patch attention (>= 0) with the patches' level-0 top-left corners ``[N, 2]`` (x, y)."""

    coords_xy: np.ndarray
    attention: np.ndarray
    patch_size_px: float


def class_geometries(annotations: Iterable[Annotation]) -> dict[str, BaseGeometry]:
    """Class name -> union of that class's polygonal geometries (unclassified: ``"Unclassified"``)."""
    parts: dict[str, list[BaseGeometry]] = {}
    for annotation in annotations:
        if isinstance(annotation.geometry, (Polygon, MultiPolygon)) and not annotation.geometry.is_empty:
            parts.setdefault(annotation.class_name or UNCLASSIFIED, []).append(
                shapely.make_valid(annotation.geometry)
            )
    return {name: shapely.union_all(geometries) for name, geometries in sorted(parts.items())}


def rasterize(geometry: BaseGeometry, grid: RegionGrid) -> np.ndarray:
    """Cells of ``grid`` whose centre lies inside ``geometry`` or on its edge: ``[rows, cols]`` bool."""
    rows, cols = np.asarray(grid.labels).shape
    x0, y0 = grid.origin_xy
    centre_x = x0 + (np.arange(cols) + 0.5) * grid.cell_size_px
    centre_y = y0 + (np.arange(rows) + 0.5) * grid.cell_size_px
    return shapely.intersects_xy(geometry, centre_x[None, :], centre_y[:, None])


def review_agreement(
    annotations: Iterable[Annotation],
    grid: RegionGrid,
    *,
    roi_ids: Sequence[int] = (),
    attention: PatchAttention | None = None,
    region_polygons: Mapping[int, BaseGeometry] | None = None,
    include_disjoint: bool = False,
) -> list[dict[str, object]]:
    """Agreement rows: per annotation class, one for the ROI and one per overlapping region.

    Parameters
    ----------
    annotations
        The pathologist's objects (e.g. from :func:`~napari_care.core.qupath.read.read_geojson`).
    grid
        The CARE region grid.
    roi_ids
        Region ids that make the ROI; no ROI row when empty.
    attention
        Per-patch attention for the attention columns (left empty when None).
    region_polygons
        Region id -> polygon; traced from ``grid`` when None.
    include_disjoint
        Also give rows for regions that do not touch the annotation (all zero).

    Returns
    -------
    list of dict
        Rows with keys ``class, n_objects, target`` (``"roi"`` or ``"region"``), ``region_id``
        (the ROI's ids joined by ``";"`` on ROI rows), ``dice, iou, target_in_annotation,
        annotation_in_target, intersection_area_px2, target_area_px2, annotation_area_px2``,
        the same four ratios with suffix ``_grid``, ``intersection_cells, target_cells,
        annotation_cells, dice_grid_bound, attention_inside, attention_outside,
        pointing_game`` (see the module docstring). Classes in name order; regions that do
        not overlap the class are left out unless ``include_disjoint``.
    """
    annotations = list(annotations)
    labels = np.asarray(grid.labels)
    if region_polygons is None:
        region_polygons = label_grid_polygons(
            labels, origin_xy=grid.origin_xy, cell_size_px=grid.cell_size_px
        )
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

    rows: list[dict[str, object]] = []
    for name, shape in class_geometries(annotations).items():
        shapely.prepare(shape)
        raster = _rasterise_on_lattice(shape, grid, n_labels)
        common = {"class": name, "n_objects": counts[name]}
        attention_columns = _attention_columns(shape, attention)
        if roi_shape is not None:
            metrics = _metrics(_exact(shape, roi_shape), raster, roi_ids, region_cells, cell_area)
            roi_key = {"target": "roi", "region_id": ";".join(map(str, roi_ids))}
            rows.append({**common, **roi_key, **metrics, **attention_columns})
        intersection_areas = np.zeros(len(region_ids))
        hits = np.flatnonzero(shapely.intersects(region_shapes, shape))
        intersection_areas[hits] = shapely.area(shapely.intersection(region_shapes[hits], shape))
        overlapping = (intersection_areas > 0) | (raster.inside_per_label[region_ids] > 0)
        for index in np.flatnonzero(overlapping | include_disjoint).tolist():
            region = int(region_ids[index])
            exact = (float(intersection_areas[index]), float(region_shapes[index].area), float(shape.area))
            metrics = _metrics(exact, raster, [region], region_cells, cell_area)
            rows.append({**common, "target": "region", "region_id": region, **metrics, **attention_columns})
    return rows


def write_review_csv(path: str | os.PathLike[str], rows: Sequence[Mapping[str, object]]) -> None:
    """Write review rows as CSV (atomically); columns in first-seen order, None as empty."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})


def _exact(annotation: BaseGeometry, target: BaseGeometry) -> tuple[float, float, float]:
    """(|T∩A|, |T|, |A|) in level-0 pixels squared."""
    return float(shapely.intersection(target, annotation).area), float(target.area), float(annotation.area)


@dataclass(frozen=True)
class _Rasterised:
    """An annotation on the patch lattice (the grid's cells, extended to the annotation)."""

    cells: int  # cells whose centre is inside: |A| in cells
    crossed: int  # cells the boundary runs through: B
    inside_per_label: np.ndarray  # [n_labels] cells inside, per region label
    crossed_per_label: np.ndarray  # [n_labels] crossed cells, per region label


def _rasterise_on_lattice(shape: BaseGeometry, grid: RegionGrid, n_labels: int) -> _Rasterised:
    """Rasterise ``shape`` by cell centre on the grid's lattice, extended to the shape's bounds."""
    labels = np.asarray(grid.labels)
    size, (x0, y0) = float(grid.cell_size_px), grid.origin_xy
    min_x, min_y, max_x, max_y = shape.bounds
    col0, col1 = math.floor((min_x - x0) / size), math.ceil((max_x - x0) / size)
    row0, row1 = math.floor((min_y - y0) / size), math.ceil((max_y - y0) / size)
    if (col1 - col0) * (row1 - row0) > _MAX_LATTICE_CELLS:
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

    return _Rasterised(int(inside.sum()), int(crossed.sum()), per_label(inside), per_label(crossed))


def _metrics(
    exact: tuple[float, float, float],
    raster: _Rasterised,
    target_labels: list[int],
    region_cells: np.ndarray,
    cell_area: float,
) -> dict[str, object]:
    """Exact and grid overlap columns of one (class, target) pair, with the grid bound.

    ``exact`` is (|T∩A|, |T|, |A|) in pixels squared; the target T is the union of the
    regions ``target_labels``, whose cell counts are ``region_cells``.
    """
    intersection, target_area, annotation_area = exact
    grid_intersection = int(raster.inside_per_label[target_labels].sum())
    target_cells = int(region_cells[target_labels].sum())
    columns = _ratios(intersection, target_area, annotation_area, "")
    columns.update(
        intersection_area_px2=intersection, target_area_px2=target_area, annotation_area_px2=annotation_area
    )
    columns.update(_ratios(grid_intersection, target_cells, raster.cells, "_grid"))
    columns.update(
        intersection_cells=grid_intersection, target_cells=target_cells, annotation_cells=raster.cells
    )
    # The bound of the module docstring: S, I, B and B_T in cells.
    total, exact_cells = (target_area + annotation_area) / cell_area, intersection / cell_area
    target_crossed, crossed = int(raster.crossed_per_label[target_labels].sum()), raster.crossed
    columns["dice_grid_bound"] = (
        min(1.0, 2 * (target_crossed + exact_cells * crossed / total) / (total - crossed))
        if total > crossed
        else 1.0
    )
    return columns


def _ratios(intersection: float, target: float, annotation: float, suffix: str) -> dict[str, float]:
    union = target + annotation - intersection
    return {
        f"dice{suffix}": 2 * intersection / (target + annotation) if target + annotation > 0 else 0.0,
        f"iou{suffix}": intersection / union if union > 0 else 0.0,
        f"target_in_annotation{suffix}": intersection / target if target > 0 else 0.0,
        f"annotation_in_target{suffix}": intersection / annotation if annotation > 0 else 0.0,
    }


def _attention_columns(shape: BaseGeometry, attention: PatchAttention | None) -> dict[str, object]:
    """Attention mass inside/outside the annotation (by patch centre) and the pointing game."""
    if attention is None:
        return {"attention_inside": None, "attention_outside": None, "pointing_game": None}
    values = np.asarray(attention.attention, dtype=np.float64).ravel()
    coords = np.asarray(attention.coords_xy, dtype=np.float64).reshape(-1, 2)
    if len(values) != len(coords):
        raise ValueError(f"attention has {len(values)} values for {len(coords)} patch coordinates")
    if (values < 0).any() or not np.isfinite(values).all():
        raise ValueError("attention must be finite and >= 0 (e.g. softmax weights or normalised scores)")
    if not len(values):
        return {"attention_inside": None, "attention_outside": None, "pointing_game": None}
    half = attention.patch_size_px / 2
    inside = shapely.intersects_xy(shape, coords[:, 0] + half, coords[:, 1] + half)
    total = values.sum()
    share = float(values[inside].sum() / total) if total > 0 else 0.0
    return {
        "attention_inside": share,
        "attention_outside": 1.0 - share if total > 0 else 0.0,
        "pointing_game": bool(inside[int(np.argmax(values))]),
    }
