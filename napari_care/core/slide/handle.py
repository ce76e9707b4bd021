"""The slide handle: one object over a whole-slide image, whatever wrote the file.

>>> with open_slide("CMU-1-Small-Region.svs") as slide:
...     slide.mpp, slide.dimensions[0]
((0.499, 0.499), (2220, 2967))

Coordinates follow OpenSlide: ``location`` is level-0 (x, y), ``size`` is (width, height)
in pixels of the level read. Each level is also a lazy dask array (rows, columns, RGB)
chunked on the file's own tiles; napari shows those.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_care.core.slide import meta as slide_meta
from napari_care.core.slide.backends import SlideBackend, backends_for
from napari_care.core.slide.levels import DownsampledSource, TiledLevel, TileSource
from napari_care.core.slide.tile_cache import TileCache

if TYPE_CHECKING:
    import dask.array as da

VIRTUAL_LEVEL_MAX_SIDE = 1024  # add 2x levels until the smallest is at most this big
DEFAULT_CACHE_BYTES = 256 * 2**20


class SlideReadError(ValueError):
    """A file that cannot be read as a slide; the message names the file and the reason."""


class Slide:
    """A whole-slide image: lazy pyramid levels, calibration, region reads.

    Build one with :func:`open_slide`.

    Attributes
    ----------
    path : Path
        The file.
    levels : list of dask.array.Array
        One (height, width, 3) uint8 RGB array per level, largest first, chunked on the
        file's tiles. Levels past ``file_level_count`` are made lazily by 2x averaging.
    dimensions : list of (int, int)
        (width, height) of each level in pixels.
    level_downsamples : list of float
        Level-0 pixels per pixel of each level.
    mpp : (float, float) or None
        (x, y) micrometres per level-0 pixel; None when the file has no calibration.
    mpp_source : str or None
        Where ``mpp`` came from (``"user"``, ``"openslide"``, ``"aperio"``, ``"ome"``,
        ``"tiff-resolution"``).
    objective_power : float or None
        Scanning magnification, when the file says.
    vendor : str
        The format family (``"aperio"``, ``"ome"``, ``"hamamatsu"``, ``"generic-tiff"``,
        or OpenSlide's vendor name).
    backend : str
        The backend that read the file (``"tifffile"``, ``"openslide"``, or another
        registered one).
    bounds_offset : (int, int)
        Level-0 (x, y) of the scanned area's corner (MRXS and others); QuPath measures
        coordinates from it.
    properties : dict of str
        The file's own metadata fields.
    """

    def __init__(
        self,
        path: Path,
        sources: list[TileSource],
        *,
        calibration: slide_meta.Calibration,
        vendor: str,
        backend: str,
        properties: dict[str, str],
        associated: Mapping[str, Callable[[], np.ndarray]],
        on_close: list[Callable[[], None]],
        bounds_offset: tuple[int, int] = (0, 0),
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.path = path
        self.mpp = calibration.mpp
        self.mpp_source = calibration.mpp_source
        self.objective_power = calibration.objective_power
        self.vendor = vendor
        self.backend = backend
        self.properties = properties
        self.bounds_offset = bounds_offset
        self._associated_loaders = dict(associated)
        self._on_close = on_close
        self._executor = ThreadPoolExecutor(
            max_workers=min(8, os.cpu_count() or 2), thread_name_prefix="slide-tiles"
        )
        self._cache = TileCache(cache_bytes)
        self._levels = [TiledLevel(src, self._cache, i, self._executor) for i, src in enumerate(sources)]
        self.file_level_count = len(self._levels)
        downsamples = [self._file_downsample(level) for level in self._levels]
        while max(self._levels[-1].height, self._levels[-1].width) > VIRTUAL_LEVEL_MAX_SIDE:
            parent = self._levels[-1]
            self._levels.append(
                TiledLevel(DownsampledSource(parent), self._cache, len(self._levels), self._executor)
            )
            downsamples.append(downsamples[-1] * 2.0)
        self.level_downsamples = downsamples
        self.dimensions = [(level.width, level.height) for level in self._levels]
        self._token = _file_token(path)

    def _file_downsample(self, level: TiledLevel) -> float:
        base = self._levels[0]
        return (base.width / level.width + base.height / level.height) / 2.0

    @cached_property
    def levels(self) -> list[da.Array]:
        """The levels as lazy dask arrays chunked on the file's tiles (made on first use: the
        dask import alone costs 0.4 s, which a slide opened for napari need not pay)."""
        return [level.to_dask(f"napari-care-{self._token}-{i}") for i, level in enumerate(self._levels)]

    @property
    def tiled_levels(self) -> list[TiledLevel]:
        """The levels as numpy-like arrays over the tile cache (what napari is given).

        Slicing one reads just the tiles under the slice, with no task graph: dask's cost
        per compute grows with the number of chunks in a level (hundreds of milliseconds
        on a 40x slide), which a viewer pays on every redraw.
        """
        return list(self._levels)

    @property
    def level_count(self) -> int:
        """Number of levels, the lazily made ones included."""
        return len(self._levels)

    @cached_property
    def associated_images(self) -> dict[str, np.ndarray]:
        """Label, macro and thumbnail images (RGB uint8) where the file has them."""
        return {name: load() for name, load in self._associated_loaders.items()}

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read a region as (height, width, 3) uint8 RGB.

        Parameters
        ----------
        location
            Level-0 (x, y) of the region's top-left corner.
        level
            The level to read from.
        size
            (width, height) in pixels of ``level``.

        Returns
        -------
        numpy.ndarray
            The pixels; parts outside the slide are white. Safe to call from several threads.
        """
        if not 0 <= level < self.level_count:
            raise IndexError(f"{self.path.name}: level {level} out of range 0..{self.level_count - 1}")
        width, height = int(size[0]), int(size[1])
        if width < 0 or height < 0:
            raise ValueError(f"region size must not be negative, got {size}")
        downsample = self.level_downsamples[level]
        x = int(np.floor(location[0] / downsample))
        y = int(np.floor(location[1] / downsample))
        return self._levels[level].read(x, y, width, height)

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level at least as fine as ``downsample`` (1% tolerance), else 0."""
        best = 0
        for index, level_downsample in enumerate(self.level_downsamples):
            if level_downsample <= downsample * 1.01:
                best = index
        return best

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide as RGB uint8 whose longer side is at most ``max_size`` pixels."""
        from skimage.transform import resize  # scikit-image submodules load on first use

        width0, height0 = self.dimensions[0]
        downsample = max(width0, height0) / max_size
        level = self.get_best_level_for_downsample(max(downsample, 1.0))
        pixels = self.levels[level].compute()
        scale = max_size / max(pixels.shape[:2])
        if scale >= 1:
            return pixels
        shape = (max(1, round(pixels.shape[0] * scale)), max(1, round(pixels.shape[1] * scale)))
        return (resize(pixels, shape, anti_aliasing=True, preserve_range=True) + 0.5).astype(np.uint8)

    def metadata(self) -> dict[str, Any]:
        """Everything known of the slide, as JSON-ready values."""
        return {
            "path": str(self.path),
            "vendor": self.vendor,
            "backend": self.backend,
            "level_count": self.level_count,
            "file_level_count": self.file_level_count,
            "dimensions": [list(d) for d in self.dimensions],
            "level_downsamples": [round(d, 6) for d in self.level_downsamples],
            "tile_sizes": [[lvl.tile_width, lvl.tile_height] for lvl in self._levels],
            "mpp": list(self.mpp) if self.mpp else None,
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "bounds_offset": list(self.bounds_offset),
            "associated_images": sorted(self._associated_loaders),
            "properties": self.properties,
        }

    def close(self) -> None:
        """Release the file and the reader threads."""
        self._executor.shutdown(wait=True)
        self._cache.clear()
        for close in self._on_close:
            close()
        self._on_close = []

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = f"{self.mpp[0]:.4g} um/px ({self.mpp_source})" if self.mpp else "no mpp"
        return (
            f"<Slide {self.path.name}: {self.dimensions[0][0]}x{self.dimensions[0][1]}, "
            f"{self.level_count} levels, {mpp}>"
        )


