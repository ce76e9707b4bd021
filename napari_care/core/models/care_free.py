"""Training-free CARE: the adaptive region generator with no learned parameter.

The same pipeline as :class:`~napari_care.core.models.care.CareModel` (blocks, soft
containment, 3 candidates, ``w = rho * C``, argmax, coverage and semantic weights), with
every learned part replaced by a fixed one (this project's choices):

- features are standardised per dimension over the slide (mean 0, variance 1), so that the
  cosine similarity compares tissue types rather than the encoder's common offset;
- the projections are identities and ``g_cls = g_q`` = the block's mean standardised
  feature, so the paper's four softmaxes reduce to two:
  ``rho[j, c] = mean over views v of softmax_c(cos(v_j, g_c) / similarity_temperature)``;
- the augmented patch view is ``"smooth"`` (default): its cosine with a block is the mean
  cosine of the patch's 3 x 3 grid neighbourhood with that block (a fixed smoothing of the
  similarity map). It damps single-patch noise, so uniform tissue keeps its blocks while a
  real tissue change still moves patches (on a noisy synthetic wavy boundary: regions as
  pure as with the raw view, fragmentation 1% instead of 9%). ``"identity"`` uses the
  patch feature itself (one view);
- ``refine_iterations`` (default 2): after the paper's single pass, each block's feature is
  re-estimated as the mean of the patches that joined it and every patch chooses again
  among the same candidates (a k-means-like refinement, as SLIC superpixels do). The
  candidates and containment do not change, so a region stays a re-cut of its block; the
  block features lose the other tissue they mixed in, so more patches find their tissue's
  region (``benchmarks/bench_care_sensitivity.py`` measures it on test seeds that no
  choice saw: docs/care.md, "Sensitivity of the training-free constants"). ``0`` is the
  single pass;
- a region's feature is the mean (raw, not standardised) feature of its patches (E = D);
- ``beta`` is ``"novelty"`` (default: proportional to the distance of the region's mean
  standardised feature from the slide mean, i.e. how unusual the region is on this slide)
  or ``"uniform"``.

Pure numpy, a few passes over the features, memory and time linear in N (100k x 768
random features: 0.7 s for the single pass, 1.9 s with the 2 refinements, on 2 quiet CPU
cores; ``benchmarks/bench_care_scaling.py`` prints the figures).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from threadpoolctl import threadpool_limits

from napari_care.core.care_result import CareResult
from napari_care.core.models.care_blocks import (
    DEFAULT_CONTAINMENT_TEMPERATURE,
    DEFAULT_E_STAR,
    DEFAULT_K,
    DEFAULT_LAMBDA_SPF,
    DEFAULT_N_CANDIDATES,
    DEFAULT_SIMILARITY_TEMPERATURE,
    BlockPartition,
    Candidates,
    block_partition,
    candidate_blocks,
    check_grid,
    dense_labels,
    feature_moments,
    grid_neighbourhood,
    group_mean,
    neighbour_blocks,
)

BETA_MODES = ("novelty", "uniform")
AUGMENTED_VIEWS = ("smooth", "identity")
_CHUNK_ROWS = 8192
_EPS = 1e-6


@dataclass(frozen=True)
class CareFreeConfig:
    """Options of the training-free generator.

    Parameters
    ----------
    k
        Block side in patches.
    n_candidates
        Candidate blocks per patch.
    containment_temperature
        Temperature of the soft containment, in squared block sides (lower: stiffer grid).
    similarity_temperature
        Temperature of the softmax over cosine similarities (lower: semantics weigh more).
    assignment_temperature
        ``p = softmax(log w / t)``, the soft assignment behind the expected rank.
    lambda_spf
        Share of the coverage prior in ``a``.
    e_star
        Target expected rank of the region structuring loss (reported, not optimised).
    beta
        ``"novelty"`` or ``"uniform"`` (see the module docstring).
    augmented_view
        ``"smooth"`` or ``"identity"`` (see the module docstring).
    refine_iterations
        Re-estimations of the block features from the patches that joined them, each
        followed by a new choice (see the module docstring); 0 = the paper's single pass.
    """

    k: int = DEFAULT_K
    n_candidates: int = DEFAULT_N_CANDIDATES
    containment_temperature: float = DEFAULT_CONTAINMENT_TEMPERATURE
    similarity_temperature: float = DEFAULT_SIMILARITY_TEMPERATURE
    assignment_temperature: float = 1.0
    lambda_spf: float = DEFAULT_LAMBDA_SPF
    e_star: float = DEFAULT_E_STAR
    beta: str = "novelty"
    augmented_view: str = "smooth"
    refine_iterations: int = 2

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"CareFreeConfig.k must be >= 1, got {self.k}")
        for name in ("containment_temperature", "similarity_temperature", "assignment_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CareFreeConfig.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.lambda_spf <= 1.0:
            raise ValueError(f"CareFreeConfig.lambda_spf must be in [0, 1], got {self.lambda_spf}")
        if self.beta not in BETA_MODES:
            raise ValueError(f"CareFreeConfig.beta must be one of {BETA_MODES}, got {self.beta!r}")
        if self.augmented_view not in AUGMENTED_VIEWS:
            raise ValueError(
                f"CareFreeConfig.augmented_view must be one of {AUGMENTED_VIEWS}, got {self.augmented_view!r}"
            )
        if self.refine_iterations < 0:
            raise ValueError(f"CareFreeConfig.refine_iterations must be >= 0, got {self.refine_iterations}")
        if not 1 <= self.n_candidates <= 9:
            raise ValueError(f"CareFreeConfig.n_candidates must be in 1..9, got {self.n_candidates}")


class _BlockRows(NamedTuple):
    """Patches grouped by block (``order[start:end]`` per block) and each block's 5 x 5 neighbourhood."""

    order: np.ndarray
    ends: np.ndarray
    neighbourhood: np.ndarray


