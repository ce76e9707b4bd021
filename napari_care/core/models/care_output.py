"""What :class:`~napari_care.core.models.care.CareModel` returns, and slide padding for batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from napari_care.core.care_result import CareResult


@dataclass
class CareOutput:
    """CARE on one slide (torch tensors; gradients flow where the model computed them).

    Attributes
    ----------
    region_of_patch
        ``[N]`` long, dense region ids 0..R-1 (ordered by the block each region grew from).
    block_of_patch
        ``[N]`` long, fixed k x k block of each patch (0..B-1).
    candidate_rank
        ``[N]`` long, rank of the chosen candidate (0 = nearest block).
    patch_attention
        ``[N]``, ``a`` of the patch's region divided by the region's patch count (sums to 1).
    region_features
        ``[R, E]`` ARSA features ``g_ar``.
    alpha, beta, a
        ``[R]`` coverage prior, gated-attention weight and fused weight (each sums to 1).
    roi
        Index of the region with the largest ``a``.
    roi_feature, slide_embedding
        ``[E]``: ``g_ar[roi]`` and ``sum_r a_r g_ar[r]``.
    expected_rank, rsl
        Scalars: ``E_bar`` and ``(E_bar - E_star)^2``.
    grid
        ``[N, 2]`` long (gx, gy).
    k
        Block side in patches.
    """

    region_of_patch: torch.Tensor
    block_of_patch: torch.Tensor
    candidate_rank: torch.Tensor
    patch_attention: torch.Tensor
    region_features: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    a: torch.Tensor
    roi: int
    roi_feature: torch.Tensor
    slide_embedding: torch.Tensor
    expected_rank: torch.Tensor
    rsl: torch.Tensor
    grid: torch.Tensor
    k: int

    def to_result(self) -> CareResult:
        """The same as numpy arrays (a :class:`CareResult` with ``mode="model"``)."""

        def array(tensor: torch.Tensor, dtype: type) -> np.ndarray:
            return tensor.detach().cpu().numpy().astype(dtype, copy=False)

        return CareResult(
            region_of_patch=array(self.region_of_patch, np.int64),
            region_features=array(self.region_features, np.float32),
            alpha=array(self.alpha, np.float32),
            beta=array(self.beta, np.float32),
            a=array(self.a, np.float32),
            roi=int(self.roi),
            roi_feature=array(self.roi_feature, np.float32),
            slide_embedding=array(self.slide_embedding, np.float32),
            patch_attention=array(self.patch_attention, np.float32),
            rsl=float(self.rsl),
            expected_rank=float(self.expected_rank),
            block_of_patch=array(self.block_of_patch, np.int64),
            candidate_rank=array(self.candidate_rank, np.int64),
            grid=array(self.grid, np.int64),
            k=self.k,
            mode="model",
        )


@dataclass
class CareBatchOutput:
    """CARE on S padded slides.

    Per-patch tensors are ``[S, N_max]`` (padding: -1 for ids, 0 for weights), per-region
    tensors ``[S, R_max]`` or ``[S, R_max, E]`` (padding 0), per-slide tensors ``[S]`` or
    ``[S, E]``; region and block ids count from 0 within each slide. The training loss is
    ``main + config.lambda_rsl * rsl.mean()``.

    ``assignment`` (``[S, N_max, c]``, the soft choice ``p`` over each patch's candidates, 0 at
    padding) and ``candidate_region`` (``[S, N_max, c]`` long, the region each candidate
    block grew into, -1 where it grew into none or the slot is missing) let a loss reach
    the generator through ``p`` directly.
    """

    patch_mask: torch.Tensor
    region_of_patch: torch.Tensor
    block_of_patch: torch.Tensor
    candidate_rank: torch.Tensor
    patch_attention: torch.Tensor
    region_mask: torch.Tensor
    region_features: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    a: torch.Tensor
    roi: torch.Tensor
    roi_feature: torch.Tensor
    slide_embedding: torch.Tensor
    expected_rank: torch.Tensor
    rsl: torch.Tensor
    grid: torch.Tensor
    k: int
    assignment: torch.Tensor
    candidate_region: torch.Tensor

    @property
    def n_slides(self) -> int:
        """Number of slides S."""
        return len(self.slide_embedding)

    def slide(self, index: int) -> CareOutput:
        """The unpadded output of slide ``index``."""
        patches = self.patch_mask[index]
        regions = self.region_mask[index]
        return CareOutput(
            region_of_patch=self.region_of_patch[index][patches],
            block_of_patch=self.block_of_patch[index][patches],
            candidate_rank=self.candidate_rank[index][patches],
            patch_attention=self.patch_attention[index][patches],
            region_features=self.region_features[index][regions],
            alpha=self.alpha[index][regions],
            beta=self.beta[index][regions],
            a=self.a[index][regions],
            roi=int(self.roi[index]),
            roi_feature=self.roi_feature[index],
            slide_embedding=self.slide_embedding[index],
            expected_rank=self.expected_rank[index],
            rsl=self.rsl[index],
            grid=self.grid[index][patches],
            k=self.k,
        )


def pad_slides(
    slides: Sequence[tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack slides of different sizes into padded tensors for :meth:`CareModel.forward_batch`.

    Parameters
    ----------
    slides
        ``(features [N_s, D], grid [N_s, 2])`` per slide.

    Returns
    -------
    (features, grid, mask)
        ``[S, N_max, D]`` float32, ``[S, N_max, 2]`` long and ``[S, N_max]`` bool (True for
        real patches), on the device of the first slide's features.
    """
    if not slides:
        raise ValueError("pad_slides needs at least one slide")
    features = [torch.as_tensor(f, dtype=torch.float32) for f, _ in slides]
    grids = [
        torch.as_tensor(np.asarray(g.cpu() if isinstance(g, torch.Tensor) else g), dtype=torch.long)
        for _, g in slides
    ]
    for number, (feature, grid) in enumerate(zip(features, grids, strict=True)):
        if feature.dim() != 2 or grid.shape != (len(feature), 2):
            raise ValueError(
                f"slide {number}: features must be [N, D] and grid [N, 2], got "
                f"{tuple(feature.shape)} and {tuple(grid.shape)}"
            )
    device = features[0].device
    lengths = torch.tensor([len(f) for f in features])
    padded = torch.nn.utils.rnn.pad_sequence([f.to(device) for f in features], batch_first=True)
    grid = torch.nn.utils.rnn.pad_sequence(grids, batch_first=True).to(device)
    mask = (torch.arange(padded.shape[1])[None, :] < lengths[:, None]).to(device)
    return padded, grid, mask
