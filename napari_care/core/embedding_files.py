"""Slide embeddings and their labels as files: what ``napari-care evaluate`` reads and writes.

* :func:`slide_embeddings`: slide ids and ``[S, E]`` embeddings from an ``.npz``, a CSV, a
  folder of slide feature files (``<stem>.slide_features.h5`` as ``segment`` writes them, or
  TRIDENT's ``slide_features_<encoder>/``), or a folder of patch feature files embedded here
  with CARE (trained or training-free).
* :func:`save_embeddings`: an ``.npz`` with arrays ``slide_id`` and ``embedding``.
* :func:`labelled_embeddings`: the embeddings of the slides a label CSV names, with their
  labels, in the CSV's order (the input of :func:`napari_care.core.evaluate.evaluate_embeddings`).
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np

from napari_care.core.atomic import atomic_open
from napari_care.core.features import EmptyFeaturesError
from napari_care.core.progress import ProgressGen
from napari_care.core.slide_features import SLIDE_FEATURES_SUFFIX, find_slide_features, load_slide_features
from napari_care.core.train.feature_views import encoder_name, iter_slide_embeddings, load_feature_folder

PathLike = str | os.PathLike[str]


def slide_embeddings(
    path: PathLike,
    care_checkpoint: PathLike | None = None,
    which: str = "slide",
) -> ProgressGen[tuple[list[str], np.ndarray]]:
    """Slide ids and ``[S, E]`` embeddings from a file, or CARE on a folder of feature files.

    A generator of :class:`~napari_care.core.progress.Progress` (one report per embedded
    slide; none for a file) returning ``(slide ids, embeddings)``.

    Parameters
    ----------
    path
        An ``.npz`` or ``.csv`` file (see :func:`load_embeddings`); a folder of slide feature
        files (:func:`is_slide_feature_folder`), read as they are; or a folder of patch
        feature files (``*.h5``, TRIDENT's or CLAM's layout) embedded here. Empty files
        (slides without tissue) are left out with one warning.
    care_checkpoint
        For a folder: the CARE checkpoint that embeds it; None runs training-free CARE.
    which
        For a folder: ``"slide"`` (the slide embedding) or ``"roi"`` (the ROI's feature).

    Raises
    ------
    ValueError
        An unreadable file, or features that do not fit the checkpoint.
    """
    path = Path(path)
    if not path.is_dir():
        return load_embeddings(path)
    if is_slide_feature_folder(path):
        return load_slide_feature_folder(path)
    slides = load_feature_folder(path)
    model = None
    if care_checkpoint is not None:
        from napari_care.core.checkpoint import check_feature_dim, load_checkpoint  # torch: for a checkpoint
        from napari_care.core.models.care import CareModel  # torch: for a checkpoint

        model, config, _ = load_checkpoint(care_checkpoint, CareModel)
        check_feature_dim(
            config, slides[0].feature_dim, checkpoint=care_checkpoint, encoder=encoder_name(slides)
        )
    vectors = yield from iter_slide_embeddings(slides, model, which)
    return [slide.slide_id for slide in slides], vectors


def is_slide_feature_folder(folder: PathLike) -> bool:
    """Whether ``folder`` holds slide embeddings rather than patch features: it has
    ``*.slide_features.h5`` files, or it is TRIDENT's ``slide_features_<encoder>/``."""
    folder = Path(folder)
    return folder.name.startswith("slide_features_") or any(folder.glob(f"*{SLIDE_FEATURES_SUFFIX}"))


def load_slide_feature_folder(folder: PathLike) -> tuple[list[str], np.ndarray]:
    """Slide ids and ``[S, E]`` float64 embeddings of a folder of slide feature files.

    Files with an empty embedding (TRIDENT's, for slides without tissue) are left out with
    one warning naming them.

    Raises
    ------
    ValueError
        No slide feature file, an unreadable one, every one empty, or embeddings of
        different lengths (files of several slide encoders).
    """
    folder = Path(folder)
    found = find_slide_features(folder)
    if not found:
        raise ValueError(f"{folder}: no slide feature files (*.slide_features.h5)")
    slide_ids, vectors, empty = [], [], []
    for slide_id, file in found.items():
        try:
            embedding = load_slide_features(file)
        except EmptyFeaturesError:
            empty.append(slide_id)
            continue
        slide_ids.append(slide_id)
        vectors.append(embedding)
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        warnings.warn(
            f"{folder}: {len(empty)} of {len(found)} slide feature files are empty (slides without "
            f"tissue) and are left out: {shown}",
            stacklevel=2,
        )
    if not vectors:
        raise ValueError(f"{folder}: every slide feature file is empty")
    lengths = {len(v.embedding) for v in vectors}
    if len(lengths) > 1:
        encoders = sorted({v.slide_encoder or "?" for v in vectors})
        raise ValueError(
            f"{folder}: slide embeddings of different lengths {sorted(lengths)} "
            f"(several slide encoders? {', '.join(encoders)})"
        )
    return slide_ids, np.stack([v.embedding for v in vectors]).astype(np.float64)


def load_embeddings(path: PathLike) -> tuple[list[str], np.ndarray]:
    """Slide ids and ``[S, E]`` float64 embeddings from an ``.npz`` or a CSV file.

    An ``.npz`` holds arrays ``slide_id`` and ``embedding`` (or ``embeddings``), or one
    array per slide id; a CSV has a ``slide_id`` column (else the first) and numbers.

    Raises
    ------
    ValueError
        Another suffix, a missing array, values that are not numbers, not one vector per
        slide, or slide ids that repeat.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "slide_id" in data.files:
                key = next((name for name in ("embedding", "embeddings") if name in data.files), None)
                if key is None:
                    raise ValueError(f"{path}: has slide_id but no 'embedding' array")
                slide_ids, vectors = (
                    [str(s) for s in data["slide_id"]],
                    np.asarray(data[key], dtype=np.float64),
                )
            else:
                slide_ids = list(data.files)
                vectors = (
                    np.stack([np.ravel(data[name]).astype(np.float64) for name in slide_ids])
                    if slide_ids
                    else np.zeros((0, 0))
                )
    elif suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row]
        if len(rows) < 2:
            raise ValueError(f"{path}: needs a header and at least one row")
        key = rows[0].index("slide_id") if "slide_id" in rows[0] else 0
        slide_ids = [row[key].strip() for row in rows[1:]]
        try:
            vectors = np.array([[float(c) for i, c in enumerate(row) if i != key] for row in rows[1:]])
        except ValueError as error:
            raise ValueError(f"{path}: embedding values must be numbers ({error})") from error
    else:
        raise ValueError(f"{path}: embeddings must be an .npz, a .csv or a folder of feature files")
    if vectors.ndim != 2 or len(vectors) != len(slide_ids) or not len(slide_ids):
        raise ValueError(f"{path}: expected one embedding vector per slide, got shape {vectors.shape}")
    if len(set(slide_ids)) != len(slide_ids):
        raise ValueError(f"{path}: slide ids are not unique")
    return slide_ids, vectors


def save_embeddings(path: PathLike, slide_ids: list[str], vectors: np.ndarray) -> Path:
    """Write slide ids and ``[S, E]`` embeddings (as float32) to an ``.npz`` (``slide_id``,
    ``embedding``), atomically; return the path."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, slide_id=np.asarray(slide_ids, dtype=str), embedding=np.asarray(vectors, np.float32))
    return Path(path)


def labelled_embeddings(
    slide_ids: list[str],
    vectors: np.ndarray,
    labels_csv: PathLike,
    task: str,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embeddings and labels of the labelled slides that have an embedding, in label order.

    Parameters
    ----------
    slide_ids, vectors
        The slides' ids and ``[S, E]`` embeddings.
    labels_csv
        Classification labels: columns ``slide_id``, ``label``. Survival: ``slide_id``,
        ``time``, ``event`` (1 = event, 0 = censored).
    task
        ``"classification"`` or ``"survival"``.

    Returns
    -------
    ``[M, E]`` embeddings, ``[M]`` labels (text) or ``[M, 2]`` (time, event), and the M
    slide ids, for the M labelled slides with an embedding.

    Raises
    ------
    ValueError
        Missing columns, no labelled slide with an embedding, or times and events that are
        not numbers.
    """
    with open(labels_csv, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    needed = ["slide_id", "label"] if task == "classification" else ["slide_id", "time", "event"]
    if not rows or not set(needed) <= set(rows[0]):
        raise ValueError(f"{labels_csv}: needs columns {needed}, found {sorted(rows[0]) if rows else []}")
    row_of = {slide_id: number for number, slide_id in enumerate(slide_ids)}
    used = [row for row in rows if row["slide_id"].strip() in row_of]
    if not used:
        raise ValueError(
            f"{labels_csv}: no labelled slide has an embedding "
            f"(labels name e.g. {[r['slide_id'] for r in rows[:3]]}, embeddings {slide_ids[:3]})"
        )
    x = np.asarray(vectors)[[row_of[row["slide_id"].strip()] for row in used]]
    if task == "classification":
        labels = np.array([row["label"].strip() for row in used])
    else:
        try:
            labels = np.array([[float(row["time"]), float(row["event"])] for row in used])
        except ValueError as error:
            raise ValueError(f"{labels_csv}: time and event must be numbers ({error})") from error
    return x, labels, [row["slide_id"].strip() for row in used]
