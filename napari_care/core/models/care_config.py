"""The options of CARE's slide model (:class:`CareConfig`), apart from the model itself.

:class:`~napari_care.core.models.care.CareModel` is torch; its config is plain data, so the
command line can show its defaults (``napari-care pretrain care-stage1 --help``) without
importing torch. ``napari_care.core.models.care`` re-exports :class:`CareConfig`: checkpoints
that name ``napari_care.core.models.care.CareConfig`` load as before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from napari_care.core.models.care_blocks import (
    DEFAULT_CONTAINMENT_TEMPERATURE,
    DEFAULT_K,
    DEFAULT_N_CANDIDATES,
    DEFAULT_SIMILARITY_TEMPERATURE,
)

__all__ = ["AFFINITY_PRIORS", "HARD_ASSIGNMENTS", "CareConfig"]

HARD_ASSIGNMENTS = ("straight-through", "gumbel")
AFFINITY_PRIORS = ("input", "none")


@dataclass(frozen=True)
class CareConfig:
    """Sizes and hyper-parameters of :class:`~napari_care.core.models.care.CareModel`.

    Parameters
    ----------
    in_dim
        Patch feature dimension D (768 for CONCH v1.5).
    embed_dim
        Region and slide embedding width E (paper: 512).
    heads
        Attention heads (paper: 8).
    k
        Block side in patches (paper: 8).
    n_candidates
        Candidate blocks per patch (paper: 3).
    lambda_spf
        Share of the coverage prior in the region weight (paper: 0.5).
    lambda_rsl
        Weight of the region structuring loss in the total loss (paper: 0.1).
    e_star
        Target expected candidate rank (authors' code: 0.5).
    containment_temperature
        Soft containment temperature, in squared block sides.
    similarity_temperature
        Temperature of the softmaxes over cosine similarities.
    assignment_temperature
        ``p = softmax(log w / t)``.
    block_depth, region_depth
        Self-attention layers of the sub-region encoder and of ARSA.
    mlp_ratio, dropout
        Transformer layer options.
    hard_assignment
        ``"straight-through"`` (default) or ``"gumbel"``.
    gumbel_tau
        Gumbel-softmax temperature (``"gumbel"`` only).
    aug_noise_std
        Std of the Gaussian noise that makes the augmented patch view while training
        (in units of the layer-normalised embedding).
    gate_dim
        Width of the gated attention branches of SPF.
    max_tokens_per_chunk
        Padded tokens per attention batch (bounds memory; no effect on results).
    affinity_prior
        ``"none"`` (default, the paper's generator): the learned affinity alone;
        ``"input"``: the training-free affinity plus a learned residual that starts at 0
        (see :mod:`napari_care.core.models.care`).
    """

    in_dim: int
    embed_dim: int = 512
    heads: int = 8
    k: int = DEFAULT_K
    n_candidates: int = DEFAULT_N_CANDIDATES
    lambda_spf: float = 0.5
    lambda_rsl: float = 0.1
    e_star: float = 0.5
    containment_temperature: float = DEFAULT_CONTAINMENT_TEMPERATURE
    similarity_temperature: float = DEFAULT_SIMILARITY_TEMPERATURE
    assignment_temperature: float = 1.0
    block_depth: int = 1
    region_depth: int = 1
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    hard_assignment: str = "straight-through"
    gumbel_tau: float = 1.0
    aug_noise_std: float = 0.1
    gate_dim: int = 128
    max_tokens_per_chunk: int = 32768
    affinity_prior: str = "none"

    def __post_init__(self) -> None:
        for name in (
            "in_dim",
            "embed_dim",
            "heads",
            "k",
            "block_depth",
            "region_depth",
            "gate_dim",
            "max_tokens_per_chunk",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"CareConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % self.heads:
            raise ValueError(f"CareConfig.embed_dim={self.embed_dim} is not divisible by heads={self.heads}")
        if not 1 <= self.n_candidates <= 9:
            raise ValueError(f"CareConfig.n_candidates must be in 1..9, got {self.n_candidates}")
        for name in ("lambda_spf", "dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"CareConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in (
            "containment_temperature",
            "similarity_temperature",
            "assignment_temperature",
            "gumbel_tau",
            "mlp_ratio",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"CareConfig.{name} must be positive, got {getattr(self, name)}")
        if self.lambda_rsl < 0 or self.aug_noise_std < 0:
            raise ValueError("CareConfig.lambda_rsl and aug_noise_std must be >= 0")
        if self.affinity_prior not in AFFINITY_PRIORS:
            raise ValueError(
                f"CareConfig.affinity_prior must be one of {AFFINITY_PRIORS}, got {self.affinity_prior!r}"
            )
        if self.hard_assignment not in HARD_ASSIGNMENTS:
            raise ValueError(
                f"CareConfig.hard_assignment must be one of {HARD_ASSIGNMENTS}, got {self.hard_assignment!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CareConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys raise a clear error."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"CareConfig: unknown fields {unknown}")
        return cls(**values)
