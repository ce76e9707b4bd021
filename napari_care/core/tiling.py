"""The patch grid: where the tiles of a slide lie, at which resolution, and how to read them.

The grid is anchored at the slide's origin, so a tile has the same index (gx, gy) whether it
was found by a whole-slide run or by a run over a box (the visible field): features of both
can be merged and cached by index.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import numpy as np

from napari_care.core.tissue import TissueMask, tissue_mask

DEFAULT_MPP = 0.5  # 20x, the resolution most patch encoders were trained at
MPP_AT_10X = 1.0  # micrometres per pixel = 10 / magnification


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of one slide at one target resolution.

    Parameters
    ----------
    coords
        [N, 2] int64 level-0 (x, y) of each tile's top-left corner.
    grid
        [N, 2] int64 grid indices (gx, gy); ``coords = round(grid * stride_level0)``.
    tile_size_px
        Tile side at the target resolution (what the encoder sees).
    tile_size_level0
        Tile side in level-0 pixels.
    stride_level0
        Distance between neighbouring tiles in level-0 pixels (< tile side with overlap).
    target_mpp
        Micrometres per pixel of the tiles; None on an uncalibrated slide.
    read_level
        Pyramid level the tiles are read from (the nearest finer-or-equal one).
    read_downsample
        Level-0 pixels per pixel of ``read_level``.
    tissue_fraction
        [N] float64 share of tissue under each tile (NaN when no tissue mask was used).
    """

    coords: np.ndarray
    grid: np.ndarray
    tile_size_px: int
    tile_size_level0: float
    stride_level0: float
    target_mpp: float | None
    read_level: int
    read_downsample: float
    tissue_fraction: np.ndarray

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def overlap_px(self) -> int:
        """Overlap of neighbouring tiles in target pixels."""
        return round(self.tile_size_px * (1.0 - self.stride_level0 / self.tile_size_level0))

    @property
    def tile_size_read_px(self) -> float:
        """Tile side in pixels of ``read_level`` (resized to ``tile_size_px`` after reading)."""
        return self.tile_size_level0 / self.read_downsample

    def take(self, index: np.ndarray) -> TileGrid:
        """The tiles at ``index`` (integer positions or a boolean mask)."""
        return replace(
            self,
            coords=self.coords[index],
            grid=self.grid[index],
            tissue_fraction=self.tissue_fraction[index],
        )

    def subset(self, box_level0: tuple[float, float, float, float]) -> TileGrid:
        """Tiles that intersect a level-0 box (x0, y0, x1, y1), e.g. the visible field."""
        x0, y0, x1, y1 = _check_box(box_level0)
        size = self.tile_size_level0
        cx, cy = self.coords[:, 0], self.coords[:, 1]
        hit = (cx < x1) & (cx + size > x0) & (cy < y1) & (cy + size > y0)
        return self.take(hit)


def pack_grid(grid_xy: np.ndarray) -> np.ndarray:
    """Grid indices (gx, gy) as one sortable int64 each (indices < 2**31); -1 where one is negative."""
    grid_xy = np.asarray(grid_xy, dtype=np.int64).reshape(-1, 2)
    return np.where((grid_xy >= 0).all(axis=1), (grid_xy[:, 1] << 32) | grid_xy[:, 0], -1)


def grid_rows(table_xy: np.ndarray, wanted_xy: np.ndarray) -> np.ndarray:
    """Row in ``table_xy`` [R, 2] of each grid index of ``wanted_xy`` [N, 2]; -1 where absent or negative."""
    keys, wanted = pack_grid(table_xy), pack_grid(wanted_xy)
    if len(keys) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    order = np.argsort(keys)
    pos = np.searchsorted(keys[order], wanted).clip(0, len(keys) - 1)
    return np.where((keys[order][pos] == wanted) & (wanted >= 0), order[pos], -1)


def _check_box(box_level0) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in box_level0)
    except (TypeError, ValueError) as error:
        raise ValueError(f"box must be (x0, y0, x1, y1) in level-0 pixels, got {box_level0!r}") from error
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {box_level0!r}")
    return x0, y0, x1, y1


def target_downsample(
    slide,
    *,
    mpp: float | None = None,
    magnification: float | None = None,
    level: int | None = None,
    downsample: float | None = None,
) -> tuple[float, float | None]:
    """Level-0 pixels per target pixel and the target mpp, from one way of naming it.

    With none given, a calibrated slide is tiled at 20x (0.5 um/px).

    Raises
    ------
    ValueError
        When more than one is given, a value is out of range, or a resolution in
        micrometres is asked of a slide without mpp.
    """
    given = {
        k: v
        for k, v in dict(mpp=mpp, magnification=magnification, level=level, downsample=downsample).items()
        if v is not None
    }
    if len(given) > 1:
        raise ValueError(f"give one of mpp, magnification, level or downsample, got {sorted(given)}")
    slide_mpp = float(np.mean(slide.mpp)) if slide.mpp is not None else None
    if level is not None:
        if not 0 <= level < slide.level_count:
            raise ValueError(f"level {level} does not exist in {slide.path} ({slide.level_count} levels)")
        factor = float(slide.level_downsamples[level])
        return factor, None if slide_mpp is None else slide_mpp * factor
    if downsample is not None:
        if not downsample > 0 or not math.isfinite(downsample):
            raise ValueError(f"downsample must be a positive number, got {downsample}")
        return float(downsample), None if slide_mpp is None else slide_mpp * downsample
    if magnification is not None:
        if not magnification > 0:
            raise ValueError(f"magnification must be positive, got {magnification}")
        mpp = 10.0 * MPP_AT_10X / magnification
    mpp = DEFAULT_MPP if mpp is None else float(mpp)
    if not mpp > 0 or not math.isfinite(mpp):
        raise ValueError(f"mpp must be positive micrometres per pixel, got {mpp}")
    if slide_mpp is None:
        raise ValueError(
            f"slide {slide.path} has no pixel size (mpp); open it with open_slide(path, mpp=...) "
            "to give one, or tile it by pyramid level with level=/downsample="
        )
    return mpp / slide_mpp, mpp


