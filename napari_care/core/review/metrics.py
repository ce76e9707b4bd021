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

- exactly, with shapely, from the annotation polygons and the regions, which are exact unions
  of grid cells: |T∩A| is the annotation's exact area in the target's cells, |T| the area of
  the region polygons (columns without suffix, areas in level-0 pixels squared);
- on the patch grid (suffix ``_grid``): the annotation is rasterised by cell centre, a cell
  counts as inside when its centre lies inside the annotation or on its edge, and areas are
  cell counts.

Agreement: the region is the same in both (a union of cells), so the two differ only in the
cells the annotation's boundary crosses. With ``B`` such cells, ``B_T`` of them in the target
T, the exact intersection ``I`` and ``S = |T| + |A|`` (all in cells),
``|dice_grid - dice| <= 2 (B_T + I B / S) / (S - B)`` whenever ``S > B``; every row reports
this bound as ``dice_grid_bound``. For a smooth annotation and a target of >= 100 patches the
difference is in practice below 0.05.

How: the regions are unions of grid cells, so both the exact and the grid columns follow
from the class's exact area in every cell (:mod:`napari_care.core.review.coverage`): the
class's polygons are made interior-disjoint with an STRtree (only overlapping groups are
unioned) and cut along the grid lines, so the work grows with the polygons and the cells
their boundaries cross, not with (polygons x regions). 100,000 polygons against a
100,000-patch run take seconds (``benchmarks/bench_review.py``). The direct computation, the
class's union against every region polygon, is :mod:`napari_care.core.review.exact`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from napari_care.core.atomic import atomic_open
from napari_care.core.progress import Progress, run_to_end
from napari_care.core.qupath.objects import Annotation
from napari_care.core.qupath.polygons import label_grid_polygons
from napari_care.core.review.coverage import (
    GridCounts,
    count_on_grid,
    cover_lattice,
    disjoint_parts,
    inside_points,
    polygons_of,
)

