"""How many phenotype groups a slide holds: criteria that score a grouping of its regions.

Each criterion scores the k-means labelling of the region descriptors for one candidate
number of groups N, higher is better, with every region weighed as in the k-means (by its
patch count, or uniformly); :func:`pick_n_groups` turns the scores over N into a choice.
Which criterion is the default, and why, is in :mod:`napari_care.core.phenotypes`
(chosen on development slides by ``benchmarks/bench_auto_groups.py``).

- ``"silhouette"``: the weighted mean silhouette (Rousseeuw 1987): how much closer each
  region is to its own group than to the next one.
- ``"calinski_harabasz"``: between- over within-group dispersion, each divided by its
  degrees of freedom (Calinski and Harabasz 1974).
- ``"davies_bouldin"``: minus the Davies-Bouldin index (the mean over groups of the worst
  ratio of spreads to centroid distance).
- ``"bic"``: the Bayesian information criterion of a spherical Gaussian mixture with the
  k-means means and one shared variance (as in X-means, Pelleg and Moore 2000), the
  regions being the samples.
- ``"eigengap"``: the gap after the N-th smallest eigenvalue of the normalised Laplacian of
  a Gaussian affinity between the regions (von Luxburg 2007); it does not look at the
  k-means labelling.
"""

from __future__ import annotations

import math

import numpy as np

CRITERIA = ("silhouette", "calinski_harabasz", "davies_bouldin", "bic", "eigengap")
#: Above this many regions, the pairwise criteria (silhouette, eigengap) use a fixed random
#: sample of the regions (an R x R matrix of 2,000 rows is 32 MB in float64).
MAX_PAIRWISE_REGIONS = 2000


def check_criterion(criterion: str) -> None:
    """Raise ValueError for an unknown criterion name."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}; got {criterion!r}")


def pairwise_sample(n_regions: int, seed: int = 0) -> np.ndarray:
    """Indices of the regions the pairwise criteria look at: all, or a fixed sample of
    :data:`MAX_PAIRWISE_REGIONS` (sorted)."""
    if n_regions <= MAX_PAIRWISE_REGIONS:
        return np.arange(n_regions)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_regions, MAX_PAIRWISE_REGIONS, replace=False))


def pairwise_distances(features: np.ndarray) -> np.ndarray:
    """``[R, R]`` float64 Euclidean distances between the rows of ``features``."""
    features = np.asarray(features, np.float64)
    squared = (features**2).sum(axis=1)
    gram = squared[:, None] + squared[None, :] - 2 * features @ features.T
    distances = np.sqrt(np.maximum(gram, 0))
    np.fill_diagonal(distances, 0)
    return distances


def weighted_silhouette(distances: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """Weighted mean silhouette of a labelling (a region alone in its group scores 0).

    Parameters
    ----------
    distances
        ``[R, R]`` pairwise distances.
    labels
        ``[R]`` group 0..G-1 of each region.
    weights
        ``[R]`` positive weight of each region (its patch count, or 1).
    """
    n_groups = int(labels.max()) + 1
    one_hot = np.zeros((len(labels), n_groups))
    one_hot[np.arange(len(labels)), labels] = weights
    group_weight = one_hot.sum(axis=0)
    summed = distances @ one_hot  # [R, G] weighted distance sums to each group's regions
    own_weight = group_weight[labels] - weights  # the region itself does not count
    rows = np.arange(len(labels))
    own = np.divide(summed[rows, labels], own_weight, out=np.zeros(len(labels)), where=own_weight > 0)
    mean_to = summed / np.maximum(group_weight, 1e-300)
    mean_to[rows, labels] = np.inf
    nearest = mean_to.min(axis=1)
    spread = np.maximum(own, nearest)
    silhouette = np.divide(nearest - own, spread, out=np.zeros(len(labels)), where=spread > 0)
    silhouette[own_weight <= 0] = 0.0
    return float((weights * silhouette).sum() / weights.sum())


def _group_moments(features: np.ndarray, labels: np.ndarray, weights: np.ndarray):
    n_groups = int(labels.max()) + 1
    group_weight = np.bincount(labels, weights=weights, minlength=n_groups)
    centroids = np.zeros((n_groups, features.shape[1]))
    np.add.at(centroids, labels, weights[:, None] * features)
    centroids /= np.maximum(group_weight, 1e-300)[:, None]
    squared = ((features - centroids[labels]) ** 2).sum(axis=1)
    return group_weight, centroids, squared


def calinski_harabasz(features: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """Weighted Calinski-Harabasz index (weights normalised to sum to the number of regions);
    ``-inf`` (never chosen) when there are as many groups as regions."""
    weights = weights * (len(weights) / weights.sum())
    group_weight, centroids, squared = _group_moments(features, labels, weights)
    n_groups, n_regions = len(centroids), len(labels)
    mean = (weights[:, None] * features).sum(axis=0) / weights.sum()
    between = float((group_weight * ((centroids - mean) ** 2).sum(axis=1)).sum())
    within = float((weights * squared).sum())
    if n_regions <= n_groups:  # every region its own group: no within-group spread to compare
        return -math.inf
    if within <= 0:
        return math.inf if between > 0 else 0.0
    return (between / (n_groups - 1)) / (within / (n_regions - n_groups))


def davies_bouldin_score(features: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """Minus the weighted Davies-Bouldin index (higher is better)."""
    group_weight, centroids, squared = _group_moments(features, labels, weights)
    spread = np.bincount(labels, weights=weights * np.sqrt(squared), minlength=len(centroids))
    spread /= np.maximum(group_weight, 1e-300)
    separation = pairwise_distances(centroids)
    np.fill_diagonal(separation, np.inf)
    ratio = (spread[:, None] + spread[None, :]) / np.maximum(separation, 1e-300)
    return -float(ratio.max(axis=1).mean())


def spherical_bic(features: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """BIC score (log-likelihood minus half the parameters times log R) of a spherical Gaussian
    mixture with the groups' means, shares and one shared variance (weights sum to R)."""
    n_regions, dim = features.shape
    weights = weights * (n_regions / weights.sum())
    group_weight, centroids, squared = _group_moments(features, labels, weights)
    n_groups = len(centroids)
    variance = max(float((weights * squared).sum()) / (n_regions * dim), 1e-12)
    log_likelihood = float(
        (group_weight * np.log(np.maximum(group_weight, 1e-300) / n_regions)).sum()
    ) - 0.5 * n_regions * dim * (math.log(2 * math.pi * variance) + 1)
    parameters = (n_groups - 1) + n_groups * dim + 1
    return log_likelihood - 0.5 * parameters * math.log(n_regions)


