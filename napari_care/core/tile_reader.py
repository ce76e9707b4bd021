"""Parallel tile reading: decode each file tile once, cut patches, hand out batches.

Patches are not read one by one. Neighbouring patches are grouped into *blocks* whose size
is chosen so that block edges fall on (or near) the file's tile edges; one ``read_region``
per block decodes every file tile under it once, and the block's patches are cut from the
decoded pixels and resized in one go. Several threads read blocks ahead of the consumer
(JPEG decoding and resizing release the GIL), with a bounded number of blocks in flight.

A file tile that cannot be decoded (:class:`~napari_care.core.slide.levels.TileDecodeError`)
either stops the read (``on_bad_tile="raise"``) or leaves out the patches that need it
(``"skip"``, counted in a :class:`SkippedPatches`); the patches beside it are still read.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from napari_care.core.pixels import block_mean
from napari_care.core.slide.levels import TileDecodeError
from napari_care.core.tiling import TileGrid

BadTilePolicy = Literal["skip", "raise"]
BAD_TILE_POLICIES = ("skip", "raise")
LISTED_BAD_TILES = 8  # file tiles named in a summary; the rest are counted

MAX_BLOCK_PX = 2048  # block side at the read level: ~12 MB of RGB per block in flight
_EXACT = 1e-6  # positions closer than this to a whole pixel count as whole
# Whole reduction factors for which Pillow's Image.reduce rounds exactly as block_mean does (a
# shift by log2(factor^2) with half added); at other factors it multiplies by 1 / factor^2 in
# floating point and can land one grey level lower.
PIL_EXACT_FACTORS = (2, 4, 8)


@dataclass(frozen=True)
class ReadBlock:
    """Patches read together from one region of the read level.

    Parameters
    ----------
    rows
        Positions of the block's tiles in the grid.
    origin_read_px
        (x, y) of the region's top-left corner in read-level pixels (whole pixels).
    size_read_px
        (width, height) of the region in read-level pixels.
    """

    rows: np.ndarray
    origin_read_px: tuple[int, int]
    size_read_px: tuple[int, int]


@dataclass
class SkippedPatches:
    """Patches left out of a read because a file tile under them could not be decoded.

    Attributes
    ----------
    rows : list of numpy.ndarray
        Grid rows left out, block by block.
    errors : dict
        The error of each file tile that could not be decoded, by (level, column, row),
        in the order they were met.
    """

    rows: list[np.ndarray] = field(default_factory=list)
    errors: dict[tuple[int, int, int], TileDecodeError] = field(default_factory=dict)

    def add(self, rows: np.ndarray, errors: list[TileDecodeError]) -> None:
        """Record the rows one block left out and the errors that made it."""
        if len(rows):
            self.rows.append(np.asarray(rows, dtype=np.int64))
        for error in errors:
            self.errors.setdefault((error.level, *error.tile), error)

    @property
    def count(self) -> int:
        """Patches left out."""
        return int(sum(len(rows) for rows in self.rows))

    @property
    def all_rows(self) -> np.ndarray:
        """Grid rows left out, sorted, int64."""
        if not self.rows:
            return np.empty(0, dtype=np.int64)
        return np.sort(np.concatenate(self.rows))

    def summary(self, name: str) -> str:
        """One sentence for a warning: the bad file tiles (by level), the first error, the count.

        Parameters
        ----------
        name
            The slide's file name.
        """
        errors = list(self.errors.values())
        if not errors:
            return f"{name}: every file tile could be decoded; no patches skipped"
        listed = sorted(self.errors)[:LISTED_BAD_TILES]
        parts = []
        for level in sorted({level for level, _, _ in listed}):
            tiles = ", ".join(f"({col}, {row})" for lvl, col, row in listed if lvl == level)
            parts.append(f"level {level}, tiles (column, row) {tiles}")
        more = ", ..." if len(errors) > LISTED_BAD_TILES else ""
        first = errors[0]
        noun = "file tile" if len(errors) == 1 else "file tiles"
        return (
            f"{name}: {len(errors)} {noun} could not be decoded ({'; '.join(parts)}{more}; first error: "
            f"level {first.level} tile {first.tile} at level-0 box {first.box_level0}: {first.reason}); "
            f"{self.count} patches skipped"
        )


def default_reader_threads() -> int:
    """Reader threads by default: the machine's cores, at most 16."""
    return max(1, min(16, os.cpu_count() or 1))