def _file_token(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def open_slide(path: str | os.PathLike[str], *, mpp: float | tuple[float, float] | None = None) -> Slide:
    """Open a whole-slide image.

    Parameters
    ----------
    path
        A slide file: SVS, (pyramidal) TIFF, OME-TIFF, NDPI, or anything OpenSlide reads
        (MRXS, DICOM, VMS, SCN, BIF, ...).
    mpp
        Micrometres per level-0 pixel, overriding what the file says (one number, or (x, y)).

    Returns
    -------
    Slide
        As read by the first backend that can (see
        :func:`~napari_care.core.slide.backends.backends_for` for the order).

    Raises
    ------
    FileNotFoundError
        When there is no such file.
    SlideReadError
        When the file cannot be read as a slide; the message names the file and why.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    user_mpp = slide_meta.normalise_user_mpp(mpp)
    reasons = []
    for backend in backends_for(path):
        try:
            slide = _open_with(backend, path, user_mpp)
        except Exception as error:  # each backend fails in its own words; keep them
            reasons.append(f"{backend.reason_label}: {error}")
            continue
        if slide.mpp is None:
            warnings.warn(
                f"{path.name}: the file has no pixel size (mpp); pass mpp= (or --mpp) to work in micrometres",
                stacklevel=2,
            )
        return slide
    raise SlideReadError(f"{path}: cannot read this file as a slide ({'; '.join(reasons)})")


def _open_with(backend: SlideBackend, path: Path, user_mpp: tuple[float, float] | None) -> Slide:
    """The slide as ``backend`` reads it; raises whatever the backend raises."""
    parts = backend.open(path, user_mpp)
    return Slide(
        path,
        parts.sources,
        calibration=parts.calibration,
        vendor=parts.vendor,
        backend=backend.name,
        properties=parts.properties,
        associated=parts.associated,
        on_close=parts.on_close,
        bounds_offset=parts.bounds_offset,
    )