def _block_rows(partition: BlockPartition) -> _BlockRows:
    """The block grouping of :func:`_block_scores`, the same for every refinement pass."""
    return _BlockRows(
        np.argsort(partition.block_of_patch, kind="stable"),
        np.cumsum(np.bincount(partition.block_of_patch, minlength=partition.n_blocks)),
        neighbour_blocks(partition.block_xy, partition.slide_of_block, radius=2),
    )


def _block_scores(
    features: np.ndarray, mean: np.ndarray, std: np.ndarray, unit_blocks: np.ndarray, blocks: _BlockRows
) -> np.ndarray:
    """``[N, 25]`` cosine of each standardised patch feature with the blocks of its 5 x 5 block neighbourhood.

    Block by block: the patches of one block share one neighbourhood, so one small matrix
    product scores them all, without gathering ``[N, c, D]`` copies of block features.
    The 5 x 5 (not 3 x 3) table also serves the smoothed view, whose grid neighbours may
    sit one block further away.
    """
    scale = (1.0 / std).astype(np.float32)
    shift = (mean / std).astype(np.float32)
    scores = np.zeros((len(blocks.order), blocks.neighbourhood.shape[1]), np.float32)
    # Thousands of tiny products: BLAS threads only add hand-off cost (10x slower on a busy machine).
    with threadpool_limits(limits=1, user_api="blas"):
        for block, (start, end) in enumerate(zip(np.r_[0, blocks.ends[:-1]], blocks.ends, strict=True)):
            rows = blocks.order[start:end]
            standardised = features[rows]
            standardised *= scale
            standardised -= shift
            norms = np.maximum(np.linalg.norm(standardised, axis=1), _EPS)
            scores[rows] = (standardised @ unit_blocks[np.maximum(blocks.neighbourhood[block], 0)].T) / norms[
                :, None
            ]
    return scores


def _candidate_cosines(
    scores: np.ndarray, partition: BlockPartition, candidates: Candidates, patch_neighbours: np.ndarray | None
) -> list[np.ndarray]:
    """``[N, c]`` cosines of the patch view and, with ``patch_neighbours``, of the smoothed view.

    The smoothed view's cosine is the mean cosine over the patch's 3 x 3 grid neighbourhood
    (``patch_neighbours``, ``[N, 9]``) with the same candidate block.
    """
    own_xy = partition.block_xy[partition.block_of_patch]
    candidate_offset = partition.block_xy[np.maximum(candidates.blocks, 0)] - own_xy[:, None, :]  # in [-1, 1]
    candidate_offset[~candidates.valid] = 0  # missing slots: any column will do, they are masked later

    def column(offset: np.ndarray) -> np.ndarray:  # (dx, dy) in [-2, 2] -> column of the 5 x 5 table
        return (offset[..., 1] + 2) * 5 + offset[..., 0] + 2

    views = [np.take_along_axis(scores, column(candidate_offset), axis=1)]
    if patch_neighbours is not None:
        total = np.zeros(candidates.blocks.shape, np.float32)
        count = np.zeros(len(scores), np.float32)
        for neighbour in patch_neighbours.T:
            present = neighbour >= 0
            safe = np.maximum(neighbour, 0)
            shift = np.where(present[:, None], partition.block_xy[partition.block_of_patch[safe]] - own_xy, 0)
            cosine = np.take_along_axis(scores[safe], column(candidate_offset - shift[:, None, :]), axis=1)
            total += np.where(present[:, None], cosine, 0.0)
            count += present
        views.append(total / count[:, None])
    return views


