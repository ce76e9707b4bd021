"""Where patch feature files live: this package's layout, TRIDENT's and CLAM's.

Three layouts hold the patch features of a slide ``<stem>``:

* napari_care: ``<out>/<stem>.features.h5``;
* TRIDENT: ``<job>/<magnification>x_<size>px_<overlap>px_overlap/features_<encoder>/<stem>.h5``
  (the encoder by TRIDENT's name, e.g. ``conch_v15``);
* CLAM: ``<out>/h5_files/<stem>.h5`` (features and coords) and ``<out>/pt_files/<stem>.pt``
  (the same features as a torch tensor, without coords).

:func:`features_path` says where a run writes them, :func:`find_feature_files` finds them in
a file or folder a user points at.

>>> features_path("out", "slide", "conch_v1_5", "trident")
PosixPath('out/features_conch_v15/slide.h5')
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from napari_care.core.encoders import get_encoder_cfg
from napari_care.core.encoders.presets import ALIASES

FEATURES_SUFFIX = ".features.h5"
FEATURE_FILE_SUFFIXES = (".h5", ".hdf5", ".pt")  # HDF5 (TRIDENT, CLAM, ours) and CLAM's torch files
LAYOUTS = ("napari_care", "trident")  # <stem>.features.h5, features_<encoder>/<stem>.h5
TRIDENT_PREFIX = "features_"
#: Files of a folder that are other outputs of a run, never patch features.
NOT_PATCH_FEATURES = (".slide_features.h5", ".mixmag.h5")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def trident_encoder_name(encoder: str) -> str:
    """The name TRIDENT gives encoder ``encoder`` (its folder ``features_<name>``).

    TRIDENT's spelling where it has one (``conch_v1_5`` -> ``conch_v15``), else the canonical
    name; characters a folder name should not hold (the ``:`` of ``timm:resnet18``) become ``_``.
    """
    try:
        canonical = get_encoder_cfg(encoder).name
    except KeyError:
        canonical = encoder
    trident = {name: alias for alias, name in ALIASES.items()}.get(canonical, canonical)
    return _UNSAFE.sub("_", trident)


def features_path(
    out_dir: str | os.PathLike[str], stem: str, encoder: str = "default", layout: str = "napari_care"
) -> Path:
    """Where a run writes the patch features of slide ``stem``.

    Parameters
    ----------
    out_dir
        The output folder (for TRIDENT's layout: the job's folder).
    stem
        The slide's name.
    encoder
        The patch encoder (TRIDENT's layout names its folder after it).
    layout
        ``"napari_care"`` (``<stem>.features.h5``) or ``"trident"`` (``features_<encoder>/<stem>.h5``).

    Raises
    ------
    ValueError
        For another layout.
    """
    if layout == "napari_care":
        return Path(out_dir) / f"{stem}{FEATURES_SUFFIX}"
    if layout == "trident":
        return Path(out_dir) / f"{TRIDENT_PREFIX}{trident_encoder_name(encoder)}" / f"{stem}.h5"
    raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")


def feature_file_stem(path: str | os.PathLike[str]) -> str:
    """The slide name of a feature file: its name less ``.h5`` (``.hdf5``, ``.pt``) and ``.features``
    (``A.features.h5`` and ``A.h5`` are both slide ``A``)."""
    name = Path(path).name
    for suffix in FEATURE_FILE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return name.removesuffix(".features") or name


def _is_patch_features(path: Path) -> bool:
    return (
        path.is_file()
        and path.suffix.lower() in FEATURE_FILE_SUFFIXES
        and not path.name.startswith(".")
        and not path.name.endswith(NOT_PATCH_FEATURES)
    )


def _by_stem(files: list[Path], where: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(files):
        stem = feature_file_stem(path)
        if stem in found:
            raise ValueError(
                f"{where}: two feature files of slide {stem!r} ({found[stem].name}, {path.name}); keep one"
            )
        found[stem] = path
    return found


def _trident_folders(folder: Path) -> list[Path]:
    """``features_<encoder>/`` folders at ``folder`` or one level below (a TRIDENT job's patching folders)."""
    folders = [p for p in folder.glob(f"{TRIDENT_PREFIX}*") if p.is_dir()]
    folders += [p for p in folder.glob(f"*/{TRIDENT_PREFIX}*") if p.is_dir()]
    return sorted(folders)


def _pick_trident_folder(folder: Path, folders: list[Path], encoder: str | None) -> Path:
    if encoder is not None:
        wanted = {encoder, trident_encoder_name(encoder)}
        try:
            wanted.add(get_encoder_cfg(encoder).name)
        except KeyError:
            pass
        chosen = [p for p in folders if p.name.removeprefix(TRIDENT_PREFIX) in wanted]
        if not chosen:
            have = ", ".join(p.relative_to(folder).as_posix() for p in folders)
            raise ValueError(f"{folder}: no features of encoder {encoder!r} (found {have})")
        folders = chosen
    if len(folders) > 1:
        have = ", ".join(p.relative_to(folder).as_posix() for p in folders)
        raise ValueError(
            f"{folder}: features of several encoders or patchings ({have}); pick one with --encoder"
        )
    return folders[0]


def find_feature_files(source: str | os.PathLike[str], *, encoder: str | None = None) -> dict[str, Path]:
    """The patch feature files at ``source``, by slide name.

    Parameters
    ----------
    source
        A feature file (``.h5`` or CLAM's ``.pt``), or a folder: a TRIDENT job or patching
        folder (its ``features_<encoder>/``, found at most two levels down), a
        ``features_<encoder>/`` folder itself, a CLAM folder (``h5_files/``, which hold the
        coords, else ``pt_files/``), or a folder of feature files.
    encoder
        The encoder whose ``features_<encoder>/`` to take when a TRIDENT job holds several
        (any spelling: TRIDENT's or the registry's); ignored for other layouts.

    Returns
    -------
    dict
        Slide name (:func:`feature_file_stem`) -> file, in name order; empty when the folder
        holds none.

    Raises
    ------
    FileNotFoundError
        When ``source`` does not exist.
    ValueError
        When a TRIDENT job holds several feature folders and ``encoder`` does not pick one,
        or two files have the same slide name.
    """
    source = Path(source)
    if source.is_file():
        return {feature_file_stem(source): source}
    if not source.is_dir():
        raise FileNotFoundError(f"feature file or folder not found: {source}")
    if source.name.startswith(TRIDENT_PREFIX):
        folder = source
    elif folders := _trident_folders(source):
        folder = _pick_trident_folder(source, folders, encoder)
    elif (source / "h5_files").is_dir():
        folder = source / "h5_files"  # CLAM: the h5 files hold features and coords
    elif (source / "pt_files").is_dir():
        folder = source / "pt_files"
    else:
        folder = source
    return _by_stem([p for p in folder.iterdir() if _is_patch_features(p)], folder)
