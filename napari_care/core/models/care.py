"""CARE: Cross-modal Adaptive Region Encoder (arXiv 2602.21637), the slide model.

patch features ``x [N, D]`` and grid ``g [N, 2]``
  -> embed: ``h = LayerNorm(Linear(x))`` ``[N, E]``
  -> sub-regions: k x k blocks ``(gx // k, gy // k)``; self-attention with a CLS token in
     each non-empty block (``g_cls``) and cross-attention from a learnable query (``g_q``)
  -> ARG: 3 candidate blocks per patch by soft containment ``C``; ``rho`` = mean of four
     softmaxes of cosines {h, augmented h} x {g_cls, g_q}; join ``argmax rho * C``
  -> ARSA: self-attention with a CLS token inside each adaptive region -> ``g_ar [R, E]``
  -> SPF: ``a = lambda * alpha + (1 - lambda) * beta``, ``z = sum a_r g_ar[r]``, ROI = argmax a
  -> RSL: ``(E_bar - E_star)^2`` on the expected candidate rank.

Where the paper is silent (this project's choices, all config options): soft containment
(:mod:`.care_blocks`), ``p = softmax(log w)`` and the straight-through gate (:mod:`.care_arg`),
depth 1 for both attention stacks, a learned position embedding of the patch inside its
block, ARSA reading the embedded patches (not the block-contextualised ones, so a region
sees only its own patches), and the augmented view: ``h + aug_noise_std * noise`` while
training, ``h`` itself in eval mode (so inference is deterministic).

``affinity_prior="input"`` (an option and this project's choice; the default ``"none"`` is
the paper's generator as published): the affinity starts from the training-free one,
``rho = softmax_c(exp(t) * log rho_input + s * log rho_learned)``, where ``rho_input`` is
the training-free generator's affinity on the input features
(:func:`.care_free.input_log_affinity`: no parameters, no gradient) and ``t``, ``s`` are
learned scalars that start at 0. A fresh model cuts the slide exactly as the training-free
mode does; training moves the regions only as far as the loss pulls ``t``, ``s`` and the
learned affinity. Without it, a fresh model's regions come from random projections, and
the Stage I loss, which reaches the generator only through the straight-through gate and
the RSL, did not make them as pure as the training-free ones (generated slides, k = 4:
0.855 vs 0.907).

Attention runs on padded per-group batches (:mod:`.care_attention`): memory and time are
linear in N, never N x N.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from napari_care.core.models.care_arg import (
    candidate_affinity,
    hard_assignment,
    region_structuring_loss,
    soft_assignment,
)
from napari_care.core.models.care_attention import GroupEncoder
from napari_care.core.models.care_blocks import (
    block_partition,
    candidate_blocks,
    check_grid,
    dense_labels,
    offset_in_block,
)
from napari_care.core.models.care_config import AFFINITY_PRIORS, CareConfig  # noqa: F401 (re-exported)
from napari_care.core.models.care_free import CareFreeConfig, input_log_affinity
from napari_care.core.models.care_output import CareBatchOutput, CareOutput, pad_slides
from napari_care.core.models.care_spf import GatedAttention, fuse_region_weights

__all__ = ["CareBatchOutput", "CareConfig", "CareModel", "CareOutput", "pad_slides"]


class CareModel(nn.Module):
    """The CARE slide encoder (see the module docstring for the pipeline).

    Parameters
    ----------
    config
        Sizes and hyper-parameters.
    """

    config_cls = CareConfig

    def __init__(self, config: CareConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.embed = nn.Sequential(nn.Linear(config.in_dim, dim), nn.LayerNorm(dim))
        self.block_position = nn.Embedding(config.k * config.k, dim)
        nn.init.normal_(self.block_position.weight, std=0.02)
        self.block_encoder = GroupEncoder(
            dim,
            config.heads,
            config.block_depth,
            with_query=True,
            mlp_ratio=config.mlp_ratio,
            dropout=config.dropout,
        )
        self.region_encoder = GroupEncoder(
            dim, config.heads, config.region_depth, mlp_ratio=config.mlp_ratio, dropout=config.dropout
        )
        self.gate = GatedAttention(dim, config.gate_dim, config.dropout)
        if config.affinity_prior == "input":
            # Weights of the training-free affinity (exp(0) = 1, kept positive: similarity
            # never repels) and of the learned one (0) in log rho: a fresh model cuts regions
            # exactly as the training-free generator; the first lets the loss make the choice
            # more or less semantic, the second adds what the learned affinity knows.
            self.log_prior_scale = nn.Parameter(torch.zeros(()))
            self.affinity_scale = nn.Parameter(torch.zeros(()))

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.embed[0].weight.device

    def _with_input_prior(
        self,
        rho: torch.Tensor,
        features: torch.Tensor,
        grid: np.ndarray,
        slide_of_patch: np.ndarray,
        blocks,
        candidates,
    ) -> torch.Tensor:
        """``softmax_c(exp(t) * log rho_input + s * log rho)``: the training-free affinity plus
        the learned one."""
        cfg = self.config
        free = CareFreeConfig(
            k=cfg.k,
            n_candidates=cfg.n_candidates,
            containment_temperature=cfg.containment_temperature,
            similarity_temperature=cfg.similarity_temperature,
        )
        prior = input_log_affinity(
            features.detach().float().cpu().numpy(), grid, slide_of_patch, blocks, candidates, free
        )
        log_rho = torch.as_tensor(prior, dtype=rho.dtype, device=rho.device)
        finite = torch.isfinite(log_rho)
        learned = rho.clamp_min(1e-30).log().masked_fill(~finite, 0.0)
        combined = (
            self.log_prior_scale.exp() * log_rho.masked_fill(~finite, 0.0) + self.affinity_scale * learned
        )
        return torch.softmax(combined.masked_fill(~finite, float("-inf")), dim=1)

    def forward(self, features: torch.Tensor | np.ndarray, grid: torch.Tensor | np.ndarray) -> CareOutput:
        """Run CARE on one slide.

        Parameters
        ----------
        features
            ``[N, D]`` patch features.
        grid
            ``[N, 2]`` integer (gx, gy) patch-grid indices.

        Returns
        -------
        CareOutput
        """
        features = (
            torch.as_tensor(features, dtype=torch.float32, device=self.device)
            if not isinstance(features, torch.Tensor)
            else features
        )
        if features.dim() != 2:
            raise ValueError(f"CareModel.forward expects features [N, D], got {tuple(features.shape)}")
        grid_array = check_grid(grid.cpu().numpy() if isinstance(grid, torch.Tensor) else grid, len(features))
        return self.forward_batch(features[None], grid_array[None]).slide(0)

    def forward_batch(
        self, features: torch.Tensor, grid: torch.Tensor | np.ndarray, mask: torch.Tensor | None = None
    ) -> CareBatchOutput:
        """Run CARE on a padded batch of slides (see :func:`pad_slides`).

        Blocks, regions and weights never mix slides; all slides share one set of attention
        batches, so a batch costs the same as its patches would as one slide.

        Parameters
        ----------
        features
            ``[S, N_max, D]`` patch features.
        grid
            ``[S, N_max, 2]`` integer (gx, gy) indices (values at padding are ignored).
        mask
            ``[S, N_max]`` bool, True for real patches (default: all real).

        Returns
        -------
        CareBatchOutput
        """
        cfg = self.config
        if features.dim() != 3 or features.shape[-1] != cfg.in_dim:
            raise ValueError(f"CareModel expects features [S, N, {cfg.in_dim}], got {tuple(features.shape)}")
        n_slides, n_max = features.shape[:2]
        device = features.device
        mask = torch.ones(n_slides, n_max, dtype=torch.bool, device=device) if mask is None else mask.bool()
        grid_array = np.asarray(grid.cpu().numpy() if isinstance(grid, torch.Tensor) else grid)
        if mask.shape != (n_slides, n_max) or grid_array.shape != (n_slides, n_max, 2):
            raise ValueError(
                f"CareModel: grid {grid_array.shape} and mask {tuple(mask.shape)} must be "
                f"[{n_slides}, {n_max}, 2] and [{n_slides}, {n_max}]"
            )
        mask_array = mask.cpu().numpy()
        if not mask_array.any(axis=1).all():
            raise ValueError("CareModel: every slide needs at least one patch (a mask row is all False)")

        # Geometry (numpy, no gradient): real patches flattened slide by slide.
        flat_index = np.flatnonzero(mask_array.reshape(-1))
        slide_of_patch = flat_index // n_max
        patch_grid = check_grid(grid_array.reshape(-1, 2)[flat_index])
        blocks = block_partition(patch_grid, cfg.k, slide_of_patch)
        candidates = candidate_blocks(patch_grid, blocks, cfg.n_candidates, cfg.containment_temperature)
        candidate_ids = torch.as_tensor(candidates.blocks, device=device)
        flat = torch.as_tensor(flat_index, device=device)
        real = features.reshape(n_slides * n_max, -1)[flat]  # [P, D], the real patches

        # Sub-region encoder and adaptive region generator.
        hidden = self.embed(real)
        position = self.block_position(torch.as_tensor(offset_in_block(patch_grid, cfg.k), device=device))
        g_cls, g_q = self.block_encoder(
            hidden + position, blocks.block_of_patch, blocks.n_blocks, cfg.max_tokens_per_chunk
        )
        views = [hidden]
        if self.training and cfg.aug_noise_std > 0:
            views.append(hidden + cfg.aug_noise_std * torch.randn_like(hidden))
        rho = candidate_affinity(views, [g_cls, g_q], candidate_ids, cfg.similarity_temperature)
        if cfg.affinity_prior == "input":
            rho = self._with_input_prior(rho, real, patch_grid, slide_of_patch, blocks, candidates)
        containment = torch.as_tensor(candidates.containment, dtype=hidden.dtype, device=device)
        log_w, p = soft_assignment(rho, containment, candidate_ids, cfg.assignment_temperature)
        choice, gate = hard_assignment(
            log_w, p, cfg.hard_assignment, training=self.training, gumbel_tau=cfg.gumbel_tau
        )
        chosen_block = candidate_ids.gather(1, choice[:, None])[:, 0].cpu().numpy()

        # Adaptive regions: dense ids in block order, which is slide-major.
        region_of_patch, region_block = dense_labels(chosen_block)
        n_regions = len(region_block)
        slide_of_region = blocks.slide_of_block[region_block]
        local_region = (
            np.arange(n_regions) - np.searchsorted(slide_of_region, np.arange(n_slides))[slide_of_region]
        )
        region_ids = torch.as_tensor(region_of_patch, device=device)
        g_ar, _ = self.region_encoder(
            hidden * gate[:, None], region_of_patch, n_regions, cfg.max_tokens_per_chunk
        )

        # Semantic and prior fusion on padded [S, R_max] regions.
        slide_ids = torch.as_tensor(slide_of_patch, device=device)
        patches_per_slide = torch.bincount(slide_ids, minlength=n_slides).to(hidden.dtype)
        slot = (torch.as_tensor(slide_of_region, device=device), torch.as_tensor(local_region, device=device))
        coverage = hidden.new_zeros(n_regions).index_add(0, region_ids, gate) / patches_per_slide[slot[0]]
        r_max = int(local_region.max()) + 1
        region_mask = torch.zeros(n_slides, r_max, dtype=torch.bool, device=device).index_put(
            slot, torch.ones(n_regions, dtype=torch.bool, device=device)
        )
        alpha = hidden.new_zeros(n_slides, r_max).index_put(slot, coverage)
        scores = hidden.new_zeros(n_slides, r_max).index_put(slot, self.gate(g_ar))
        beta, a, roi = fuse_region_weights(alpha, scores, region_mask, cfg.lambda_spf)
        region_features = hidden.new_zeros(n_slides, r_max, cfg.embed_dim).index_put(slot, g_ar)
        slide_embedding = torch.einsum("sr,sre->se", a, region_features)
        roi_feature = region_features[torch.arange(n_slides, device=device), roi]
        region_sizes = torch.bincount(region_ids, minlength=n_regions).to(hidden.dtype)
        patch_attention = (a[slot] / region_sizes)[region_ids]
        expected_rank, rsl = region_structuring_loss(p, slide_ids, n_slides, cfg.e_star)

        def padded(values: torch.Tensor | np.ndarray, fill: float) -> torch.Tensor:
            """``[P, ...]`` values of the real patches as ``[S, N_max, ...]``, ``fill`` at padding."""
            values = torch.as_tensor(values, device=device)
            out = torch.full((n_slides * n_max, *values.shape[1:]), fill, dtype=values.dtype, device=device)
            return out.index_put((flat,), values).reshape(n_slides, n_max, *values.shape[1:])

        first_block = np.searchsorted(blocks.slide_of_block, np.arange(n_slides))
        region_of_block = np.full(blocks.n_blocks, -1, np.int64)
        region_of_block[region_block] = local_region
        candidate_region = np.where(candidates.valid, region_of_block[np.maximum(candidates.blocks, 0)], -1)
        return CareBatchOutput(
            patch_mask=mask,
            region_of_patch=padded(local_region[region_of_patch], -1),
            block_of_patch=padded(blocks.block_of_patch - first_block[slide_of_patch], -1),
            candidate_rank=padded(choice, -1),
            patch_attention=padded(patch_attention, 0.0),
            region_mask=region_mask,
            region_features=region_features,
            alpha=alpha,
            beta=beta,
            a=a,
            roi=roi,
            roi_feature=roi_feature,
            slide_embedding=slide_embedding,
            expected_rank=expected_rank,
            rsl=rsl,
            grid=torch.as_tensor(grid_array, dtype=torch.long, device=device),
            k=cfg.k,
            assignment=padded(p, 0.0),
            candidate_region=padded(candidate_region, -1),
        )
