"""Tissue phenotypes: group CARE's adaptive regions by their features.

Regions with similar features (tumour, stroma, fat, ...) get one group id; spread over the
patches, the groups make a tissue map of the slide. Every patch takes its region's group.

How a region is described and weighed is this project's choice (the paper groups nothing):

- ``descriptor="median"`` (default when the patch features are given): the per-dimension
  median of the region's patch features, each dimension standardised over the slide's
  patches. A region of ~40 patches often holds a strip of a neighbouring tissue; the mean
  drifts towards it, the median stays with the region's majority tissue, which is what the
  map should show. ``"mean"``: the mean of the same standardised patch features;
  ``"embedding"`` (the only choice without patch features): CARE's region feature
  (``result.region_features``), standardised over the regions when ``standardize``.
- ``weighting="patches"`` (default): k-means weighs each region by its patch count, so a
  large region counts as much as its area in the map (with the mean descriptor this is
  k-means of the patches with each region's patches kept together); ``"uniform"``: one
  weight per region.
- k-means with k-means++ starts, ``n_init`` restarts, seeded.

On generated slides of the offline sample's size (the sample and 9 others, k = 8, N =
planted types, training-free regions), the adjusted Rand index to the planted types is
0.53 with the embedding and uniform weights, 0.56 weighted, 0.60 with the median
descriptor and uniform weights, 0.61 weighted (the best any grouping of the same regions
can do, each region taking its majority type, is 0.71).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from napari_care.core.care_result import CareResult
from napari_care.core.models.care_blocks import check_grid, feature_moments, group_mean

DESCRIPTORS = ("median", "mean", "embedding")
WEIGHTINGS = ("patches", "uniform")


@dataclass(frozen=True)
class Phenotypes:
    """Groups of regions.

    Attributes
    ----------
    group_of_region
        ``[R]`` int64 group id 0..G-1; group 0 covers the most patches, then 1, ...
    group_of_patch
        ``[N]`` int64 group of each patch (its region's group).
    centroids
        ``[G, F]`` float32 mean region descriptor of each group (in the space k-means ran
        in: standardised when ``standardize`` was set).
    """

    group_of_region: np.ndarray
    group_of_patch: np.ndarray
    centroids: np.ndarray

    @property
    def n_groups(self) -> int:
        """Number of groups G."""
        return len(self.centroids)


def region_descriptors(
    result: CareResult,
    patch_features: np.ndarray | None = None,
    *,
    descriptor: str = "median",
    standardize: bool = True,
) -> np.ndarray:
    """``[R, F]`` float64 descriptor of each region, the space the phenotype groups are found in.

    Parameters
    ----------
    result
        A CARE result.
    patch_features
        ``[N, D]`` features of the result's patches (rows in the result's patch order);
        needed by ``"median"`` and ``"mean"``.
    descriptor
        ``"median"``, ``"mean"`` or ``"embedding"`` (see the module docstring).
    standardize
        Standardise each dimension first (over the patches, or over the regions for
        ``"embedding"``), so that no single dimension dominates the distances.

    Returns
    -------
    np.ndarray
        ``[R, F]`` float64, one row per region (F = D for ``"median"`` and ``"mean"``, E for
        ``"embedding"``).
    """
    if descriptor not in DESCRIPTORS:
        raise ValueError(f"descriptor must be one of {DESCRIPTORS}, got {descriptor!r}")
    if descriptor == "embedding":
        features = described = np.asarray(result.region_features, np.float64)
    else:
        features, described = _patch_descriptors(result, descriptor, patch_features)
    if not standardize:
        return described
    mean, std = feature_moments(features, eps=1e-12)
    return (described - mean) / std


def _patch_descriptors(
    result: CareResult,
    descriptor: str,
    patch_features: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The patch features (float32 or float64) and each region's median or mean of them,
    ``[R, D]`` float64."""
    if patch_features is None:
        raise ValueError(f"descriptor={descriptor!r} needs patch_features (or use descriptor='embedding')")
    features = np.asarray(patch_features)
    if features.dtype not in (np.float32, np.float64):
        features = features.astype(np.float32)
    if features.ndim != 2 or len(features) != result.n_patches:
        raise ValueError(
            f"patch_features must have shape [{result.n_patches}, D] (one row per patch of the "
            f"result), got {features.shape}"
        )
    # Medians and means commute with a per-dimension standardisation (a positive scale and a
    # shift), so they are taken on the features as they are and only the [R, D] result is
    # standardised: no N x D copy.
    if descriptor == "mean":
        described = group_mean(features, result.region_of_patch, result.n_regions).astype(np.float64)
    else:
        order = np.argsort(result.region_of_patch, kind="stable")
        ends = np.cumsum(np.bincount(result.region_of_patch, minlength=result.n_regions))
        described = np.stack(
            [
                np.median(features[order[start:end]], axis=0)
                for start, end in zip(np.r_[0, ends[:-1]], ends, strict=True)
            ]
        ).astype(np.float64)
    return features, described


