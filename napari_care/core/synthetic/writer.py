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

    def run() -> None:
        try:
            write()
            events.put(("done", total, ""))
        except BaseException as error:  # handed to the consumer's thread
            events.put(("error", 0, error))

    thread = threading.Thread(target=run, name="synthetic-slide-writer", daemon=True)
    thread.start()
    try:
        while True:
            kind, done, message = events.get()
            if kind == "error":
                raise message
            yield Progress("pyramid", done, total, message or "written")
            if kind == "done":
                return
    finally:
        stop.set()
        thread.join()
