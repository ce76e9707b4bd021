"""A thread-safe, size-bounded LRU cache of decoded slide tiles."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np


class TileCache:
    """Least-recently-used cache of decoded tiles, bounded in bytes.

    Parameters
    ----------
    max_bytes
        Upper bound on the bytes of cached arrays; the oldest tiles go first.
    """

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = int(max_bytes)
        self._tiles: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> np.ndarray | None:
        """Return the cached tile for ``key``, or None on a miss."""
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
            return tile

    def get_or_load(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        """Return the cached tile for ``key``, decoding it with ``load`` on a miss.

        Decoding happens outside the lock so that several threads decode at once; two
        threads missing the same tile may both decode it, which is harmless.
        """
        tile = self.get(key)
        if tile is not None:
            return tile
        tile = load()
        tile.flags.writeable = False  # shared between callers: nobody may edit it in place
        if self.max_bytes <= 0:
            return tile
        with self._lock:
            if key not in self._tiles:
                self._tiles[key] = tile
                self._bytes += tile.nbytes
                while self._bytes > self.max_bytes and len(self._tiles) > 1:
                    _, old = self._tiles.popitem(last=False)
                    self._bytes -= old.nbytes
        return tile

    def clear(self) -> None:
        """Drop every cached tile."""
        with self._lock:
            self._tiles.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes
