"""Review a segmentation output on disk against a pathologist's annotation file.

:func:`review_files` (and the generators behind it, for a progress bar) reads the output
(:mod:`~napari_care.core.review.output`: regions, ROI, groups and attention rebuilt from
``<stem>.regions.geojson`` and ``<stem>.care.json``) and the annotations, refuses
annotations that overlap none of the run's patches (:mod:`~napari_care.core.review.bounds`),
and writes the agreement rows to ``--out`` and the class x group area table beside it
(:func:`class_table_path`), both or neither. :func:`iter_review_layers` is the same review
of a viewer's layers, for the review panel.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from shapely.geometry import MultiPolygon, Polygon

from napari_care.core.atomic import output_set
from napari_care.core.progress import Progress, run_to_end
from napari_care.core.qupath.objects import Annotation
from napari_care.core.qupath.read import read_geojson
from napari_care.core.review.bounds import Box, check_annotations_overlap, overlap_note
from napari_care.core.review.groups import PhenotypeGroups
from napari_care.core.review.metrics import RegionGrid, ReviewTables, iter_review_tables, write_review_csv
from napari_care.core.review.output import (
    SegmentOutput,
    attention_from_region_weights,
    load_output,
    locate_output,
    region_grid,
)

__all__ = [  # the reading half lives in review.output; its names are used from here too
    "SegmentOutput",
    "attention_from_region_weights",
    "class_table_path",
    "iter_review_files",
    "iter_review_files_tables",
    "iter_review_layers",
    "iter_review_output",
    "iter_review_region_table",
    "load_output",
    "locate_output",
    "region_grid",
    "review_files",
    "review_output",
    "review_region_table",
]

CLASS_TABLE_SUFFIX = ".class_by_group.csv"


def review_region_table(
    annotations: Iterable[Annotation],
    grid: RegionGrid,
    region_columns: Mapping[str, object],
    *,
    group_names: Mapping[int, str] | None = None,
    mpp_xy: Sequence[float] | None = None,
) -> list[dict[str, object]]:
    """Agreement rows of annotations with CARE regions given as their grid and region table.

    See :func:`iter_review_region_table`; this returns its rows.
    """
    work = iter_review_region_table(annotations, grid, region_columns, group_names=group_names, mpp_xy=mpp_xy)
    return run_to_end(work).rows


def iter_review_region_table(
    annotations: Iterable[Annotation],
    grid: RegionGrid,
    region_columns: Mapping[str, object],
    *,
    group_names: Mapping[int, str] | None = None,
    mpp_xy: Sequence[float] | None = None,
) -> Generator[Progress, None, ReviewTables]:
    """The review of annotations against CARE regions given as their grid and region table.

    Parameters
    ----------
    annotations
        The annotations, in the grid's level-0 frame.
    grid
        The region grid.
    region_columns
        Column -> values as :func:`napari_care.core.regions.region_table` makes them (a dict or a
        DataFrame): ``region``, ``is_roi`` and ``a`` are used, and ``group`` when there, rows
        with ``region < 0`` left out. The attention is each region's ``a`` spread evenly over
        its cells (so the pointing game is played on the regions).
    group_names
        Group id -> name, for the group rows and the class x group table.
    mpp_xy
        Micrometres per level-0 pixel, for the table's ``_um2`` columns.

    Yields ``Progress("review", ...)``; returns the :class:`ReviewTables`.

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
    groups = None
    if "group" in region_columns:
        group = np.asarray(region_columns["group"])[keep].astype(int).tolist()
        groups = PhenotypeGroups.from_regions(dict(zip(region_ids.tolist(), group, strict=True)), group_names)
    return (
        yield from iter_review_tables(
            annotations, grid, roi_ids=roi_ids, attention=attention, groups=groups or None, mpp_xy=mpp_xy
        )
    )


def iter_review_layers(
    annotations: Iterable[Annotation],
    grid: RegionGrid,
    region_columns: Mapping[str, object],
    *,
    source: str,
    slide_bounds: Box | None = None,
    group_names: Mapping[int, str] | None = None,
    mpp_xy: Sequence[float] | None = None,
) -> Generator[Progress, None, ReviewTables]:
    """The review panel's work: :func:`iter_review_region_table` after the overlap check.

    ``source`` names the annotations (a layer) in the messages; ``slide_bounds`` is the slide's
    level-0 box in the grid's frame. A note about annotations partly outside comes back in
    :attr:`~napari_care.core.review.metrics.ReviewTables.notes` (the panel runs this in a worker
    thread, where warnings do not reach the user).

    Raises
    ------
    AnnotationsOutsideError
        No annotation overlaps the run's patches.
    """
    annotations = list(annotations)
    yield Progress("check", 0, 1, source)
    patch_bounds = grid.bounds_xy()
    note = None
    if patch_bounds is not None:
        note = overlap_note(annotations, source, patch_bounds=patch_bounds, slide_bounds=slide_bounds)
    yield Progress("check", 1, 1, source)
    tables = yield from iter_review_region_table(
        annotations, grid, region_columns, group_names=group_names, mpp_xy=mpp_xy
    )
    return ReviewTables(tables.rows, tables.class_by_group, tables.pointing_on, (note,) if note else ())


