"""Partition metrics on hand-computable grids."""

import numpy as np
import pytest

from napari_care.core.partition_metrics import (
    adjusted_rand_index,
    boundary_recall,
    fixed_block_partition,
    grid_edges,
    region_coherence,
    region_purity,
    segmentation_accuracy,
)


def full_grid(width: int, height: int) -> np.ndarray:
    gx, gy = np.meshgrid(np.arange(width), np.arange(height))
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def test_purity_and_accuracy_by_hand():
    regions = np.array([0, 0, 1, 1, 1])
    truth = np.array([0, 1, 1, 1, 1])
    np.testing.assert_allclose(region_purity(regions, truth), [0.5, 1.0])
    assert segmentation_accuracy(regions, truth) == pytest.approx(4 / 5)
    # Region and truth ids need not be dense or start at 0.
    assert segmentation_accuracy(regions * 7 + 3, truth + 10) == pytest.approx(4 / 5)


def test_adjusted_rand_index_ignores_label_names():
    truth = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(np.array([5, 5, 9, 9, 1, 1]), truth) == pytest.approx(1.0)
    assert adjusted_rand_index(np.array([0, 1, 0, 1, 0, 1]), truth) < 0.0


def test_grid_edges_count_and_duplicates():
    first, second = grid_edges(full_grid(5, 3))
    assert len(first) == 4 * 3 + 5 * 2
    grid = full_grid(5, 3)
    step = np.abs(grid[first] - grid[second]).sum(axis=1)
    assert np.all(step == 1)
    with pytest.raises(ValueError, match="same cell"):
        grid_edges(np.array([[0, 0], [1, 0], [0, 0]]))


def test_boundary_recall_with_tolerance():
    grid = full_grid(8, 2)
    truth = (grid[:, 0] >= 4).astype(int)  # true boundary between x=3 and x=4
    assert boundary_recall(truth, truth, grid) == 1.0
    shifted_one = (grid[:, 0] >= 5).astype(int)  # one patch off
    assert boundary_recall(shifted_one, truth, grid, tolerance=0) == 0.0
    assert boundary_recall(shifted_one, truth, grid, tolerance=1) == 1.0
    shifted_two = (grid[:, 0] >= 2).astype(int)  # two patches off
    assert boundary_recall(shifted_two, truth, grid, tolerance=1) == 0.0
    assert boundary_recall(shifted_two, truth, grid, tolerance=2) == 1.0
    half = np.where(grid[:, 1] == 0, truth, 0)  # only the top row is cut
    assert boundary_recall(half, truth, grid) == 0.5
    assert boundary_recall(truth, np.zeros(len(grid), int), grid) == 1.0  # no true boundary
    with pytest.raises(ValueError, match="tolerance"):
        boundary_recall(truth, truth, grid, tolerance=-1)


def test_region_coherence_counts_fragments():
    grid = full_grid(3, 1)
    assert region_coherence(np.array([0, 0, 1]), grid) == 1.0
    assert region_coherence(np.array([0, 1, 0]), grid) == pytest.approx(2 / 3)
    # Diagonal neighbours are not connected (4-neighbourhood).
    square = full_grid(2, 2)  # (0,0) (1,0) (0,1) (1,1)
    assert region_coherence(np.array([0, 1, 1, 0]), square) == pytest.approx(2 / 4)


def test_fixed_block_partition_is_row_major_blocks():
    grid = full_grid(4, 4)
    blocks = fixed_block_partition(grid, k=2)
    expected = (grid[:, 1] // 2) * 2 + grid[:, 0] // 2
    np.testing.assert_array_equal(blocks, expected)
    assert segmentation_accuracy(blocks, expected) == 1.0


def test_bad_inputs_name_the_argument():
    grid = full_grid(2, 2)
    with pytest.raises(ValueError, match="truth"):
        boundary_recall(np.zeros(4, int), np.zeros(3, int), grid)
    with pytest.raises(ValueError, match="region_of_patch"):
        region_coherence(np.zeros(4, float), grid)
    with pytest.raises(ValueError, match="grid"):
        region_coherence(np.zeros(4, int), np.zeros((4, 3), int))
