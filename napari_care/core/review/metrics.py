"""Agreement between a pathologist's annotations and CARE's regions, ROI, groups and attention.

For every annotation class (the union of that class's polygons; lines and points are left
out) the review compares the annotation with the ROI (the union of the ROI regions), with
each phenotype group it touches (the union of the group's regions, see
:mod:`~napari_care.core.review.groups`) and with each CARE region it touches:

- ``dice`` = 2|T∩A| / (|T| + |A|), ``iou`` = |T∩A| / |T∪A| for target T and annotation A;
- ``target_in_annotation`` = |T∩A| / |T| (for the ROI: the share of the ROI inside the
  annotation) and ``annotation_in_target`` = |T∩A| / |A| (the share of the annotation
  covered by the ROI);
- ``attention_inside`` / ``attention_outside``: the share of the total patch attention on
  patches whose centre lies inside / outside the annotation, and ``pointing_game``: whether
  CARE's most attended place lies in it, on the highest-attention patch or, when the
  attention is constant within each region, on the top-weight region (``pointing_on``, see
  :mod:`~napari_care.core.review.pointing`; per class, repeated on its rows).

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
import functools
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
    count_on_grid,
    cover_lattice,
    disjoint_parts,
    inside_points,
    polygons_of,
)
from napari_care.core.review.grid import PatchAttention, RegionGrid
from napari_care.core.review.groups import PhenotypeGroups
from napari_care.core.review.pointing import PointingRule, pointing_hit, pointing_rule
from napari_care.core.review.targets import ClassTargets, groups_on_grid, overlap_columns, overlap_on_grid

UNCLASSIFIED = "Unclassified"
__all__ = [  # RegionGrid, PatchAttention and overlap_columns live a floor down; named here as before
    "UNCLASSIFIED",
    "PatchAttention",
    "RegionGrid",
    "ReviewTables",
    "attention_columns",
    "class_geometries",
    "iter_review_agreement",
    "iter_review_tables",
    "overlap_columns",
    "patch_centres",
    "polygons_by_class",
    "rasterize",
    "review_agreement",
    "write_review_csv",
]


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


@dataclass(frozen=True)
class ReviewTables:
    """What one review gives.

    Attributes
    ----------
    rows
        The agreement rows (see :func:`review_agreement`).
    class_by_group
        The class x group area rows (:func:`~napari_care.core.review.groups.class_group_rows`),
        empty without groups.
    pointing_on
        Where the pointing game was played (``"patch"`` or ``"region"``, see
        :mod:`~napari_care.core.review.pointing`); None without attention.
    notes
        One-line warnings about the inputs (annotations partly outside the slide), for a caller
        that shows them rather than a warning.
    """

    rows: list[dict[str, object]]
    class_by_group: list[dict[str, object]]
    pointing_on: str | None
    notes: tuple[str, ...] = ()


def review_agreement(
    annotations: Iterable[Annotation],
    grid: RegionGrid,
    *,
    roi_ids: Sequence[int] = (),
    attention: PatchAttention | None = None,
    region_polygons: Mapping[int, BaseGeometry] | None = None,
    include_disjoint: bool = False,
    groups: PhenotypeGroups | None = None,
) -> list[dict[str, object]]:
    """Agreement rows: per annotation class, one for the ROI, one per overlapping phenotype group
    and one per overlapping region.

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
        Also give rows for regions and groups that do not touch the annotation (all zero).
    groups
        The run's phenotype groups: ``target = "group"`` rows and the ``group_id,
        group_name, best_group`` columns (on every row; empty where they do not apply).

    Returns
    -------
    list of dict
        Rows with keys ``class, n_objects, target`` (``"roi"``, ``"group"`` or ``"region"``),
        ``region_id`` (the ROI's or the group's region ids joined by ``";"``), with ``groups``
        ``group_id, group_name, best_group`` (the group with the largest Dice of the class,
        ties: the lowest id), then ``dice, iou, target_in_annotation, annotation_in_target,
        intersection_area_px2, target_area_px2, annotation_area_px2``, the same four ratios
        with suffix ``_grid``, ``intersection_cells, target_cells, annotation_cells,
        dice_grid_bound, attention_inside, attention_outside, pointing_game, pointing_on,
        pointing_region`` (see the module docstring and
        :mod:`~napari_care.core.review.pointing`). Classes in name order; groups and regions
        that do not overlap the class are left out unless ``include_disjoint``.

    See Also
    --------
    iter_review_agreement : the same, as a generator of progress reports.
    iter_review_tables : the rows and the class x group table.
    """
    return run_to_end(
        iter_review_agreement(
            annotations,
            grid,
            roi_ids=roi_ids,
            attention=attention,
            region_polygons=region_polygons,
            include_disjoint=include_disjoint,
            groups=groups,
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
    groups: PhenotypeGroups | None = None,
) -> Generator[Progress, None, list[dict[str, object]]]:
    """:func:`review_agreement` as a generator: yields ``Progress("review", done, total)``, ``done``
    counting the annotation polygons reviewed, and returns the rows."""
    tables = yield from iter_review_tables(
        annotations,
        grid,
        roi_ids=roi_ids,
        attention=attention,
        region_polygons=region_polygons,
        include_disjoint=include_disjoint,
        groups=groups,
    )
    return tables.rows


def iter_review_tables(
    annotations: Iterable[Annotation],
    grid: RegionGrid,
    *,
    roi_ids: Sequence[int] = (),
    attention: PatchAttention | None = None,
    region_polygons: Mapping[int, BaseGeometry] | None = None,
    include_disjoint: bool = False,
    groups: PhenotypeGroups | None = None,
    mpp_xy: Sequence[float] | None = None,
) -> Generator[Progress, None, ReviewTables]:
    """The review's agreement rows and class x group table, as a generator of progress reports.

    Parameters as :func:`review_agreement`; ``mpp_xy`` (micrometres per level-0 pixel) gives
    the table's ``_um2`` columns. Yields ``Progress("review", done, total)``, ``done``
    counting the annotation polygons reviewed; returns a :class:`ReviewTables`.
    """
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
    groups = groups_on_grid(groups, region_polygons)
    area_of_region = np.zeros(n_labels)
    area_of_region[region_ids] = region_areas
    cell_area = float(grid.cell_size_px) ** 2
    by_class = polygons_by_class(annotations)
    centres = patch_centres(attention) if by_class else None
    points = None if centres is None else shapely.points(*centres)
    rule = None if centres is None else pointing_rule(attention, grid)
    total, done = sum(len(geometries) for geometries in by_class.values()), 0

    rows: list[dict[str, object]] = []
    class_by_group: list[dict[str, object]] = []
    for name, geometries in by_class.items():
        n = len(geometries)
        yield Progress("review", done, total, f"{name}: {n:,} polygons, overlaps")
        parts = disjoint_parts(polygons_of(geometries))
        cells = cover_lattice(parts, grid.origin_xy, grid.cell_size_px)
        cover = yield from _within_class(cells, name, done, n, total)
        counts = count_on_grid(cover, labels, n_labels)
        annotation_area = float(shapely.area(parts).sum())
        inside = None if points is None else inside_points(parts, points)
        intersection = counts.area_per_label
        meets = (intersection > 0) | (counts.inside_per_label > 0)
        targets = ClassTargets(name, n, annotation_area, intersection, meets, area_of_region)
        attention_values = attention_columns(attention, inside, rule, meets)

        overlap = functools.partial(overlap_on_grid, counts, region_cells, cell_area)
        class_rows, table = targets.rows(
            roi_ids, roi_area, region_ids, groups, overlap, attention_values, include_disjoint, mpp_xy
        )
        rows += class_rows
        class_by_group += table
        done += n
        yield Progress("review", done, total, f"{name}: {n:,} polygons, done")
    return ReviewTables(rows, class_by_group, None if rule is None else rule.on)


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


def attention_columns(
    attention: PatchAttention | None,
    inside: np.ndarray | None,
    rule: PointingRule | None = None,
    region_meets: np.ndarray | None = None,
) -> dict[str, object]:
    """Attention mass inside/outside the annotation and the pointing game.

    ``inside`` marks the patches whose centre is in the annotation (None: no attention, the
    columns left empty); ``rule`` says where the game is played (patch mode when None) and
    ``region_meets`` which regions meet the annotation (for region mode).
    """
    if attention is None or inside is None:
        return {
            "attention_inside": None,
            "attention_outside": None,
            "pointing_game": None,
            "pointing_on": None,
            "pointing_region": None,
        }
    values = np.asarray(attention.attention, dtype=np.float64).ravel()
    total = values.sum()
    share = float(values[inside].sum() / total) if total > 0 else 0.0
    if rule is None:
        rule = PointingRule("patch", int(np.argmax(values)), None)
    meets = np.zeros(0, dtype=bool) if region_meets is None else np.asarray(region_meets)
    return {
        "attention_inside": share,
        "attention_outside": 1.0 - share if total > 0 else 0.0,
        "pointing_game": pointing_hit(rule, inside, meets),
        "pointing_on": rule.on,
        "pointing_region": rule.top_region,
    }
