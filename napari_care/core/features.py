"""Patch features of a slide and their HDF5 files in the TRIDENT / CLAM layout.

A file holds the datasets ``features`` [N, D] float32 and ``coords`` [N, 2] (level-0 x, y of
each patch's top-left corner). This module writes the attributes both tools read (on the
file and on ``coords``) and reads what either tool writes: TRIDENT files with features
[1, N, D] or [N, D] and ``coords`` attributes ``patch_size`` / ``patch_size_level0`` /
``level0_magnification`` / ``target_magnification``; CLAM files with ``coords`` attributes
``patch_level`` / ``patch_size`` (/ ``downsample``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_care.core.atomic import atomic_path
from napari_care.core.tiling import MPP_AT_10X

SETTINGS_ATTRIBUTE = "napari_care_settings"  # JSON text: the settings of the run that wrote the file


@dataclass
class PatchFeatures:
    """Features of the patches of one slide (or of a part of it).

    Parameters
    ----------
    features
        [N, D] float32, one row per patch.
    coords
        [N, 2] int64, level-0 (x, y) of each patch's top-left corner.
    patch_size_px
        Patch side at the target resolution (e.g. 224 or 512).
    patch_size_level0
        Patch side in level-0 pixels (e.g. 448.0 for 224 px at 10x on a 20x slide).
    mpp
        Micrometres per pixel of the patches, None when they were given by level/downsample
        on an uncalibrated slide.
    encoder
        Name of the patch encoder.
    slide_id
        Name of the slide (usually the file stem).
    stride_level0
        Distance between neighbouring patches in level-0 pixels; None means
        ``patch_size_level0`` (patches without overlap).
    encoded_count
        Patches the run that made these features encoded (the rest came from a cache);
        None for features read from a file.
    skipped_patches
        Patches of the grid the run left out because a file tile under them could not be
        decoded (see ``on_bad_tile`` of :func:`~napari_care.core.extract.extract_features`);
        None for features read from a file.
    """

    features: np.ndarray
    coords: np.ndarray
    patch_size_px: int
    patch_size_level0: float
    mpp: float | None
    encoder: str
    slide_id: str = ""
    stride_level0: float | None = None
    encoded_count: int | None = field(default=None, compare=False)
    skipped_patches: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32)
        self.coords = np.asarray(self.coords).astype(np.int64, copy=False).reshape(-1, 2)
        if self.features.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {self.features.shape}")
        if len(self.features) != len(self.coords):
            raise ValueError(f"{len(self.features)} feature rows but {len(self.coords)} coords")
        if self.patch_size_px <= 0 or self.patch_size_level0 <= 0:
            raise ValueError(
                f"patch sizes must be positive, got {self.patch_size_px} px / "
                f"{self.patch_size_level0} level-0 px"
            )
        self.patch_size_px = int(self.patch_size_px)
        self.patch_size_level0 = float(self.patch_size_level0)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def embed_dim(self) -> int:
        """Feature length D."""
        return int(self.features.shape[1])

    @property
    def magnification(self) -> float | None:
        """Objective magnification of the patches (10 / mpp), None when mpp is unknown."""
        return None if self.mpp is None else 10.0 * MPP_AT_10X / self.mpp

    @property
    def grid(self) -> np.ndarray:
        """[N, 2] int64 patch-grid indices (gx, gy) = round(coords / stride)."""
        stride = self.stride_level0 or self.patch_size_level0
        return np.rint(self.coords / stride).astype(np.int64)


def _plain(value: float) -> int | float:
    """An int where the value is whole (readers that call int() on attributes stay happy)."""
    return int(value) if float(value).is_integer() else float(value)


class _WriteGuard:
    """A binary file for h5py that keeps the first write error to itself.

    HDF5 that fails to write (a full disk) while it closes a file leaves it half open, and
    the process crashes when h5py collects the object later. Behind this guard every write
    seems to succeed, HDF5 closes cleanly, and :func:`create_hdf5` raises the error then.
    """

    def __init__(self, raw) -> None:
        self.raw = raw
        self.error: OSError | None = None

    def _guarded(self, action, *args, done=None):
        if self.error is None:
            try:
                return action(*args)
            except OSError as error:
                self.error = error
        return done

    def write(self, data) -> int:
        return self._guarded(self.raw.write, data, done=memoryview(data).nbytes)

    def truncate(self, size: int | None = None) -> int:
        return self._guarded(self.raw.truncate, size, done=size)

    def flush(self) -> None:
        self._guarded(self.raw.flush)

    def readinto(self, buffer) -> int:
        return self.raw.readinto(buffer)

    def read(self, size: int = -1) -> bytes:
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


@contextlib.contextmanager
def create_hdf5(path: str | os.PathLike[str]) -> Iterator[Any]:
    """A new HDF5 file (h5py ``File``) at ``path``, whose write errors come out as one OSError.

    A full disk while HDF5 writes the file, its datasets or the metadata it flushes on close
    raises ``OSError(ENOSPC, ..., path)`` once the file is closed, never a crash. Not atomic:
    write a temporary (:func:`~napari_care.core.atomic.atomic_path`).
    """
    import h5py  # h5py loads only for feature files

    with open(path, "w+b") as raw:
        guard = _WriteGuard(raw)
        try:
            with h5py.File(guard, "w") as f:
                yield f
        except Exception:
            if guard.error is None:
                raise
        guard.flush()
        if guard.error is not None:
            error = guard.error
            raise OSError(error.errno, error.strerror or str(error), os.fspath(path)) from error


def settings_text(settings: Mapping[str, Any]) -> str:
    """``settings`` as the JSON text of the :data:`SETTINGS_ATTRIBUTE` attribute."""
    return json.dumps(dict(settings), sort_keys=False)


def save_features(
    path: str | os.PathLike[str], pf: PatchFeatures, *, settings: Mapping[str, Any] | None = None
) -> Path:
    """Write ``pf`` to an HDF5 file (TRIDENT/CLAM layout), atomically.

    Parameters
    ----------
    path
        Target ``.h5`` file; its folder is created.
    pf
        The features to write.
    settings
        The settings of the run that made them, stored as JSON in the file attribute
        :data:`SETTINGS_ATTRIBUTE` (a rerun compares them); None stores none.

    Returns
    -------
    The path written.

    Raises
    ------
    OSError
        When the file cannot be written (a full disk: errno ENOSPC); the target is unchanged.
    """
    path = Path(path)
    stride = pf.stride_level0 or pf.patch_size_level0
    overlap_px = round(pf.patch_size_px * (1.0 - stride / pf.patch_size_level0))
    common = {"patch_size": pf.patch_size_px, "patch_size_level0": _plain(pf.patch_size_level0)}
    with atomic_path(path) as tmp, create_hdf5(tmp) as f:
        f.create_dataset("features", data=pf.features)
        coords = f.create_dataset("coords", data=pf.coords)
        f.attrs.update(common)
        f.attrs.update({"encoder": pf.encoder, "slide_id": pf.slide_id, "stride_level0": _plain(stride)})
        if settings is not None:
            f.attrs[SETTINGS_ATTRIBUTE] = settings_text(settings)
        coords.attrs.update(common)
        coords.attrs.update({"overlap": overlap_px, "name": pf.slide_id})
        f["features"].attrs["name"] = pf.slide_id
        if pf.mpp is not None:
            target_mag = 10.0 * MPP_AT_10X / pf.mpp
            f.attrs.update({"mpp": pf.mpp, "magnification": target_mag})
            coords.attrs.update(
                {
                    "target_magnification": _plain(target_mag),
                    "level0_magnification": _plain(target_mag * pf.patch_size_level0 / pf.patch_size_px),
                }
            )
    return path


def _attr_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _attr_text(value.item())
    return str(value)


def _attr_float(attrs: dict, name: str) -> float | None:
    value = attrs.get(name)
    if value is None:
        return None
    value = np.asarray(value, dtype=np.float64).ravel()
    return float(value[0]) if value.size and np.isfinite(value[0]) and value[0] > 0 else None


def _squeeze_rows(array: np.ndarray, last: int | None, what: str, path: Path) -> np.ndarray:
    """[1, N, X] or [N, X] -> [N, X]; anything else is an error naming the file."""
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or (last is not None and array.shape[1] != last):
        expected = "[N, 2]" if last == 2 else "[N, D]"
        raise ValueError(f"{path}: '{what}' has shape {array.shape}, expected {expected} (or [1, N, ...])")
    return array


def _grid_spacing(coords: np.ndarray) -> float | None:
    """Smallest positive distance between patch corners along x or y (the grid stride)."""
    steps = np.concatenate([np.diff(np.unique(coords[:, axis])) for axis in (0, 1)])
    positive = steps[steps > 0]
    return float(positive.min()) if positive.size else None


def _patch_size_level0(attrs: dict, coords: np.ndarray, patch_size: int, path: Path) -> float:
    """Level-0 patch side from TRIDENT or CLAM attributes, or from the coords' spacing."""
    size0 = _attr_float(attrs, "patch_size_level0")
    if size0:
        return size0
    level0_mag, target_mag = (
        _attr_float(attrs, "level0_magnification"),
        _attr_float(attrs, "target_magnification"),
    )
    if level0_mag and target_mag:
        return patch_size * level0_mag / target_mag
    if "patch_level" in attrs:  # CLAM: patch_size is in pixels of level `patch_level`
        downsample = _attr_float(attrs, "downsample")
        if downsample:
            return patch_size * downsample
        if int(np.asarray(attrs["patch_level"]).ravel()[0]) == 0:
            return float(patch_size)
    spacing = _grid_spacing(coords)
    if spacing:
        return spacing
    raise ValueError(
        f"{path}: cannot tell the patch size in level-0 pixels (no patch_size_level0, "
        "magnification or CLAM downsample attributes, and too few patches to infer it)"
    )


