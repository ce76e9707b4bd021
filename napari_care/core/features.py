"""Patch features of a slide and their HDF5 files in the TRIDENT / CLAM layout.

A file holds the datasets ``features`` [N, D] float32 and ``coords`` [N, 2] (level-0 x, y of
each patch's top-left corner). This module writes the attributes both tools read (on the
file and on ``coords``) and reads what either tool writes: TRIDENT files with features
[1, N, D] or [N, D] and ``coords`` attributes ``patch_size`` / ``patch_size_level0`` /
``level0_magnification`` / ``target_magnification``; CLAM files with ``coords`` attributes
``patch_level`` / ``patch_size`` (/ ``downsample``), or none at all (the patch size is then the
coords' spacing); and CLAM's ``pt_files/<slide>.pt`` (the features as a torch tensor), whose
coords are in ``h5_files/<slide>.h5`` beside it. A file without patches (TRIDENT writes one for
a slide without tissue) raises :class:`EmptyFeaturesError`. Where the files go and how to find
them: :mod:`napari_care.core.feature_files`.
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


class EmptyFeaturesError(ValueError):
    """A feature file without patches (TRIDENT writes one for a slide without tissue)."""


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
    """Write ``pf`` to an HDF5 file with the attributes TRIDENT and CLAM read, atomically.

    On ``coords``: TRIDENT's ``patch_size``, ``patch_size_level0``, ``level0_magnification``,
    ``target_magnification``, ``overlap`` and ``name``, and CLAM's ``patch_level`` (0: the
    coords and sizes are of level 0) and ``custom_downsample`` (level-0 pixels per patch pixel),
    which CLAM's and TRIDENT's legacy re-extraction read; on ``features`` TRIDENT's ``name``
    and ``encoder``; on the file this package's own (``encoder``, ``slide_id``, ``mpp``,
    ``stride_level0``, the run's settings).

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
    downsample = pf.patch_size_level0 / pf.patch_size_px
    with atomic_path(path) as tmp, create_hdf5(tmp) as f:
        f.create_dataset("features", data=pf.features)
        coords = f.create_dataset("coords", data=pf.coords)
        f.attrs.update(common)
        f.attrs.update({"encoder": pf.encoder, "slide_id": pf.slide_id, "stride_level0": _plain(stride)})
        if settings is not None:
            f.attrs[SETTINGS_ATTRIBUTE] = settings_text(settings)
        coords.attrs.update(common)
        coords.attrs.update(
            {
                "overlap": overlap_px,
                "name": pf.slide_id,
                "patch_level": 0,
                "custom_downsample": _plain(round(downsample, 6)),
            }
        )
        f["features"].attrs.update({"name": pf.slide_id, "encoder": pf.encoder})
        if pf.mpp is not None:
            target_mag = 10.0 * MPP_AT_10X / pf.mpp
            f.attrs.update({"mpp": pf.mpp, "magnification": target_mag})
            coords.attrs.update(
                {
                    "target_magnification": _plain(target_mag),
                    "level0_magnification": _plain(target_mag * downsample),
                }
            )
    return path


