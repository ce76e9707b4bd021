"""Pyramid levels as tile sources: decode one file tile at a time, cache it, assemble regions.

Every level, whatever its backend, is a :class:`TiledLevel`: a grid of equally sized tiles
that a *source* decodes one at a time. The level assembles regions from cached tiles, and
its tiles are the chunks of the level's dask array, so napari, ``read_region`` and the
extraction pipeline all decode each file tile once.

A tile that cannot be decoded (corrupt bytes, or bytes past the end of a truncated file)
raises :class:`TileDecodeError` from its source, naming the file, the level, the tile and
its level-0 box. Region reads for the viewer never fail on one: the tile is shown grey and
the slide warns once (:class:`BadTileLog`); the extraction pipeline asks
:meth:`TiledLevel.read_checked` which tiles failed and skips the patches that need them.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from napari_care.core.slide.tile_cache import TileCache

if TYPE_CHECKING:
    import dask.array as da

WHITE = 255  # what lies outside a slide: glass
BAD_TILE_GREY = 192  # what a tile that cannot be decoded shows: neither glass nor (unsaturated) tissue

Box = tuple[int, int, int, int]


class SlideDataWarning(UserWarning):
    """A slide whose file is damaged: truncated, or with tiles that cannot be decoded.

    Said once per slide; a job keeps these in its summary row (other warnings of a worker are
    the row's reason or nothing).
    """


class TileShownGreyWarning(SlideDataWarning):
    """A tile that cannot be decoded, read for a region (the viewer, tissue detection) and
    shown grey; a job's row says the damage in the words of the truncation or extraction."""


class TileDecodeError(ValueError):
    """A file tile that cannot be decoded: corrupt bytes, or bytes past the end of the file.

    Parameters
    ----------
    path
        The slide file (None when the source does not know it).
    level
        The pyramid level of the tile.
    tile
        (column, row) of the tile in its level's tile grid.
    box_level0
        (x0, y0, x1, y1) of the tile in level-0 pixels (x1, y1 exclusive, clipped to the level).
    reason
        What went wrong, in the decoder's or the backend's words.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        level: int,
        tile: tuple[int, int],
        box_level0: Box,
        reason: str,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.level = int(level)
        self.tile = (int(tile[0]), int(tile[1]))
        self.box_level0 = tuple(int(v) for v in box_level0)
        self.reason = str(reason)
        name = "slide" if self.path is None else self.path.name
        super().__init__(
            f"{name}: level {self.level} file tile (column, row) = {self.tile}, "
            f"level-0 box (x0, y0, x1, y1) = {self.box_level0}, cannot be decoded: {self.reason}"
        )

    def __reduce__(self):  # pickles (process pools) with its fields, not just the message
        return (type(self), (self.path, self.level, self.tile, self.box_level0, self.reason))


def tile_box_level0(
    ty: int, tx: int, tile_hw: tuple[int, int], level_hw: tuple[int, int], downsample_xy: tuple[float, float]
) -> Box:
    """(x0, y0, x1, y1) in level-0 pixels of tile (ty, tx) of a level, clipped to the level.

    Parameters
    ----------
    ty, tx
        Row and column of the tile.
    tile_hw
        (height, width) of the level's tiles in pixels of the level.
    level_hw
        (height, width) of the level in its own pixels.
    downsample_xy
        Level-0 pixels per pixel of the level along x and y.
    """
    (th, tw), (h, w), (dx, dy) = tile_hw, level_hw, downsample_xy
    x0, y0 = tx * tw, ty * th
    x1, y1 = min(x0 + tw, w), min(y0 + th, h)
    return (round(x0 * dx), round(y0 * dy), round(x1 * dx), round(y1 * dy))


class BadTileLog:
    """The tiles of one slide that could not be decoded, shared by its levels (thread-safe).

    A tile that failed once is not decoded again: its error is raised from the log. The
    viewer's warning for grey tiles is given once per log, i.e. once per slide.

    Parameters
    ----------
    name
        The slide's file name, for messages.
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._errors: dict[Hashable, TileDecodeError] = {}
        self._lock = threading.Lock()
        self._warned = False

    def get(self, key: Hashable) -> TileDecodeError | None:
        """The error of tile ``key`` ((level key, ty, tx)) when it failed before, else None."""
        with self._lock:
            return self._errors.get(key)

    def add(self, key: Hashable, error: TileDecodeError) -> None:
        """Remember that tile ``key`` failed with ``error``."""
        with self._lock:
            self._errors.setdefault(key, error)

    @property
    def errors(self) -> list[TileDecodeError]:
        """The errors of the tiles that failed so far, in the order they failed."""
        with self._lock:
            return list(self._errors.values())

    def warn_shown_grey(self, error: TileDecodeError) -> None:
        """Warn, the first time only, that a tile that cannot be decoded is shown grey."""
        with self._lock:
            if self._warned:
                return
            self._warned = True
        warnings.warn(
            f"{error}; the tile is shown grey (other tiles of this slide that cannot be decoded "
            "are shown grey without another warning)",
            TileShownGreyWarning,
            stacklevel=3,
        )


class TileSource(Protocol):
    """Decodes the tiles of one pyramid level (all sizes in pixels of that level)."""

    height: int
    width: int
    tile_height: int
    tile_width: int

    def decode_tile(self, ty: int, tx: int) -> np.ndarray:
        """Return tile (ty, tx) as (tile_height, tile_width, 3) uint8, white beyond the edge.

        Raises :class:`TileDecodeError` when the tile's bytes cannot be decoded. A source
        may have a ``bad_tiles`` attribute (a :class:`BadTileLog` shared by the slide's
        sources); a level without one keeps its own.
        """
        ...


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Return (h, w, 3) uint8 RGB from (h, w), (h, w, 1), (h, w, 3) or (h, w, 4) uint8."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[-1]
    if channels == 3:
        return pixels
    if channels == 1:
        return np.repeat(pixels, 3, axis=-1)
    if channels == 4:
        return pixels[..., :3]
    raise ValueError(f"cannot show {channels} samples per pixel as RGB")


class TiledLevel:
    """One pyramid level: cached tiles, region reads and a lazy dask array.

    Parameters
    ----------
    source
        Decodes the level's tiles.
    cache
        Tile cache shared by the slide's levels.
    key
        This level's key in the cache (its index in the slide).
    executor
        Thread pool that decodes the tiles of one region read in parallel.
    """

    def __init__(self, source: TileSource, cache: TileCache, key: int, executor: ThreadPoolExecutor) -> None:
        self.source = source
        self.cache = cache
        self.key = key
        self.executor = executor
        self.height = source.height
        self.width = source.width
        self.tile_height = source.tile_height
        self.tile_width = source.tile_width
        self.tiles_y = math.ceil(self.height / self.tile_height)
        self.tiles_x = math.ceil(self.width / self.tile_width)
        self.bad_tiles: BadTileLog = getattr(source, "bad_tiles", None) or BadTileLog()
        # attributes dask.array.from_array reads
        self.shape = (self.height, self.width, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def tile(self, ty: int, tx: int) -> np.ndarray:
        """Return decoded tile (ty, tx), read-only, from the cache when it is there.

        Raises
        ------
        TileDecodeError
            When the tile cannot be decoded (now or before: a bad tile is tried once).
        """
        key = (self.key, ty, tx)
        known = self.bad_tiles.get(key)
        if known is not None:
            raise known
        try:
            return self.cache.get_or_load(key, lambda: self.source.decode_tile(ty, tx))
        except TileDecodeError as error:
            self.bad_tiles.add(key, error)
            raise

    def _tile_or_error(self, ty: int, tx: int) -> np.ndarray | TileDecodeError:
        try:
            return self.tile(ty, tx)
        except TileDecodeError as error:
            return error

    def read_checked(
        self, x: int, y: int, width: int, height: int, *, parallel: bool = True
    ) -> tuple[np.ndarray, list[tuple[tuple[int, int], TileDecodeError]]]:
        """Read a region like :meth:`read`, and say which of its tiles could not be decoded.

        Parameters
        ----------
        x, y
            Top-left corner of the region in this level's pixels.
        width, height
            Size of the region in this level's pixels.
        parallel
            Decode tiles not yet cached in the slide's thread pool (callers already inside
            that pool pass False).

        Returns
        -------
        pixels : numpy.ndarray
            (height, width, 3) uint8; white outside the level, :data:`BAD_TILE_GREY` where
            a tile could not be decoded.
        bad : list of ((int, int), TileDecodeError)
            (ty, tx) of each tile of this level that could not be decoded, with its error
            (for a lazily downsampled level, the error of the file tile underneath). No
            warning is given here.
        """
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, self.width), min(y + height, self.height)
        inside = (x0, y0, x1, y1) == (x, y, x + width, y + height)
        # a region inside the level is covered by its tiles (or grey): no white fill first
        shape = (height, width, 3)
        out = np.empty(shape, np.uint8) if inside else np.full(shape, WHITE, np.uint8)
        if x1 <= x0 or y1 <= y0:
            return out, []
        th, tw = self.tile_height, self.tile_width
        wanted = [
            (ty, tx)
            for ty in range(y0 // th, (y1 - 1) // th + 1)
            for tx in range(x0 // tw, (x1 - 1) // tw + 1)
        ]
        # cached tiles are served here: a thread-pool round trip costs more than the copy
        tiles: list[np.ndarray | TileDecodeError | None] = [
            self.cache.get((self.key, ty, tx)) for ty, tx in wanted
        ]
        missing = [i for i, tile in enumerate(tiles) if tile is None]
        if parallel and len(missing) > 1:
            decoded = self.executor.map(lambda i: self._tile_or_error(*wanted[i]), missing)
        else:
            decoded = (self._tile_or_error(*wanted[i]) for i in missing)
        for i, tile in zip(missing, decoded, strict=True):
            tiles[i] = tile
        bad = []
        for (ty, tx), tile in zip(wanted, tiles, strict=True):
            ty0, tx0 = ty * th, tx * tw
            sy0, sy1 = max(y0, ty0), min(y1, ty0 + th)
            sx0, sx1 = max(x0, tx0), min(x1, tx0 + tw)
            if isinstance(tile, TileDecodeError):
                bad.append(((ty, tx), tile))
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = BAD_TILE_GREY
                continue
            out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0]
        return out, bad

    def read(self, x: int, y: int, width: int, height: int, *, parallel: bool = True) -> np.ndarray:
        """Return the (height, width, 3) region whose top-left is (x, y) in this level's pixels.

        Parts outside the level are white. With ``parallel``, tiles not yet cached are
        decoded in the slide's thread pool (callers already inside that pool pass False).
        A tile that cannot be decoded is shown grey (:data:`BAD_TILE_GREY`) and the slide
        warns once: a viewer's paint never fails on a corrupt tile.
        """
        pixels, bad = self.read_checked(x, y, width, height, parallel=parallel)
        if bad:
            self.bad_tiles.warn_shown_grey(bad[0][1])
        return pixels

    @property
    def size(self) -> int:
        """Number of values, as numpy counts them."""
        return self.height * self.width * 3

    def __len__(self) -> int:
        return self.height

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        pixels = self.read(0, 0, self.width, self.height)
        return pixels if dtype is None else pixels.astype(dtype)

    def __getitem__(self, index) -> np.ndarray:
        """Numpy-style basic indexing (slices with any step, integers), reading only the tiles needed.

        napari slices the levels it shows with this, and dask asks for its chunks.
        """
        if not isinstance(index, tuple):
            index = (index,)
        if any(item is Ellipsis for item in index):
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (4 - len(index)) + index[at + 1 :]
        index = index + (slice(None),) * (3 - len(index))
        bounds, local = [], []
        for item, length in zip(index[:2], self.shape[:2], strict=True):
            if isinstance(item, slice):
                start, stop, step = item.indices(length)
                picked = range(start, stop, step)
                if len(picked) == 0:
                    bounds.append((0, 0))
                    local.append(slice(0, 0))
                    continue
                low, high = min(picked[0], picked[-1]), max(picked[0], picked[-1]) + 1
                bounds.append((low, high))
                stop = picked[-1] - low + (1 if step > 0 else -1)
                local.append(slice(picked[0] - low, stop if stop >= 0 else None, step))
            else:
                position = int(item) + (length if int(item) < 0 else 0)
                if not 0 <= position < length:
                    raise IndexError(f"index {item} is out of bounds for an axis of size {length}")
                bounds.append((position, position + 1))
                local.append(0)
        (row0, row1), (col0, col1) = bounds
        region = self.read(col0, row0, col1 - col0, row1 - row0)
        return region[(local[0], local[1], index[2])]

    def to_dask(self, name: str) -> da.Array:
        """The level as a lazy dask array chunked on the file's tiles.

        The level object is inlined into every chunk's task (``inline_array=True``) rather
        than held as one shared graph key, so the cost of slicing a field does not grow with
        the slide's size (measured by ``benchmarks/bench_dask_levels.py``).
        """
        import dask.array as da  # lazy: 0.4 s to import, and opening a slide for napari does not need it

        return da.from_array(
            self,
            chunks=(self.tile_height, self.tile_width, 3),
            asarray=False,
            fancy=False,
            lock=False,
            inline_array=True,
            name=name,
            meta=np.empty((0, 0, 3), dtype=np.uint8),
        )


class DownsampledSource:
    """A level made lazily from a finer one by 2x2 averaging (for slides with few levels).

    Parameters
    ----------
    parent
        The finer level.
    tile_size
        Side of this level's tiles in pixels.
    """

    def __init__(self, parent: TiledLevel, tile_size: int = 512) -> None:
        self.parent = parent
        self.height = max(parent.height // 2, 1)
        self.width = max(parent.width // 2, 1)
        self.tile_height = self.tile_width = tile_size
        self.bad_tiles = parent.bad_tiles  # one log per slide

    def decode_tile(self, ty: int, tx: int) -> np.ndarray:
        """Average 2x2 blocks of the parent region under tile (ty, tx).

        Raises the parent's :class:`TileDecodeError` when a file tile underneath cannot be
        decoded (the error names that file tile).
        """
        size = self.tile_height
        block, bad = self.parent.read_checked(
            tx * size * 2, ty * size * 2, size * 2, size * 2, parallel=False
        )
        if bad:
            raise bad[0][1]
        mean = block.reshape(size, 2, size, 2, 3).mean(axis=(1, 3), dtype=np.float32)
        return np.rint(mean).astype(np.uint8)
