"""Values on the patch grid as small 2-D rasters (one pixel per patch).

A raster covers the bounding window of the patches it was made from: pixel (row, col)
is the patch (gx, gy) = (origin_gx + col, origin_gy + row), and it covers level-0 pixels
[gx * stride, gx * stride + stride) in x (and likewise in y).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GridRaster:
    """A raster of per-patch values.

    Attributes
    ----------
    values
        [rows, cols] array; cells without a patch hold ``fill``.
    origin_gx, origin_gy
        Grid index of the raster's pixel (0, 0).
    stride_level0
        Level-0 pixels between neighbouring patches (one raster pixel).
    """

    values: np.ndarray
    origin_gx: int
    origin_gy: int
    stride_level0: float

    @property
    def origin_level0(self) -> tuple[float, float]:
        """Level-0 (x, y) of the raster's top-left corner."""
        return (self.origin_gx * self.stride_level0, self.origin_gy * self.stride_level0)


def rasterize(
    grid: np.ndarray,
    values: np.ndarray,
    stride_level0: float,
    *,
    fill: float | int = 0,
    dtype: np.dtype | type | None = None,
) -> GridRaster:
    """Place per-patch ``values`` at their grid cells.

    Parameters
    ----------
    grid
        [N, 2] integer (gx, gy).
    values
        [N] value per patch.
    stride_level0
        Level-0 pixels between neighbouring patches.
    fill
        Value of cells without a patch.
    dtype
        Raster dtype (default: that of ``values``).
    """
    grid = np.asarray(grid, dtype=np.int64)
    values = np.asarray(values)
    if len(grid) == 0:
        return GridRaster(np.full((0, 0), fill, dtype=dtype or values.dtype), 0, 0, float(stride_level0))
    gx0, gy0 = grid.min(axis=0)
    gx1, gy1 = grid.max(axis=0)
    raster = np.full((gy1 - gy0 + 1, gx1 - gx0 + 1), fill, dtype=dtype or values.dtype)
    raster[grid[:, 1] - gy0, grid[:, 0] - gx0] = values
    return GridRaster(raster, int(gx0), int(gy0), float(stride_level0))
