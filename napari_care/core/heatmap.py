"""Attention heatmaps on the patch grid: normalisation, blur, clipping to tissue."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_care.core.raster import GridRaster, rasterize


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..N of ``values``, ties sharing their mean rank (scipy's ``rankdata``, "average";
    numpy alone: scipy.stats costs 0.4 s to import, a third of a reopened run's wait)."""
    _, inverse, counts = np.unique(np.asarray(values), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return ((last - counts + 1 + last) / 2.0)[inverse.ravel()]


NORMALISATIONS = ("raw", "min-max", "rank")


def normalise(attention: np.ndarray, mode: str = "min-max") -> np.ndarray:
    """Scale per-patch attention for display.

    Parameters
    ----------
    attention
        [N] attention per patch.
    mode
        ``"raw"`` (as is), ``"min-max"`` (to [0, 1]) or ``"rank"`` (percentile rank in (0, 1],
        robust to a few extreme patches).
    """
    values = np.asarray(attention, dtype=np.float64)
    if mode == "raw":
        return values.astype(np.float32)
    if mode == "min-max":
        low, high = (values.min(), values.max()) if len(values) else (0.0, 1.0)
        span = high - low
        return ((values - low) / span if span > 0 else np.ones_like(values)).astype(np.float32)
    if mode == "rank":
        return (average_ranks(values) / max(len(values), 1)).astype(np.float32)
    raise ValueError(f"unknown normalisation {mode!r}; choose one of {', '.join(NORMALISATIONS)}")


def heatmap_raster(
    grid: np.ndarray,
    attention: np.ndarray,
    stride_level0: float,
    *,
    mode: str = "min-max",
    blur_patches: float = 0.0,
) -> GridRaster:
    """Normalised attention as a raster, NaN where there is no tissue patch.

    Parameters
    ----------
    grid
        [N, 2] (gx, gy) of the patches.
    attention
        [N] attention per patch.
    stride_level0
        Level-0 pixels between neighbouring patches.
    mode
        Normalisation (see :func:`normalise`).
    blur_patches
        Gaussian sigma in patches; the blur is normalised by the tissue mask, so values do
        not fade at tissue edges and nothing leaks onto glass.
    """
    raster = rasterize(grid, normalise(attention, mode), stride_level0, fill=np.nan, dtype=np.float32)
    if blur_patches > 0 and raster.values.size:
        tissue = np.isfinite(raster.values)
        weighted = ndimage.gaussian_filter(
            np.where(tissue, raster.values, 0.0), blur_patches, mode="constant"
        )
        weight = ndimage.gaussian_filter(tissue.astype(np.float32), blur_patches, mode="constant")
        blurred = np.where(tissue, weighted / np.maximum(weight, 1e-12), np.nan).astype(np.float32)
        raster = GridRaster(blurred, raster.origin_gx, raster.origin_gy, raster.stride_level0)
    return raster
