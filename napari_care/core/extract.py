"""Patch feature extraction: tiles of a grid -> encoder -> :class:`PatchFeatures`.

A generator (yields :class:`Progress`, returns the features). Reader threads decode and cut
tiles ahead of the encoder (:mod:`napari_care.core.tile_reader`), so reading overlaps
computing. With a torch encoder on CUDA the batches are written straight into pinned host
buffers, a feed thread keeps a queue of ready batches, uploads are ``non_blocking`` and the
GPU runs one batch ahead of the host (:func:`_encode_on_device`). Features stream into one
preallocated array; a cache skips tiles encoded before.

A file tile that cannot be decoded costs only the patches that need it (``on_bad_tile=
"skip"``, the default: one warning per slide, and :attr:`PatchFeatures.skipped_patches`),
or fails the slide with its :class:`~napari_care.core.slide.levels.TileDecodeError`
(``on_bad_tile="raise"``). Garbage that still decodes (a flipped bit in a JPEG's entropy-coded
data) cannot be told from tissue and is not detected.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import warnings
from collections import deque
from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np

from napari_care.core.feature_cache import CacheKey, FeatureCache, cache_key
from napari_care.core.features import PatchFeatures
from napari_care.core.progress import Progress
from napari_care.core.slide.levels import SlideDataWarning
from napari_care.core.tile_reader import BAD_TILE_POLICIES, BadTilePolicy, SkippedPatches, iter_tile_batches
from napari_care.core.tiling import TileGrid

STAGE = "extract"

CancelSignal = threading.Event | Callable[[], bool] | None


class Cancelled(Exception):
    """Raised by a long-running generator after its cancel signal was set."""


def is_cancelled(cancel: CancelSignal) -> bool:
    """True when ``cancel`` (an Event or a callable returning bool) says stop."""
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _slide_name(slide) -> str:
    return Path(slide.path).name


def _encode(encoder, tiles: np.ndarray, slide, coords: np.ndarray) -> np.ndarray:
    """Encode one batch and check it: [b, D] float32 with finite values, or a ValueError."""
    try:
        features = encoder.encode(tiles)
    except FloatingPointError as error:  # the encoders' own NaN/inf check
        raise ValueError(f"slide {_slide_name(slide)}: {error}") from error
    return _checked(encoder, features, len(tiles), slide, coords)


def _checked(encoder, features, n_tiles: int, slide, coords: np.ndarray) -> np.ndarray:
    """``features`` as [b, D] float32 with finite values, or a ValueError naming the slide."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != n_tiles:
        raise ValueError(
            f"encoder {encoder.cfg.name!r} returned shape {features.shape} for {n_tiles} tiles; "
            "expected [B, D]"
        )
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        x, y = coords[np.flatnonzero(bad)[0]]
        raise ValueError(
            f"slide {_slide_name(slide)}: encoder {encoder.cfg.name!r} produced NaN/inf features for "
            f"{int(bad.sum())} of {n_tiles} tiles in a batch (first at level-0 x={x}, y={y})"
        )
    return features


READY_BATCHES = (
    3  # batches decoded and waiting for the device (pinned host memory: ~38 MB each at 256 x 224 px)
)
_END = object()  # the reader thread's last word


def _feeds_device(encoder) -> bool:
    """True for a torch encoder on a CUDA device: it gets the overlapped feed (:func:`_encode_on_device`)."""
    device = getattr(encoder, "device", None)
    return (
        getattr(device, "type", None) == "cuda"
        and callable(getattr(encoder, "preprocess", None))
        and callable(getattr(encoder, "forward_tensor", None))
    )