def patches_per_block(
    stride_px: float, patch_px: float, file_tile_px: int, max_block_px: int = MAX_BLOCK_PX
) -> int:
    """How many patches along one axis a block should hold so that few file tiles decode twice.

    Blocks start at multiples of ``n * stride_px``; a file tile cut by a block edge is decoded
    by both blocks. For each n whose block fits ``max_block_px``, count the file tiles a block
    touches (averaged over many block positions) per patch, and take the cheapest n.
    """
    best_n, best_cost = 1, math.inf
    for n in range(1, 65):
        span = (n - 1) * stride_px + patch_px
        if n > 1 and span > max_block_px:
            break
        starts = np.arange(64) * n * stride_px
        touched = np.ceil((starts + span) / file_tile_px - _EXACT) - np.floor(starts / file_tile_px + _EXACT)
        cost = touched.mean() / n
        if cost < best_cost - 1e-9:
            best_n, best_cost = n, cost
    return best_n


def file_tile_size(slide, level: int) -> tuple[int, int]:
    """(height, width) of the file's tiles at ``level`` (the chunks of the level's dask array)."""
    chunks = slide.levels[level].chunks
    return int(max(chunks[0])), int(max(chunks[1]))


def plan_blocks(
    grid: TileGrid, rows: np.ndarray, file_tile_hw: tuple[int, int], max_block_px: int = MAX_BLOCK_PX
) -> list[ReadBlock]:
    """Group the tiles ``rows`` of ``grid`` into blocks, in raster order.

    Raster order lets neighbouring blocks run close in time, so file tiles on a shared edge
    are still in the slide's tile cache when the second block asks for them.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return []
    stride_px = grid.stride_level0 / grid.read_downsample
    patch_px = grid.tile_size_read_px
    nx = patches_per_block(stride_px, patch_px, file_tile_hw[1], max_block_px)
    ny = patches_per_block(stride_px, patch_px, file_tile_hw[0], max_block_px)
    cell = grid.grid[rows] // np.array([nx, ny])
    order = np.lexsort((cell[:, 0], cell[:, 1]))
    rows, cell = rows[order], cell[order]
    breaks = np.flatnonzero(np.any(np.diff(cell, axis=0) != 0, axis=1)) + 1
    blocks = []
    for members in np.split(rows, breaks):
        pos = grid.coords[members] / grid.read_downsample
        x0, y0 = np.floor(pos.min(axis=0) + _EXACT).astype(np.int64)
        x1, y1 = np.ceil(pos.max(axis=0) + patch_px - _EXACT).astype(np.int64)
        blocks.append(ReadBlock(members, (int(x0), int(y0)), (int(x1 - x0), int(y1 - y0))))
    return blocks


def _exact_crops(offsets_px: np.ndarray, patch_px: float, tile_size_px: int) -> bool:
    """True when patches are whole-pixel crops reduced by a whole factor (no resampling)."""
    size = round(patch_px)
    whole = abs(patch_px - size) < _EXACT and np.all(np.abs(offsets_px - np.rint(offsets_px)) < _EXACT)
    return bool(whole and size % tile_size_px == 0)


def _reduced_crops(region: np.ndarray, starts: np.ndarray, size: int, factor: int) -> np.ndarray:
    """Block means of the ``size``-px squares at ``starts`` (x, y) of ``region``, by Pillow's ``reduce``.

    The same values as :func:`~napari_care.core.pixels.block_mean` of the crops (for the
    factors of :data:`PIL_EXACT_FACTORS`), without copying the crops out first: one pass
    over the pixels in C, without the GIL.
    """
    height, width = region.shape[:2]
    if len(starts) and (starts.min() < 0 or np.any((starts + size).max(axis=0) > (width, height))):
        raise ValueError(
            f"patches of {size} px at {starts.tolist()} reach out of a {width} x {height} region"
        )
    image = Image.fromarray(np.ascontiguousarray(region))
    out = np.empty((len(starts), size // factor, size // factor, 3), dtype=np.uint8)
    for i, (x, y) in enumerate(starts.tolist()):
        out[i] = np.asarray(image.reduce(factor, box=(x, y, x + size, y + size)))
    return out


def cut_patches(region: np.ndarray, offsets_px: np.ndarray, patch_px: float, tile_size_px: int) -> np.ndarray:
    """Cut square patches out of a decoded region and resize them to ``tile_size_px``.

    Parameters
    ----------
    region
        (h, w, 3) uint8 pixels of the read level.
    offsets_px
        [k, 2] (x, y) of each patch's corner in the region, in read-level pixels.
    patch_px
        Patch side in read-level pixels.
    tile_size_px
        Side of the returned patches.

    Returns
    -------
    [k, tile_size_px, tile_size_px, 3] uint8
    """
    size = round(patch_px)
    if _exact_crops(offsets_px, patch_px, tile_size_px):
        factor = size // tile_size_px
        starts = np.rint(offsets_px).astype(np.int64)
        if factor in PIL_EXACT_FACTORS:
            return _reduced_crops(region, starts, size, factor)
        crops = np.stack([region[y : y + size, x : x + size] for x, y in starts])
        if factor == 1:
            return crops
        # block mean for whole reduction factors: exact box filter, no interpolation
        return block_mean(crops, factor)

    image = Image.fromarray(region)
    out = np.empty((len(offsets_px), tile_size_px, tile_size_px, 3), dtype=np.uint8)
    for i, (x, y) in enumerate(offsets_px):
        # PIL resamples from a float source box: sub-pixel positions, antialiased downscaling
        box = (float(x), float(y), float(x) + patch_px, float(y) + patch_px)
        out[i] = np.asarray(image.resize((tile_size_px, tile_size_px), Image.Resampling.BILINEAR, box=box))
    return out


def read_block(slide, grid: TileGrid, block: ReadBlock) -> np.ndarray:
    """Decode one block and return its patches, [k, tile_size_px, tile_size_px, 3] uint8.

    Parts of the block outside the slide come back white from ``read_region``.
    """
    x0, y0 = block.origin_read_px
    # ceil: read_region floors location / downsample, which then lands exactly on (x0, y0)
    ds = grid.read_downsample
    location = (math.ceil(x0 * ds - _EXACT), math.ceil(y0 * ds - _EXACT))
    region = np.asarray(slide.read_region(location, grid.read_level, block.size_read_px))
    offsets = grid.coords[block.rows] / grid.read_downsample - np.array([x0, y0])
    return cut_patches(region, offsets, grid.tile_size_read_px, grid.tile_size_px)


def _checked_level(slide, level: int):
    """The slide's tiled level when it can say which tiles failed (a Slide), else None."""
    levels = getattr(slide, "tiled_levels", None)
    if levels is None or not hasattr(levels[level], "read_checked"):
        return None
    return levels[level]