def phenotype_groups(
    result: CareResult,
    n_groups: int = 4,
    *,
    patch_features: np.ndarray | None = None,
    descriptor: str | None = None,
    weighting: str = "patches",
    seed: int = 0,
    n_init: int = 10,
    standardize: bool = True,
) -> Phenotypes:
    """Group the regions of a CARE result by k-means on their descriptors.

    Parameters
    ----------
    result
        A CARE result.
    n_groups
        Number of groups; at most the number of distinct region descriptors (fewer are used
        when the slide has fewer).
    patch_features
        ``[N, D]`` features of the result's patches; with them the default descriptor is
        ``"median"``, without them ``"embedding"``.
    descriptor
        ``"median"``, ``"mean"`` or ``"embedding"``; None: the default above.
    weighting
        ``"patches"`` (regions weigh by patch count) or ``"uniform"``.
    seed
        Random state of k-means (fixed, so the grouping is reproducible).
    n_init
        k-means restarts (k-means++ starts).
    standardize
        See :func:`region_descriptors`.

    Returns
    -------
    Phenotypes
    """
    from sklearn.cluster import KMeans  # scikit-learn takes seconds to import

    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if descriptor is None:
        descriptor = "embedding" if patch_features is None else "median"
    features = region_descriptors(result, patch_features, descriptor=descriptor, standardize=standardize)
    n_distinct = len(np.unique(features.round(decimals=9), axis=0))
    n_groups = min(n_groups, n_distinct)
    if n_groups == 1:
        labels = np.zeros(len(features), np.int64)
    else:
        weights = np.asarray(result.region_sizes, np.float64) if weighting == "patches" else None
        # One thread: for tens to thousands of regions, starting a thread pool per restart costs
        # more (about 0.1 s) than the clustering itself.
        with threadpool_limits(1):
            labels = KMeans(n_clusters=n_groups, n_init=n_init, random_state=seed).fit_predict(
                features, sample_weight=weights
            )
    # Order groups by patch count (largest first), ties by lowest first region, for stable ids.
    patches = np.bincount(labels, weights=result.region_sizes, minlength=n_groups)
    first_region = np.array([np.flatnonzero(labels == group)[0] for group in range(n_groups)])
    order = np.lexsort((first_region, -patches))
    rename = np.empty(n_groups, np.int64)
    rename[order] = np.arange(n_groups)
    group_of_region = rename[labels]
    centroids = np.stack([features[group_of_region == group].mean(axis=0) for group in range(n_groups)])
    return Phenotypes(
        group_of_region=group_of_region,
        group_of_patch=group_of_region[result.region_of_patch],
        centroids=centroids.astype(np.float32),
    )


def tissue_map(
    grid: np.ndarray, value_of_patch: np.ndarray, *, background: int = -1
) -> tuple[np.ndarray, tuple[int, int]]:
    """Rasterise per-patch integer values (groups, regions) onto the patch grid.

    Parameters
    ----------
    grid
        ``[N, 2]`` (gx, gy) patch-grid indices.
    value_of_patch
        ``[N]`` integer value of each patch (e.g. ``Phenotypes.group_of_patch``).
    background
        Value of cells without a patch.

    Returns
    -------
    (raster, origin)
        ``[H, W]`` int64 raster indexed ``[gy - gy0, gx - gx0]`` (rows are grid y: an image
        array, one cell per patch) and ``origin = (gx0, gy0)``, the grid index of cell
        ``[0, 0]``. Multiply by the level-0 patch size for pixel placement.
    """
    grid = check_grid(grid)
    values = np.asarray(value_of_patch)
    if values.shape != (len(grid),):
        raise ValueError(f"value_of_patch must have shape ({len(grid)},), got {values.shape}")
    if len(grid) == 0:
        raise ValueError("tissue_map needs at least one patch")
    origin = grid.min(axis=0)
    width, height = grid.max(axis=0) - origin + 1
    raster = np.full((int(height), int(width)), background, dtype=np.int64)
    raster[grid[:, 1] - origin[1], grid[:, 0] - origin[0]] = values
    return raster, (int(origin[0]), int(origin[1]))
