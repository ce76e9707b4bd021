"""CARE's semantic and prior fusion (SPF): region weights and the slide embedding.

``alpha_r`` (coverage prior) is the share of the slide's patches in region r; ``beta_r``
(semantic weight) is gated attention over the region features (AB-MIL, Ilse, Tomczak and
Welling, ICML 2018); ``a_r = lambda * alpha_r + (1 - lambda) * beta_r``; the slide
embedding is ``sum_r a_r g_ar[r]`` and the ROI the region with the largest ``a_r``.
"""

from __future__ import annotations

import torch
from torch import nn


class GatedAttention(nn.Module):
    """Gated attention scores ``w^T (tanh(V g) * sigmoid(U g))`` of region features.

    Parameters
    ----------
    dim
        Region feature width E.
    hidden
        Width of the two gate branches.
    dropout
        Dropout inside the branches.
    """

    def __init__(self, dim: int, hidden: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.value = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.gate = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.score = nn.Linear(hidden, 1)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        """``[..., E]`` region features -> ``[...]`` unnormalised attention scores."""
        return self.score(self.value(regions) * self.gate(regions)).squeeze(-1)


def fuse_region_weights(
    alpha: torch.Tensor, scores: torch.Tensor, region_mask: torch.Tensor, lambda_spf: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Semantic weight, fused weight and ROI of padded regions.

    Parameters
    ----------
    alpha
        ``[S, R]`` coverage prior (0 at padding; each row sums to 1).
    scores
        ``[S, R]`` gated attention scores.
    region_mask
        ``[S, R]`` bool, True for real regions.
    lambda_spf
        Share of the coverage prior.

    Returns
    -------
    (beta, a, roi)
        ``[S, R]`` softmax of the scores over each slide's regions, ``[S, R]`` the fused
        weight, ``[S]`` long index of the largest ``a``.
    """
    beta = torch.softmax(scores.masked_fill(~region_mask, float("-inf")), dim=1)
    a = lambda_spf * alpha + (1.0 - lambda_spf) * beta
    roi = a.detach().masked_fill(~region_mask, float("-inf")).argmax(dim=1)
    return beta, a, roi