def _patches_over(
    offsets_px: np.ndarray, patch_px: float, margin_px: float, tile_boxes: list[tuple[int, int, int, int]]
) -> np.ndarray:
    """[boxes, k] bool: which patches (corners ``offsets_px``, side ``patch_px``) touch each box.

    ``margin_px`` widens each patch by what its resampling filter reads beyond the patch.
    """
    lo = offsets_px - margin_px
    hi = offsets_px + patch_px + margin_px
    touched = np.zeros((len(tile_boxes), len(offsets_px)), dtype=bool)
    for i, (x0, y0, x1, y1) in enumerate(tile_boxes):
        across = (lo[:, 0] < x1 - _EXACT) & (hi[:, 0] > x0 + _EXACT)
        down = (lo[:, 1] < y1 - _EXACT) & (hi[:, 1] > y0 + _EXACT)
        touched[i] = across & down
    return touched


@dataclass(frozen=True)
class BlockPatches:
    """What one block read gave.

    Attributes
    ----------
    rows : numpy.ndarray
        Grid rows of the patches read.
    patches : numpy.ndarray
        [k, tile_size_px, tile_size_px, 3] uint8, one per row.
    skipped_rows : numpy.ndarray
        Grid rows left out because a file tile under them could not be decoded.
    errors : list of TileDecodeError
        The errors of the file tiles under those patches.
    """

    rows: np.ndarray
    patches: np.ndarray
    skipped_rows: np.ndarray
    errors: list[TileDecodeError]


def read_block_checked(slide, grid: TileGrid, block: ReadBlock) -> BlockPatches:
    """Decode one block; leave out the patches that need a file tile that cannot be decoded.

    Slides without tiled levels (stand-ins that only have ``read_region``) are read with
    :func:`read_block` and never leave a patch out.
    """
    level = _checked_level(slide, grid.read_level)
    if level is None:
        return BlockPatches(block.rows, read_block(slide, grid, block), block.rows[:0], [])
    x0, y0 = block.origin_read_px
    width, height = block.size_read_px
    region, bad = level.read_checked(x0, y0, width, height)
    offsets = grid.coords[block.rows] / grid.read_downsample - np.array([x0, y0])
    patch_px = grid.tile_size_read_px
    skip = np.zeros(len(block.rows), dtype=bool)
    if bad:
        th, tw = level.tile_height, level.tile_width
        boxes = [(tx * tw - x0, ty * th - y0, (tx + 1) * tw - x0, (ty + 1) * th - y0) for (ty, tx), _ in bad]
        exact = _exact_crops(offsets, patch_px, grid.tile_size_px)
        # PIL's filter reads about one output pixel's span beyond a resampled patch
        margin = 0.0 if exact else max(1.0, patch_px / grid.tile_size_px) + 1.0
        touched = _patches_over(offsets, patch_px, margin, boxes)
        skip = touched.any(axis=0)
        # only tiles a patch needs count: a block's region may span gaps between patches
        bad = [item for item, used in zip(bad, touched.any(axis=1), strict=True) if used]
    keep = ~skip
    if keep.all():
        patches = cut_patches(region, offsets, patch_px, grid.tile_size_px)
    elif keep.any():
        patches = cut_patches(region, offsets[keep], patch_px, grid.tile_size_px)
    else:
        patches = np.empty((0, grid.tile_size_px, grid.tile_size_px, 3), dtype=np.uint8)
    return BlockPatches(block.rows[keep], patches, block.rows[skip], [error for _, error in bad])


