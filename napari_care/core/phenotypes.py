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
- ``n_groups="auto"`` (default): k-means is run for every N in :data:`AUTO_GROUPS_RANGE`
  (2..12, at most the slide's distinct region descriptors and half its regions:
  :func:`largest_candidate`), each grouping is scored by
  the patch-weighted Calinski-Harabasz index (:data:`DEFAULT_CRITERION`), and the smallest
  N whose score is within 20 % of the score range of the best (:data:`DEFAULT_TOLERANCE`)
  is kept (:func:`choose_n_groups`; the criteria are in :mod:`napari_care.core.group_count`).
  Criterion and tolerance were chosen among five criteria x four tolerances on development
  slides with 3 to 8 planted tissue types (seeds 0-3) by ``benchmarks/bench_auto_groups.py``
  (the highest rate of N == planted), which reports them on test slides of other seeds
  (1000+) in ``docs/results/auto_groups.json``. The grouping at the chosen N is the one a
  fixed ``n_groups`` of that N gives.

On generated slides of the offline sample's size (the sample and 9 others, k = 8, N =
planted types, training-free regions), the adjusted Rand index to the planted types is
0.53 with the embedding and uniform weights, 0.56 weighted, 0.60 with the median
descriptor and uniform weights, 0.61 weighted (the best any grouping of the same regions
can do, each region taking its majority type, is 0.71).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from napari_care.core.care_result import CareResult
from napari_care.core.group_count import check_criterion, criterion_scores, pick_n_groups
from napari_care.core.models.care_blocks import check_grid, feature_moments, group_mean

