"""One annotation class against the run's targets (ROI, phenotype groups, regions): the rows.

Both review paths, the fast one (:mod:`~napari_care.core.review.metrics`, the class's area
per grid cell) and the exact one (:mod:`~napari_care.core.review.exact`, unions), measure
the class's area in each region and pass it here, where the ROI, group and region rows and
the class x group table are built alike (so the two paths agree on every column but the
measurements they make themselves). The overlap columns and their grid bound are described
in :mod:`~napari_care.core.review.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from shapely.geometry.base import BaseGeometry

from napari_care.core.review.coverage import GridCounts
from napari_care.core.review.groups import PhenotypeGroups, best_group, class_group_rows


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


@dataclass(frozen=True)
class ClassTargets:
    """One annotation class against the run's targets: the rows both review paths build alike.

    Attributes
    ----------
    name, n_objects
        The class and its number of polygons.
    annotation_area
        The class's area (its union), level-0 pixels squared.
    intersection
        ``[n_labels]`` the class's exact area in each region.
    meets
        ``[n_labels]`` bool: the regions the class meets (area, or a cell centre inside).
    area_of_region
        ``[n_labels]`` each region's area.
    """

    name: str
    n_objects: int
    annotation_area: float
    intersection: np.ndarray
    meets: np.ndarray
    area_of_region: np.ndarray

    def rows(
        self,
        roi_ids: list[int],
        roi_area: float | None,
        region_ids: np.ndarray,
        groups: PhenotypeGroups | None,
        overlap: Callable[[list[int], tuple[float, float, float]], dict[str, object]],
        attention_values: Mapping[str, object],
        include_disjoint: bool,
        mpp_xy: Sequence[float] | None = None,
        roi_intersection: float | None = None,
        group_intersection: Mapping[int, float] | None = None,
    ) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        """The class's agreement rows (ROI, groups, regions) and its class x group rows.

        ``overlap(target_labels, (|T∩A|, |T|, |A|))`` gives a target's overlap columns;
        ``roi_intersection`` and ``group_intersection`` replace the sums of ``intersection``
        over the ROI's and each group's regions (the exact path measures the unions).
        """
        common: dict[str, object] = {"class": self.name, "n_objects": self.n_objects}
        no_group = {"group_id": None, "group_name": None, "best_group": None} if groups else {}
        group_of_region = groups.group_of_region() if groups else {}
        rows: list[dict[str, object]] = []
        if roi_area is not None:
            hit = float(self.intersection[roi_ids].sum()) if roi_intersection is None else roi_intersection
            metrics = overlap(roi_ids, (hit, roi_area, self.annotation_area))
            roi_key = {"target": "roi", "region_id": ";".join(map(str, roi_ids)), **no_group}
            rows.append({**common, **roi_key, **metrics, **attention_values})
        table: list[dict[str, object]] = []
        if groups:
            measured = {}
            for group, members in groups.regions_of_group.items():
                member_list = list(members)
                hit = float(self.intersection[member_list].sum())
                if group_intersection is not None:
                    hit = group_intersection[group]
                exact = (hit, float(self.area_of_region[member_list].sum()), self.annotation_area)
                measured[group] = (member_list, overlap(member_list, exact))
            best = best_group({group: float(columns["dice"]) for group, (_, columns) in measured.items()})
            for group, (members, metrics) in measured.items():
                if include_disjoint or self.meets[members].any():
                    key = {"target": "group", "region_id": ";".join(map(str, members))}
                    names = {"group_id": group, "group_name": groups.name(group), "best_group": group == best}
                    rows.append({**common, **key, **names, **metrics, **attention_values})
            overlap_of_group = {
                group: (float(m["intersection_area_px2"]), float(m["target_area_px2"]), m["dice"], m["iou"])
                for group, (_, m) in measured.items()
            }
            table = class_group_rows(
                self.name, self.n_objects, groups, overlap_of_group, self.annotation_area, mpp_xy=mpp_xy
            )
        for region in region_ids.tolist():
            if not (include_disjoint or self.meets[region]):
                continue
            area = float(self.area_of_region[region])
            exact = (float(self.intersection[region]), area, self.annotation_area)
            key = {"target": "region", "region_id": int(region)}
            if groups:
                group = group_of_region.get(int(region))
                names = {"group_id": group, "group_name": None if group is None else groups.name(group)}
                key.update(names, best_group=None)
            rows.append({**common, **key, **overlap([int(region)], exact), **attention_values})
        return rows, table


def overlap_on_grid(
    counts: GridCounts,
    region_cells: np.ndarray,
    cell_area: float,
    target_labels: list[int],
    exact: tuple[float, float, float],
) -> dict[str, object]:
    """:func:`overlap_columns` with the class's grid counts and the grid's cells bound first."""
    return overlap_columns(exact, counts, target_labels, region_cells, cell_area)


def groups_on_grid(
    groups: PhenotypeGroups | None, region_polygons: Mapping[int, BaseGeometry]
) -> PhenotypeGroups | None:
    """``groups`` restricted to the regions on the grid (None when no group is left)."""
    if groups is None:
        return None
    kept = PhenotypeGroups.from_regions(
        {r: g for r, g in groups.group_of_region().items() if r in region_polygons}, groups.names
    )
    return kept if kept.regions_of_group else None