def _index_range(start: float, stop: float, stride: float, size: float, limit: float) -> np.ndarray:
    """Grid indices of tiles (origin-anchored) that intersect [start, stop) and begin before ``limit``."""
    first = max(0, math.floor((start - size) / stride) + 1)
    last = min(math.ceil(stop / stride) - 1, math.ceil(limit / stride) - 1)
    return np.arange(first, last + 1, dtype=np.int64)


def tile_grid(
    slide,
    *,
    mpp: float | None = None,
    magnification: float | None = None,
    tile_size_px: int = 224,
    overlap_px: int = 0,
    min_tissue: float = 0.25,
    tissue: TissueMask | None = None,
    level: int | None = None,
    downsample: float | None = None,
    box: tuple[float, float, float, float] | None = None,
) -> TileGrid:
    """Lay square tiles over a slide (or a box of it) and keep those on tissue.

    Parameters
    ----------
    slide
        A :class:`~napari_care.core.slide.handle.Slide`.
    mpp, magnification, level, downsample
        The target resolution, one way: micrometres per pixel, objective magnification
        (20x = 0.5 um/px), a pyramid level, or level-0 pixels per tile pixel. None of them:
        0.5 um/px.
    tile_size_px
        Tile side in target pixels.
    overlap_px
        Overlap of neighbouring tiles in target pixels (0 <= overlap < tile side).
    min_tissue
        Keep tiles with at least this share of tissue; 0 keeps every tile.
    tissue
        A tissue mask to use; computed with :func:`tissue_mask` when needed and not given.
    box
        Only tiles intersecting this level-0 box (x0, y0, x1, y1).

    Returns
    -------
    TileGrid
        Empty, with a warning, when no tile has enough tissue.
    """
    if int(tile_size_px) != tile_size_px or tile_size_px < 1:
        raise ValueError(f"tile_size_px must be a positive integer, got {tile_size_px}")
    if not 0 <= overlap_px < tile_size_px:
        raise ValueError(f"overlap_px must be in [0, tile_size_px={tile_size_px}), got {overlap_px}")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"min_tissue must be in [0, 1], got {min_tissue}")
    factor, target_mpp = target_downsample(
        slide, mpp=mpp, magnification=magnification, level=level, downsample=downsample
    )
    size0 = tile_size_px * factor
    stride0 = (tile_size_px - overlap_px) * factor
    width, height = slide.dimensions[0]
    x0, y0, x1, y1 = _check_box(box) if box is not None else (0.0, 0.0, float(width), float(height))
    gx = _index_range(x0, x1, stride0, size0, width)
    gy = _index_range(y0, y1, stride0, size0, height)
    grid = np.stack(np.meshgrid(gx, gy, indexing="xy"), axis=-1).reshape(-1, 2)
    coords = np.rint(grid * stride0).astype(np.int64)

    if tissue is None and min_tissue > 0:
        tissue = tissue_mask(slide)
    fraction = (
        tissue.fraction_for_tiles(coords, size0) if tissue is not None else np.full(len(coords), np.nan)
    )
    keep = fraction >= min_tissue if min_tissue > 0 else np.ones(len(coords), dtype=bool)
    if len(coords) and not keep.any() and (tissue is None or tissue.any):
        warnings.warn(f"no tile of {slide.path} has {min_tissue:.0%} tissue or more", stacklevel=2)

    read_level = slide.get_best_level_for_downsample(factor)
    return TileGrid(
        coords=coords[keep],
        grid=grid[keep],
        tile_size_px=int(tile_size_px),
        tile_size_level0=float(size0),
        stride_level0=float(stride0),
        target_mpp=target_mpp,
        read_level=int(read_level),
        read_downsample=float(slide.level_downsamples[read_level]),
        tissue_fraction=fraction[keep],
    )


def tile_count_estimate(
    level0_size: tuple[int, int], downsample: float, tile_size_px: int, overlap_px: int = 0
) -> int:
    """How many tiles :func:`tile_grid` lays over a whole slide before it looks for tissue.

    An upper bound of the tiles a run computes (tissue detection keeps a share of them),
    from the slide's level-0 size alone: cheap enough to check a cohort before any work.

    Parameters
    ----------
    level0_size
        The slide's level-0 (width, height) in pixels.
    downsample
        Level-0 pixels per target pixel (target mpp / slide mpp).
    tile_size_px
        Tile side in target pixels.
    overlap_px
        Overlap of neighbouring tiles in target pixels.

    Returns
    -------
    int
        Columns x rows of the grid.
    """
    stride0 = (tile_size_px - overlap_px) * float(downsample)
    if not stride0 > 0 or not math.isfinite(stride0):
        raise ValueError(f"tile stride must be positive, got {stride0} level-0 pixels")
    width, height = level0_size
    return math.ceil(width / stride0) * math.ceil(height / stride0)
