"""Tissue phenotypes: group CARE's adaptive regions by their features.

Regions with similar features (tumour, stroma, fat, ...) get one group id; spread over the
patches, the groups make a tissue map of the slide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_care.core.care_result import CareResult
from napari_care.core.models.care_blocks import check_grid


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
        ``[G, E]`` float32 mean region feature of each group (in the space k-means ran in:
        standardised when ``standardize`` was set).
    """

    group_of_region: np.ndarray
    group_of_patch: np.ndarray
    centroids: np.ndarray

    @property
    def n_groups(self) -> int:
        """Number of groups G."""
        return len(self.centroids)


def phenotype_groups(result: CareResult, n_groups: int = 4, *, seed: int = 0, n_init: int = 10,
                     standardize: bool = True) -> Phenotypes:
    """Group the regions of a CARE result by k-means on their features.

    Parameters
    ----------
    result
        A CARE result.
    n_groups
        Number of groups; at most the number of distinct region features (fewer are used
        when the slide has fewer).
    seed
        Random state of k-means (fixed, so the grouping is reproducible).
    n_init
        k-means restarts.
    standardize
        Standardise each feature dimension over the regions first, so that no single
        dimension dominates the distances.

    Returns
    -------
    Phenotypes
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    features = np.asarray(result.region_features, np.float64)
    if standardize:
        features = (features - features.mean(axis=0)) / np.maximum(features.std(axis=0), 1e-12)
    n_distinct = len(np.unique(features.round(decimals=9), axis=0))
    n_groups = min(n_groups, n_distinct)
    if n_groups == 1:
        labels = np.zeros(len(features), np.int64)
    else:
        # One thread: for tens to thousands of regions, starting a thread pool per restart costs
        # more (about 0.1 s) than the clustering itself.
        with threadpool_limits(1):
            labels = KMeans(n_clusters=n_groups, n_init=n_init, random_state=seed).fit_predict(features)
    # Order groups by patch count (largest first), ties by lowest first region, for stable ids.
    patches = np.bincount(labels, weights=result.region_sizes, minlength=n_groups)
    first_region = np.array([np.flatnonzero(labels == group)[0] for group in range(n_groups)])
    order = np.lexsort((first_region, -patches))
    rename = np.empty(n_groups, np.int64)
    rename[order] = np.arange(n_groups)
    group_of_region = rename[labels]
    centroids = np.stack([features[group_of_region == group].mean(axis=0) for group in range(n_groups)])
    return Phenotypes(group_of_region=group_of_region, group_of_patch=group_of_region[result.region_of_patch],
                      centroids=centroids.astype(np.float32))


def tissue_map(grid: np.ndarray, value_of_patch: np.ndarray, *, background: int = -1) -> tuple[np.ndarray, tuple[int, int]]:
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