class _Failed:
    """An exception raised in the reader thread, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class BatchBufferPool:
    """Reusable host buffers for tile batches, pinned when the device is CUDA.

    The tile reader writes each batch straight into one (:meth:`take`, its
    ``allocate_batch``), so the upload to the GPU is one asynchronous DMA with no staging
    copy. A buffer goes back with the event of its upload (:meth:`give_back`) and is
    handed out again only once that event has completed.

    Parameters
    ----------
    shape
        ``(batch_size, tile_size_px, tile_size_px, 3)``.
    count
        Buffers in the pool.
    pin
        Page-locked memory (CUDA only).
    """

    def __init__(self, shape: tuple[int, int, int, int], count: int, *, pin: bool) -> None:
        import torch  # lazy: torch loads only when a model runs

        self._free: queue.Queue = queue.Queue()
        self._by_address: dict[int, object] = {}
        for _ in range(count):
            buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
            self._by_address[buffer.data_ptr()] = buffer
            self._free.put((buffer, None))

    def take(self) -> np.ndarray:
        """An empty buffer as a numpy array (waits for a free one whose upload is done)."""
        buffer, uploaded = self._free.get()
        if uploaded is not None:
            uploaded.synchronize()
        return buffer.numpy()

    def tensor_of(self, tiles: np.ndarray):
        """The pool's tensor under ``tiles`` (a leading slice of a buffer), or None if not from the pool."""
        buffer = self._by_address.get(tiles.ctypes.data) if tiles.size else None
        return None if buffer is None else buffer[: len(tiles)]

    def give_back(self, tiles: np.ndarray, uploaded) -> None:
        """Return the buffer under ``tiles``; ``uploaded``: an event set once it was read (None: already)."""
        buffer = self._by_address.get(tiles.ctypes.data) if tiles.size else None
        if buffer is not None:
            self._free.put((buffer, uploaded))


