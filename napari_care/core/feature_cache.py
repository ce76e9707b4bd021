"""A cache of patch features by grid index, in memory and optionally on disk.

Features depend on the slide file, the encoder (and its weights) and the tiling (target
resolution, tile size, overlap). Those make the :class:`CacheKey`; within one key, features
are stored per grid index (gx, gy), so a second run, or a visible-field box that overlaps an
earlier one, encodes only the tiles not seen before.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from napari_care.core.atomic import atomic_path
from napari_care.core.encoders.config import RANDOM_WEIGHTS
from napari_care.core.features import create_hdf5
from napari_care.core.tiling import TileGrid, pack_grid


@dataclass(frozen=True)
class CacheKey:
    """What the features of one slide depend on.

    Parameters
    ----------
    slide_path
        Resolved path of the slide file.
    slide_size, slide_mtime_ns
        File size and modification time: a changed file is another slide.
    encoder
        Encoder name and a fingerprint of its weights.
    tile_size_px, tile_size_level0, stride_level0
        The tiling (target resolution, tile size and overlap in level-0 pixels).
    target_mpp
        Micrometres per tile pixel (None on an uncalibrated slide).
    """

    slide_path: str
    slide_size: int
    slide_mtime_ns: int
    encoder: str
    tile_size_px: int
    tile_size_level0: float
    stride_level0: float
    target_mpp: float | None

    @property
    def digest(self) -> str:
        """A short stable hash of the key (the cache file name)."""
        text = "|".join(f"{k}={v!r}" for k, v in sorted(asdict(self).items()))
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def encoder_identity(encoder) -> str:
    """Name and weights fingerprint of an encoder, for cache keys.

    A weights file counts by path, size and modification time (hashing gigabytes would
    cost more than it saves); random weights count per encoder object.
    """
    cfg = encoder.cfg
    explicit = getattr(encoder, "weights_hash", None)
    if explicit:
        return f"{cfg.name}|{explicit}"
    source = str(getattr(encoder, "weights_source", "") or "")
    if source and Path(source).is_file():
        stat = Path(source).stat()
        source = f"{Path(source).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    elif source.startswith(RANDOM_WEIGHTS):
        source = f"{RANDOM_WEIGHTS}@{id(encoder):x}"
    cfg_hash = hashlib.sha256(repr(cfg).encode()).hexdigest()[:12]
    return f"{cfg.name}|{source}|{cfg_hash}"


def cache_key(slide, grid: TileGrid, encoder) -> CacheKey:
    """The :class:`CacheKey` of extracting ``grid`` of ``slide`` with ``encoder``.

    Raises
    ------
    FileNotFoundError
        When the slide's file is gone (its identity is its file).
    """
    path = Path(slide.path)
    try:
        stat = path.stat()
    except OSError as error:
        raise FileNotFoundError(
            f"cannot cache features of {path}: the slide file is not readable ({error})"
        ) from error
    return CacheKey(
        slide_path=str(path.resolve()),
        slide_size=int(stat.st_size),
        slide_mtime_ns=int(stat.st_mtime_ns),
        encoder=encoder_identity(encoder),
        tile_size_px=grid.tile_size_px,
        tile_size_level0=round(grid.tile_size_level0, 6),
        stride_level0=round(grid.stride_level0, 6),
        target_mpp=None if grid.target_mpp is None else round(grid.target_mpp, 9),
    )


class _Entry:
    """Features of one key, sorted by packed grid index."""

    def __init__(self, packed: np.ndarray, features: np.ndarray) -> None:
        order = np.argsort(packed, kind="stable")
        self.packed = packed[order]
        self.features = features[order]

    def find(self, packed: np.ndarray) -> np.ndarray:
        """Row of each packed index, -1 where absent."""
        if len(self.packed) == 0:
            return np.full(len(packed), -1, dtype=np.int64)
        pos = np.searchsorted(self.packed, packed).clip(0, len(self.packed) - 1)
        return np.where(self.packed[pos] == packed, pos, -1)

    def merged(self, packed: np.ndarray, features: np.ndarray) -> _Entry:
        """A new entry with these rows added (new values win)."""
        keep_old = self.find(packed)
        stale = np.zeros(len(self.packed), dtype=bool)
        stale[keep_old[keep_old >= 0]] = True
        return _Entry(
            np.concatenate([self.packed[~stale], packed]),
            np.concatenate([self.features[~stale], features.astype(np.float32, copy=False)]),
        )


class FeatureCache:
    """Patch features by (key, grid index), in memory and optionally in a folder of HDF5 files.

    Parameters
    ----------
    folder
        Where to keep one ``<digest>.h5`` per key; None keeps features in memory only.
    max_keys_in_memory
        Keys (slide x encoder x tiling) held in memory; the least recently used goes first.
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None, max_keys_in_memory: int = 8) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.max_keys_in_memory = max(1, int(max_keys_in_memory))
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def path_for(self, key: CacheKey) -> Path | None:
        """The cache file of ``key`` (None without a folder)."""
        return None if self.folder is None else self.folder / f"{key.digest}.h5"

    def _entry(self, key: CacheKey) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._read_file(key)
            if entry is not None:
                self._remember(key, entry)
        else:
            self._entries.move_to_end(key)
        return entry

    def _remember(self, key: CacheKey, entry: _Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_keys_in_memory:
            self._entries.popitem(last=False)

    def lookup(self, key: CacheKey, grid_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Cached features for grid indices.

        Parameters
        ----------
        key
            The cache key.
        grid_xy
            [N, 2] grid indices (gx, gy).

        Returns
        -------
        (found [N] bool, features [found.sum(), D] float32 of the found rows, in order;
        None when nothing is cached for the key)
        """
        with self._lock:
            entry = self._entry(key)
        if entry is None:
            return np.zeros(len(grid_xy), dtype=bool), None
        rows = entry.find(pack_grid(grid_xy))
        found = rows >= 0
        return found, entry.features[rows[found]]

    def store(
        self, key: CacheKey, grid_xy: np.ndarray, features: np.ndarray, *, persist: bool = True
    ) -> None:
        """Add features for grid indices; with a folder and ``persist``, rewrite the file atomically."""
        features = np.asarray(features, dtype=np.float32)
        if len(features) != len(grid_xy):
            raise ValueError(f"{len(features)} feature rows for {len(grid_xy)} grid indices")
        with self._lock:
            entry = self._entry(key)
            packed = pack_grid(grid_xy)
            entry = _Entry(packed, features) if entry is None else entry.merged(packed, features)
            self._remember(key, entry)
            path = self.path_for(key)
            if persist and path is not None:
                self._write_file(path, key, entry)

    def clear_memory(self) -> None:
        """Forget the in-memory features (files stay)."""
        with self._lock:
            self._entries.clear()

    def _read_file(self, key: CacheKey) -> _Entry | None:
        path = self.path_for(key)
        if path is None or not path.is_file():
            return None
        import h5py  # h5py loads only for feature files

        try:
            with h5py.File(path, "r") as f:
                grid_xy = np.asarray(f["grid"][()], dtype=np.int64)
                features = np.asarray(f["features"][()], dtype=np.float32)
        except (OSError, KeyError):  # a damaged cache file is only a miss
            return None
        return _Entry(pack_grid(grid_xy), features)

    def _write_file(self, path: Path, key: CacheKey, entry: _Entry) -> None:
        grid_xy = np.stack([entry.packed & 0xFFFFFFFF, entry.packed >> 32], axis=1)
        # a full disk is an OSError naming the file, never HDF5 crashing on close
        with atomic_path(path) as tmp, create_hdf5(tmp) as f:
            f.create_dataset("features", data=entry.features)
            f.create_dataset("grid", data=grid_xy)
            f.attrs.update({k: ("" if v is None else v) for k, v in asdict(key).items()})