def review_output(
    output: SegmentOutput, annotations: Iterable[Annotation], *, include_disjoint: bool = False
) -> list[dict[str, object]]:
    """Agreement rows of one slide's output (see :func:`~napari_care.core.review.metrics.review_agreement`),
    each starting with ``slide`` = the output's stem."""
    return run_to_end(iter_review_output(output, annotations, include_disjoint=include_disjoint)).rows


def iter_review_output(
    output: SegmentOutput, annotations: Iterable[Annotation], *, include_disjoint: bool = False
) -> Generator[Progress, None, ReviewTables]:
    """The review of one slide's output as a generator of ``Progress("review", ...)`` reports;
    returns the :class:`ReviewTables`, each row starting with ``slide`` = the output's stem."""
    tables = yield from iter_review_tables(
        annotations,
        output.grid,
        roi_ids=output.roi_ids,
        attention=output.attention,
        region_polygons=output.region_polygons,
        include_disjoint=include_disjoint,
        groups=output.groups,
        mpp_xy=output.mpp_xy,
    )
    return ReviewTables(
        [{"slide": output.stem, **row} for row in tables.rows],
        [{"slide": output.stem, **row} for row in tables.class_by_group],
        tables.pointing_on,
    )


def class_table_path(out_csv: str | os.PathLike[str]) -> Path:
    """Where the class x group table goes beside the agreement CSV: ``<out stem>.class_by_group.csv``."""
    out_csv = Path(out_csv)
    stem = out_csv.name[: -len(out_csv.suffix)] if out_csv.suffix else out_csv.name
    return out_csv.with_name(stem + CLASS_TABLE_SUFFIX)


def review_files(
    result: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    stem: str | None = None,
    include_disjoint: bool = False,
) -> list[dict[str, object]]:
    """Review a segmentation output against an annotation file and write the tables as CSV.

    Parameters
    ----------
    result
        The output (see :func:`locate_output`).
    annotations
        A QuPath (or other) GeoJSON file in the same frame as the output.
    out_csv
        Where the agreement rows go; the class x group table goes beside it
        (:func:`class_table_path`, written when the run has groups). Both are written
        atomically, together.
    stem
        The slide's stem when ``result`` is a folder.
    include_disjoint
        Also give rows for regions and groups that do not touch an annotation class.

    Returns
    -------
    list of dict
        The agreement rows written.

    Raises
    ------
    ValueError
        Unreadable or malformed inputs, named; an annotation file without polygons;
        :class:`~napari_care.core.review.bounds.AnnotationsOutsideError` when no annotation
        overlaps the run's patches.

    Warns
    -----
    AnnotationsPartlyOutsideWarning
        Some annotations lie (partly) outside the slide or off the patches.

    See Also
    --------
    iter_review_files : the same, as a generator of progress reports (for a progress bar).
    iter_review_files_tables : the same, returning both tables.
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
    """:func:`review_files` as a generator (see :func:`iter_review_files_tables`); returns the rows."""
    work = iter_review_files_tables(
        result, annotations, out_csv, stem=stem, include_disjoint=include_disjoint
    )
    tables = yield from work
    return tables.rows


def iter_review_files_tables(
    result: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    stem: str | None = None,
    include_disjoint: bool = False,
) -> Generator[Progress, None, ReviewTables]:
    """:func:`review_files` as a generator: yields :class:`~napari_care.core.progress.Progress` of the
    stages ``"read"`` (the two files), ``"review"`` (annotation polygons) and ``"write"``, and
    returns the :class:`~napari_care.core.review.metrics.ReviewTables`.

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
    patch_bounds = output.grid.bounds_xy()
    if patch_bounds is not None:
        check_annotations_overlap(
            objects, annotations, patch_bounds=patch_bounds, slide_bounds=output.slide_bounds
        )
    yield Progress("read", 2, 2, f"{len(objects):,} objects")
    tables = yield from iter_review_output(output, objects, include_disjoint=include_disjoint)
    yield Progress("write", 0, 1, Path(out_csv).name)
    with output_set(Path(out_csv).name) as files:
        write_review_csv(files.temporary(out_csv), tables.rows)
        if tables.class_by_group:
            write_review_csv(files.temporary(class_table_path(out_csv)), tables.class_by_group)
    yield Progress("write", 1, 1, f"{len(tables.rows):,} rows")
    return tables
