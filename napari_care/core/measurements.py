"""What a pathologist measures on a run: per region and per phenotype group, the area (um^2),
its share of the tissue, the patches, the SPF weight ``a`` and the mean attention.

Tables are dicts of equal-length numpy columns (one row per region or per group), so they go
as they are to a CSV, a napari layer's ``features`` and QuPath measurements. The tissue is the
run's patches (the area CARE saw), so the shares of the regions, and of the groups, sum to 1.

>>> groups = group_measurements(result, names={0: "tumour"})  # doctest: +SKIP
>>> write_measurements_csv("out/slide.measurements.csv", result)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_care.core.atomic import atomic_open
from napari_care.core.qupath.objects import group_class_name, group_color

if TYPE_CHECKING:
    from napari_care.core.segment import SegmentResult

Table = dict[str, np.ndarray]
MEASURED = ("patches", "area_um2", "tissue_share", "a", "mean_attention")  # columns of both tables


def region_measurements(result: SegmentResult) -> Table:
    """One row per region: ``region``, ``group``, ``patches``, ``area_um2`` (NaN without mpp),
    ``tissue_share``, ``a``, ``mean_attention``, ``is_roi``."""
    care = result.care
    sizes = care.region_sizes.astype(np.int64)
    area = result.area_um2_of_region
    attention = np.bincount(care.region_of_patch, weights=care.patch_attention, minlength=care.n_regions)
    return {
        "region": np.arange(care.n_regions, dtype=np.int64),
        "group": np.asarray(result.group_of_region, np.int64),
        "patches": sizes,
        "area_um2": area.astype(np.float64) if area is not None else np.full(care.n_regions, np.nan),
        "tissue_share": sizes / max(int(sizes.sum()), 1),
        "a": care.a.astype(np.float64),
        "mean_attention": attention / np.maximum(sizes, 1),
        "is_roi": np.arange(care.n_regions) == care.roi,
    }


def default_group_names(group_ids) -> dict[int, str]:
    """QuPath's class name of each group (``"CARE group 3"``) until a user names it."""
    return {int(g): group_class_name(int(g)) for g in group_ids}


def group_measurements(result: SegmentResult, names: Mapping[int, str] | None = None) -> Table:
    """One row per phenotype group (ids 0..G-1): ``group``, ``name``, ``color`` (``"#rrggbb"``),
    ``regions``, ``patches``, ``area_um2``, ``tissue_share``, ``a`` (the sum of its regions'),
    ``mean_attention`` (over its patches)."""
    regions = region_measurements(result)
    groups = regions["group"]
    ids = np.arange(int(groups.max()) + 1 if groups.size else 0, dtype=np.int64)
    named = {**default_group_names(ids), **{int(k): str(v) for k, v in (names or {}).items()}}
    patches = np.bincount(groups, weights=regions["patches"], minlength=len(ids))
    attention = np.bincount(
        groups, weights=regions["mean_attention"] * regions["patches"], minlength=len(ids)
    )
    return {
        "group": ids,
        "name": np.array([named[int(g)] for g in ids], dtype=object),
        "color": np.array(["#{:02x}{:02x}{:02x}".format(*group_color(int(g))) for g in ids], dtype=object),
        "regions": np.bincount(groups, minlength=len(ids)).astype(np.int64),
        "patches": patches.astype(np.int64),
        "area_um2": np.bincount(groups, weights=regions["area_um2"], minlength=len(ids)),
        "tissue_share": patches / max(float(patches.sum()), 1.0),
        "a": np.bincount(groups, weights=regions["a"], minlength=len(ids)),
        "mean_attention": attention / np.maximum(patches, 1),
    }


def _cell(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else f"{float(value):.6g}"
    return str(value)


def measurements_csv(result: SegmentResult, names: Mapping[int, str] | None = None) -> str:
    """The measurements as one CSV text: a row per region (``level = region``), then a row per
    group (``level = group``), with the columns of both tables."""
    regions, groups = region_measurements(result), group_measurements(result, names)
    name_of = dict(zip(groups["group"].tolist(), groups["name"].tolist(), strict=True))
    columns = ["level", "id", "group", "group_name", "regions", "patches", "area_um2", "tissue_share"]
    columns += ["a", "mean_attention", "is_roi"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for i in range(len(regions["region"])):
        group = int(regions["group"][i])
        row = {"level": "region", "id": int(regions["region"][i]), "group": group}
        row |= {"group_name": name_of.get(group, ""), "regions": 1}
        row |= {
            k: regions[k][i] for k in ("patches", "area_um2", "tissue_share", "a", "mean_attention", "is_roi")
        }
        writer.writerow([_cell(row.get(c, "")) for c in columns])
    for i in range(len(groups["group"])):
        row = {"level": "group", "id": int(groups["group"][i]), "group": int(groups["group"][i])}
        row |= {"group_name": groups["name"][i], "is_roi": ""}
        row |= {
            k: groups[k][i] for k in ("regions", "patches", "area_um2", "tissue_share", "a", "mean_attention")
        }
        writer.writerow([_cell(row.get(c, "")) for c in columns])
    return out.getvalue()


def write_measurements_csv(
    path: str | os.PathLike[str], result: SegmentResult, names: Mapping[int, str] | None = None
) -> Path:
    """Write :func:`measurements_csv` to ``path`` atomically; return the path."""
    with atomic_open(path, "w", newline="") as handle:
        handle.write(measurements_csv(result, names))
    return Path(path)