def _put_until(ready: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` on ``ready``, giving up when ``stop`` is set; True when it was put."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _read_ahead(batches, ready: queue.Queue, stop: threading.Event) -> None:
    """Reader thread: move batches from the tile reader onto ``ready``, then ``_END`` (or the error)."""
    try:
        for item in batches:
            if not _put_until(ready, item, stop):
                return
        _put_until(ready, _END, stop)
    except BaseException as error:  # carried to the consumer, which raises it
        _put_until(ready, _Failed(error), stop)
    finally:
        batches.close()  # in this thread: the generator runs here


def _encode_on_device(encoder, batches, slide, grid: TileGrid, cancel: CancelSignal, pool: BatchBufferPool):
    """Yield (rows, features) with decoding, uploads, the model and downloads all overlapped.

    A reader thread runs the tile reader (whose own threads decode file tiles) and keeps up
    to :data:`READY_BATCHES` batches ready, each in a pinned buffer of ``pool``. This thread
    only queues work on the device: the upload of batch i+1 (``non_blocking``), its
    normalisation and forward pass and the download of its features into pinned memory are
    queued before the host waits for batch i, so the device always has the next batch.
    """
    import torch  # lazy: torch loads only when a model runs

    cuda = encoder.device.type == "cuda"
    ready: queue.Queue = queue.Queue(maxsize=READY_BATCHES)
    stop = threading.Event()
    reader = threading.Thread(
        target=_read_ahead, args=(batches, ready, stop), name="napari-care-feed", daemon=True
    )
    reader.start()
    pending: deque = deque()
    try:
        while True:
            if is_cancelled(cancel):
                return
            item = ready.get()
            if item is _END:
                break
            if isinstance(item, _Failed):
                raise item.error
            rows, tiles = item
            # inference mode only while queueing: a generator must not leave it on across yields
            with torch.inference_mode():
                host_tiles = pool.tensor_of(tiles)
                if host_tiles is None:
                    host_tiles = torch.from_numpy(tiles)
                x = encoder.preprocess(host_tiles)  # non_blocking upload, resize, normalise
                uploaded = _record_event(torch, encoder.device) if cuda else None
                pool.give_back(tiles, uploaded)
                out = encoder.forward_tensor(x)
                host = torch.empty(out.shape, dtype=out.dtype, pin_memory=cuda)
                host.copy_(out, non_blocking=cuda)
                done = _record_event(torch, encoder.device) if cuda else None
            pending.append((rows, host, done))
            if len(pending) > 1:
                yield _finish(encoder, pending.popleft(), slide, grid)
        while pending:
            yield _finish(encoder, pending.popleft(), slide, grid)
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue, then let it close
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.05)
        reader.join()


def _record_event(torch, device):
    """A CUDA event recorded on ``device``'s current stream (the model's GPU, not the current one)."""
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


def _finish(encoder, pending, slide, grid: TileGrid) -> tuple[np.ndarray, np.ndarray]:
    """Wait for a queued batch and return its rows and checked features."""
    rows, host, done = pending
    if done is not None:
        done.synchronize()
    return rows, _checked(encoder, host.numpy(), len(rows), slide, grid.coords[rows])


def _encoded_batches(
    encoder, batches, slide, grid: TileGrid, cancel: CancelSignal, pool: BatchBufferPool | None = None
):
    """Yield (rows, features [b, D] float32) for each batch of tiles from the reader.

    With a ``pool`` (torch encoders on CUDA) the overlapped device feed runs; otherwise each
    batch goes through ``encoder.encode``. Stops before encoding another batch once
    ``cancel`` is set (the caller raises).
    """
    if pool is not None:
        yield from _encode_on_device(encoder, batches, slide, grid, cancel, pool)
        return
    for rows, tiles in batches:
        if is_cancelled(cancel):
            return
        yield rows, _encode(encoder, tiles, slide, grid.coords[rows])


def _batch_pool(encoder, batch_size: int, tile_size_px: int, n_tiles: int) -> BatchBufferPool | None:
    """The pinned buffers of the device feed (None when there is nothing to encode)."""
    if n_tiles == 0:
        return None
    # ready + the one being filled + the one being uploaded + a spare
    count = READY_BATCHES + 3
    cuda = getattr(encoder.device, "type", None) == "cuda"
    return BatchBufferPool((batch_size, tile_size_px, tile_size_px, 3), count, pin=cuda)


def _take_cached(
    cache: FeatureCache | None, key: CacheKey | None, grid: TileGrid, features: np.ndarray
) -> np.ndarray:
    """Fill ``features`` with cached rows; return the grid rows still to encode."""
    if cache is None or key is None or len(grid) == 0:
        return np.arange(len(grid), dtype=np.int64)
    found, cached = cache.lookup(key, grid.grid)
    if cached is None or not found.any():
        return np.arange(len(grid), dtype=np.int64)
    if cached.shape[1] != features.shape[1]:
        raise ValueError(
            f"cached features have {cached.shape[1]} dims, the encoder gives {features.shape[1]}"
        )
    features[found] = cached
    return np.flatnonzero(~found)


def _keep(
    cache: FeatureCache | None,
    key: CacheKey | None,
    grid: TileGrid,
    features: np.ndarray,
    encoded: list[np.ndarray],
    *,
    persist: bool,
) -> None:
    """Add the rows encoded in this run to the cache (to its file too with ``persist``)."""
    if cache is None or key is None or not encoded:
        return
    rows = np.concatenate(encoded)
    cache.store(key, grid.grid[rows], features[rows], persist=persist)


def extract_features(
    slide,
    grid: TileGrid,
    encoder,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    cache: FeatureCache | None = None,
    cancel: CancelSignal = None,
    on_bad_tile: BadTilePolicy = "skip",
) -> Generator[Progress, None, PatchFeatures]:
    """Encode every tile of ``grid``.

    Parameters
    ----------
    slide
        The slide the grid was laid on.
    grid
        Tiles to encode (see :func:`~napari_care.core.tiling.tile_grid`).
    encoder
        A patch encoder (``encode(uint8 [B, H, W, 3]) -> float32 [B, D]``, ``cfg.name``,
        ``embed_dim``).
    batch_size
        Tiles per encoder call.
    num_workers
        Reader threads (None: the machine's cores, at most 16).
    cache
        Features already computed for these tiles are taken from it; new ones are added.
    cancel
        A ``threading.Event`` or a callable; when set, the run stops within one batch and
        raises :class:`Cancelled` (nothing is written to disk).
    on_bad_tile
        What a file tile that cannot be decoded (corrupt, or past the end of a truncated
        file) does: ``"skip"`` leaves out the patches that need it, warns once for the
        slide (the tiles, the first error, the patches skipped) and counts them in
        :attr:`PatchFeatures.skipped_patches`; ``"raise"`` fails the slide with the
        tile's :class:`~napari_care.core.slide.levels.TileDecodeError`.

    Yields
    ------
    Progress
        ``stage="extract"``, tiles done of tiles total.

    Returns
    -------
    PatchFeatures
        One row per tile of ``grid``, in grid order, less the patches skipped over file
        tiles that cannot be decoded (their number is ``skipped_patches``).

    Raises
    ------
    Cancelled
        When ``cancel`` was set.
    TileDecodeError
        With ``on_bad_tile="raise"``, when a file tile under a patch cannot be decoded
        (the message names the file, level, tile (column, row) and level-0 box).
    ValueError
        When the encoder returns NaN/inf (the message names the slide and the tile count).
    """
    if on_bad_tile not in BAD_TILE_POLICIES:
        raise ValueError(f"on_bad_tile must be one of {BAD_TILE_POLICIES}, got {on_bad_tile!r}")
    total = len(grid)
    features = np.zeros((total, int(encoder.embed_dim)), dtype=np.float32)
    key = cache_key(slide, grid, encoder) if cache is not None else None
    todo = _take_cached(cache, key, grid, features)
    done = total - len(todo)
    name = _slide_name(slide)
    yield Progress(STAGE, done, total, f"{name}: {done} of {total} tiles cached")

    encoded: list[np.ndarray] = []
    skipped = SkippedPatches()
    pool = _batch_pool(encoder, batch_size, grid.tile_size_px, len(todo)) if _feeds_device(encoder) else None
    batches = iter_tile_batches(
        slide,
        grid,
        todo,
        batch_size=batch_size,
        num_workers=num_workers,
        on_bad_tile=on_bad_tile,
        skipped=skipped,
        allocate_batch=pool.take if pool is not None else None,
    )
    results = _encoded_batches(encoder, batches, slide, grid, cancel, pool)
    try:
        for rows, batch_features in results:
            if is_cancelled(cancel):
                raise Cancelled(f"extraction of {name} cancelled after {done} of {total} tiles")
            features[rows] = batch_features
            encoded.append(rows)
            done += len(rows)
            yield Progress(STAGE, done, total, f"{name}: {done} of {total} tiles")
        if is_cancelled(cancel):
            raise Cancelled(f"extraction of {name} cancelled after {done} of {total} tiles")
    except Cancelled:
        _keep(cache, key, grid, features, encoded, persist=False)  # a re-run resumes; no file
        raise
    finally:
        results.close()
        batches.close()  # stops the reader threads at once on cancel or error

    _keep(cache, key, grid, features, encoded, persist=True)
    coords = grid.coords.copy()
    if skipped.count:
        # the bar reaches its end: skipped patches are done with, not pending
        yield Progress(STAGE, total, total, f"{name}: {done} of {total} tiles, {skipped.count} skipped")
        warnings.warn(skipped.summary(name), SlideDataWarning, stacklevel=2)
        kept = np.ones(total, dtype=bool)
        kept[skipped.all_rows] = False
        features, coords = features[kept], coords[kept]
    return PatchFeatures(
        features=features,
        coords=coords,
        patch_size_px=grid.tile_size_px,
        patch_size_level0=grid.tile_size_level0,
        mpp=grid.target_mpp,
        encoder=encoder.cfg.name,
        slide_id=Path(slide.path).stem,
        stride_level0=grid.stride_level0,
        encoded_count=int(sum(len(rows) for rows in encoded)),
        skipped_patches=skipped.count,
    )