UNCLASSIFIED = "Unclassified"


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
        Region id -> polygon (exact unions of ``grid``'s cells); traced from ``grid`` when
        None. They give the regions' ids and areas; the intersections are counted on ``grid``.
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

    See Also
    --------
    iter_review_agreement : the same, as a generator of progress reports.
    """
    return run_to_end(
        iter_review_agreement(
            annotations,
            grid,
            roi_ids=roi_ids,
            attention=attention,
            region_polygons=region_polygons,
            include_disjoint=include_disjoint,
        )
    )


def iter_review_agreement(
    annotations: Iterable[Annotation],
    grid: RegionGrid,
    *,
    roi_ids: Sequence[int] = (),
    attention: PatchAttention | None = None,
    region_polygons: Mapping[int, BaseGeometry] | None = None,
    include_disjoint: bool = False,
) -> Generator[Progress, None, list[dict[str, object]]]:
    """:func:`review_agreement` as a generator: yields ``Progress("review", done, total)``, ``done``
    counting the annotation polygons reviewed, and returns the rows."""
    labels = np.asarray(grid.labels)
    if region_polygons is None:
        origin, size = grid.origin_xy, grid.cell_size_px
        region_polygons = label_grid_polygons(labels, origin_xy=origin, cell_size_px=size)
    region_ids = np.array(sorted(region_polygons), dtype=np.int64)
    region_areas = shapely.area(np.array([region_polygons[r] for r in region_ids.tolist()], dtype=object))
    n_labels = int(max(labels.max(initial=-1), region_ids.max(initial=-1))) + 1
    region_cells = np.bincount(labels[labels >= 0], minlength=n_labels)
    roi_ids = [int(r) for r in roi_ids]
    missing = [r for r in roi_ids if r not in region_polygons]
    if missing:
        raise ValueError(f"roi_ids: regions {missing} are not on the region grid")
    roi_area = float(shapely.union_all([region_polygons[r] for r in roi_ids]).area) if roi_ids else None
    cell_area = float(grid.cell_size_px) ** 2
    by_class = polygons_by_class(annotations)
    centres = patch_centres(attention) if by_class else None
    points = None if centres is None else shapely.points(*centres)
    total, done = sum(len(geometries) for geometries in by_class.values()), 0

    rows: list[dict[str, object]] = []
    for name, geometries in by_class.items():
        n = len(geometries)
        yield Progress("review", done, total, f"{name}: {n:,} polygons, overlaps")
        parts = disjoint_parts(polygons_of(geometries))
        cells = cover_lattice(parts, grid.origin_xy, grid.cell_size_px)
        cover = yield from _within_class(cells, name, done, n, total)
        counts = count_on_grid(cover, labels, n_labels)
        annotation_area = float(shapely.area(parts).sum())
        common = {"class": name, "n_objects": n}
        inside = None if points is None else inside_points(parts, points)
        attention_values = attention_columns(attention, inside)
        intersection = counts.area_per_label
        if roi_area is not None:
            exact = (float(intersection[roi_ids].sum()), roi_area, annotation_area)
            metrics = overlap_columns(exact, counts, roi_ids, region_cells, cell_area)
            roi_key = {"target": "roi", "region_id": ";".join(map(str, roi_ids))}
            rows.append({**common, **roi_key, **metrics, **attention_values})
        overlapping = (intersection[region_ids] > 0) | (counts.inside_per_label[region_ids] > 0)
        for index in np.flatnonzero(overlapping | include_disjoint).tolist():
            region = int(region_ids[index])
            exact = (float(intersection[region]), float(region_areas[index]), annotation_area)
            metrics = overlap_columns(exact, counts, [region], region_cells, cell_area)
            rows.append({**common, "target": "region", "region_id": region, **metrics, **attention_values})
        done += n
        yield Progress("review", done, total, f"{name}: {n:,} polygons, done")
    return rows


def polygons_by_class(annotations: Iterable[Annotation]) -> dict[str, list[BaseGeometry]]:
    """Class name -> that class's non-empty (Multi)Polygons, classes in name order."""
    by_class: dict[str, list[BaseGeometry]] = {}
    for annotation in annotations:
        if isinstance(annotation.geometry, (Polygon, MultiPolygon)) and not annotation.geometry.is_empty:
            by_class.setdefault(annotation.class_name or UNCLASSIFIED, []).append(annotation.geometry)
    return dict(sorted(by_class.items()))


def _within_class(cells: Generator[Progress, None, object], name: str, done: int, n: int, total: int):
    """Pass on ``cells``' reports as the class's share of the review; return its result."""
    while True:
        try:
            report = next(cells)
        except StopIteration as stop:
            return stop.value
        yield Progress("review", done + int(n * report.fraction), total, f"{name}: {report.message}")


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


def overlap_columns(
    exact: tuple[float, float, float],
    raster: GridCounts,
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


def patch_centres(attention: PatchAttention | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The level-0 (x, y) centres of the attention's patches; None without attention.

    Raises
    ------
    ValueError
        Values and coordinates differ in number, or a value is negative or not finite.
    """
    if attention is None:
        return None
    values = np.asarray(attention.attention, dtype=np.float64).ravel()
    coords = np.asarray(attention.coords_xy, dtype=np.float64).reshape(-1, 2)
    if len(values) != len(coords):
        raise ValueError(f"attention has {len(values)} values for {len(coords)} patch coordinates")
    if (values < 0).any() or not np.isfinite(values).all():
        raise ValueError("attention must be finite and >= 0 (e.g. softmax weights or normalised scores)")
    if not len(values):
        return None
    half = attention.patch_size_px / 2
    return coords[:, 0] + half, coords[:, 1] + half


def attention_columns(attention: PatchAttention | None, inside: np.ndarray | None) -> dict[str, object]:
    """Attention mass inside/outside the annotation and the pointing game, from the patches whose
    centre is ``inside`` (None: no attention, the columns left empty)."""
    if attention is None or inside is None:
        return {"attention_inside": None, "attention_outside": None, "pointing_game": None}
    values = np.asarray(attention.attention, dtype=np.float64).ravel()
    total = values.sum()
    share = float(values[inside].sum() / total) if total > 0 else 0.0
    return {
        "attention_inside": share,
        "attention_outside": 1.0 - share if total > 0 else 0.0,
        "pointing_game": bool(inside[int(np.argmax(values))]),
    }