def iter_tile_batches(
    slide,
    grid: TileGrid,
    rows: np.ndarray,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    max_pending_blocks: int | None = None,
    on_bad_tile: BadTilePolicy = "skip",
    skipped: SkippedPatches | None = None,
    allocate_batch: Callable[[], np.ndarray] | None = None,
) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
    """Read the tiles ``rows`` of ``grid`` in threads and yield them in batches.

    Parameters
    ----------
    slide
        The slide the grid was laid on.
    grid
        The tile grid.
    rows
        Positions (into the grid) of the tiles to read.
    batch_size
        Tiles per batch (the last batch may be smaller).
    num_workers
        Reader threads; None: :func:`default_reader_threads`.
    max_pending_blocks
        Blocks read ahead at most (bounds memory); None: twice the workers.
    on_bad_tile
        ``"skip"``: patches that need a file tile that cannot be decoded are not yielded
        (they are recorded in ``skipped``); ``"raise"``: the first such tile's
        :class:`~napari_care.core.slide.levels.TileDecodeError` ends the read.
    skipped
        Collects the rows left out and the tiles' errors (with ``"skip"``); None: not kept.
    allocate_batch
        Returns the empty uint8 ``[batch_size, tile_size_px, tile_size_px, 3]`` array the
        next batch is written into (e.g. pinned host memory from a pool, so a GPU upload
        needs no extra copy); None: a new numpy array each batch. Called in the thread that
        iterates this generator, once before the first batch and after each full one.

    Yields
    ------
    (rows [b] int64, tiles [b, tile_size_px, tile_size_px, 3] uint8)
        Blocks arrive in plan order; closing the iterator cancels the reads not yet started.

    Raises
    ------
    TileDecodeError
        With ``on_bad_tile="raise"``, when a file tile under a patch cannot be decoded.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    workers = default_reader_threads() if num_workers is None else int(num_workers)
    if workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if on_bad_tile not in BAD_TILE_POLICIES:
        raise ValueError(f"on_bad_tile must be one of {BAD_TILE_POLICIES}, got {on_bad_tile!r}")
    blocks = deque(plan_blocks(grid, rows, file_tile_size(slide, grid.read_level)))
    pending: deque[tuple[ReadBlock, Future]] = deque()
    limit = max_pending_blocks or 2 * workers
    size = grid.tile_size_px
    shape = (batch_size, size, size, 3)

    def new_batch() -> np.ndarray:
        if allocate_batch is None:
            return np.empty(shape, dtype=np.uint8)
        array = allocate_batch()
        if array.shape != shape or array.dtype != np.uint8:
            raise ValueError(
                f"allocate_batch gave {array.dtype} {list(array.shape)}; expected uint8 {list(shape)}"
            )
        return array

    batch_rows: list[np.ndarray] = []
    batch_tiles = new_batch()
    filled = 0
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="napari-care-read")
    try:
        while blocks or pending:
            while blocks and len(pending) < limit:
                block = blocks.popleft()
                pending.append((block, executor.submit(read_block_checked, slide, grid, block)))
            _, future = pending.popleft()
            read = future.result()
            if read.errors:
                if on_bad_tile == "raise":
                    raise read.errors[0]
                if skipped is not None:
                    skipped.add(read.skipped_rows, read.errors)
            tiles, block_rows = read.patches, read.rows
            start = 0
            while start < len(tiles):
                take = min(batch_size - filled, len(tiles) - start)
                batch_tiles[filled : filled + take] = tiles[start : start + take]
                batch_rows.append(block_rows[start : start + take])
                filled += take
                start += take
                if filled == batch_size:
                    yield np.concatenate(batch_rows), batch_tiles
                    # a fresh buffer: the consumer may still hold the last one
                    batch_rows, filled = [], 0
                    batch_tiles = new_batch()
        if filled:
            yield np.concatenate(batch_rows), batch_tiles[:filled]
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
