"""What CARE training and evaluation read: slides of patch features, sub-slides, random views.

* :func:`load_feature_folder` reads a folder of feature files (``.h5``, TRIDENT / CLAM /
  this package) into :class:`SlideFeatures` (features, grid, slide id, encoder).
* :func:`split_subslides` cuts a slide into **sub-slides of at most ``max_patches``
  patches** (paper: about 360): DBSCAN (scikit-learn, ``eps=1.5`` grid units,
  ``min_samples=1``) on the grid finds the connected tissue pieces (patches that touch,
  diagonals included); a piece that is still too large is halved at the median of its
  longer side, recursively, so every sub-slide stays spatially compact. Pieces smaller
  than ``min_patches`` are dropped (tissue crumbs give no useful views). This split is
  this project's reading of "DBSCAN on coordinates".
* :func:`random_crop` picks a view's patches: the ``n`` patches nearest to a random
  patch of the sub-slide (a compact window, the analogue of a crop of an image).
* :func:`augment_features` is the feature augmentation of a view (this project's choice,
  the paper gives none): feature channel dropout, Gaussian noise scaled by each channel's
  standard deviation over the view, and one random scale factor per view.
* :func:`iter_slide_embeddings` embeds whole slides with CARE (trained or training-free).

All randomness comes from a :class:`numpy.random.Generator` passed in, so a seeded run is
reproducible.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_care.core.care_run import segment_features
from napari_care.core.feature_files import find_feature_files
from napari_care.core.features import EmptyFeaturesError, load_features
from napari_care.core.progress import Progress, ProgressGen

_EPS = 1e-6


@dataclass(frozen=True)
class SlideFeatures:
    """The patch features of one slide, as CARE reads them.

    Attributes
    ----------
    features
        ``[N, D]`` float32 patch features.
    grid
        ``[N, 2]`` int64 (gx, gy) patch-grid indices.
    slide_id
        Name of the slide (the key of label and molecular tables).
    encoder
        Name of the patch encoder that made the features ("" when unknown).
    """

    features: np.ndarray
    grid: np.ndarray
    slide_id: str
    encoder: str = ""

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.grid.shape != (len(self.features), 2) or not len(self.features):
            raise ValueError(
                f"slide {self.slide_id!r}: features must be [N, D] and grid [N, 2] with N > 0, "
                f"got {self.features.shape} and {self.grid.shape}"
            )

    @property
    def feature_dim(self) -> int:
        """Feature length D."""
        return int(self.features.shape[1])


def load_feature_folder(folder: str | os.PathLike[str]) -> list[SlideFeatures]:
    """Read the patch feature files of a folder, sorted by slide id.

    The folder is any layout :func:`~napari_care.core.feature_files.find_feature_files`
    knows (a folder of ``*.h5``, a TRIDENT job, CLAM's ``h5_files/``); the slide id is the
    file name without ``.h5`` / ``.features`` (``A.features.h5`` and ``A.h5`` are both slide
    ``A``). Files without patches (TRIDENT writes them for slides without tissue) are left
    out with one warning that names them.

    Raises
    ------
    FileNotFoundError
        When the folder does not exist or holds no feature file.
    ValueError
        When a file is unreadable, two files name the same slide, every file is empty, or
        the files hold features of different dimensions.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"feature folder not found: {folder}")
    found = find_feature_files(folder)
    if not found:
        raise FileNotFoundError(f"{folder}: no feature files (*.h5)")
    slides, empty = [], []
    for slide_id, path in found.items():
        try:
            patch_features = load_features(path)
        except EmptyFeaturesError:
            empty.append(slide_id)
            continue
        slides.append(
            SlideFeatures(patch_features.features, patch_features.grid, slide_id, patch_features.encoder)
        )
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        warnings.warn(
            f"{folder}: {len(empty)} of {len(found)} feature files hold no patches (slides without "
            f"tissue) and are left out: {shown}",
            stacklevel=2,
        )
    if not slides:
        raise ValueError(f"{folder}: every feature file is empty (no patches)")
    dims = {slide.feature_dim for slide in slides}
    if len(dims) > 1:
        raise ValueError(
            f"{folder}: feature files have different dimensions {sorted(dims)} (mixed encoders?)"
        )
    return slides


def _halve(indices: np.ndarray, grid: np.ndarray, max_patches: int) -> list[np.ndarray]:
    """Split ``indices`` at the median of its longer side until each part is small enough."""
    if len(indices) <= max_patches:
        return [indices]
    points = grid[indices]
    axis = int(np.argmax(np.ptp(points, axis=0)))
    order = np.argsort(points[:, axis], kind="stable")
    half = len(indices) // 2
    return _halve(indices[order[:half]], grid, max_patches) + _halve(indices[order[half:]], grid, max_patches)


