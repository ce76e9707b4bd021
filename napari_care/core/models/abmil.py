"""Gated attention multiple-instance learning (AB-MIL; Ilse, Tomczak and Welling, ICML 2018).

A slide is a bag of instance features (20x tile embeddings, or mixed-magnification region
embeddings); a gated attention pools them into one bag feature that a linear layer
classifies. The attention per instance is the heatmap shown in napari.

The head standardises its input itself: per-dimension ``feature_mean`` and ``feature_std``
buffers (set from the training instances by :meth:`ABMIL.set_feature_stats`) travel in the
checkpoint, so every caller (training, ``predictions.csv``, the viewer) feeds raw features.
Patch-encoder dimensions differ widely in scale, and AB-MIL on unscaled features barely
learns. Checkpoints written before the buffers existed load with the identity (mean 0, std 1).

With ``ABMILConfig.split_at`` the instance features are two blocks of columns (e.g. a
region's CLS and its salient 20x tile, the ``cls+tile`` readout): each block gets its own
embedding and gated-attention pool, and the two pooled features, concatenated, go through
the classifier; the attention reported is the mean of the two. Why: one attention over the
joined vector must weigh a region by architecture and by detail at once; two pools weigh
them separately. (This project's option; averaging two heads' logits instead did worse.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from napari_care.core.models.care_spf import GatedAttention


@dataclass(frozen=True)
class ABMILConfig:
    """Size of an AB-MIL head.

    Parameters
    ----------
    in_dim
        Dimension D of the instance features.
    hidden
        Width of the instance embedding (first layer).
    attn_dim
        Width of the gated attention branches.
    n_classes
        Number of classes of the slide label.
    dropout
        Dropout after the instance embedding and in the attention branches.
    split_at
        0: one pool over whole instances. ``k`` in ``(0, in_dim)``: two pools, over columns
        ``[:k]`` and ``[k:]``, their features concatenated, their attentions averaged.
    """

    in_dim: int
    hidden: int = 256
    attn_dim: int = 128
    n_classes: int = 2
    dropout: float = 0.25
    split_at: int = 0

    def __post_init__(self) -> None:
        for name in ("in_dim", "hidden", "attn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ABMILConfig.{name} must be positive, got {getattr(self, name)}")
        if self.n_classes < 2:
            raise ValueError(f"ABMILConfig.n_classes must be at least 2, got {self.n_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ABMILConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.split_at and not 0 < self.split_at < self.in_dim:
            raise ValueError(
                f"ABMILConfig.split_at must be 0 or in (0, in_dim={self.in_dim}), got {self.split_at}"
            )


class ABMILOutput(NamedTuple):
    """What :class:`ABMIL` returns (unpacks as ``logits, attention``).

    logits
        ``[C]`` for one bag, ``[B, C]`` for a padded batch.
    attention
        ``[N]`` or ``[B, N]``: softmax weights over the instances of each bag (sum 1; 0 at
        padding).
    """

    logits: torch.Tensor
    attention: torch.Tensor


_OLD_GATE_NAMES = {"attention_v": "value", "attention_u": "gate", "attention_w": "score"}


class GatedAttentionPool(nn.Module):
    """Instance embedding and gated attention pool of :class:`ABMIL` over ``in_dim`` columns."""

    def __init__(self, in_dim: int, config: ABMILConfig) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, config.hidden), nn.ReLU(), nn.Dropout(config.dropout))
        self.attention = GatedAttention(config.hidden, config.attn_dim, config.dropout)

    def forward(
        self, standardised: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bag features ``[B, H]`` and attention ``[B, N]`` of standardised bags ``[B, N, in_dim]``."""
        hidden = self.embed(standardised)  # [B, N, H]
        scores = self.attention(hidden)  # [B, N]
        if mask is not None:
            scores = scores.masked_fill(~mask.bool(), float("-inf"))
        attention = torch.softmax(scores, dim=1)
        return torch.bmm(attention.unsqueeze(1), hidden).squeeze(1), attention


