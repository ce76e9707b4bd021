"""Attention restricted to groups of patches (CARE's blocks and adaptive regions).

Patches are gathered into padded per-group batches, never into one N x N attention: the
groups are sorted by size and cut into chunks of at most ``max_tokens`` padded tokens, so
memory is bounded by the largest group squared times the chunk, and time is linear in N.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GroupBatch:
    """Padded token indices of some groups.

    Attributes
    ----------
    groups
        ``[G]`` long, the group ids in this batch.
    index
        ``[G, L]`` long token indices (0 at padding).
    mask
        ``[G, L]`` bool, True for real tokens.
    """

    groups: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor


def group_batches(
    group_of_token: np.ndarray, n_groups: int, max_tokens: int, device: torch.device | str = "cpu"
) -> list[GroupBatch]:
    """Cut the non-empty groups into padded batches of at most ``max_tokens`` tokens each.

    Parameters
    ----------
    group_of_token
        ``[M]`` int group id (0..n_groups-1) of each token.
    n_groups
        Number of groups.
    max_tokens
        Budget of padded tokens per batch (a group larger than it gets a batch alone).
    device
        Where the index tensors go.
    """
    group_of_token = np.asarray(group_of_token, np.int64)
    order = np.argsort(group_of_token, kind="stable")
    counts = np.bincount(group_of_token, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    by_size = np.argsort(-counts, kind="stable")
    by_size = by_size[counts[by_size] > 0]
    batches, first = [], 0
    while first < len(by_size):
        length = int(counts[by_size[first]])
        groups = by_size[first : first + max(1, max_tokens // length)]
        first += len(groups)
        slot = np.arange(length)
        mask = slot[None, :] < counts[groups][:, None]
        index = np.where(mask, order[np.minimum(starts[groups][:, None] + slot[None, :], len(order) - 1)], 0)
        batches.append(
            GroupBatch(
                torch.as_tensor(groups, device=device),
                torch.as_tensor(index, device=device),
                torch.as_tensor(mask, device=device),
            )
        )
    return batches


class MultiHeadAttention(nn.Module):
    """Multi-head attention of queries over a padded context (scaled dot-product kernel)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """``query [G, Lq, E]`` attends over ``context [G, L, E]`` where ``context_mask [G, L]``."""
        groups, n_query, dim = query.shape
        head_dim = dim // self.heads
        q = self.query(query).view(groups, n_query, self.heads, head_dim).transpose(1, 2)
        k, v = self.key_value(context).view(groups, -1, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=context_mask[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(attended.transpose(1, 2).reshape(groups, n_query, dim))


class SelfAttentionLayer(nn.Module):
    """Pre-norm transformer layer: masked self-attention and an MLP, both residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_attention = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(dim, heads, dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tokens [G, L, E]``, ``mask [G, L]`` (True for real tokens) -> ``[G, L, E]``."""
        normed = self.norm_attention(tokens)
        tokens = tokens + self.attention(normed, normed, mask)
        return tokens + self.mlp(self.norm_mlp(tokens))


class GroupEncoder(nn.Module):
    """Self-attention inside each group with a CLS token, and optionally a learnable query.

    Parameters
    ----------
    dim
        Token width E.
    heads
        Attention heads.
    depth
        Self-attention layers.
    with_query
        Also pool each group by cross-attention from one learnable query (CARE's ``g_q``).
    mlp_ratio, dropout
        Transformer layer options.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        depth: int,
        *,
        with_query: bool = False,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layers = nn.ModuleList(SelfAttentionLayer(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if with_query else None
        self.cross_attention = MultiHeadAttention(dim, heads, dropout) if with_query else None
        self.norm_query = nn.LayerNorm(dim) if with_query else None

    def forward(
        self, tokens: torch.Tensor, group_of_token: np.ndarray, n_groups: int, max_tokens: int = 32768
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode every group.

        Parameters
        ----------
        tokens
            ``[M, E]`` token features.
        group_of_token
            ``[M]`` group id of each token.
        n_groups
            Number of groups; empty groups get zero features.
        max_tokens
            Padded tokens per attention batch (memory bound).

        Returns
        -------
        (g_cls, g_q)
            ``[n_groups, E]`` CLS features and learnable-query features (None without a query).
        """
        dim = tokens.shape[1]
        cls_parts, query_parts, group_parts = [], [], []
        for batch in group_batches(group_of_token, n_groups, max_tokens, tokens.device):
            groups = len(batch.groups)
            padded = tokens[batch.index] * batch.mask[..., None]
            sequence = torch.cat([self.cls_token.expand(groups, 1, dim), padded], dim=1)
            mask = torch.cat(
                [torch.ones(groups, 1, dtype=torch.bool, device=tokens.device), batch.mask], dim=1
            )
            for layer in self.layers:
                sequence = layer(sequence, mask)
            sequence = self.norm(sequence)
            cls_parts.append(sequence[:, 0])
            if self.query is not None:
                pooled = self.cross_attention(self.query.expand(groups, 1, dim), sequence[:, 1:], batch.mask)
                query_parts.append(self.norm_query(pooled[:, 0]))
            group_parts.append(batch.groups)
        order = torch.cat(group_parts)

        def scatter(parts: list[torch.Tensor]) -> torch.Tensor:
            return tokens.new_zeros(n_groups, dim).index_copy(0, order, torch.cat(parts))

        return scatter(cls_parts), (scatter(query_parts) if self.query is not None else None)