DESCRIPTORS = ("median", "mean", "embedding")
WEIGHTINGS = ("patches", "uniform")
#: ``n_groups`` that asks for the number of groups to be chosen (:func:`choose_n_groups`).
AUTO = "auto"
#: The candidate numbers of groups of ``n_groups="auto"`` (inclusive).
AUTO_GROUPS_RANGE = (2, 12)
#: The criterion of ``n_groups="auto"`` and its tolerance
#: (:func:`~napari_care.core.group_count.pick_n_groups`), chosen on development slides (see
#: the module docstring).
DEFAULT_CRITERION = "calinski_harabasz"
DEFAULT_TOLERANCE = 0.2


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
    criterion
        How the number of groups was chosen (a name in
        :data:`~napari_care.core.group_count.CRITERIA`); None when it was given.
    scores
        The criterion's score of each candidate number of groups (higher is better); empty
        when the number was given.
    """

    group_of_region: np.ndarray
    group_of_patch: np.ndarray
    centroids: np.ndarray
    criterion: str | None = None
    scores: dict[int, float] = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        """Number of groups G."""
        return len(self.centroids)

    @property
    def n_groups_chosen(self) -> int | None:
        """The number of groups the criterion chose, or None when it was given."""
        return None if self.criterion is None else self.n_groups


@dataclass(frozen=True)
class GroupCountChoice:
    """The number of groups a criterion chose, with what it chose from.

    Attributes
    ----------
    n_groups
        The chosen number of groups.
    criterion, tolerance
        The criterion and its tolerance (:func:`~napari_care.core.group_count.pick_n_groups`).
    scores
        Candidate N -> score (higher is better); empty when the slide has fewer than 2
        distinct region descriptors (then ``n_groups`` is 1).
    labels_of_n
        Candidate N -> ``[R]`` k-means labels (before the groups are ordered by size).
    """

    n_groups: int
    criterion: str
    tolerance: float
    scores: dict[int, float]
    labels_of_n: dict[int, np.ndarray] = field(repr=False)


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


def _check_grouping(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def _default_descriptor(descriptor: str | None, patch_features: np.ndarray | None) -> str:
    if descriptor is None:
        return "embedding" if patch_features is None else "median"
    return descriptor


def _region_weights(result: CareResult, weighting: str) -> np.ndarray:
    if weighting == "patches":
        return np.asarray(result.region_sizes, np.float64)
    return np.ones(result.n_regions)


def _n_distinct(features: np.ndarray) -> int:
    return len(np.unique(features.round(decimals=9), axis=0))


def _kmeans_labels(
    features: np.ndarray, n_groups: int, weights: np.ndarray | None, seed: int, n_init: int
) -> np.ndarray:
    """k-means labels of the region descriptors (1 group: all zeros)."""
    from sklearn.cluster import KMeans  # scikit-learn takes seconds to import

    if n_groups == 1:
        return np.zeros(len(features), np.int64)
    # One thread: for tens to thousands of regions, starting a thread pool per restart costs
    # more (about 0.1 s) than the clustering itself.
    with threadpool_limits(1):
        return KMeans(n_clusters=n_groups, n_init=n_init, random_state=seed).fit_predict(
            features, sample_weight=weights
        )


def largest_candidate(n_regions: int, n_distinct: int, high: int = AUTO_GROUPS_RANGE[1]) -> int:
    """The largest number of groups ``"auto"`` tries: ``high``, at most the distinct region
    descriptors and at most half the regions (2 at least).

    Half the regions: a group of one region is no phenotype, and the criteria that divide by
    the degrees of freedom left (Calinski-Harabasz: R - N) rise without bound as N nears R,
    as on a small field of view. This bound is the project's choice, not tuned: it changes
    no choice on the benchmark's slides, which have 24 regions or more.
    """
    return min(high, n_distinct, max(2, n_regions // 2))


def scan_group_counts(
    features: np.ndarray,
    weights: np.ndarray | None,
    n_values: range | list[int],
    *,
    seed: int = 0,
    n_init: int = 10,
) -> dict[int, np.ndarray]:
    """k-means labels of the region descriptors for each number of groups in ``n_values``.

    Parameters
    ----------
    features
        ``[R, F]`` region descriptors (:func:`region_descriptors`).
    weights
        ``[R]`` k-means sample weights, or None for uniform ones.
    n_values
        The numbers of groups to fit.
    seed, n_init
        As for :func:`phenotype_groups` (the labels at N are the ones ``n_groups=N`` gives).

    Returns
    -------
    dict[int, np.ndarray]
        N -> ``[R]`` int labels 0..N-1.
    """
    return {int(n): _kmeans_labels(features, int(n), weights, seed, n_init) for n in n_values}


def _choose(
    features: np.ndarray,
    weights: np.ndarray,
    kmeans_weights: np.ndarray | None,
    *,
    criterion: str,
    tolerance: float,
    n_range: tuple[int, int],
    seed: int,
    n_init: int,
) -> GroupCountChoice:
    low, high = n_range
    high = largest_candidate(len(features), _n_distinct(features), high)
    if high < max(low, 2):  # fewer than two distinct regions: nothing to choose
        n_groups = max(1, min(low, high))
        labels = {n_groups: _kmeans_labels(features, n_groups, kmeans_weights, seed, n_init)}
        return GroupCountChoice(n_groups, criterion, tolerance, {}, labels)
    labels_of_n = scan_group_counts(
        features, kmeans_weights, range(max(low, 2), high + 1), seed=seed, n_init=n_init
    )
    scores = criterion_scores(features, labels_of_n, weights, criterion, seed=seed)
    return GroupCountChoice(pick_n_groups(scores, tolerance), criterion, tolerance, scores, labels_of_n)


def choose_n_groups(
    result: CareResult,
    *,
    patch_features: np.ndarray | None = None,
    descriptor: str | None = None,
    weighting: str = "patches",
    criterion: str = DEFAULT_CRITERION,
    tolerance: float = DEFAULT_TOLERANCE,
    n_range: tuple[int, int] = AUTO_GROUPS_RANGE,
    seed: int = 0,
    n_init: int = 10,
    standardize: bool = True,
) -> GroupCountChoice:
    """Choose the number of phenotype groups of a CARE result.

    k-means (as :func:`phenotype_groups` runs it) for every N of ``n_range`` (at most the
    number of distinct region descriptors), each grouping scored by ``criterion``; the N
    :func:`~napari_care.core.group_count.pick_n_groups` picks from the scores is chosen.

    Parameters
    ----------
    result
        A CARE result.
    patch_features, descriptor, weighting, seed, n_init, standardize
        As for :func:`phenotype_groups`; the criterion weighs the regions as the k-means does.
    criterion
        A name in :data:`~napari_care.core.group_count.CRITERIA`.
    tolerance
        The smallest N whose score is within ``tolerance`` x (max - min) of the best wins.
    n_range
        The smallest and largest candidate N (inclusive).

    Returns
    -------
    GroupCountChoice
    """
    _check_grouping(weighting)
    check_criterion(criterion)
    low, high = n_range
    if not 1 <= low <= high:
        raise ValueError(f"n_range must be (low, high) with 1 <= low <= high, got {n_range}")
    descriptor = _default_descriptor(descriptor, patch_features)
    features = region_descriptors(result, patch_features, descriptor=descriptor, standardize=standardize)
    weights = _region_weights(result, weighting)
    return _choose(
        features,
        weights,
        weights if weighting == "patches" else None,
        criterion=criterion,
        tolerance=tolerance,
        n_range=(low, high),
        seed=seed,
        n_init=n_init,
    )


def phenotype_groups(
    result: CareResult,
    n_groups: int | str = AUTO,
    *,
    patch_features: np.ndarray | None = None,
    descriptor: str | None = None,
    weighting: str = "patches",
    seed: int = 0,
    n_init: int = 10,
    standardize: bool = True,
    criterion: str = DEFAULT_CRITERION,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Phenotypes:
    """Group the regions of a CARE result by k-means on their descriptors.

    Parameters
    ----------
    result
        A CARE result.
    n_groups
        Number of groups; at most the number of distinct region descriptors (fewer are used
        when the slide has fewer). ``"auto"`` (default): chosen over
        :data:`AUTO_GROUPS_RANGE` by ``criterion`` (:func:`choose_n_groups`).
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
    criterion, tolerance
        How ``"auto"`` chooses (:func:`choose_n_groups`); unused for a given number.

    Returns
    -------
    Phenotypes
        With the criterion and its scores when the number was chosen.
    """
    auto = isinstance(n_groups, str)
    if auto and n_groups != AUTO:
        raise ValueError(f"n_groups must be a number of groups or {AUTO!r}, got {n_groups!r}")
    if not auto and n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    _check_grouping(weighting)
    descriptor = _default_descriptor(descriptor, patch_features)
    features = region_descriptors(result, patch_features, descriptor=descriptor, standardize=standardize)
    weights = _region_weights(result, weighting)
    kmeans_weights = weights if weighting == "patches" else None
    if auto:
        check_criterion(criterion)
        choice = _choose(
            features,
            weights,
            kmeans_weights,
            criterion=criterion,
            tolerance=tolerance,
            n_range=AUTO_GROUPS_RANGE,
            seed=seed,
            n_init=n_init,
        )
        n_groups, labels = choice.n_groups, choice.labels_of_n[choice.n_groups]
    else:
        n_groups = min(n_groups, _n_distinct(features))
        labels = _kmeans_labels(features, n_groups, kmeans_weights, seed, n_init)
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
        criterion=choice.criterion if auto else None,
        scores=dict(choice.scores) if auto else {},
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