class ABMIL(nn.Module):
    """Gated attention MIL head.

    ``a_i = softmax_i(w^T (tanh(V h_i) * sigmoid(U h_i)))`` with ``h_i`` the embedded
    instance (after standardising it with the ``feature_mean``/``feature_std`` buffers); the
    bag feature ``sum_i a_i h_i`` goes through a linear classifier. With ``split_at``, two
    such pools over two column blocks (see the module docstring).

    Parameters
    ----------
    config
        Sizes; see :class:`ABMILConfig`.
    """

    config_cls = ABMILConfig

    def __init__(self, config: ABMILConfig) -> None:
        super().__init__()
        self.config = config
        widths = (config.split_at, config.in_dim - config.split_at) if config.split_at else (config.in_dim,)
        self.pools = nn.ModuleList(GatedAttentionPool(width, config) for width in widths)
        self.classifier = nn.Linear(len(widths) * config.hidden, config.n_classes)
        self.register_buffer("feature_mean", torch.zeros(config.in_dim))
        self.register_buffer("feature_std", torch.ones(config.in_dim))

    @torch.no_grad()
    def set_feature_stats(
        self, instances: torch.Tensor | Iterable[torch.Tensor], min_std: float = 1e-6
    ) -> None:
        """Standardise inputs with the per-dimension mean and std of the training instances.

        ``instances`` is one ``[M, D]`` tensor or an iterable of ``[M_i, D]`` bags; bags are
        merged one at a time in float64 on the CPU (Chan's parallel update), so a cohort's
        training set is never copied whole. A dimension whose std is below ``min_std``
        (constant on the training set) is only centred (std 1), so that a tiny change at
        inference cannot blow up.
        """
        in_dim = self.config.in_dim
        bags = [instances] if isinstance(instances, torch.Tensor) else instances
        count, mean, m2 = (
            0,
            torch.zeros(in_dim, dtype=torch.float64),
            torch.zeros(in_dim, dtype=torch.float64),
        )
        for bag in bags:
            if bag.dim() != 2 or bag.shape[1] != in_dim:
                raise ValueError(
                    f"ABMIL.set_feature_stats needs [M, {in_dim}] instances, got {tuple(bag.shape)}"
                )
            if len(bag) == 0:
                continue
            bag = bag.detach().to("cpu", torch.float64)
            bag_mean = bag.mean(dim=0)
            delta, total = bag_mean - mean, count + len(bag)
            m2 += ((bag - bag_mean) ** 2).sum(dim=0) + delta**2 * (count * len(bag) / total)
            mean += delta * (len(bag) / total)
            count = total
        if count == 0:
            raise ValueError(f"ABMIL.set_feature_stats needs at least one [M >= 1, {in_dim}] instance")
        std = (m2 / count).sqrt()
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(torch.where(std < min_std, torch.ones_like(std), std))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints from before input standardisation have no statistics: keep the identity.
        for name in ("feature_mean", "feature_std"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        # Older checkpoints: the one pool's layers at the top level (before the pools), and the
        # gate branches as attention_v/u/w (before the pools used care_spf.GatedAttention).
        for key in [key for key in state_dict if key.startswith(prefix)]:
            name = key[len(prefix) :]
            if name.split(".")[0] in ("embed", *_OLD_GATE_NAMES):
                name = "pools.0." + name
            parts = name.split(".")
            if len(parts) > 2 and parts[2] in _OLD_GATE_NAMES:
                parts[2:3] = ["attention", _OLD_GATE_NAMES[parts[2]]]
            if prefix + ".".join(parts) != key:
                state_dict[prefix + ".".join(parts)] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, bag: torch.Tensor, mask: torch.Tensor | None = None) -> ABMILOutput:
        """Classify one bag ``[N, D]`` or a padded batch of bags ``[B, N, D]``.

        Parameters
        ----------
        bag
            Raw instance features (standardised inside with the head's statistics).
        mask
            ``[N]`` or ``[B, N]`` bool, True for real instances and False for padding
            (default: all real).

        Returns
        -------
        ABMILOutput
            ``(logits, attention)``.
        """
        single = bag.dim() == 2
        if single:
            bag = bag.unsqueeze(0)
            mask = None if mask is None else mask.unsqueeze(0)
        if bag.dim() != 3 or bag.shape[-1] != self.config.in_dim:
            raise ValueError(
                f"ABMIL expects a bag [N, {self.config.in_dim}] or [B, N, {self.config.in_dim}], "
                f"got {tuple(bag.shape)}"
            )
        if bag.shape[1] == 0:
            raise ValueError("ABMIL got an empty bag (no instances)")
        if mask is not None:
            if mask.shape != bag.shape[:2]:
                raise ValueError(
                    f"ABMIL mask shape {tuple(mask.shape)} does not match bag {tuple(bag.shape[:2])}"
                )
            if not bool(mask.any(dim=1).all()):
                raise ValueError("ABMIL got a bag whose instances are all masked out")
        standardised = (bag - self.feature_mean) / self.feature_std
        blocks = (
            (standardised[..., : self.config.split_at], standardised[..., self.config.split_at :])
            if self.config.split_at
            else (standardised,)
        )
        bag_features, attentions = zip(
            *(pool(block, mask) for pool, block in zip(self.pools, blocks, strict=True)), strict=True
        )
        logits = self.classifier(torch.cat(bag_features, dim=-1))
        attention = torch.stack(attentions).mean(dim=0)
        if single:
            return ABMILOutput(logits[0], attention[0])
        return ABMILOutput(logits, attention)


def pad_bags(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack bags of different sizes into a zero-padded batch.

    Parameters
    ----------
    bags
        Tensors ``[N_b, D]``.

    Returns
    -------
    (batch, mask)
        ``[B, max N, D]`` and ``[B, max N]`` bool (True for real instances).
    """
    if not bags:
        raise ValueError("pad_bags needs at least one bag")
    lengths = torch.tensor([len(bag) for bag in bags])
    batch = nn.utils.rnn.pad_sequence(bags, batch_first=True)
    mask = torch.arange(batch.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    return batch, mask