def _masked_softmax(logits: np.ndarray, valid: np.ndarray) -> np.ndarray:
    logits = np.where(valid, logits, -np.inf)
    weight = np.exp(logits - logits.max(axis=1, keepdims=True))
    return weight / weight.sum(axis=1, keepdims=True)


def _log_rho(
    features: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    raw_block_features: np.ndarray,
    blocks: _BlockRows,
    partition: BlockPartition,
    candidates: Candidates,
    smoothing: np.ndarray | None,
    config: CareFreeConfig,
) -> np.ndarray:
    """``[N, c]`` ``log rho`` of each patch's candidates (``-inf`` on missing slots)."""
    block_features = ((raw_block_features - mean) / std).astype(np.float32)
    unit_blocks = block_features / np.maximum(np.linalg.norm(block_features, axis=1, keepdims=True), _EPS)
    scores = _block_scores(features, mean, std, unit_blocks, blocks)
    cosines = _candidate_cosines(scores, partition, candidates, smoothing)
    # The mean of the views' softmaxes (g_cls = g_q, so the paper's four reduce to one or two).
    rho = np.mean(
        [_masked_softmax(cosine / config.similarity_temperature, candidates.valid) for cosine in cosines],
        axis=0,
    )
    with np.errstate(divide="ignore"):
        return np.where(candidates.valid, np.log(rho), -np.inf)


def _log_containment(candidates: Candidates) -> np.ndarray:
    """``[N, c]`` ``log C`` (``-inf`` on missing slots): ``argmax (log rho + log C)`` is the hard choice."""
    with np.errstate(divide="ignore"):
        return np.where(candidates.valid, np.log(candidates.containment), -np.inf)


def _refined_log_rho(
    features: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    partition: BlockPartition,
    candidates: Candidates,
    smoothing: np.ndarray | None,
    config: CareFreeConfig,
) -> np.ndarray:
    """``[N, c]`` ``log rho`` after the single pass and ``config.refine_iterations`` refinements."""
    blocks, log_containment = _block_rows(partition), _log_containment(candidates)
    raw_block_features = group_mean(features, partition.block_of_patch, partition.n_blocks)
    chosen_block = partition.block_of_patch
    for iteration in range(1 + config.refine_iterations):
        if iteration:
            # Refinement: a block's feature is the mean of the patches that chose it (a
            # block that every patch left keeps its last feature).
            members = np.bincount(chosen_block, minlength=partition.n_blocks) > 0
            raw_block_features = np.where(
                members[:, None], group_mean(features, chosen_block, partition.n_blocks), raw_block_features
            )
        log_rho = _log_rho(
            features, mean, std, raw_block_features, blocks, partition, candidates, smoothing, config
        )
        choice = np.argmax(log_rho + log_containment, axis=1)
        chosen_block = np.take_along_axis(candidates.blocks, choice[:, None], axis=1)[:, 0]
    return log_rho


