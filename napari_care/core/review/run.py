"""Review a segmentation output on disk against a pathologist's annotation file.

``napari-care segment`` leaves ``<stem>.regions.geojson`` (regions as detections with their
measurements, the ROI as ``"CARE ROI"`` annotations, optionally tiles) and ``<stem>.care.json``
next to each other. The review needs the region grid, the ROI and the per-patch attention;
all three are rebuilt from the GeoJSON alone:

- the cell (patch) side is ``sqrt(sum of region areas / sum of "Patches")`` (regions are exact
  unions of cells, so this is exact up to the two-decimal coordinates), the grid origin the
  regions' top-left corner, and every cell whose centre lies in a region gets its id;
- the ROI is the ``"CARE region id"`` of the ``"CARE ROI"`` annotations (or of the regions
  measured ``"CARE ROI" = 1``);
- attention is the ``"CARE attention"`` of the tile objects when the file has them, otherwise
  each region's ``"CARE a"`` spread evenly over its cells, which is how CARE defines patch
  attention (``a[r] / n_r``).

Both files are in QuPath's frame (level-0 pixels relative to the slide's bounds offset), as
are the pathologist's annotations exported from QuPath, so no offset is applied.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from napari_care.core.outputs import SUFFIXES
from napari_care.core.progress import Progress, run_to_end
from napari_care.core.qupath.objects import ROI_CLASS, Annotation
from napari_care.core.qupath.read import read_geojson
from napari_care.core.review.metrics import (
    PatchAttention,
    RegionGrid,
    iter_review_agreement,
    review_agreement,
    write_review_csv,
)

REGION_ID = "CARE region id"
PATCHES = "Patches"
WEIGHT = "CARE a"
TILE_ATTENTION = "CARE attention"


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
    """

    stem: str
    geojson_path: Path
    region_polygons: dict[int, BaseGeometry]
    roi_ids: tuple[int, ...]
    grid: RegionGrid
    attention: PatchAttention


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
    roi_ids = tuple(
        sorted(
            {
                int(a.measurements[REGION_ID])
                for a in objects
                if a.class_name == ROI_CLASS and REGION_ID in a.measurements
            }
        )
    )
    if not roi_ids:
        roi_ids = tuple(
            sorted(int(a.measurements[REGION_ID]) for a in regions if a.measurements.get("CARE ROI"))
        )
    tiles = [a for a in objects if a.object_type == "tile" and TILE_ATTENTION in a.measurements]
    if tiles:
        bounds = shapely.bounds(np.array([t.geometry for t in tiles], dtype=object))
        attention = PatchAttention(
            bounds[:, :2],
            np.array([t.measurements[TILE_ATTENTION] for t in tiles]),
            float(np.median(bounds[:, 2] - bounds[:, 0])),
        )
    else:
        weights = {int(a.measurements[REGION_ID]): a.measurements.get(WEIGHT, 0.0) for a in regions}
        attention = attention_from_region_weights(grid, weights)
    return SegmentOutput(stem, geojson, polygons, roi_ids, grid, attention)


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


def review_region_table(
    annotations: Iterable[Annotation], grid: RegionGrid, region_columns: Mapping[str, object]
) -> list[dict[str, object]]:
    """Agreement rows of annotations with CARE regions given as their grid and region table.

    Parameters
    ----------
    annotations
        The annotations, in the grid's level-0 frame.
    grid
        The region grid.
    region_columns
        Column -> values as :func:`napari_care.core.regions.region_table` makes them (a dict or a
        DataFrame): ``region``, ``is_roi`` and ``a`` are used, rows with ``region < 0`` left out.
        The attention is each region's ``a`` spread evenly over its cells.

    Raises
    ------
    KeyError
        A column is missing.
    """
    region = np.asarray(region_columns["region"])
    keep = region >= 0
    region_ids = region[keep].astype(int)
    roi_ids = region_ids[np.asarray(region_columns["is_roi"])[keep].astype(bool)].tolist()
    weights = dict(zip(region_ids.tolist(), np.asarray(region_columns["a"])[keep].tolist(), strict=True))
    attention = attention_from_region_weights(grid, weights)
    return review_agreement(annotations, grid, roi_ids=roi_ids, attention=attention)


def review_output(
    output: SegmentOutput, annotations: Iterable[Annotation], *, include_disjoint: bool = False
) -> list[dict[str, object]]:
    """Agreement rows of one slide's output (see :func:`~napari_care.core.review.metrics.review_agreement`),
    each starting with ``slide`` = the output's stem."""
    return run_to_end(iter_review_output(output, annotations, include_disjoint=include_disjoint))


def iter_review_output(
    output: SegmentOutput, annotations: Iterable[Annotation], *, include_disjoint: bool = False
) -> Generator[Progress, None, list[dict[str, object]]]:
    """:func:`review_output` as a generator of ``Progress("review", ...)`` reports."""
    rows = yield from iter_review_agreement(
        annotations,
        output.grid,
        roi_ids=output.roi_ids,
        attention=output.attention,
        region_polygons=output.region_polygons,
        include_disjoint=include_disjoint,
    )
    return [{"slide": output.stem, **row} for row in rows]


def review_files(
    result: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    stem: str | None = None,
    include_disjoint: bool = False,
) -> list[dict[str, object]]:
    """Review a segmentation output against an annotation file and write the rows as CSV (atomically).

    Parameters
    ----------
    result
        The output (see :func:`locate_output`).
    annotations
        A QuPath (or other) GeoJSON file in the same frame as the output.
    out_csv
        Where the CSV goes.
    stem
        The slide's stem when ``result`` is a folder.
    include_disjoint
        Also give rows for regions that do not touch an annotation class.

    Returns
    -------
    list of dict
        The rows written.

    Raises
    ------
    ValueError
        Unreadable or malformed inputs, named; or an annotation file without polygons.

    See Also
    --------
    iter_review_files : the same, as a generator of progress reports (for a progress bar).
    """
    work = iter_review_files(result, annotations, out_csv, stem=stem, include_disjoint=include_disjoint)
    return run_to_end(work)


def iter_review_files(
    result: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    stem: str | None = None,
    include_disjoint: bool = False,
) -> Generator[Progress, None, list[dict[str, object]]]:
    """:func:`review_files` as a generator: yields :class:`~napari_care.core.progress.Progress` of the
    stages ``"read"`` (the two files), ``"review"`` (annotation polygons) and ``"write"``, and
    returns the rows.

    Invalid annotation polygons are repaired on reading with one warning per file (see
    :func:`~napari_care.core.qupath.read.read_geojson`).
    """
    stem, regions_path = locate_output(result, stem)
    # one report once both files are read and checked: bad input fails before any progress shows
    yield Progress("read", 0, 2, f"{regions_path.name}, {Path(annotations).name}")
    output = load_output(regions_path)
    objects = read_geojson(annotations)
    if not any(isinstance(a.geometry, (Polygon, MultiPolygon)) and not a.geometry.is_empty for a in objects):
        raise ValueError(
            f"{annotations}: no polygon annotations to compare with (lines and points are skipped)"
        )
    yield Progress("read", 2, 2, f"{len(objects):,} objects")
    rows = yield from iter_review_output(output, objects, include_disjoint=include_disjoint)
    yield Progress("write", 0, 1, Path(out_csv).name)
    write_review_csv(out_csv, rows)
    yield Progress("write", 1, 1, f"{len(rows):,} rows")
    return rows
