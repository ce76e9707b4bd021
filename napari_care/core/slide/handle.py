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
from typing import Any

import dask.array as da
import numpy as np

from napari_care.core.slide import meta as slide_meta
from napari_care.core.slide.levels import DownsampledSource, TiledLevel, TileSource, to_rgb
from napari_care.core.slide.tile_cache import TileCache

VIRTUAL_LEVEL_MAX_SIDE = 1024  # add 2x levels until the smallest is at most this big
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
OPENSLIDE_FIRST = {".mrxs", ".vms", ".vmu", ".scn", ".bif", ".dcm", ".svslide"}
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
        ``"tifffile"`` or ``"openslide"``.
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
        self._executor = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2), thread_name_prefix="slide-tiles")
        self._cache = TileCache(cache_bytes)
        self._levels = [TiledLevel(src, self._cache, i, self._executor) for i, src in enumerate(sources)]
        self.file_level_count = len(self._levels)
        downsamples = [self._file_downsample(level) for level in self._levels]
        while max(self._levels[-1].height, self._levels[-1].width) > VIRTUAL_LEVEL_MAX_SIDE:
            parent = self._levels[-1]
            self._levels.append(TiledLevel(DownsampledSource(parent), self._cache, len(self._levels), self._executor))
            downsamples.append(downsamples[-1] * 2.0)
        self.level_downsamples = downsamples
        self.dimensions = [(level.width, level.height) for level in self._levels]
        token = _file_token(path)
        self.levels: list[da.Array] = [level.to_dask(f"napari-care-{token}-{i}") for i, level in enumerate(self._levels)]

    def _file_downsample(self, level: TiledLevel) -> float:
        base = self._levels[0]
        return (base.width / level.width + base.height / level.height) / 2.0

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
        return f"<Slide {self.path.name}: {self.dimensions[0][0]}x{self.dimensions[0][1]}, {self.level_count} levels, {mpp}>"


def _file_token(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def _is_tiff(path: Path) -> bool:
    if path.is_dir():
        return False
    with open(path, "rb") as handle:
        return handle.read(4) in TIFF_MAGIC


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
    openers = [_open_tiff, _open_openslide]
    if path.suffix.lower() in OPENSLIDE_FIRST or not _is_tiff(path):
        openers.reverse()
    reasons = []
    for opener in openers:
        try:
            slide = opener(path, user_mpp)
        except SlideReadError:
            raise
        except Exception as error:  # each backend fails in its own words; keep them
            reasons.append(f"{opener.__name__.removeprefix('_open_')}: {error}")
            continue
        if slide.mpp is None:
            warnings.warn(
                f"{path.name}: the file has no pixel size (mpp); pass mpp= (or --mpp) to work in micrometres",
                stacklevel=2,
            )
        return slide
    raise SlideReadError(f"{path}: cannot read this file as a slide ({'; '.join(reasons)})")


def _open_tiff(path: Path, user_mpp: tuple[float, float] | None) -> Slide:
    import tifffile  # a backend loads when a slide of its kind opens

    from napari_care.core.slide import (
        tifffile_backend as slide_tiff,  # a backend loads when a slide of its kind opens
    )

    if not _is_tiff(path):
        raise slide_tiff.UnsupportedTiff("not a TIFF file")
    tif = tifffile.TiffFile(path)
    try:
        if tif.is_philips or tif.is_scn or tif.is_bif:
            raise slide_tiff.UnsupportedTiff("a vendor TIFF that OpenSlide reads more faithfully")
        if not tif.series:
            raise slide_tiff.UnsupportedTiff("no images in the file")
        pages = slide_tiff.pyramid_pages(tif)
        fd = slide_tiff.open_fd(path)
        try:
            sources = [slide_tiff.TiffPageSource(page, fd) for page in pages]
        except Exception:
            os.close(fd)
            raise
    except Exception:
        tif.close()
        raise
    first = tif.pages[0]
    description = first.description or ""
    properties: dict[str, str] = {}
    candidates: list[tuple[str, tuple[float, float] | None]] = [("user", user_mpp)]
    power = None
    vendor = "generic-tiff"
    if tif.is_svs:
        vendor = "aperio"
        fields = slide_meta.aperio_fields(description)
        properties.update({f"aperio.{k}": v for k, v in fields.items()})
        candidates.append(("aperio", slide_meta.aperio_mpp(fields)))
        power = slide_meta.objective_from_fields(fields.get("AppMag"))
    elif tif.is_ome:
        vendor = "ome"
        ome_mpp, power = slide_meta.ome_calibration(tif.ome_metadata or "")
        candidates.append(("ome", ome_mpp))
    elif tif.is_ndpi:
        vendor = "hamamatsu"
        ndpi = tif.ndpi_tags or {}
        properties.update({f"hamamatsu.{k}": str(v) for k, v in ndpi.items() if isinstance(v, (int, float, str))})
        power = slide_meta.objective_from_fields(ndpi.get("Magnification"))
    candidates.append(("tiff-resolution", slide_meta.resolution_mpp(first.tags)))
    if description and "tiff.ImageDescription" not in properties:
        properties["tiff.ImageDescription"] = description[:2000]
    mpp, source = slide_meta.first_calibration(candidates)

    def loader(series) -> Callable[[], np.ndarray]:
        return lambda: to_rgb(series.asarray())

    associated = {role: loader(series) for role, series in slide_tiff.associated_images(tif).items()}
    return Slide(
        path,
        sources,
        calibration=slide_meta.Calibration(mpp, source, power),
        vendor=vendor,
        backend="tifffile",
        properties=properties,
        associated=associated,
        on_close=[tif.close, lambda: os.close(fd)],
    )


def _open_openslide(path: Path, user_mpp: tuple[float, float] | None) -> Slide:
    import openslide  # a backend loads when a slide of its kind opens

    from napari_care.core.slide.openslide_backend import (  # a backend loads when a slide of its kind opens
        OpenSlideLevelSource,
        composite_on_white,
    )

    osr = openslide.OpenSlide(str(path))
    properties = dict(osr.properties)
    candidates = [("user", user_mpp), ("openslide", slide_meta.openslide_mpp(properties))]
    mpp, source = slide_meta.first_calibration(candidates)
    power = slide_meta.objective_from_fields(properties.get("openslide.objective-power"))
    bounds = (int(properties.get("openslide.bounds-x", 0)), int(properties.get("openslide.bounds-y", 0)))

    def loader(name: str) -> Callable[[], np.ndarray]:
        return lambda: composite_on_white(np.asarray(osr.associated_images[name]))

    associated = {name: loader(name) for name in osr.associated_images if name in ("label", "macro", "thumbnail")}
    return Slide(
        path,
        [OpenSlideLevelSource(osr, level) for level in range(osr.level_count)],
        calibration=slide_meta.Calibration(mpp, source, power),
        vendor=properties.get("openslide.vendor", "unknown"),
        backend="openslide",
        properties=properties,
        associated=associated,
        on_close=[osr.close],
        bounds_offset=bounds,
    )