def split_subslides(grid: np.ndarray, max_patches: int = 360, min_patches: int = 16) -> list[np.ndarray]:
    """Cut a slide's patch grid into compact sub-slides (see the module docstring).

    Parameters
    ----------
    grid
        ``[N, 2]`` (gx, gy) patch-grid indices.
    max_patches
        Largest sub-slide, in patches.
    min_patches
        Tissue pieces smaller than this are dropped.

    Returns
    -------
    Sorted patch index arrays, one per sub-slide, ordered by their first patch.
    """
    from sklearn.cluster import DBSCAN  # scikit-learn takes seconds to import

    if max_patches < 1 or min_patches < 1:
        raise ValueError(f"max_patches and min_patches must be positive, got {max_patches}, {min_patches}")
    grid = np.asarray(grid, dtype=np.int64).reshape(-1, 2)
    if not len(grid):
        return []
    pieces = DBSCAN(eps=1.5, min_samples=1).fit_predict(grid)
    parts = []
    for piece in np.unique(pieces):
        members = np.flatnonzero(pieces == piece)
        if len(members) >= min_patches:
            parts.extend(np.sort(part) for part in _halve(members, grid, max_patches))
    return sorted(parts, key=lambda part: int(part[0]))


def random_crop(grid: np.ndarray, n_patches: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the ``n_patches`` patches nearest to a random patch of ``grid``.

    Ties in distance are broken at random, so the window's edge varies between draws.
    """
    grid = np.asarray(grid, dtype=np.float64).reshape(-1, 2)
    n_patches = int(np.clip(n_patches, 1, len(grid)))
    if n_patches == len(grid):
        return np.arange(len(grid))
    centre = grid[rng.integers(len(grid))]
    distance = np.square(grid - centre).sum(axis=1) + rng.random(len(grid)) * 0.5
    return np.sort(np.argpartition(distance, n_patches - 1)[:n_patches])


@dataclass(frozen=True)
class Augmentation:
    """Feature augmentation of a view (this project's choice; see the module docstring).

    Parameters
    ----------
    channel_dropout
        Probability that a feature channel is set to 0 in the whole view.
    noise_std
        Std of the Gaussian noise, in units of each channel's std over the view.
    scale_range
        A view's features are multiplied by one factor drawn uniformly from this range.
    """

    channel_dropout: float = 0.1
    noise_std: float = 0.1
    scale_range: tuple[float, float] = (0.9, 1.1)

    def __post_init__(self) -> None:
        if not 0.0 <= self.channel_dropout < 1.0 or self.noise_std < 0:
            raise ValueError("Augmentation: channel_dropout must be in [0, 1) and noise_std >= 0")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"Augmentation.scale_range must satisfy 0 < low <= high, got {self.scale_range}")


def augment_features(
    features: np.ndarray, augmentation: Augmentation, rng: np.random.Generator
) -> np.ndarray:
    """An augmented float32 copy of a view's ``[n, D]`` features."""
    features = np.asarray(features, dtype=np.float32)
    out = features * np.float32(rng.uniform(*augmentation.scale_range))
    if augmentation.noise_std > 0:
        std = features.std(axis=0) if len(features) > 1 else np.abs(features[0])
        out = out + (rng.standard_normal(features.shape) * augmentation.noise_std * std).astype(np.float32)
    if augmentation.channel_dropout > 0:
        out = out * (rng.random(features.shape[1]) >= augmentation.channel_dropout).astype(np.float32)
    return out


def subslide_pool(
    slides: Sequence[SlideFeatures], max_patches: int, min_patches: int
) -> list[tuple[int, np.ndarray]]:
    """``(slide index, patch indices)`` of every sub-slide of every slide.

    Raises
    ------
    ValueError
        When no slide has a tissue piece of ``min_patches`` patches or more.
    """
    pool = [
        (number, part)
        for number, slide in enumerate(slides)
        for part in split_subslides(slide.grid, max_patches, min_patches)
    ]
    if not pool:
        raise ValueError(f"no slide has a tissue piece of at least {min_patches} patches to train on")
    return pool


def check_same_dim(slides: Sequence[SlideFeatures]) -> int:
    """The common feature dimension D of the slides (a clear error when they differ)."""
    if not slides:
        raise ValueError("no slides given")
    dims = {slide.feature_dim for slide in slides}
    if len(dims) > 1:
        raise ValueError(f"slides have different feature dimensions {sorted(dims)}")
    return dims.pop()


def encoder_name(slides: Sequence[SlideFeatures]) -> str:
    """The encoder named by the slides (``"unknown"`` when none is recorded)."""
    names = sorted({slide.encoder for slide in slides if slide.encoder})
    return ", ".join(names) if names else "unknown"


def iter_slide_embeddings(
    slides: Sequence[SlideFeatures], model=None, which: str = "slide"
) -> ProgressGen[np.ndarray]:
    """CARE embeddings of whole slides; a generator of :class:`Progress` returning ``[S, E]`` float32.

    Parameters
    ----------
    slides
        Patch features per slide.
    model
        A :class:`~napari_care.core.models.care.CareModel` (eval mode, no gradients); None
        runs training-free CARE (embeddings in the feature space, E = D).
    which
        ``"slide"`` (the slide embedding) or ``"roi"`` (the feature of the ROI region).
    """
    if which not in ("slide", "roi"):
        raise ValueError(f"which must be 'slide' or 'roi', got {which!r}")
    vectors = []
    for number, slide in enumerate(slides, start=1):
        result = segment_features(slide.features, slide.grid, model=model)
        vectors.append(result.slide_embedding if which == "slide" else result.roi_feature)
        yield Progress("embed", number, len(slides), slide.slide_id)
    return np.stack(vectors).astype(np.float32)