def open_hdf5(path: Path, kind: str):
    """``path`` opened read-only with h5py; errors name the file and say it is not a readable ``kind``."""
    import h5py  # h5py loads only for feature files

    if not path.is_file():
        raise FileNotFoundError(f"{kind} not found: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not a readable HDF5 {kind} ({error})") from error


def load_features(path: str | os.PathLike[str]) -> PatchFeatures:
    """Read patch features written by this package, TRIDENT or CLAM.

    Parameters
    ----------
    path
        An ``.h5`` file with datasets ``features`` and ``coords``.

    Returns
    -------
    PatchFeatures

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When datasets are missing or misshaped, the patch size is unknown, or features hold
        NaN or infinite values.
    """
    path = Path(path)
    with open_hdf5(path, "feature file") as f:
        missing = [name for name in ("features", "coords") if name not in f]
        if missing:
            raise ValueError(f"{path}: missing dataset(s) {missing}; found {sorted(f.keys())}")
        features = _squeeze_rows(np.asarray(f["features"][()]), None, "features", path)
        coords = _squeeze_rows(np.asarray(f["coords"][()]), 2, "coords", path)
        # file attributes first, then TRIDENT's per-dataset ones, which describe the patches
        attrs = {**dict(f["features"].attrs), **dict(f.attrs), **dict(f["coords"].attrs)}
    if len(features) != len(coords):
        raise ValueError(f"{path}: {len(features)} feature rows but {len(coords)} coords")
    bad = int((~np.isfinite(features)).any(axis=1).sum())
    if bad:
        raise ValueError(f"{path}: {bad} of {len(features)} patches have NaN or infinite features")
    patch_size = _attr_float(attrs, "patch_size")
    if patch_size is None:
        raise ValueError(f"{path}: no 'patch_size' attribute on the file or on 'coords'")
    patch_size0 = _patch_size_level0(attrs, coords, int(patch_size), path)
    mpp = _attr_float(attrs, "mpp")
    target_mag = _attr_float(attrs, "target_magnification") or _attr_float(attrs, "magnification")
    if mpp is None and target_mag:
        mpp = 10.0 * MPP_AT_10X / target_mag
    encoder = _attr_text(attrs["encoder"]) if "encoder" in attrs else ""
    if not encoder and path.parent.name.startswith("features_"):
        encoder = path.parent.name.removeprefix("features_")  # TRIDENT: <job>/20x_512px/features_<encoder>/
    slide_id = next((_attr_text(attrs[k]) for k in ("slide_id", "name") if attrs.get(k) is not None), "")
    overlap = _attr_float(attrs, "overlap")
    stride = _attr_float(attrs, "stride_level0")
    if stride is None and overlap:
        stride = patch_size0 * (1.0 - overlap / patch_size)
    return PatchFeatures(
        features=features,
        coords=coords,
        patch_size_px=int(patch_size),
        patch_size_level0=patch_size0,
        mpp=mpp,
        encoder=encoder,
        slide_id=slide_id or path.stem,
        stride_level0=stride,
    )
