"""Small in-memory stand-ins for a Slide and a patch encoder (for tiling/extraction tests).

``FakeSlide`` follows the Slide contract (levels as dask arrays chunked on "file tiles",
``read_region`` with white outside, ``get_best_level_for_downsample``) and records which
levels were read and how many file tiles were decoded.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np

PINK = (220, 120, 170)  # eosin-like tissue
PURPLE = (120, 70, 160)  # haematoxylin-like tissue
GLASS = (243, 243, 243)


def pyramid(level0: np.ndarray, factors: tuple[int, ...]) -> list[np.ndarray]:
    """Levels made by block means; ``factors`` are level-0 pixels per pixel of each level."""
    levels = []
    for f in factors:
        h, w = level0.shape[0] // f, level0.shape[1] // f
        block = level0[: h * f, : w * f].reshape(h, f, w, f, 3).mean(axis=(1, 3), dtype=np.float32)
        levels.append(np.rint(block).astype(np.uint8))
    return levels


class FakeSlide:
    """A slide over numpy levels, written to ``path`` as a stand-in file (for cache keys)."""

    def __init__(
        self,
        level0: np.ndarray,
        path: Path,
        *,
        mpp: float | None = 0.5,
        factors: tuple[int, ...] = (1, 4, 16),
        file_tile: int = 256,
    ) -> None:
        self.path = Path(path)
        self.path.write_bytes(b"fake slide " + str(level0.shape).encode())
        arrays = pyramid(level0, factors)
        self._arrays = arrays
        self.levels = [da.from_array(a, chunks=(file_tile, file_tile, 3)) for a in arrays]
        self.dimensions = [(a.shape[1], a.shape[0]) for a in arrays]
        self.level_count = len(arrays)
        self.level_downsamples = [float(f) for f in factors]
        self.mpp = None if mpp is None else (mpp, mpp)
        self.mpp_source = None if mpp is None else "user"
        self.objective_power = None
        self.vendor = "fake"
        self.associated_images: dict[str, np.ndarray] = {}
        self.file_tile = file_tile
        self.reads: Counter[int] = Counter()  # read_region calls per level
        self.decoded: Counter[tuple[int, int, int]] = Counter()  # file tiles touched (level, ty, tx)
        self._lock = threading.Lock()

    def read_region(self, location, level, size) -> np.ndarray:
        """(h, w, 3) uint8; location level-0 (x, y); size (w, h) at ``level``; white outside."""
        arr = self._arrays[level]
        ds = self.level_downsamples[level]
        x, y = int(np.floor(location[0] / ds)), int(np.floor(location[1] / ds))
        w, h = int(size[0]), int(size[1])
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, arr.shape[1]), min(y + h, arr.shape[0])
        with self._lock:
            self.reads[level] += 1
            if x1 > x0 and y1 > y0:
                t = self.file_tile
                for ty in range(y0 // t, (y1 - 1) // t + 1):
                    for tx in range(x0 // t, (x1 - 1) // t + 1):
                        self.decoded[(level, ty, tx)] += 1
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = arr[y0:y1, x0:x1]
        return out

    def get_best_level_for_downsample(self, downsample: float) -> int:
        best = 0
        for index, level_downsample in enumerate(self.level_downsamples):
            if level_downsample <= downsample * 1.01:
                best = index
        return best

    def close(self) -> None:
        pass


def slide_image(height: int, width: int, blocks=(), *, seed: int = 0, noise: int = 3) -> np.ndarray:
    """Glass with slight noise and coloured rectangles ``blocks`` = [(x0, y0, x1, y1, rgb), ...]."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = GLASS
    for x0, y0, x1, y1, colour in blocks:
        image[y0:y1, x0:x1] = colour
    if noise:  # JPEG-like jitter; colours stay far from 0 and 255, so uint8 cannot wrap
        image += rng.integers(0, 2 * noise + 1, size=image.shape, dtype=np.uint8)
        image -= np.uint8(noise)
    return image


@dataclass(frozen=True)
class FakeCfg:
    name: str = "fake-mean"
    embed_dim: int = 4


@dataclass
class FakeEncoder:
    """Features = (mean R, G, B, tile side) of each tile; counts the tiles it encoded."""

    cfg: FakeCfg = field(default_factory=FakeCfg)
    tiles_seen: int = 0
    calls: int = 0
    poison: bool = False  # return NaN for the first tile of every batch

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def encode(self, tiles: np.ndarray) -> np.ndarray:
        assert tiles.dtype == np.uint8 and tiles.ndim == 4 and tiles.shape[-1] == 3
        self.calls += 1
        self.tiles_seen += len(tiles)
        means = tiles.reshape(len(tiles), -1, 3).mean(axis=1)
        side = np.full((len(tiles), 1), tiles.shape[1], dtype=np.float64)
        out = np.concatenate([means, side], axis=1).astype(np.float32)
        if self.poison and len(out):
            out[0, 0] = np.nan
        return out
