"""Patch feature extraction: tiles of a grid -> encoder -> :class:`PatchFeatures`.

A generator (yields :class:`Progress`, returns the features). Reader threads decode and cut
tiles ahead of the encoder (:mod:`napari_care.core.tile_reader`), so reading overlaps
computing; with a torch encoder on CUDA the GPU also runs one batch ahead of the host
(:func:`_encode_ahead`); features stream into one preallocated array; a cache skips tiles
encoded before.

A file tile that cannot be decoded costs only the patches that need it (``on_bad_tile=
"skip"``, the default: one warning per slide, and :attr:`PatchFeatures.skipped_patches`),
or fails the slide with its :class:`~napari_care.core.slide.levels.TileDecodeError`
(``on_bad_tile="raise"``). Garbage that still decodes (a flipped bit in a JPEG's entropy-coded
data) cannot be told from tissue and is not detected.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np

from napari_care.core.feature_cache import CacheKey, FeatureCache, cache_key
from napari_care.core.features import PatchFeatures
from napari_care.core.progress import Progress
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


def _on_cuda(encoder) -> bool:
    """True for a torch encoder whose model runs on a CUDA device (see :func:`_encode_ahead`)."""
    device = getattr(encoder, "device", None)
    return (
        getattr(device, "type", None) == "cuda"
        and callable(getattr(encoder, "preprocess", None))
        and callable(getattr(encoder, "forward_tensor", None))
    )


def _encode_ahead(encoder, batches, slide, grid: TileGrid, cancel: CancelSignal):
    """Yield (rows, features) with the GPU one batch ahead of the host.

    ``encode()`` waits for each batch's result before the next batch is sent, so the GPU
    idles while the host copies tiles and checks features. Here batch i+1 is queued
    (pinned upload, model, download into pinned memory, an event) before the host waits
    for batch i, so the device always has work queued.
    """
    import torch  # torch loads only when a model runs

    pending = None
    for rows, tiles in batches:
        if is_cancelled(cancel):
            return
        # inference mode only while queueing: a generator must not leave it on across yields
        with torch.inference_mode():
            pinned = torch.from_numpy(tiles).pin_memory()
            out = encoder.forward_tensor(encoder.preprocess(pinned))
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=True)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(encoder.device))  # the model's GPU, not the current one
        if pending is not None:
            yield _finish(encoder, pending, slide, grid)
        pending = (rows, host, done, pinned)  # pinned stays alive until its upload is done
    if pending is not None:
        yield _finish(encoder, pending, slide, grid)


def _finish(encoder, pending, slide, grid: TileGrid) -> tuple[np.ndarray, np.ndarray]:
    """Wait for a queued batch and return its rows and checked features."""
    rows, host, done, _ = pending
    done.synchronize()
    return rows, _checked(encoder, host.numpy(), len(rows), slide, grid.coords[rows])


def _encoded_batches(encoder, batches, slide, grid: TileGrid, cancel: CancelSignal):
    """Yield (rows, features [b, D] float32) for each batch of tiles from the reader.

    Stops before encoding another batch once ``cancel`` is set (the caller raises).
    """
    if _on_cuda(encoder):
        yield from _encode_ahead(encoder, batches, slide, grid, cancel)
        return
    for rows, tiles in batches:
        if is_cancelled(cancel):
            return
        yield rows, _encode(encoder, tiles, slide, grid.coords[rows])


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
    batches = iter_tile_batches(
        slide,
        grid,
        todo,
        batch_size=batch_size,
        num_workers=num_workers,
        on_bad_tile=on_bad_tile,
        skipped=skipped,
    )
    results = _encoded_batches(encoder, batches, slide, grid, cancel)
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
        warnings.warn(skipped.summary(name), UserWarning, stacklevel=2)
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
