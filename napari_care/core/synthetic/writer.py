"""Stream a painted slide into a pyramidal, tiled, JPEG-compressed OME-TIFF.

Level 0 is never held in memory: tiles are painted in a thread pool a couple of tile rows
ahead and fed to tifffile's tile iterator, which compresses them on its own threads. Each
tile's 2x2 mean goes straight into level 1; smaller levels are halved from the level above.
Levels are SubIFDs of the first page, as in the OME-TIFF pyramid convention; the OME XML
and the TIFF resolution tags carry the pixel size.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tifffile

from napari_care.core.atomic import atomic_path
from napari_care.core.pixels import block_mean
from napari_care.core.progress import Progress
from napari_care.core.synthetic.render import half_size

MIN_LEVEL_SIDE_PX = 1024  # stop halving once the smaller side is at most this


class _Cancelled(Exception):
    """The consumer stopped the build; the writer thread unwinds and the temp file goes."""


def level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """(width, height) of every pyramid level: halve until the smaller side is <= 1024 px."""
    sizes = [(width, height)]
    while min(sizes[-1]) > MIN_LEVEL_SIDE_PX:
        w, h = sizes[-1]
        sizes.append((math.ceil(w / 2), math.ceil(h / 2)))
    return sizes


def write_pyramid(
    path: str | os.PathLike[str],
    render: Callable[[int, int, int], np.ndarray],
    *,
    width: int,
    height: int,
    mpp: float,
    tile_size: int,
    jpeg_quality: int,
    workers: int,
    uuid: str,
) -> Generator[Progress, None, None]:
    """Write the slide painted by ``render(x0, y0, size)`` to ``path`` atomically, yielding progress.

    Parameters
    ----------
    path
        Target file; written to a temporary name first.
    render
        Returns the level-0 tile ``[size, size, 3]`` uint8 with top-left pixel (x0, y0);
        called from several threads at once.
    width, height
        Level-0 size in pixels.
    mpp
        Micrometres per level-0 pixel.
    tile_size
        Tile side in pixels (a multiple of 16, for JPEG's 2x2 chroma subsampling).
    jpeg_quality
        JPEG quality, 1..100.
    workers
        Threads for painting and for compressing.
    uuid
        The OME UUID; derived from the build arguments, it keeps the file byte-identical
        from one build to the next.
    """
    sizes = level_sizes(width, height)
    tile_rows = math.ceil(height / tile_size)
    total = tile_rows + len(sizes) - 1
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def tiles(level1: np.ndarray | None) -> Iterator[np.ndarray]:
        tile_cols = math.ceil(width / tile_size)
        order = iter([(tx, ty) for ty in range(tile_rows) for tx in range(tile_cols)])
        half = tile_size // 2

        def paint(tx: int, ty: int) -> tuple[int, int, np.ndarray, np.ndarray | None]:
            tile = render(tx * tile_size, ty * tile_size, tile_size)
            return tx, ty, tile, (half_size(tile) if level1 is not None else None)

        with ThreadPoolExecutor(workers) as pool:
            pending = deque(
                pool.submit(paint, *xy) for _, xy in zip(range(2 * tile_cols), order, strict=False)
            )
            while pending:
                tx, ty, tile, small = pending.popleft().result()
                next_xy = next(order, None)
                if next_xy is not None:
                    pending.append(pool.submit(paint, *next_xy))
                if stop.is_set():
                    raise _Cancelled
                if level1 is not None:
                    y0, x0 = ty * half, tx * half
                    block = level1[y0 : y0 + half, x0 : x0 + half]
                    block[...] = small[: block.shape[0], : block.shape[1]]
                yield tile
                if tx == tile_cols - 1:
                    events.put(("progress", ty + 1, f"level 0: tile row {ty + 1} of {tile_rows}"))

    def write() -> None:
        options = dict(
            photometric="rgb",
            tile=(tile_size, tile_size),
            compression="jpeg",
            compressionargs={"level": jpeg_quality},
            resolutionunit="CENTIMETER",
            maxworkers=workers,
        )
        level1 = np.empty((sizes[1][1], sizes[1][0], 3), np.uint8) if len(sizes) > 1 else None
        metadata = {
            "axes": "YXS",
            "Name": "napari_care synthetic H&E",
            "UUID": uuid,
            "PhysicalSizeX": mpp,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": mpp,
            "PhysicalSizeYUnit": "µm",
        }
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
            tif.write(
                tiles(level1),
                shape=(height, width, 3),
                dtype=np.uint8,
                subifds=len(sizes) - 1,
                resolution=(1e4 / mpp, 1e4 / mpp),
                metadata=metadata,
                software="napari_care synthetic",
                **options,
            )
            image = level1
            for level in range(1, len(sizes)):
                if level > 1:
                    image = half_size(image)
                if stop.is_set():
                    raise _Cancelled
                scale = 2**level
                tif.write(
                    image, subfiletype=1, resolution=(1e4 / (mpp * scale), 1e4 / (mpp * scale)), **options
                )
                events.put(("progress", tile_rows + level, f"level {level} of {len(sizes) - 1}"))

    yield from _written_in_thread(write, events, stop, total, "synthetic-slide-writer")


def _written_in_thread(
    write: Callable[[], None], events: queue.Queue, stop: threading.Event, total: int, name: str
) -> Generator[Progress, None, None]:
    """Run ``write`` in a thread and yield the ``("progress", done, message)`` events it puts.

    An error in ``write`` is raised here, in the consumer's thread; closing the generator
    sets ``stop`` (which ``write`` checks between tiles) and waits for the thread.
    """

    def run() -> None:
        try:
            write()
            events.put(("done", total, "written"))
        except BaseException as error:  # handed to the consumer's thread
            events.put(("error", 0, error))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, done, message = events.get()
            if kind == "error":
                raise message
            yield Progress("pyramid", done, total, message)
            if kind == "done":
                return
    finally:
        stop.set()
        thread.join()


# --- Aperio SVS pyramids at 4x steps, from pre-encoded JPEG tiles -------------------------------

APERIO_SOFTWARE = "Aperio Image Library v12.0.15 (napari_care synthetic)"
THUMBNAIL_WIDTH_PX = 768


def fourfold_level_sizes(width: int, height: int, min_side_px: int = 2048) -> list[tuple[int, int]]:
    """(width, height) of every level at 4x steps, until the smaller side is at most ``min_side_px``."""
    sizes = [(width, height)]
    while min(sizes[-1]) > min_side_px:
        w, h = sizes[-1]
        sizes.append((math.ceil(w / 4), math.ceil(h / 4)))
    return sizes


def encode_jpeg_tile(tile: np.ndarray, quality: int) -> bytes:
    """One RGB tile as a complete JPEG (YCbCr 4:2:0), as tifffile itself would compress it."""
    import imagecodecs  # tifffile's codec library; loaded with the writer, not the package

    return imagecodecs.jpeg_encode(
        tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
    )


def aperio_description(
    width: int, height: int, tile_size: int, quality: int, mpp: float, app_mag: float, level_size=None
) -> str:
    """The ImageDescription of an Aperio SVS page: a header line, then ``key = value`` fields."""
    header = f"{APERIO_SOFTWARE}\r\n{width}x{height} [0,0 {width}x{height}] ({tile_size}x{tile_size})"
    if level_size is not None:
        header += f" -> {level_size[0]}x{level_size[1]}"
    fields = {"AppMag": f"{app_mag:g}", "MPP": f"{mpp:.4f}", "Title": "napari_care gigapixel benchmark"}
    return f"{header} JPEG/RGB Q={quality}|" + "|".join(f"{k} = {v}" for k, v in fields.items())


class _FourfoldLevel:
    """Tiles of one reduced level, made from 64-px blocks of the level above and kept encoded."""

    def __init__(self, size: tuple[int, int], tile_size: int, below: _FourfoldLevel | None, quality: int):
        self.width, self.height = size
        self.tile_size, self.quality, self.below = tile_size, quality, below
        self.tiles_x = math.ceil(self.width / tile_size)
        self.encoded: list[bytes] = []
        self.smallest: np.ndarray | None = None  # the pixels, kept only for the last level
        self._rows = np.full((tile_size, self.tiles_x * tile_size, 3), 255, np.uint8)
        self._filled = 0  # rows of the buffer holding data

    def add_blocks(self, blocks: list[np.ndarray]) -> None:
        """Add one tile row of the level above, as its tiles' quarter-size blocks (left to right)."""
        block = self.tile_size // 4
        y0 = self._filled
        for index, pixels in enumerate(blocks):
            self._rows[y0 : y0 + block, index * block : (index + 1) * block] = pixels
        self._filled += block
        if self._filled == self.tile_size:
            self.flush()

    def flush(self) -> None:
        """Encode the buffered tile row (a partial one at the bottom edge) and pass it down."""
        if not self._filled:
            return
        size = self.tile_size
        tiles = [np.ascontiguousarray(self._rows[:, i * size : (i + 1) * size]) for i in range(self.tiles_x)]
        self.encoded.extend(encode_jpeg_tile(tile, self.quality) for tile in tiles)
        if self.below is not None:
            self.below.add_blocks([block_mean(tile, 4) for tile in tiles])
        else:
            row = self._rows[: self._filled, : self.width].copy()
            self.smallest = row if self.smallest is None else np.concatenate([self.smallest, row])
        self._rows[...] = 255
        self._filled = 0

    def finish(self) -> None:
        """Flush this level's last row, then the levels below."""
        self.flush()
        if self.below is not None:
            self.below.finish()


def write_svs_pair(
    svs_path: str | os.PathLike[str],
    tiff_path: str | os.PathLike[str],
    render_tile: Callable[[int, int], np.ndarray],
    *,
    width: int,
    height: int,
    mpp: float,
    app_mag: float,
    tile_size: int = 256,
    jpeg_quality: int = 80,
    min_level_side_px: int = 2048,
    workers: int = 2,
) -> Generator[Progress, None, list[tuple[int, int]]]:
    """Stream a slide into an Aperio SVS and a generic pyramidal TIFF with the same JPEG tiles.

    Level 0 is painted, encoded and written tile row by tile row and never held in memory;
    each tile's 4x4 mean goes into the next level's one-tile-row buffer, so every reduced
    level is built from the level above row by row and kept only as encoded tiles (1/16 of
    the level above). The SVS has Aperio's layout: level 0, a stripped thumbnail, then the
    reduced levels, each page with an Aperio description (``MPP``, ``AppMag``). The TIFF holds
    the very same tile bytes (level 0 copied from the SVS), reduced levels as reduced-resolution
    pages and the pixel size in its resolution tags. Both files are written atomically.

    Parameters
    ----------
    svs_path, tiff_path
        The two files.
    render_tile
        ``render_tile(tx, ty)`` returns level-0 tile (tx, ty) ``[tile_size, tile_size, 3]`` uint8
        (pixels past the slide's edge are cut by readers); called from ``workers`` threads.
    width, height
        Level-0 size in pixels.
    mpp, app_mag
        Micrometres per level-0 pixel and the objective power written to the SVS.
    tile_size
        Tile side, a multiple of 64 (4x steps and JPEG's 4:2:0 blocks).
    jpeg_quality
        JPEG quality, 1..100.
    min_level_side_px
        Stop adding levels once the smaller side is at most this.
    workers
        Threads painting and encoding level-0 tiles.

    Returns
    -------
    list of (int, int)
        (width, height) of every level.
    """
    if tile_size % 64:
        raise ValueError(f"tile_size must be a multiple of 64 for 4x levels; got {tile_size}")
    sizes = fourfold_level_sizes(width, height, min_level_side_px)
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    reduced: _FourfoldLevel | None = None
    for size in reversed(sizes[1:]):
        reduced = _FourfoldLevel(size, tile_size, reduced, jpeg_quality)
    levels: list[_FourfoldLevel] = []
    level = reduced
    while level is not None:
        levels.append(level)
        level = level.below
    total = tiles_y + 2
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    common = dict(photometric="rgb", compression="jpeg", subsampling=(2, 2), tile=(tile_size, tile_size))

    def paint(tx: int, ty: int) -> tuple[bytes, np.ndarray]:
        tile = render_tile(tx, ty)
        return encode_jpeg_tile(tile, jpeg_quality), block_mean(tile, 4)

    def level0_bytes() -> Iterator[bytes]:
        with ThreadPoolExecutor(workers) as pool:
            for ty in range(tiles_y):
                if stop.is_set():
                    raise _Cancelled
                done = list(pool.map(lambda tx, ty=ty: paint(tx, ty), range(tiles_x)))
                if reduced is not None:
                    reduced.add_blocks([small for _, small in done])
                    if ty == tiles_y - 1:  # before the last tiles: tifffile stops asking after them
                        reduced.finish()
                yield from (encoded for encoded, _ in done)
                events.put(("progress", ty + 1, f"level 0: tile row {ty + 1} of {tiles_y}"))

    def thumbnail() -> np.ndarray:
        smallest = levels[-1].smallest if levels else None
        if smallest is None:  # a one-level slide: no pixels kept, a plain glass thumbnail
            return np.full(
                (max(1, THUMBNAIL_WIDTH_PX * height // width), THUMBNAIL_WIDTH_PX, 3), 255, np.uint8
            )
        step = max(1, smallest.shape[1] // THUMBNAIL_WIDTH_PX)
        return np.ascontiguousarray(smallest[::step, ::step])

    def write() -> None:
        import tifffile  # lazy: only the slide builders need the writer

        with atomic_path(svs_path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as svs:
            svs.write(
                level0_bytes(),
                shape=(height, width, 3),
                dtype=np.uint8,
                description=aperio_description(width, height, tile_size, jpeg_quality, mpp, app_mag),
                metadata=None,
                **common,
            )
            thumb = thumbnail()
            svs.write(
                thumb,
                photometric="rgb",
                description=aperio_description(
                    width, height, tile_size, jpeg_quality, mpp, app_mag, (thumb.shape[1], thumb.shape[0])
                ),
                metadata=None,
            )
            for size, level in zip(sizes[1:], levels, strict=True):
                svs.write(
                    iter(level.encoded),
                    shape=(size[1], size[0], 3),
                    dtype=np.uint8,
                    description=aperio_description(
                        width, height, tile_size, jpeg_quality, mpp, app_mag, size
                    ),
                    metadata=None,
                    **common,
                )
        events.put(("progress", tiles_y + 1, "generic TIFF: copying the tiles"))
        with tifffile.TiffFile(svs_path) as source:
            page = source.pages[0]
            offsets, counts = page.dataoffsets, page.databytecounts
            fd = os.open(svs_path, os.O_RDONLY)
            try:
                copied = (os.pread(fd, count, offset) for offset, count in zip(offsets, counts, strict=True))
                with atomic_path(tiff_path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
                    tif.write(
                        copied,
                        shape=(height, width, 3),
                        dtype=np.uint8,
                        resolution=(1e4 / mpp, 1e4 / mpp),
                        resolutionunit="CENTIMETER",
                        metadata=None,
                        **common,
                    )
                    for index, (size, level) in enumerate(zip(sizes[1:], levels, strict=True), start=1):
                        scale = 4**index
                        tif.write(
                            iter(level.encoded),
                            shape=(size[1], size[0], 3),
                            dtype=np.uint8,
                            subfiletype=1,
                            resolution=(1e4 / (mpp * scale), 1e4 / (mpp * scale)),
                            resolutionunit="CENTIMETER",
                            metadata=None,
                            **common,
                        )
            finally:
                os.close(fd)

    yield from _written_in_thread(write, events, stop, total, "svs-pair-writer")
    return sizes