def attr_text(value: object) -> str:
    """An HDF5 attribute (bytes, a one-element array, a number) as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return attr_text(value.item())
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


def coords_spacing(coords: np.ndarray, path: Path) -> float:
    """The patch side of a grid of patches without overlap, from their corners alone (CLAM writes
    no attributes): the one step between neighbouring corners along x and y.

    Raises
    ------
    ValueError
        When the spacing is ambiguous: fewer than two columns and two rows, another step
        along x than along y, or corners off a grid of that step (overlapping patches).
    """
    steps = []
    for axis in (0, 1):
        positions = np.unique(coords[:, axis])
        gaps = np.diff(positions)
        steps.append(float(gaps.min()) if gaps.size else None)
    known = [step for step in steps if step is not None]
    problem = None
    if not known:
        problem = f"{len(coords)} patch(es) in one place"
    elif len(known) == 2 and abs(known[0] - known[1]) > 0.5:
        problem = f"the step is {known[0]:g} px along x but {known[1]:g} px along y"
    else:
        step = min(known)
        offsets = (coords - coords.min(axis=0)) / step
        if np.abs(offsets - np.rint(offsets)).max() > 0.01:
            problem = f"the corners are not on a grid of step {step:g} px (irregular corners)"
    if problem:
        raise ValueError(
            f"{path}: the file records no patch size (CLAM writes none) and the coords' spacing "
            f"does not tell it: {problem}; give the patch size (--patch-size)"
        )
    return min(known)


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
        custom = _attr_float(attrs, "custom_downsample")
        if downsample:
            return patch_size * downsample * (custom or 1.0)
        if int(np.asarray(attrs["patch_level"]).ravel()[0]) == 0:
            return patch_size * (custom or 1.0)
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


def _numeric(dataset, what: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(dataset[()], dtype=np.float64 if what == "coords" else np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: '{what}' is not numeric ({error})") from None


def _read_h5(path: Path, *, need_features: bool = True) -> tuple[np.ndarray | None, np.ndarray, dict]:
    """Features (None when not needed), coords and the merged attributes of an HDF5 feature file."""
    with open_hdf5(path, "feature file") as f:
        wanted = ("features", "coords") if need_features else ("coords",)
        missing = [name for name in wanted if name not in f]
        if missing:
            raise ValueError(f"{path}: missing dataset(s) {missing}; found {sorted(f.keys())}")
        features = _numeric(f["features"], "features", path) if need_features else None
        coords = _numeric(f["coords"], "coords", path)
        # file attributes first, then TRIDENT's per-dataset ones, which describe the patches
        feature_attrs = dict(f["features"].attrs) if "features" in f else {}
        attrs = {**feature_attrs, **dict(f.attrs), **dict(f["coords"].attrs)}
    return features, coords, attrs


def _read_pt(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """CLAM's ``pt_files/<slide>.pt`` features with the coords of ``h5_files/<slide>.h5`` beside it."""
    import torch  # lazy: only CLAM's .pt files need it

    coords_file = path.parent.parent / "h5_files" / f"{path.stem}.h5"
    if not coords_file.is_file():
        raise ValueError(
            f"{path}: a CLAM .pt file holds no coords; expected them in {coords_file} "
            "(CLAM's h5_files/ beside pt_files/)"
        )
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a corrupt or foreign file
        raise ValueError(
            f"{path}: not a readable torch feature file ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(tensor, torch.Tensor | np.ndarray):
        raise ValueError(
            f"{path}: holds a {type(tensor).__name__}, expected a tensor of patch features [N, D]"
        )
    features = np.asarray(tensor.float().numpy() if isinstance(tensor, torch.Tensor) else tensor, np.float32)
    _, coords, attrs = _read_h5(coords_file, need_features=False)
    return features, coords, attrs


def load_features(path: str | os.PathLike[str], *, patch_size_px: int | None = None) -> PatchFeatures:
    """Read patch features written by this package, TRIDENT or CLAM.

    Parameters
    ----------
    path
        An ``.h5`` file with datasets ``features`` and ``coords``, or CLAM's
        ``pt_files/<slide>.pt`` (its coords are read from ``h5_files/<slide>.h5``).
    patch_size_px
        The patch side in pixels, for files that record none (CLAM's); it also overrides a
        recorded one. Without it, a file without a patch size takes the coords' spacing
        (patches read at level 0, :func:`coords_spacing`).

    Returns
    -------
    PatchFeatures

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    EmptyFeaturesError
        When the file holds no patches (TRIDENT's file of a slide without tissue).
    ValueError
        When datasets are missing, misshaped or not numeric, the patch size is unknown or
        ambiguous, or features hold NaN or infinite values.
    """
    path = Path(path)
    if patch_size_px is not None and (int(patch_size_px) != patch_size_px or patch_size_px <= 0):
        raise ValueError(
            f"{path}: the patch size must be a positive whole number of pixels, got {patch_size_px}"
        )
    features, coords, attrs = _read_pt(path) if path.suffix == ".pt" else _read_h5(path)
    if features.size == 0 or coords.size == 0:
        raise EmptyFeaturesError(f"{path}: no patches (a slide without tissue)")
    features = _squeeze_rows(features, None, "features", path)
    coords = _squeeze_rows(coords, 2, "coords", path)
    if len(features) != len(coords):
        raise ValueError(f"{path}: {len(features)} feature rows but {len(coords)} coords")
    bad = int((~np.isfinite(features)).any(axis=1).sum())
    if bad:
        raise ValueError(f"{path}: {bad} of {len(features)} patches have NaN or infinite features")
    if not np.isfinite(coords).all():
        raise ValueError(f"{path}: the coords hold NaN or infinite values")
    recorded_size = _attr_float(attrs, "patch_size")
    if patch_size_px is not None and recorded_size is not None:  # the given side over the file's
        patch_size = int(patch_size_px)
        patch_size0 = _patch_size_level0(attrs, coords, patch_size, path)
    elif patch_size_px is not None:  # CLAM without attributes: the spacing is the level-0 side
        patch_size = int(patch_size_px)
        patch_size0 = coords_spacing(coords, path) if len(coords) > 1 else float(patch_size)
    elif recorded_size is not None:
        patch_size = int(recorded_size)
        patch_size0 = _patch_size_level0(attrs, coords, patch_size, path)
    else:  # CLAM without attributes: patches read at level 0, side = the coords' spacing
        patch_size0 = coords_spacing(coords, path)
        patch_size = round(patch_size0)
    mpp = _attr_float(attrs, "mpp")
    target_mag = _attr_float(attrs, "target_magnification") or _attr_float(attrs, "magnification")
    if mpp is None and target_mag:
        mpp = 10.0 * MPP_AT_10X / target_mag
    encoder = attr_text(attrs["encoder"]) if attrs.get("encoder") is not None else ""
    folder = path.parent.name
    if not encoder and folder.startswith("features_"):
        encoder = folder.removeprefix("features_")  # TRIDENT: <job>/20x_512px/features_<encoder>/
    slide_id = next((attr_text(attrs[k]) for k in ("slide_id", "name") if attrs.get(k) is not None), "")
    overlap = _attr_float(attrs, "overlap")
    stride = _attr_float(attrs, "stride_level0")
    if stride is None and overlap:
        stride = patch_size0 * (1.0 - overlap / patch_size)
    return PatchFeatures(
        features=features,
        coords=np.rint(coords),
        patch_size_px=patch_size,
        patch_size_level0=patch_size0,
        mpp=mpp,
        encoder=encoder,
        slide_id=slide_id or path.stem.removesuffix(".features"),
        stride_level0=stride,
    )
