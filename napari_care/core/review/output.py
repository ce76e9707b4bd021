"""A segmentation output on disk, read back for a review.

``napari-care segment`` leaves ``<stem>.regions.geojson`` (regions as detections with their
measurements, the ROI as ``"CARE ROI"`` annotations, optionally tiles) and ``<stem>.care.json``
next to each other. The review needs the region grid, the ROI, the phenotype groups and the
per-patch attention; they are rebuilt from the GeoJSON, with ``care.json`` (when there) for
the ROI, the mpp and the slide's bounds:

- the cell (patch) side is ``sqrt(sum of region areas / sum of "Patches")`` (regions are exact
  unions of cells, so this is exact up to the two-decimal coordinates), the grid origin the
  regions' top-left corner, and every cell whose centre lies in a region gets its id;
- the ROI is CARE's ROI, one region: ``care.json``'s ``roi`` when the summary is there (CARE's
  ``argmax a``, the lowest region id when weights tie); otherwise, of the ``"CARE ROI"``
  annotations (or the regions measured ``"CARE ROI" = 1``), the one with the largest
  ``"CARE a"``, ties to the lowest region id, so a run drawn with ``--roi-threshold`` below 1
  (several ROI outlines) or with tied weights still has the one ROI ``care.json`` names;
- the phenotype group of each region is its ``"CARE group"`` measurement (else the ``group``
  of its row in ``care.json``'s ``regions``), its name the detection's classification;
- attention is the ``"CARE attention"`` of the tile objects when the file has them, otherwise
  each region's ``"CARE a"`` spread evenly over its cells, which is how CARE defines patch
  attention (``a[r] / n_r``).

Both files are in QuPath's frame (level-0 pixels relative to the slide's bounds offset), as
are the pathologist's annotations exported from QuPath, so no offset is applied. The slide's
level-0 bounds for the overlap check (:mod:`~napari_care.core.review.bounds`) come from
``care.json``'s ``slide.dimensions`` (less ``slide.bounds_offset`` when recorded).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from napari_care.core.outputs import SUFFIXES
from napari_care.core.qupath.objects import REGION_CLASS, ROI_CLASS, Annotation
from napari_care.core.qupath.read import read_geojson
from napari_care.core.review.bounds import Box
from napari_care.core.review.grid import PatchAttention, RegionGrid
from napari_care.core.review.groups import PhenotypeGroups

REGION_ID = "CARE region id"
PATCHES = "Patches"
WEIGHT = "CARE a"
TILE_ATTENTION = "CARE attention"
GROUP = "CARE group"


@dataclass(frozen=True)
class SegmentOutput:
    """What the review needs from one slide's segmentation output.

    Attributes
    ----------
    stem
        The slide's stem (file names ``<stem>.regions.geojson``, ``<stem>.care.json``).
    geojson_path
        The regions file read.
    region_polygons
        Region id -> exact polygon in level-0 pixels (QuPath's frame).
    roi_ids
        The ROI's region ids.
    grid
        The region grid rebuilt from the polygons.
    attention
        Per-patch attention (from tiles, or ``a / n`` per region).
    groups
        The phenotype groups of the regions; None when the run has none.
    drawn_roi_ids
        The regions drawn as ``"CARE ROI"`` in the file (several with ``--roi-threshold`` < 1).
    mpp_xy
        Micrometres per level-0 pixel (``care.json``, else the regions' metadata), or None.
    slide_bounds
        The slide's level-0 box in the file's frame, or None when ``care.json`` does not say.
    """

    stem: str
    geojson_path: Path
    region_polygons: dict[int, BaseGeometry]
    roi_ids: tuple[int, ...]
    grid: RegionGrid
    attention: PatchAttention
    groups: PhenotypeGroups | None = None
    drawn_roi_ids: tuple[int, ...] = ()
    mpp_xy: tuple[float, float] | None = None
    slide_bounds: Box | None = None


def locate_output(result: str | os.PathLike[str], stem: str | None = None) -> tuple[str, Path]:
    """The stem and regions GeoJSON of a segmentation output.

    Parameters
    ----------
    result
        ``<stem>.care.json``, ``<stem>.regions.geojson``, the output folder (with ``stem``, or
        holding a single ``*.care.json``), or the path prefix ``DIR/<stem>``.
    stem
        The slide's stem inside a folder.

    Raises
    ------
    ValueError
        Nothing matches, or a folder holds several results and no ``stem`` was given.
    """
    path = Path(result)
    summary, regions = SUFFIXES["summary"], SUFFIXES["geojson"]
    if path.is_dir():
        if stem is None:
            found = sorted(p.name[: -len(summary)] for p in path.glob(f"*{summary}"))
            found = found or sorted(p.name[: -len(regions)] for p in path.glob(f"*{regions}"))
            if len(found) != 1:
                what = f"{len(found)} results ({', '.join(found[:5])})" if found else "no segmentation output"
                raise ValueError(f"{path}: holds {what}; name the slide with its stem")
            stem = found[0]
        folder = path
    elif path.name.endswith(summary) or path.name.endswith(regions):
        suffix = summary if path.name.endswith(summary) else regions
        folder, stem = path.parent, path.name[: -len(suffix)]
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
    else:  # DIR/<stem>
        folder, stem = path.parent, path.name
    geojson = folder / f"{stem}{regions}"
    if not geojson.is_file():
        raise ValueError(f"{geojson}: no regions file for slide {stem!r} (run `napari-care segment` first)")
    return stem, geojson


def load_output(result: str | os.PathLike[str], stem: str | None = None) -> SegmentOutput:
    """Read a segmentation output (see :func:`locate_output`) into a :class:`SegmentOutput`."""
    stem, geojson = locate_output(result, stem)
    objects = read_geojson(geojson)
    regions = [a for a in objects if a.object_type == "detection" and REGION_ID in a.measurements]
    if not regions:
        raise ValueError(f"{geojson}: no CARE regions (detections measured {REGION_ID!r}) in the file")
    polygons = {int(a.measurements[REGION_ID]): a.geometry for a in regions}
    patches = {int(a.measurements[REGION_ID]): a.measurements.get(PATCHES) for a in regions}
    if any(n is None or n <= 0 for n in patches.values()):
        raise ValueError(f"{geojson}: regions without a positive {PATCHES!r} measurement")
    cell_size = math.sqrt(sum(g.area for g in polygons.values()) / sum(patches.values()))
    grid = region_grid(polygons, cell_size)
    summary = _read_summary(geojson.with_name(f"{stem}{SUFFIXES['summary']}"))
    drawn = sorted(
        {
            int(a.measurements[REGION_ID])
            for a in objects
            if a.class_name == ROI_CLASS and REGION_ID in a.measurements
        }
    )
    drawn = drawn or sorted(int(a.measurements[REGION_ID]) for a in regions if a.measurements.get("CARE ROI"))
    weight_of_region = {int(a.measurements[REGION_ID]): a.measurements.get(WEIGHT) for a in regions}
    roi_ids = _the_roi(summary.get("roi"), drawn, weight_of_region, polygons)
    tiles = [a for a in objects if a.object_type == "tile" and TILE_ATTENTION in a.measurements]
    if tiles:
        bounds = shapely.bounds(np.array([t.geometry for t in tiles], dtype=object))
        attention = PatchAttention(
            bounds[:, :2],
            np.array([t.measurements[TILE_ATTENTION] for t in tiles]),
            float(np.median(bounds[:, 2] - bounds[:, 0])),
        )
    else:
        weights = {region: weight or 0.0 for region, weight in weight_of_region.items()}
        attention = attention_from_region_weights(grid, weights)
    return SegmentOutput(
        stem,
        geojson,
        polygons,
        roi_ids,
        grid,
        attention,
        groups=_groups(regions, summary),
        drawn_roi_ids=tuple(drawn),
        mpp_xy=_mpp(summary, regions),
        slide_bounds=_slide_bounds(summary),
    )


def _read_summary(path: Path) -> dict:
    """``care.json`` as a dict; empty when it is not there.

    Raises
    ------
    ValueError
        The file is there but is not a JSON object.
    """
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable napari-care summary ({error})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: not a napari-care summary (a JSON object)")
    return document


def _the_roi(
    recorded: object,
    drawn: list[int],
    weight_of_region: Mapping[int, float | None],
    polygons: Mapping[int, BaseGeometry],
) -> tuple[int, ...]:
    """CARE's ROI (see the module docstring): ``care.json``'s, else the top-weight drawn one."""
    if isinstance(recorded, int) and recorded in polygons:
        return (recorded,)
    if not drawn:
        return ()
    weights = {r: weight_of_region.get(r) for r in drawn}
    known = [w for w in weights.values() if w is not None and math.isfinite(w)]
    top = max(known, default=None)
    return (min(r for r, w in weights.items() if top is None or w == top),)


def _groups(regions: list[Annotation], summary: Mapping) -> PhenotypeGroups | None:
    """The regions' phenotype groups: ``"CARE group"`` measurements, else ``care.json``'s rows."""
    group_of_region: dict[int, int] = {}
    names: dict[int, str] = {}
    for region in regions:
        group = region.measurements.get(GROUP)
        if group is None or not math.isfinite(group):
            continue
        group_of_region[int(region.measurements[REGION_ID])] = int(group)
        if int(group) >= 0 and region.class_name and region.class_name != REGION_CLASS:
            names.setdefault(int(group), region.class_name)
    if not group_of_region:
        for row in summary.get("regions") or ():
            if (
                isinstance(row, dict)
                and isinstance(row.get("group"), int)
                and isinstance(row.get("region"), int)
            ):
                group_of_region[row["region"]] = row["group"]
    groups = PhenotypeGroups.from_regions(group_of_region, names)
    return groups if groups.regions_of_group else None


def _mpp(summary: Mapping, regions: list[Annotation]) -> tuple[float, float] | None:
    """Micrometres per level-0 pixel: ``care.json``'s slide mpp, else the regions' metadata."""
    mpp = (summary.get("slide") or {}).get("mpp")
    if isinstance(mpp, list) and len(mpp) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in mpp):
        return float(mpp[0]), float(mpp[1])
    for region in regions:
        try:
            value = float(region.metadata.get("mpp", "nan"))
        except (AttributeError, ValueError):
            continue
        if value > 0:
            return value, value
    return None


def _slide_bounds(summary: Mapping) -> Box | None:
    """The slide's level-0 box in QuPath's frame, from ``care.json``; None when not recorded."""
    slide = summary.get("slide") or {}
    size, offset = slide.get("dimensions"), slide.get("bounds_offset") or (0, 0)
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, (int, float)) for v in size)):
        return None
    ox, oy = (float(v) for v in offset)
    return (0.0 - ox, 0.0 - oy, float(size[0]) - ox, float(size[1]) - oy)


def region_grid(polygons: Mapping[int, BaseGeometry], cell_size_px: float) -> RegionGrid:
    """The region grid of exact cell-union polygons: a cell gets the region holding its centre.

    The grid's origin is the polygons' top-left corner, so it lies on a cell edge.
    """
    if not polygons or not cell_size_px > 0:
        raise ValueError(
            f"region_grid: needs polygons and cell_size_px > 0 (got {len(polygons)}, {cell_size_px})"
        )
    ids = list(polygons)
    bounds = shapely.bounds(np.array([polygons[r] for r in ids], dtype=object))
    x0, y0 = float(bounds[:, 0].min()), float(bounds[:, 1].min())
    to_cell = np.rint((bounds - [x0, y0, x0, y0]) / cell_size_px).astype(np.int64)  # [c0, r0, c1, r1]
    labels = np.full((int(to_cell[:, 3].max()), int(to_cell[:, 2].max())), -1, dtype=np.int64)
    for region, (c0, r0, c1, r1) in zip(ids, to_cell.tolist(), strict=True):
        centre_x = x0 + (np.arange(c0, c1) + 0.5) * cell_size_px
        centre_y = y0 + (np.arange(r0, r1) + 0.5) * cell_size_px
        inside = shapely.intersects_xy(polygons[region], centre_x[None, :], centre_y[:, None])
        labels[r0:r1, c0:c1][inside] = int(region)
    return RegionGrid(labels, (x0, y0), float(cell_size_px))


def attention_from_region_weights(grid: RegionGrid, weight_of_region: Mapping[int, float]) -> PatchAttention:
    """Per-cell attention: each region's weight ``a`` spread evenly over its cells."""
    labels = np.asarray(grid.labels)
    rows, cols = np.nonzero(labels >= 0)
    region = labels[rows, cols]
    cells = np.bincount(region)
    weight = np.zeros(len(cells))
    for key, value in weight_of_region.items():
        if 0 <= int(key) < len(cells) and math.isfinite(value):
            weight[int(key)] = max(float(value), 0.0)
    x0, y0 = grid.origin_xy
    coords = np.stack([x0 + cols * grid.cell_size_px, y0 + rows * grid.cell_size_px], axis=1)
    return PatchAttention(coords, weight[region] / cells[region], grid.cell_size_px)
