"""Block geometry of CARE: k x k blocks of the patch grid, candidate blocks, soft containment.

numpy only, shared by the trained model (:mod:`.care`) and the training-free generator
(:mod:`.care_free`). Everything here depends on the grid alone, never on patch order, so
the outputs of both modes permute with the patches.

Soft containment (the paper leaves kernel and temperature open; this is the project's
choice): a block's anchor is the centre of its k x k cells in grid units,
``(b * k + (k - 1) / 2)`` per axis; for patch j and block i of the 3 x 3 block
neighbourhood of j's own block,

    C[j, i] = softmax_i( -(|g_j - anchor_i| / k)^2 / temperature )

i.e. a Gaussian kernel on the distance measured in block sides, normalised over the
non-empty blocks of that neighbourhood. Blocks further away never make the top 3 when the
neighbourhood is full (its 4 nearest anchors are always inside it), so restricting C to the
neighbourhood keeps memory and time linear in N. Where neighbours are empty a patch has
fewer than ``n_candidates`` candidates; the missing slots hold block -1 and containment 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

DEFAULT_K = 8
DEFAULT_N_CANDIDATES = 3
#: Containment temperature in squared block sides. With 0.5 and k = 8 a patch on a block
#: edge leaves its own block for a 1.3x better semantic affinity, one next to the anchor
#: needs 5.8x (a cosine gain of 0.18 at similarity temperature 0.1): blocks stay whole in
#: uniform tissue and are re-cut along tissue changes.
DEFAULT_CONTAINMENT_TEMPERATURE = 0.5
#: Temperature of the softmaxes over cosine similarities that make the affinity rho.
DEFAULT_SIMILARITY_TEMPERATURE = 0.1
#: Share of the coverage prior in the region weight ``a = lambda * alpha + (1 - lambda) * beta``.
DEFAULT_LAMBDA_SPF = 0.5
#: Target expected candidate rank of the region structuring loss.
DEFAULT_E_STAR = 0.5


def neighbour_offsets(radius: int = 1) -> np.ndarray:
    """``[(2r+1)^2, 2]`` int64 (dx, dy) offsets of a square neighbourhood, row-major (dy outer).

    The centre (0, 0) is at index ``len // 2`` (4 for radius 1).
    """
    steps = np.arange(-radius, radius + 1)
    return np.array([(dx, dy) for dy in steps for dx in steps], dtype=np.int64).reshape(-1, 2)


_NEIGHBOUR_OFFSETS = neighbour_offsets(1)


@dataclass(frozen=True)
class BlockPartition:
    """The non-empty k x k blocks of one or more slides' patch grids.

    Attributes
    ----------
    k
        Block side in patches.
    block_of_patch
        ``[N]`` int64, block id of each patch (0..B-1). Blocks are ordered by slide, then
        row (``by``), then column (``bx``).
    block_xy
        ``[B, 2]`` int64, block indices ``(bx, by) = (gx // k, gy // k)``.
    slide_of_block
        ``[B]`` int64, the slide each block belongs to (all 0 for one slide).
    neighbours
        ``[B, 9]`` int64, ids of the 3 x 3 neighbourhood blocks (row-major, own block at
        column 4), -1 where that block is empty.
    """

    k: int
    block_of_patch: np.ndarray
    block_xy: np.ndarray
    slide_of_block: np.ndarray
    neighbours: np.ndarray

    @property
    def n_blocks(self) -> int:
        """Number of non-empty blocks B."""
        return len(self.block_xy)

    @property
    def anchors(self) -> np.ndarray:
        """``[B, 2]`` float64 block centres in grid units (x, y)."""
        return self.block_xy * self.k + (self.k - 1) / 2.0


@dataclass(frozen=True)
class Candidates:
    """The candidate blocks of every patch, nearest first.

    Attributes
    ----------
    blocks
        ``[N, c]`` int64 block ids, ranked 0..c-1 by containment (-1 for a missing slot).
    containment
        ``[N, c]`` float64 soft containment ``C[j, block]`` (0 for a missing slot).
    """

    blocks: np.ndarray
    containment: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """``[N, c]`` bool, True where the slot holds a block."""
        return self.blocks >= 0


def check_grid(grid: np.ndarray, n_patches: int | None = None, name: str = "grid") -> np.ndarray:
    """Validate patch-grid indices and return them as ``[N, 2]`` int64.

    Parameters
    ----------
    grid
        ``[N, 2]`` integer (gx, gy) patch-grid indices.
    n_patches
        Expected N (the number of feature rows), if known.
    name
        Argument name used in error messages.
    """
    array = np.asarray(grid)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must have shape [N, 2] (gx, gy), got {array.shape}")
    if n_patches is not None and len(array) != n_patches:
        raise ValueError(f"{name} has {len(array)} rows but there are {n_patches} patch features")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError(f"{name} must hold integer patch-grid indices")
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def block_partition(
    grid: np.ndarray, k: int = DEFAULT_K, slide_of_patch: np.ndarray | None = None
) -> BlockPartition:
    """Cut the patch grid into non-overlapping k x k blocks ``(gx // k, gy // k)``.

    Parameters
    ----------
    grid
        ``[N, 2]`` integer (gx, gy) patch-grid indices.
    k
        Block side in patches (the paper's best is 8).
    slide_of_patch
        ``[N]`` slide index of each patch when several slides are stacked; blocks never
        span slides. Default: one slide.

    Returns
    -------
    BlockPartition
    """
    if k < 1:
        raise ValueError(f"block side k must be >= 1, got {k}")
    grid = check_grid(grid)
    if len(grid) == 0:
        raise ValueError("grid is empty: a slide needs at least one patch")
    slide = np.zeros(len(grid), np.int64) if slide_of_patch is None else np.asarray(slide_of_patch, np.int64)
    if slide.shape != (len(grid),):
        raise ValueError(f"slide_of_patch must have shape ({len(grid)},), got {slide.shape}")
    block_xy = np.floor_divide(grid, k)
    low = block_xy.min(axis=0)
    span = block_xy.max(axis=0) - low + 1
    key = (slide * span[1] + (block_xy[:, 1] - low[1])) * span[0] + (block_xy[:, 0] - low[0])
    keys, block_of_patch = np.unique(key, return_inverse=True)
    block_xy_unique = np.stack([keys % span[0] + low[0], (keys // span[0]) % span[1] + low[1]], axis=1)
    slide_of_block = keys // (span[0] * span[1])
    return BlockPartition(
        k=k,
        block_of_patch=block_of_patch.reshape(-1),
        block_xy=block_xy_unique,
        slide_of_block=slide_of_block,
        neighbours=neighbour_blocks(block_xy_unique, slide_of_block, radius=1),
    )


def neighbour_blocks(block_xy: np.ndarray, slide_of_block: np.ndarray, radius: int = 1) -> np.ndarray:
    """Ids of the blocks around each block.

    Parameters
    ----------
    block_xy, slide_of_block
        ``[B, 2]`` block indices and ``[B]`` slides, sorted by (slide, by, bx) as in
        :class:`BlockPartition`.
    radius
        Neighbourhood radius in blocks.

    Returns
    -------
    np.ndarray
        ``[B, (2r+1)^2]`` int64 block ids at :func:`neighbour_offsets` (-1 where empty).
    """
    offsets = neighbour_offsets(radius)
    # A margin of `radius` empty blocks on each side, so offsets never wrap to another row.
    low = block_xy.min(axis=0) - radius
    span = block_xy.max(axis=0) - low + radius + 1
    keys = (slide_of_block * span[1] + (block_xy[:, 1] - low[1])) * span[0] + (block_xy[:, 0] - low[0])
    wanted = keys[:, None] + offsets[:, 1] * span[0] + offsets[:, 0]
    position = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[position] == wanted, position, -1)


def candidate_blocks(
    grid: np.ndarray,
    partition: BlockPartition,
    n_candidates: int = DEFAULT_N_CANDIDATES,
    temperature: float = DEFAULT_CONTAINMENT_TEMPERATURE,
) -> Candidates:
    """The ``n_candidates`` blocks with the highest soft containment for each patch.

    Parameters
    ----------
    grid
        ``[N, 2]`` (gx, gy) patch-grid indices, the same as given to :func:`block_partition`.
    partition
        The blocks of that grid.
    n_candidates
        Candidates per patch (the paper uses 3), at most 9.
    temperature
        Containment temperature in squared block sides (see the module docstring).

    Returns
    -------
    Candidates
        Ranked by containment; ties (equal distance) broken by neighbourhood order.
    """
    if not 1 <= n_candidates <= 9:
        raise ValueError(f"n_candidates must be in 1..9 (the 3 x 3 block neighbourhood), got {n_candidates}")
    if temperature <= 0:
        raise ValueError(f"containment temperature must be positive, got {temperature}")
    grid = check_grid(grid, len(partition.block_of_patch))
    neighbours = partition.neighbours[partition.block_of_patch]  # [N, 9]
    offset = grid[:, None, :] - partition.anchors[np.maximum(neighbours, 0)]  # [N, 9, 2]
    distance2 = np.einsum("nij,nij->ni", offset, offset) / float(partition.k) ** 2
    distance2[neighbours < 0] = np.inf
    logits = -distance2 / temperature
    logits -= logits.max(axis=1, keepdims=True)  # the own block is always present and finite
    weight = np.exp(logits)
    containment = weight / weight.sum(axis=1, keepdims=True)
    order = np.argsort(distance2, axis=1, kind="stable")[:, :n_candidates]
    blocks = np.take_along_axis(neighbours, order, axis=1)
    containment = np.where(blocks >= 0, np.take_along_axis(containment, order, axis=1), 0.0)
    return Candidates(blocks=blocks, containment=containment)


def offset_in_block(grid: np.ndarray, k: int) -> np.ndarray:
    """``[N]`` int64 row-major position of each patch inside its k x k block (0..k*k-1)."""
    grid = check_grid(grid)
    local = grid - np.floor_divide(grid, k) * k
    return local[:, 1] * k + local[:, 0]


def group_sum_matrix(group: np.ndarray, n_groups: int) -> scipy.sparse.csr_matrix:
    """Sparse ``[n_groups, N]`` 0/1 matrix whose product with ``[N, D]`` values sums each group.

    A sparse product reads the values once and never copies them (unlike sorting them),
    which matters for 100k x 768 features.
    """
    group = np.asarray(group, np.int64)
    ones = np.ones(len(group), np.float32)
    return scipy.sparse.csr_matrix((ones, (group, np.arange(len(group)))), shape=(n_groups, len(group)))


def feature_moments(
    features: np.ndarray, *, eps: float = 1e-6, chunk_rows: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation of ``features`` ``[N, D]``, without an N x D copy.

    Chunks of ``chunk_rows`` rows are summed in their own dtype, totals in float64; the
    standard deviation is at least ``eps``, so it can divide.
    """
    total = np.zeros(features.shape[1])
    total_sq = np.zeros(features.shape[1])
    for start in range(0, len(features), chunk_rows):
        chunk = features[start : start + chunk_rows]
        total += chunk.sum(axis=0, dtype=np.float64)
        total_sq += np.einsum("nd,nd->d", chunk, chunk)
    mean = total / len(features)
    std = np.sqrt(np.maximum(total_sq / len(features) - mean**2, 0.0))
    return mean, np.maximum(std, eps)


def group_mean(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean of ``values`` ``[N, D]`` over each group 0..n_groups-1 (0 for an empty group)."""
    counts = np.bincount(group, minlength=n_groups).astype(np.float64)
    sums = np.asarray(group_sum_matrix(group, n_groups) @ values)
    return (sums / np.maximum(counts, 1.0)[:, None]).astype(values.dtype, copy=False)


def dense_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel integer labels to 0..R-1 in increasing order of the original label.

    Returns
    -------
    (dense, original)
        ``[N]`` int64 dense labels and ``[R]`` the original label of each dense one.
    """
    original, dense = np.unique(np.asarray(labels), return_inverse=True)
    return dense.reshape(-1).astype(np.int64), original


def grid_neighbourhood(grid: np.ndarray, slide_of_patch: np.ndarray | None = None) -> np.ndarray:
    """``[N, 9]`` int64 index of the patch at each of the 3 x 3 grid offsets (-1 where none).

    Row-major offsets (dy outer, dx inner); column 4 is the patch itself. Duplicated grid
    cells resolve to one of the duplicates. With ``slide_of_patch``, neighbours are found
    within each patch's own slide only.
    """
    grid = check_grid(grid)
    slide = np.zeros(len(grid), np.int64) if slide_of_patch is None else np.asarray(slide_of_patch, np.int64)
    low = grid.min(axis=0) - 1
    width = int(grid[:, 0].max() - low[0]) + 2
    height = int(grid[:, 1].max() - low[1]) + 2  # a margin row: a neighbour never reaches the next slide
    key = (slide * height + grid[:, 1] - low[1]) * width + (grid[:, 0] - low[0])
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    wanted = key[:, None] + _NEIGHBOUR_OFFSETS[:, 1] * width + _NEIGHBOUR_OFFSETS[:, 0]
    position = np.minimum(np.searchsorted(sorted_key, wanted), len(key) - 1)
    return np.where(sorted_key[position] == wanted, order[position], -1)