def input_log_affinity(
    features: np.ndarray,
    grid: np.ndarray,
    slide_of_patch: np.ndarray,
    partition: BlockPartition,
    candidates: Candidates,
    config: CareFreeConfig,
) -> np.ndarray:
    """``log rho`` of the training-free generator for given blocks and candidates (several slides).

    The affinity a learned :class:`~napari_care.core.models.care.CareModel` can start from
    (``CareConfig.affinity_prior="input"``): features standardised per slide, the smoothed
    view and the refinement of ``config``, the blocks and candidates of the model.

    Parameters
    ----------
    features
        ``[N, D]`` patch features, slide by slide.
    grid
        ``[N, 2]`` (gx, gy) indices.
    slide_of_patch
        ``[N]`` slide of each patch (blocks and neighbourhoods never cross slides).
    partition, candidates
        Blocks of ``grid`` per slide and each patch's candidates.
    config
        Training-free options (its ``k`` must be the partition's).

    Returns
    -------
    np.ndarray
        ``[N, c]`` float32 ``log rho`` (``-inf`` at missing candidate slots); its softmax over
        the candidates is ``rho``, and ``argmax (log rho + log C)`` is the training-free choice.
    """
    features = np.asarray(features, np.float32)
    slide_of_patch = np.asarray(slide_of_patch, np.int64)
    standardised = np.empty_like(features)
    for slide in np.unique(slide_of_patch):
        rows = slide_of_patch == slide
        mean, std = feature_moments(features[rows])
        standardised[rows] = (features[rows] - mean) / std
    smoothing = None
    if config.augmented_view == "smooth":
        smoothing = grid_neighbourhood(grid, slide_of_patch)
    dim = features.shape[1]
    return _refined_log_rho(
        standardised, np.zeros(dim), np.ones(dim), partition, candidates, smoothing, config
    ).astype(np.float32)


def segment_free(features: np.ndarray, grid: np.ndarray, config: CareFreeConfig | None = None) -> CareResult:
    """Adaptive regions of one slide with the training-free generator.

    Parameters
    ----------
    features
        ``[N, D]`` patch features (any float dtype).
    grid
        ``[N, 2]`` integer (gx, gy) patch-grid indices.
    config
        Options; default :class:`CareFreeConfig`.

    Returns
    -------
    CareResult
        With ``mode="training-free"`` and region features in the input feature space.
    """
    config = CareFreeConfig() if config is None else config
    features = np.asarray(features)
    if features.ndim != 2 or len(features) == 0 or features.shape[1] == 0:
        raise ValueError(f"features must have shape [N, D] with N, D > 0, got {features.shape}")
    if features.dtype not in (np.float32, np.float64):
        features = features.astype(np.float32)
    grid = check_grid(grid, len(features))
    mean, std = feature_moments(features)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        raise ValueError("features contain NaN or infinite values")

    partition = block_partition(grid, config.k)
    candidates = candidate_blocks(grid, partition, config.n_candidates, config.containment_temperature)
    valid = candidates.valid
    smoothing = grid_neighbourhood(grid) if config.augmented_view == "smooth" else None
    # w = rho * C: argmax w is the hard choice, softmax(log w / t) the soft one.
    log_w = _refined_log_rho(
        features, mean, std, partition, candidates, smoothing, config
    ) + _log_containment(candidates)
    candidate_rank = np.argmax(log_w, axis=1).astype(np.int64)
    chosen_block = np.take_along_axis(candidates.blocks, candidate_rank[:, None], axis=1)[:, 0]
    soft = _masked_softmax(log_w / config.assignment_temperature, valid)
    expected_rank = float((soft @ np.arange(valid.shape[1])).mean())

    region_of_patch, _ = dense_labels(chosen_block)
    n_regions = int(region_of_patch.max()) + 1
    region_features = group_mean(features.astype(np.float32, copy=False), region_of_patch, n_regions)
    sizes = np.bincount(region_of_patch, minlength=n_regions).astype(np.float64)
    alpha = sizes / len(features)
    if config.beta == "novelty":
        novelty = np.linalg.norm((region_features - mean) / std, axis=1)
        beta = novelty / novelty.sum() if novelty.sum() > 0 else np.full(n_regions, 1.0 / n_regions)
    else:
        beta = np.full(n_regions, 1.0 / n_regions)
    a = config.lambda_spf * alpha + (1.0 - config.lambda_spf) * beta
    roi = int(np.argmax(a))
    return CareResult(
        region_of_patch=region_of_patch,
        region_features=region_features,
        alpha=alpha.astype(np.float32),
        beta=beta.astype(np.float32),
        a=a.astype(np.float32),
        roi=roi,
        roi_feature=region_features[roi].copy(),
        slide_embedding=(a @ region_features).astype(np.float32),
        patch_attention=(a / sizes)[region_of_patch].astype(np.float32),
        rsl=(expected_rank - config.e_star) ** 2,
        expected_rank=expected_rank,
        block_of_patch=partition.block_of_patch,
        candidate_rank=candidate_rank,
        grid=grid,
        k=config.k,
        mode="training-free",
    )
