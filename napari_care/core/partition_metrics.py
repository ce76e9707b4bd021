"""How well a partition of the patch grid into regions follows a known tissue labelling.

Used to compare CARE's adaptive regions with fixed k x k blocks (the ablation baseline) on
synthetic slides and against annotations. All functions take per-patch integer labels and,
where adjacency matters, the ``[N, 2]`` (gx, gy) patch grid; two patches are adjacent when
they share a side (4-neighbourhood).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import scipy.sparse
import scipy.sparse.csgraph

from napari_care.core.models.care_blocks import DEFAULT_K, block_partition, check_grid


def _labels(values: np.ndarray, name: str, n: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype.kind not in "iub":
        raise ValueError(
            f"{name} must be a 1-d integer array of per-patch labels, got {array.dtype} {array.shape}"
        )
    if n is not None and len(array) != n:
        raise ValueError(f"{name} has {len(array)} entries, expected {n} (one per patch)")
    return array.astype(np.int64, copy=False)


def _contingency(region_of_patch: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``[R, T]`` patch counts of each (region, truth label) pair (labels made dense first)."""
    region = np.unique(_labels(region_of_patch, "region_of_patch"), return_inverse=True)[1].reshape(-1)
    label = np.unique(_labels(truth, "truth", len(region)), return_inverse=True)[1].reshape(-1)
    table = scipy.sparse.coo_matrix((np.ones(len(region)), (region, label)))
    return np.asarray(table.todense(), dtype=np.int64)


def region_purity(region_of_patch: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``[R]`` share of each region's patches that carry its majority truth label.

    Regions are ordered by sorted region label.
    """
    table = _contingency(region_of_patch, truth)
    return table.max(axis=1) / table.sum(axis=1)


def segmentation_accuracy(region_of_patch: np.ndarray, truth: np.ndarray) -> float:
    """Achievable segmentation accuracy (overall purity).

    Every region is labelled with its majority truth label; the result is the share of
    patches whose label is then right (1.0 when no region straddles a tissue boundary).
    """
    table = _contingency(region_of_patch, truth)
    return float(table.max(axis=1).sum() / table.sum())


def adjusted_rand_index(region_of_patch: np.ndarray, truth: np.ndarray) -> float:
    """Adjusted Rand index between the regions and the truth labels (scikit-learn)."""
    from sklearn.metrics import adjusted_rand_score  # scikit-learn takes seconds to import

    region = _labels(region_of_patch, "region_of_patch")
    return float(adjusted_rand_score(_labels(truth, "truth", len(region)), region))


def grid_edges(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of side-adjacent patches.

    Parameters
    ----------
    grid
        ``[N, 2]`` (gx, gy) patch-grid indices (duplicates not allowed).

    Returns
    -------
    (first, second)
        ``[M]`` int64 patch indices; each pair appears once (``second`` is right of or
        below ``first``).
    """
    grid = check_grid(grid)
    low = grid.min(axis=0)
    width = int(grid[:, 0].max() - low[0]) + 2  # one spare column so x + 1 never wraps
    key = (grid[:, 1] - low[1]) * width + (grid[:, 0] - low[0])
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    if np.any(sorted_key[1:] == sorted_key[:-1]):
        raise ValueError("grid has two patches on the same cell")
    firsts, seconds = [], []
    for step in (1, width):
        position = np.minimum(np.searchsorted(sorted_key, key + step), len(key) - 1)
        found = sorted_key[position] == key + step
        firsts.append(np.flatnonzero(found))
        seconds.append(order[position[found]])
    return np.concatenate(firsts), np.concatenate(seconds)


def boundary_recall(
    region_of_patch: np.ndarray, truth: np.ndarray, grid: np.ndarray, tolerance: int = 0
) -> float:
    """Share of true boundary edges that the regions also cut.

    A true boundary edge joins two adjacent patches with different truth labels. With
    ``tolerance=0`` it is recalled when its two patches lie in different regions; with
    ``tolerance=t`` when some region boundary edge lies within ``t`` patches of it
    (Chebyshev distance between edge midpoints). 1.0 when there is no true boundary.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 patches, got {tolerance}")
    grid = check_grid(grid)
    region = _labels(region_of_patch, "region_of_patch", len(grid))
    label = _labels(truth, "truth", len(grid))
    first, second = grid_edges(grid)
    true_cut = label[first] != label[second]
    if not true_cut.any():
        return 1.0
    region_cut = region[first] != region[second]
    if tolerance == 0:
        return float(region_cut[true_cut].mean())
    # Edge midpoints on a grid of half-patch steps: (gx_a + gx_b, gy_a + gy_b) is an integer pair.
    midpoint = grid[first] + grid[second]
    midpoint -= midpoint.min(axis=0)
    raster = np.zeros(tuple(midpoint.max(axis=0)[::-1] + 1), dtype=bool)
    cut_points = midpoint[region_cut]
    raster[cut_points[:, 1], cut_points[:, 0]] = True
    near = scipy.ndimage.binary_dilation(raster, structure=np.ones((4 * tolerance + 1,) * 2, dtype=bool))
    true_points = midpoint[true_cut]
    return float(near[true_points[:, 1], true_points[:, 0]].mean())


def region_coherence(region_of_patch: np.ndarray, grid: np.ndarray) -> float:
    """Share of patches in the largest side-connected piece of their own region.

    1.0 when every region is one connected piece; fragmented (salt-and-pepper) regions
    score lower.
    """
    grid = check_grid(grid)
    region = _labels(region_of_patch, "region_of_patch", len(grid))
    first, second = grid_edges(grid)
    same = region[first] == region[second]
    graph = scipy.sparse.coo_matrix(
        (np.ones(int(same.sum())), (first[same], second[same])), shape=(len(grid), len(grid))
    )
    _, piece = scipy.sparse.csgraph.connected_components(graph, directed=False)
    piece_size = np.bincount(piece)
    # The largest piece of each region: sort pieces by (region, size) and keep the last per region.
    piece_region = np.zeros(len(piece_size), np.int64)
    piece_region[piece] = region
    order = np.lexsort((piece_size, piece_region))
    last = np.r_[piece_region[order][1:] != piece_region[order][:-1], True]
    return float(piece_size[order][last].sum() / len(grid))


def fixed_block_partition(grid: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """``[N]`` int64 region ids of the fixed k x k block partition (the ablation baseline)."""
    return block_partition(grid, k).block_of_patch
