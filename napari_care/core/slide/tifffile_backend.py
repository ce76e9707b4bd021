"""The tifffile backend: SVS, generic and pyramidal TIFF, OME-TIFF, NDPI.

Tiles are read with ``os.pread`` (no shared file position, so no lock) and decoded by
tifffile's own per-page decoder (imagecodecs underneath: JPEG, JPEG 2000, LZW, ...), which
releases the GIL, so several threads decode at once.

A tile the decoder rejects, or whose bytes lie past the end of a truncated file, raises
:class:`~napari_care.core.slide.levels.TileDecodeError` naming the file, level, tile and
level-0 box; a truncated file is also reported once, in words, when it opens.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_care.core.slide import meta as slide_meta
from napari_care.core.slide.backends import SlideBackend, SlideParts, register_backend
from napari_care.core.slide.levels import (
    WHITE,
    BadTileLog,
    SlideDataWarning,
    TileDecodeError,
    tile_box_level0,
    to_rgb,
)

if TYPE_CHECKING:  # tifffile itself loads when a slide of its kind opens
    import tifffile

TIFF_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi")
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
JPEG_COMPRESSIONS = {6, 7, 33007, 34892}
ASSOCIATED_NAMES = ("label", "macro", "thumbnail")
STRIP_BLOCK_ROWS = 256  # strips are grouped into blocks of about this many rows


class UnsupportedTiff(ValueError):
    """The file is a TIFF, but not one this backend shows as an RGB slide."""


class TiffPageSource:
    """Tiles of one TIFF page (a pyramid level), decoded one by one.

    Parameters
    ----------
    page
        The level's first page (tifffile).
    fd
        An open read-only file descriptor of the file.
    path
        The file, for error messages.
    level
        The level's index in the pyramid, for error messages.
    downsample_xy
        Level-0 pixels per pixel of this level along x and y (for the level-0 box of a
        tile in error messages).
    file_size
        Size of the file in bytes; tiles whose bytes lie past it are reported as
        truncated instead of being handed to the decoder. None: the file's size now.
    bad_tiles
        The slide's log of tiles that cannot be decoded, shared by its levels.
    """

    def __init__(
        self,
        page: tifffile.TiffPage,
        fd: int,
        *,
        path: str | os.PathLike[str] | None = None,
        level: int = 0,
        downsample_xy: tuple[float, float] = (1.0, 1.0),
        file_size: int | None = None,
        bad_tiles: BadTileLog | None = None,
    ) -> None:
        keyframe = page.keyframe
        if keyframe.dtype != np.uint8:
            raise UnsupportedTiff(f"pixels are {keyframe.dtype}, not 8-bit RGB")
        if keyframe.samplesperpixel not in (1, 3, 4) or keyframe.planarconfig != 1:
            raise UnsupportedTiff(
                f"{keyframe.samplesperpixel} samples per pixel in planar configuration "
                f"{keyframe.planarconfig} are not an RGB image"
            )
        self.fd = fd
        self.path = None if path is None else Path(path)
        self.level = int(level)
        self.downsample_xy = (float(downsample_xy[0]), float(downsample_xy[1]))
        self.file_size = os.fstat(fd).st_size if file_size is None else int(file_size)
        self.bad_tiles = (
            bad_tiles if bad_tiles is not None else BadTileLog(self.path.name if self.path else "")
        )
        self.height, self.width = int(keyframe.imagelength), int(keyframe.imagewidth)
        self.tiled = bool(keyframe.is_tiled)
        self.offsets = page.dataoffsets
        self.bytecounts = page.databytecounts
        self._decode = keyframe.decode
        self._decode_args: dict = {}
        if keyframe.compression in JPEG_COMPRESSIONS:
            self._decode_args = {"jpegtables": page.jpegtables, "jpegheader": keyframe.jpegheader}
        if self.tiled:
            self.tile_height, self.tile_width = int(keyframe.tilelength), int(keyframe.tilewidth)
            self._tiles_x = math.ceil(self.width / self.tile_width)
        else:
            self.rows_per_strip = min(int(keyframe.rowsperstrip), self.height)
            self.strips_per_tile = max(1, STRIP_BLOCK_ROWS // self.rows_per_strip)
            self.tile_height = min(self.rows_per_strip * self.strips_per_tile, self.height)
            self.tile_width = self.width

    @property
    def data_end(self) -> int:
        """Byte just past the last tile (or strip) of this level: the size the file needs."""
        ends = np.asarray(self.offsets, dtype=np.int64) + np.asarray(self.bytecounts, dtype=np.int64)
        return int(ends.max(initial=0))

    def tiles_past_end(self) -> int:
        """Tiles (or strips) of this level whose bytes lie past the end of the file."""
        ends = np.asarray(self.offsets, dtype=np.int64) + np.asarray(self.bytecounts, dtype=np.int64)
        return int(np.count_nonzero(ends > self.file_size))

    def _error(self, ty: int, tx: int, reason: str) -> TileDecodeError:
        box = tile_box_level0(
            ty, tx, (self.tile_height, self.tile_width), (self.height, self.width), self.downsample_xy
        )
        return TileDecodeError(self.path, self.level, (tx, ty), box, reason)

    def _segment(self, index: int, fullsize: bool, ty: int, tx: int) -> np.ndarray | None:
        count = int(self.bytecounts[index])
        offset = int(self.offsets[index])
        if count and offset + count > self.file_size:
            raise self._error(
                ty,
                tx,
                f"file is truncated at {self.file_size} bytes; the tile's bytes "
                f"{offset}..{offset + count} lie past the end",
            )
        data = read_at(self.fd, count, offset) if count else None
        try:
            pixels, _, _ = self._decode(data, index, _fullsize=fullsize, **self._decode_args)
        except Exception as error:  # the codecs raise their own types (JpegError, zlib.error, ...)
            raise self._error(ty, tx, str(error) or type(error).__name__) from error
        return None if pixels is None else to_rgb(pixels[0])

    def decode_tile(self, ty: int, tx: int) -> np.ndarray:
        """Decode tile (ty, tx); strips are grouped into tiles of whole strips.

        Raises
        ------
        TileDecodeError
            When the decoder rejects the tile's bytes or they lie past the end of the file.
        """
        shape = (self.tile_height, self.tile_width, 3)
        if self.tiled:
            pixels = self._segment(ty * self._tiles_x + tx, True, ty, tx)
            whole = pixels is not None and pixels.shape == shape and pixels.dtype == np.uint8
            if whole and pixels.flags.c_contiguous:
                return pixels  # the decoder's own array: no white fill and copy per tile
            out = np.full(shape, WHITE, dtype=np.uint8)
            if pixels is not None:
                out[...] = pixels[: self.tile_height, : self.tile_width]
            return out
        out = np.full(shape, WHITE, dtype=np.uint8)
        first = ty * self.strips_per_tile
        last = min(first + self.strips_per_tile, len(self.offsets))
        for strip in range(first, last):
            pixels = self._segment(strip, False, ty, tx)
            if pixels is not None:
                row = (strip - first) * self.rows_per_strip
                out[row : row + pixels.shape[0], : pixels.shape[1]] = pixels
        return out


class _TifffileLog(logging.Handler):
    """tifffile's log lines while a file opens, kept to be said in our words (not printed raw)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_log() -> Iterator[_TifffileLog]:
    logger = logging.getLogger("tifffile")
    handler, propagate = _TifffileLog(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def offsets_past_end(lines: list[str], size: int) -> list[int]:
    """The byte offsets past ``size`` that tifffile's log lines name (image directories or tag
    values it could not reach): the file was cut."""
    numbers = (int(n) for line in lines for n in re.findall(r"(?<![\w.])(\d{4,})(?![\w.])", line))
    return sorted({n for n in numbers if n > size})


def warn_if_truncated(path: Path, sources: list[TiffPageSource], log_lines: list[str]) -> None:
    """Warn once, in words, when the file ends before data it refers to: tiles of its pyramid,
    or other directories and tag values that tifffile's log lines name.

    tifffile's own log lines are easily missed and say nothing of the consequences; they are
    kept off stderr and said here.
    """
    size = sources[0].file_size if sources else os.path.getsize(path)
    tiles_end = max((source.data_end for source in sources), default=0)
    referenced = offsets_past_end(log_lines, size)
    needed = max([tiles_end, *referenced])
    if needed > size:
        past = sum(source.tiles_past_end() for source in sources)
        total = sum(len(source.offsets) for source in sources)
        if past:
            lost = f"{past} of {total} file tiles lie past the end and are skipped (shown grey in the viewer)"
        else:
            lost = "the pyramid's tiles are all there"
        other = "; other data past the end (label, macro, metadata) is lost" if referenced else ""
        warnings.warn(
            f"{path.name} is truncated: {size:,} bytes of at least {needed:,}; {lost}{other}",
            SlideDataWarning,
            stacklevel=3,
        )
    elif log_lines:
        warnings.warn(
            f"{path.name}: part of the file could not be read ({log_lines[0]})",
            SlideDataWarning,
            stacklevel=3,
        )


def _is_downsample_of(shape: tuple[int, ...], base: tuple[int, ...]) -> bool:
    """True when ``shape`` is a smaller (h, w) with the aspect ratio of ``base`` (1% or 2 px)."""
    h, w = shape[:2]
    bh, bw = base[:2]
    if h >= bh or w >= bw or h < 1 or w < 1:
        return False
    scale = bw / w
    return abs(bh / scale - h) <= max(2.0, 0.01 * h)


def _series_role(series: tifffile.TiffPageSeries) -> str | None:
    """'label', 'macro' or 'thumbnail' when a series is an associated image."""
    name = (series.name or "").lower()
    for role in ASSOCIATED_NAMES:
        if role in name:
            return role
    return None


def pyramid_pages(tif: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    """The pages that make the main pyramid, largest first.

    tifffile's first series with its levels (SubIFDs, SVS, NDPI, OME); for generic files
    that store reduced levels as separate pages, those pages are collected too.
    """
    main = tif.series[0]
    pages = [level.pages[0] for level in main.levels]
    if len(pages) == 1 and not (tif.is_svs or tif.is_ndpi or tif.is_ome):
        for series in tif.series[1:]:
            page = series.pages[0] if series.pages else None
            if (
                page is not None
                and _series_role(series) is None
                and page.samplesperpixel == pages[0].samplesperpixel
                and _is_downsample_of(page.shape, pages[-1].shape)
            ):
                pages.append(page)
    return pages


def associated_images(tif: tifffile.TiffFile) -> dict[str, tifffile.TiffPageSeries]:
    """Label, macro and thumbnail series by role, where the file has them."""
    found: dict[str, tifffile.TiffPageSeries] = {}
    for series in tif.series[1:]:
        role = _series_role(series)
        if role is not None and role not in found:
            found[role] = series
    return found


def open_fd(path: Path) -> int:
    """Open ``path`` for positional reads."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))


_seek_lock = threading.Lock()


def read_at(fd: int, count: int, offset: int) -> bytes:
    """Read ``count`` bytes at ``offset`` without a shared file position where possible."""
    if hasattr(os, "pread"):
        return os.pread(fd, count, offset)
    with _seek_lock:  # Windows has no pread
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, count)


def is_tiff(path: Path) -> bool:
    """True when ``path`` is a file that starts like a TIFF (or BigTIFF)."""
    if path.is_dir():
        return False
    with open(path, "rb") as handle:
        return handle.read(4) in TIFF_MAGIC


def _page_sources(path: Path, pages: list) -> tuple[int, list[TiffPageSource]]:
    """One tile source per pyramid page, and the file descriptor they share (closed on error)."""
    fd = open_fd(path)
    try:
        size = os.fstat(fd).st_size  # once per slide: tiles past it are reported as truncated
        log = BadTileLog(path.name)
        base = pages[0]
        return fd, [
            TiffPageSource(
                page,
                fd,
                path=path,
                level=index,
                downsample_xy=(
                    base.keyframe.imagewidth / page.keyframe.imagewidth,
                    base.keyframe.imagelength / page.keyframe.imagelength,
                ),
                file_size=size,
                bad_tiles=log,
            )
            for index, page in enumerate(pages)
        ]
    except Exception:
        os.close(fd)
        raise


def open_tiff(path: Path, user_mpp: tuple[float, float] | None) -> SlideParts:
    """Read a TIFF-family slide's levels, calibration and associated images.

    Parameters
    ----------
    path
        The file.
    user_mpp
        (x, y) micrometres per pixel given by the user, ahead of what the file says.

    Returns
    -------
    SlideParts

    Raises
    ------
    UnsupportedTiff
        When the file is not a TIFF, or not one this backend shows as an RGB slide.
    """
    import tifffile  # a backend loads when a slide of its kind opens

    if not is_tiff(path):
        raise UnsupportedTiff("not a TIFF file")
    with _tifffile_log() as tifffile_log:  # its lines are said once, in words, below
        tif = tifffile.TiffFile(path)
        try:
            if tif.is_philips or tif.is_scn or tif.is_bif:
                raise UnsupportedTiff("a vendor TIFF that OpenSlide reads more faithfully")
            file_size = os.path.getsize(path)
            if not tif.series:
                past = offsets_past_end(tifffile_log.lines, file_size)
                if past:
                    raise UnsupportedTiff(
                        f"the file is truncated: it ends at byte {file_size:,} but its first image "
                        f"starts at byte {past[0]:,}"
                    )
                raise UnsupportedTiff("no images in the file")
            pages = pyramid_pages(tif)
            fd, sources = _page_sources(path, pages)
        except Exception:
            tif.close()
            raise
    warn_if_truncated(path, sources, tifffile_log.lines)
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
        properties.update(
            {f"hamamatsu.{k}": str(v) for k, v in ndpi.items() if isinstance(v, (int, float, str))}
        )
        power = slide_meta.objective_from_fields(ndpi.get("Magnification"))
    candidates.append(("tiff-resolution", slide_meta.resolution_mpp(first.tags)))
    if description and "tiff.ImageDescription" not in properties:
        properties["tiff.ImageDescription"] = description[:2000]
    mpp, source = slide_meta.first_calibration(candidates)

    def loader(series) -> Callable[[], np.ndarray]:
        return lambda: to_rgb(series.asarray())

    return SlideParts(
        sources,
        calibration=slide_meta.Calibration(mpp, source, power),
        vendor=vendor,
        properties=properties,
        associated={role: loader(series) for role, series in associated_images(tif).items()},
        on_close=[tif.close, lambda: os.close(fd)],
    )


# first for its suffixes when the file is a TIFF, and for any other TIFF OpenSlide does not claim
register_backend(SlideBackend("tifffile", TIFF_SUFFIXES, open_tiff, sniff=is_tiff, rank=20, label="tiff"))
