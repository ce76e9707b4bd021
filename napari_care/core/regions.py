"""CARE's regions as things to show and export: a label raster, a per-region table and
ROI boxes, all from a :class:`~napari_care.core.segment.SegmentResult`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_care.core.raster import GridRaster, rasterize
from napari_care.core.segment import SegmentResult

NO_REGION = -1


@dataclass(frozen=True)
class RoiBox:
    """A region's bounding box in level-0 pixels, drawn as an ROI.

    Attributes
    ----------
    region
        Region id.
    box_level0
        (x0, y0, x1, y1) in level-0 pixels, covering the region's patches.
    a
        The region's SPF weight.
    is_top
        True for the ROI itself (the region with the largest ``a``).
    """

    region: int
    box_level0: tuple[float, float, float, float]
    a: float
    is_top: bool


def region_raster(result: SegmentResult) -> GridRaster:
    """Region id of every patch on the patch grid; ``NO_REGION`` (-1) where there is none."""
    return rasterize(
        result.features.grid,
        result.care.region_of_patch,
        result.grid.stride_level0,
        fill=NO_REGION,
        dtype=np.int32,
    )


def region_table(result: SegmentResult) -> dict[str, np.ndarray]:
    """One row per region: id, patches, area_um2 (NaN without mpp), alpha, beta, a, is_roi, group."""
    care = result.care
    area = result.area_um2_of_region
    return {
        "region": np.arange(care.n_regions, dtype=np.int64),
        "patches": care.region_sizes.astype(np.int64),
        "area_um2": area if area is not None else np.full(care.n_regions, np.nan),
        "alpha": care.alpha.astype(np.float64),
        "beta": care.beta.astype(np.float64),
        "a": care.a.astype(np.float64),
        "is_roi": np.arange(care.n_regions) == care.roi,
        "group": np.asarray(result.group_of_region, dtype=np.int64),
    }


def roi_regions(result: SegmentResult, threshold: float = 1.0) -> np.ndarray:
    """Regions drawn as ROIs: ``a >= threshold * max(a)``, the top one first.

    ``threshold`` is relative to the ROI's weight (``a`` sums to 1 over many regions, so
    an absolute cut would depend on the slide's size): 1.0 keeps only the ROI, 0.8 keeps
    the regions within 80% of it. The ROI is ``care.roi`` (the lowest id when weights tie),
    so ``care.json``, the GeoJSON and the layers name the same one.
    """
    a, roi = result.care.a, int(result.care.roi)
    if threshold >= 1.0:
        return np.array([roi], dtype=np.int64)
    keep = np.flatnonzero(a >= threshold * a[roi] - 1e-12)
    others = keep[keep != roi]
    return np.concatenate([[roi], others[np.argsort(-a[others], kind="stable")]]).astype(np.int64)


def roi_boxes(result: SegmentResult, threshold: float = 1.0) -> list[RoiBox]:
    """Bounding boxes (level-0) of the ROI regions (see :func:`roi_regions`)."""
    grid = result.features.grid
    region_of_patch = result.care.region_of_patch
    stride, size = result.grid.stride_level0, result.grid.tile_size_level0
    boxes = []
    for region in roi_regions(result, threshold):
        cells = grid[region_of_patch == region]
        (gx0, gy0), (gx1, gy1) = cells.min(axis=0), cells.max(axis=0)
        box = (gx0 * stride, gy0 * stride, gx1 * stride + size, gy1 * stride + size)
        boxes.append(
            RoiBox(
                int(region),
                tuple(float(v) for v in box),
                float(result.care.a[region]),
                int(region) == result.care.roi,
            )
        )
    return boxes