def laplacian_eigenvalues(distances: np.ndarray, weights: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` smallest eigenvalues of the normalised Laplacian of the regions' affinity
    ``w_i w_j exp(-d_ij^2 / (2 s^2))`` (``s`` the median pairwise distance)."""
    off_diagonal = distances[~np.eye(len(distances), dtype=bool)]
    scale = float(np.median(off_diagonal)) if off_diagonal.size else 1.0
    affinity = np.exp(-(distances**2) / (2 * max(scale, 1e-12) ** 2))
    affinity *= np.outer(weights, weights) / weights.mean() ** 2
    np.fill_diagonal(affinity, 0)
    degree = np.maximum(affinity.sum(axis=1), 1e-300)
    inverse_root = 1 / np.sqrt(degree)
    laplacian = np.eye(len(distances)) - inverse_root[:, None] * affinity * inverse_root[None, :]
    return np.linalg.eigvalsh(laplacian)[:count]


def criterion_scores(
    features: np.ndarray,
    labels_of_n: dict[int, np.ndarray],
    weights: np.ndarray,
    criterion: str,
    *,
    seed: int = 0,
) -> dict[int, float]:
    """Score each candidate labelling with ``criterion`` (higher is better).

    Parameters
    ----------
    features
        ``[R, F]`` region descriptors (the space k-means ran in).
    labels_of_n
        Candidate number of groups N -> ``[R]`` k-means labels 0..N-1.
    weights
        ``[R]`` region weights (patch counts, or ones).
    criterion
        One of :data:`CRITERIA`.
    seed
        Seeds the sample of regions of the pairwise criteria on slides with more than
        :data:`MAX_PAIRWISE_REGIONS` regions.

    Returns
    -------
    dict[int, float]
        N -> score, in the order of ``labels_of_n``.
    """
    check_criterion(criterion)
    features = np.asarray(features, np.float64)
    weights = np.asarray(weights, np.float64)
    if criterion in ("silhouette", "eigengap"):
        sample = pairwise_sample(len(features), seed)
        distances = pairwise_distances(features[sample])
        if criterion == "eigengap":
            largest = max(labels_of_n, default=1)
            eigenvalues = laplacian_eigenvalues(distances, weights[sample], min(largest + 1, len(sample)))
            return {
                n: float(np.diff(eigenvalues)[n - 1]) if n < len(eigenvalues) else 0.0 for n in labels_of_n
            }
        return {
            n: weighted_silhouette(distances, _dense(labels[sample]), weights[sample])
            for n, labels in labels_of_n.items()
        }
    score = {
        "calinski_harabasz": calinski_harabasz,
        "davies_bouldin": davies_bouldin_score,
        "bic": spherical_bic,
    }
    return {n: score[criterion](features, labels, weights) for n, labels in labels_of_n.items()}


def _dense(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..G-1 (a sample of the regions may miss a group)."""
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


def pick_n_groups(scores: dict[int, float], tolerance: float = 0.0) -> int:
    """The number of groups the scores choose: the smallest N whose score is within
    ``tolerance`` x (max - min) of the best (``tolerance=0``: the best; ties go to the smaller N).

    Raises
    ------
    ValueError
        When there are no scores.
    """
    if not scores:
        raise ValueError("no candidate number of groups to choose from")
    values = np.array([scores[n] for n in sorted(scores)], np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return min(scores)
    best, worst = values.max(), finite.min()
    margin = tolerance * (best - worst) if math.isfinite(best) else 0.0
    return int(sorted(scores)[int(np.flatnonzero(values >= best - margin)[0])])
