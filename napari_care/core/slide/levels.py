"""Pyramid levels as tile sources: decode one file tile at a time, cache it, assemble regions.

Every level, whatever its backend, is a :class:`TiledLevel`: a grid of equally sized tiles
that a *source* decodes one at a time. The level assembles regions from cached tiles, and
its tiles are the chunks of the level's dask array, so napari, ``read_region`` and the
extraction pipeline all decode each file tile once.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import dask.array as da
import numpy as np

from napari_care.core.slide.tile_cache import TileCache

WHITE = 255  # what lies outside a slide: glass


class TileSource(Protocol):
    """Decodes the tiles of one pyramid level (all sizes in pixels of that level)."""

    height: int
    width: int
    tile_height: int
    tile_width: int

    def decode_tile(self, ty: int, tx: int) -> np.ndarray:
        """Return tile (ty, tx) as (tile_height, tile_width, 3) uint8, white beyond the edge."""
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
        # attributes dask.array.from_array reads
        self.shape = (self.height, self.width, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def tile(self, ty: int, tx: int) -> np.ndarray:
        """Return decoded tile (ty, tx), read-only, from the cache when it is there."""
        return self.cache.get_or_load((self.key, ty, tx), lambda: self.source.decode_tile(ty, tx))

    def read(self, x: int, y: int, width: int, height: int, *, parallel: bool = True) -> np.ndarray:
        """Return the (height, width, 3) region whose top-left is (x, y) in this level's pixels.

        Parts outside the level are white. With ``parallel``, tiles not yet cached are
        decoded in the slide's thread pool (callers already inside that pool pass False).
        """
        out = np.full((height, width, 3), WHITE, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, self.width), min(y + height, self.height)
        if x1 <= x0 or y1 <= y0:
            return out
        th, tw = self.tile_height, self.tile_width
        wanted = [
            (ty, tx)
            for ty in range(y0 // th, (y1 - 1) // th + 1)
            for tx in range(x0 // tw, (x1 - 1) // tw + 1)
        ]
        # cached tiles are served here: a thread-pool round trip costs more than the copy
        tiles = [self.cache.get((self.key, ty, tx)) for ty, tx in wanted]
        missing = [i for i, tile in enumerate(tiles) if tile is None]
        if parallel and len(missing) > 1:
            decoded = self.executor.map(lambda i: self.tile(*wanted[i]), missing)
        else:
            decoded = (self.tile(*wanted[i]) for i in missing)
        for i, tile in zip(missing, decoded, strict=True):
            tiles[i] = tile
        for (ty, tx), tile in zip(wanted, tiles, strict=True):
            ty0, tx0 = ty * th, tx * tw
            sy0, sy1 = max(y0, ty0), min(y1, ty0 + th)
            sx0, sx1 = max(x0, tx0), min(x1, tx0 + tw)
            out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0]
        return out

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
        """The level as a lazy dask array chunked on the file's tiles."""
        return da.from_array(
            self,
            chunks=(self.tile_height, self.tile_width, 3),
            asarray=False,
            fancy=False,
            lock=False,
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

    def decode_tile(self, ty: int, tx: int) -> np.ndarray:
        """Average 2x2 blocks of the parent region under tile (ty, tx)."""
        size = self.tile_height
        block = self.parent.read(tx * size * 2, ty * size * 2, size * 2, size * 2, parallel=False)
        mean = block.reshape(size, 2, size, 2, 3).mean(axis=(1, 3), dtype=np.float32)
        return np.rint(mean).astype(np.uint8)
