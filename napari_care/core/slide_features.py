"""Slide embeddings as files: ``<stem>.slide_features.h5``, the layout TRIDENT uses for slide features.

A file holds the dataset ``features``, the [D] float32 embedding of one slide, and the
attributes ``slide_encoder`` (what made it: CARE's training-free mode, a checkpoint, the
authors' model), ``patch_encoder`` (the encoder of the patch features it came from) and
``name`` (the slide), on the file and on ``features`` as TRIDENT puts them. TRIDENT's own
slide feature files (``slide_features_<encoder>/<slide>.h5``, ``features`` [D] with
``coords``) read the same way, so ``evaluate`` takes a folder of either.

>>> save_slide_features("out/slide.slide_features.h5", embedding, slide_encoder="CARE (training-free)",
...                     patch_encoder="conch_v1_5")  # doctest: +SKIP
>>> load_slide_features("out/slide.slide_features.h5").embedding.shape  # doctest: +SKIP
(512,)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_care.core.atomic import atomic_path
from napari_care.core.features import (
    SETTINGS_ATTRIBUTE,
    EmptyFeaturesError,
    attr_text,
    create_hdf5,
    open_hdf5,
    settings_text,
)

SLIDE_FEATURES_SUFFIX = ".slide_features.h5"


@dataclass(frozen=True)
class SlideEmbedding:
    """The embedding of one slide, read from a file.

    Attributes
    ----------
    embedding
        [D] float32.
    name
        The slide's name (the ``name`` attribute, else the file's stem).
    slide_encoder, patch_encoder
        What made the embedding and its patch features ("" when the file does not say).
    path
        The file.
    """

    embedding: np.ndarray
    name: str
    slide_encoder: str
    patch_encoder: str
    path: Path


def slide_features_path(out_dir: str | os.PathLike[str], stem: str) -> Path:
    """Where a run writes the slide embedding of slide ``stem``: ``<out_dir>/<stem>.slide_features.h5``."""
    return Path(out_dir) / f"{stem}{SLIDE_FEATURES_SUFFIX}"


def slide_features_stem(path: str | os.PathLike[str]) -> str:
    """The slide name of a slide feature file: its name less ``.slide_features.h5`` (or ``.h5``)."""
    name = Path(path).name
    for suffix in (SLIDE_FEATURES_SUFFIX, ".h5"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def save_slide_features(
    path: str | os.PathLike[str],
    embedding: np.ndarray,
    *,
    slide_encoder: str,
    patch_encoder: str,
    name: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write one slide's embedding, atomically.

    Parameters
    ----------
    path
        The target ``.h5`` file; its folder is created.
    embedding
        The slide embedding, any shape holding D values (stored as [D] float32).
    slide_encoder, patch_encoder
        What made the embedding and its patch features.
    name
        The slide's name (default: the file's slide name, :func:`slide_features_stem`).
    settings
        The settings of the run, stored as JSON text (:data:`~napari_care.core.features.SETTINGS_ATTRIBUTE`).

    Returns
    -------
    The path written.

    Raises
    ------
    ValueError
        When the embedding is empty or holds NaN or infinite values.
    OSError
        When the file cannot be written; the target is unchanged.
    """
    path = Path(path)
    vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if vector.size == 0 or not np.isfinite(vector).all():
        raise ValueError(f"{path}: the slide embedding is empty or not finite; nothing written")
    attributes = {
        "name": name if name is not None else slide_features_stem(path),
        "slide_encoder": slide_encoder,
        "patch_encoder": patch_encoder,
    }
    with atomic_path(path) as tmp, create_hdf5(tmp) as f:
        dataset = f.create_dataset("features", data=vector)
        dataset.attrs.update(attributes)
        f.attrs.update(attributes)
        if settings is not None:
            f.attrs[SETTINGS_ATTRIBUTE] = settings_text(settings)
    return path


def load_slide_features(path: str | os.PathLike[str]) -> SlideEmbedding:
    """Read a slide embedding written by :func:`save_slide_features` or by TRIDENT.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    EmptyFeaturesError
        When the embedding is empty (TRIDENT writes such files for slides without tissue).
    ValueError
        When the file is not HDF5, has no ``features`` dataset, holds more than one vector
        (patch features, not a slide's) or values that are not finite.
    """
    path = Path(path)
    with open_hdf5(path, "slide feature file") as f:
        if "features" not in f:
            raise ValueError(f"{path}: no 'features' dataset; found {sorted(f.keys())}")
        try:
            array = np.asarray(f["features"][()], dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: 'features' is not numeric ({error})") from None
        attrs = {**dict(f.attrs), **dict(f["features"].attrs)}
    if array.size == 0:
        raise EmptyFeaturesError(f"{path}: the slide embedding is empty (a slide without tissue)")
    if array.ndim > 1 and sum(side > 1 for side in array.shape) > 1:
        raise ValueError(
            f"{path}: 'features' has shape {array.shape}: patch features, not one slide's embedding [D]"
        )
    vector = array.reshape(-1)
    if not np.isfinite(vector).all():
        raise ValueError(f"{path}: the slide embedding holds NaN or infinite values")
    return SlideEmbedding(
        embedding=vector,
        name=attr_text(attrs["name"]) if attrs.get("name") is not None else slide_features_stem(path),
        slide_encoder=attr_text(attrs.get("slide_encoder", "")),
        patch_encoder=attr_text(attrs.get("patch_encoder", "")),
        path=path,
    )


def find_slide_features(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """The slide feature files of a folder, by slide name: ``*.slide_features.h5`` when there are
    any, else every ``*.h5`` (a TRIDENT ``slide_features_<encoder>/`` folder).

    Raises
    ------
    FileNotFoundError
        When ``folder`` is not a folder.
    ValueError
        When two files have the same slide name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"slide feature folder not found: {folder}")
    files = sorted(p for p in folder.glob(f"*{SLIDE_FEATURES_SUFFIX}") if not p.name.startswith("."))
    if not files:
        files = sorted(p for p in folder.glob("*.h5") if not p.name.startswith("."))
    found: dict[str, Path] = {}
    for path in files:
        stem = slide_features_stem(path)
        if stem in found:
            raise ValueError(
                f"{folder}: two slide feature files of slide {stem!r} ({found[stem].name}, {path.name})"
            )
        found[stem] = path
    return found
