"""The run's side of a review: CARE regions on the patch grid and the per-patch attention.

Both are in level-0 pixels, (x, y), in the frame of the annotations they are compared with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RegionGrid:
    """CARE regions on the patch grid.

    Parameters
    ----------
    labels
        ``[rows, cols]`` region id per cell (row = grid y, col = grid x), ``-1`` = no region.
    origin_xy
        Level-0 (x, y) of the top-left corner of cell ``(0, 0)``.
    cell_size_px
        Cell (patch) side in level-0 pixels.
    """

    labels: np.ndarray
    origin_xy: tuple[float, float] = (0.0, 0.0)
    cell_size_px: float = 1.0

    def bounds_xy(self) -> tuple[float, float, float, float] | None:
        """Level-0 (x0, y0, x1, y1) of the cells that hold a region; None when none does."""
        rows, cols = np.nonzero(np.asarray(self.labels) >= 0)
        if not len(rows):
            return None
        x0, y0, size = self.origin_xy[0], self.origin_xy[1], self.cell_size_px
        return (
            float(x0 + cols.min() * size),
            float(y0 + rows.min() * size),
            float(x0 + (cols.max() + 1) * size),
            float(y0 + (rows.max() + 1) * size),
        )


@dataclass(frozen=True)
class PatchAttention:
    """Per-patch attention (>= 0) with the patches' level-0 top-left corners ``[N, 2]`` (x, y)."""

    coords_xy: np.ndarray
    attention: np.ndarray
    patch_size_px: float


def region_of_patches(attention: PatchAttention, grid: RegionGrid) -> np.ndarray:
    """``[N]`` region id of each attention patch: the grid cell at its top-left corner (-1: none).

    Patches sit on the grid's lattice (their corners are multiples of the stride from the
    origin), so the corner, rounded to the lattice, names the cell.
    """
    labels = np.asarray(grid.labels)
    coords = np.asarray(attention.coords_xy, dtype=np.float64).reshape(-1, 2)
    cols = np.rint((coords[:, 0] - grid.origin_xy[0]) / grid.cell_size_px).astype(np.int64)
    rows = np.rint((coords[:, 1] - grid.origin_xy[1]) / grid.cell_size_px).astype(np.int64)
    on_grid = (rows >= 0) & (rows < labels.shape[0]) & (cols >= 0) & (cols < labels.shape[1])
    region = np.full(len(coords), -1, dtype=np.int64)
    region[on_grid] = labels[rows[on_grid], cols[on_grid]]
    return region
