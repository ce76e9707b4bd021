"""Phenotype groups as review targets: which group of the run is the annotated tumour?

A group is the union of the regions CARE's phenotype clustering put in it (each region's
``group``: the ``"CARE group"`` measurement of its detection in ``<stem>.regions.geojson``, the
``group`` of its row in ``care.json``'s ``regions`` and in the region table). Regions are
disjoint, so a group's area and its overlap with an annotation class are sums over its regions.

Per annotation class the review gives one ``target = "group"`` agreement row per group that
meets the class, the best-matching one (largest Dice, ties: the lowest group id) marked
``best_group``, and the class x group area table (:func:`class_group_rows`): how much of the
class's area lies in each group, in level-0 pixels squared and square micrometres.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

NO_GROUP = -1  # the group of a region that was not clustered, and the table's "outside" row
OUTSIDE_GROUPS = "outside the groups"


@dataclass(frozen=True)
class PhenotypeGroups:
    """The run's phenotype groups.

    Attributes
    ----------
    regions_of_group
        Group id -> its region ids (ascending), groups in id order; regions without a group
        (``-1``) are in none.
    names
        Group id -> display name (the class name the run gave it, e.g. ``"CARE group 3"`` or a
        name the user chose); a group without one is called ``"group <id>"``.
    """

    regions_of_group: dict[int, tuple[int, ...]]
    names: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_regions(
        cls, group_of_region: Mapping[int, int], names: Mapping[int, str] | None = None
    ) -> PhenotypeGroups:
        """Groups from region id -> group id (``-1``: none) and optional group names."""
        members: dict[int, list[int]] = {}
        for region, group in sorted((int(r), int(g)) for r, g in group_of_region.items()):
            if group >= 0:
                members.setdefault(group, []).append(region)
        return cls(
            {group: tuple(members[group]) for group in sorted(members)},
            {int(g): str(n) for g, n in (names or {}).items() if int(g) in members},
        )

    def name(self, group: int) -> str:
        """The group's display name."""
        return self.names.get(int(group), f"group {int(group)}")

    def group_of_region(self) -> dict[int, int]:
        """Region id -> group id, for the grouped regions."""
        return {region: group for group, regions in self.regions_of_group.items() for region in regions}


def best_group(dice_of_group: Mapping[int, float]) -> int | None:
    """The group with the largest Dice (ties: the lowest id); None when every Dice is 0."""
    best = max(dice_of_group.items(), key=lambda item: (item[1], -item[0]), default=None)
    return None if best is None or not best[1] > 0 else int(best[0])


def class_group_rows(
    name: str,
    n_objects: int,
    groups: PhenotypeGroups,
    overlap_of_group: Mapping[int, tuple[float, float, float, float]],
    annotation_area_px2: float,
    *,
    mpp_xy: Sequence[float] | None = None,
) -> list[dict[str, object]]:
    """The class x group area rows of one annotation class.

    Parameters
    ----------
    name, n_objects
        The class and its number of polygons.
    groups
        The run's groups.
    overlap_of_group
        Group id -> (overlap area px^2, group area px^2, dice, iou), for every group.
    annotation_area_px2
        The class's area (its union) in level-0 pixels squared.
    mpp_xy
        Micrometres per level-0 pixel (x, y); the ``_um2`` columns are empty without it.

    Returns
    -------
    list of dict
        One row per group (id order), then one ``group_id = -1`` row (``"outside the
        groups"``) for the class's area in no grouped region (off the regions, or in regions
        without a group). Keys: ``class, n_objects, group_id, group_name, regions,
        class_area_px2, group_area_px2, area_px2, class_area_um2, group_area_um2, area_um2,
        share_of_class`` (overlap / class area), ``share_of_group`` (overlap / group area),
        ``dice, iou, best_group``. The rows' ``share_of_class`` add up to 1.
    """
    um2 = float(mpp_xy[0]) * float(mpp_xy[1]) if mpp_xy is not None else None
    best = best_group({group: overlap_of_group[group][2] for group in groups.regions_of_group})

    def area(px2: float | None) -> float | None:
        return None if um2 is None or px2 is None else px2 * um2

    def share(part: float, whole: float) -> float:
        return part / whole if whole > 0 else 0.0

    common = {"class": name, "n_objects": n_objects}
    rows = []
    for group, regions in groups.regions_of_group.items():
        overlap, group_area, dice, iou = overlap_of_group[group]
        rows.append(
            {
                **common,
                "group_id": group,
                "group_name": groups.name(group),
                "regions": ";".join(map(str, regions)),
                "class_area_px2": annotation_area_px2,
                "group_area_px2": group_area,
                "area_px2": overlap,
                "class_area_um2": area(annotation_area_px2),
                "group_area_um2": area(group_area),
                "area_um2": area(overlap),
                "share_of_class": share(overlap, annotation_area_px2),
                "share_of_group": share(overlap, group_area),
                "dice": dice,
                "iou": iou,
                "best_group": group == best,
            }
        )
    outside = max(annotation_area_px2 - sum(overlap_of_group[g][0] for g in groups.regions_of_group), 0.0)
    rows.append(
        {
            **common,
            "group_id": NO_GROUP,
            "group_name": OUTSIDE_GROUPS,
            "regions": "",
            "class_area_px2": annotation_area_px2,
            "group_area_px2": None,
            "area_px2": outside,
            "class_area_um2": area(annotation_area_px2),
            "group_area_um2": None,
            "area_um2": area(outside),
            "share_of_class": share(outside, annotation_area_px2),
            "share_of_group": None,
            "dice": None,
            "iou": None,
            "best_group": False,
        }
    )
    return rows


def group_region_array(groups: PhenotypeGroups, group: int) -> np.ndarray:
    """The group's region ids as an int64 array."""
    return np.asarray(groups.regions_of_group[group], dtype=np.int64)
