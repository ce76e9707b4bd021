"""Are the annotations over this slide at all? The check before a review.

Annotations from another slide, in micrometres, or exported without QuPath's "relative to the
slide bounds" setting miss the run's patches altogether, and every metric would be 0. A review
refuses such a file (:class:`AnnotationsOutsideError`: the CLI's exit 2, bad input) with the
file, the slide's level-0 bounds, the patches' and the annotations' bounds in one line, and
warns (:class:`AnnotationsPartlyOutsideWarning`) when some annotations lie (partly) outside the
slide or wholly off the box of the patches, then goes on.

All boxes are (x0, y0, x1, y1) in level-0 pixels, in the annotations' frame.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from napari_care.core.qupath.objects import Annotation

Box = tuple[float, float, float, float]


class AnnotationsOutsideError(ValueError):
    """No annotation polygon overlaps the run's patches (nor, maybe, the slide)."""


class AnnotationsPartlyOutsideWarning(UserWarning):
    """Some annotations lie (partly) outside the slide or wholly off the run's patches."""


def format_box(box: Sequence[float] | None) -> str:
    """``x 0..4096, y 0..3072`` (whole pixels), or ``unknown``."""
    if box is None:
        return "unknown"
    x0, y0, x1, y1 = (float(v) + 0.0 for v in box)  # + 0.0: no '-0'
    return f"x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f}"


def overlap_note(
    annotations: Iterable[Annotation],
    source: str | os.PathLike[str],
    *,
    patch_bounds: Box,
    slide_bounds: Box | None = None,
) -> str | None:
    """Refuse annotations that miss the run; the one-line note about those partly outside.

    Parameters
    ----------
    annotations
        The annotations read (lines and points are not compared and not checked).
    source
        The file (or layer) they came from, for the messages.
    patch_bounds
        The box of the run's patches (the cells that hold a region).
    slide_bounds
        The slide's level-0 bounds in the annotations' frame; None when unknown (a run on a
        feature file alone): then only the patches are checked.

    Raises
    ------
    AnnotationsOutsideError
        No polygon's interior meets ``patch_bounds``.

    Returns
    -------
    str or None
        When some polygons are not within ``slide_bounds`` or off the box of the patches: what
        and where, naming ``source``; else None.
    """
    polygons = np.array(
        [
            a.geometry
            for a in annotations
            if isinstance(a.geometry, (Polygon, MultiPolygon)) and not a.geometry.is_empty
        ],
        dtype=object,
    )
    if not len(polygons):
        return None
    bounds = shapely.bounds(polygons)
    spread: Box = (
        float(bounds[:, 0].min()),
        float(bounds[:, 1].min()),
        float(bounds[:, 2].max()),
        float(bounds[:, 3].max()),
    )
    slide, patches = format_box(slide_bounds), format_box(patch_bounds)
    where = f"the slide's level-0 bounds are {slide}, its patches' {patches}"
    on_patches = _interiors_meet(polygons, shapely.box(*patch_bounds))
    if not on_patches.any():
        on_slide = slide_bounds is not None and _interiors_meet(polygons, shapely.box(*slide_bounds)).any()
        what = "the run's patches" if on_slide or slide_bounds is None else "the slide"
        raise AnnotationsOutsideError(
            f"{source}: none of its {len(polygons):,} annotations overlaps {what}: they span "
            f"{format_box(spread)}; {where}; annotate this slide, in level-0 pixels relative to the "
            "slide bounds (QuPath's default export)"
        )
    notes = []
    if slide_bounds is not None:
        outside = int((~shapely.within(polygons, shapely.box(*slide_bounds))).sum())
        if outside:
            notes.append(
                f"{outside:,} of {len(polygons):,} annotations lie partly or wholly outside the slide"
            )
    off = int((~on_patches).sum())
    if off:
        notes.append(f"{off:,} of {len(polygons):,} annotations lie off the box of the run's patches")
    if not notes:
        return None
    return (
        f"{source}: {'; '.join(notes)} (annotations span {format_box(spread)}; {where}); "
        "their parts there overlap no region"
    )


def check_annotations_overlap(
    annotations: Iterable[Annotation],
    source: str | os.PathLike[str],
    *,
    patch_bounds: Box,
    slide_bounds: Box | None = None,
) -> None:
    """:func:`overlap_note`, its note as an :class:`AnnotationsPartlyOutsideWarning`.

    Raises
    ------
    AnnotationsOutsideError
        No polygon's interior meets ``patch_bounds``.
    """
    note = overlap_note(annotations, source, patch_bounds=patch_bounds, slide_bounds=slide_bounds)
    if note is not None:
        warnings.warn(note, AnnotationsPartlyOutsideWarning, stacklevel=2)


def _interiors_meet(polygons: np.ndarray, box: shapely.Polygon) -> np.ndarray:
    """``[N]`` bool: the polygons whose interior meets the box's (touching edges do not count)."""
    meets = shapely.intersects(polygons, box)
    meets[meets] = shapely.relate_pattern(polygons[meets], box, "T********")
    return meets
