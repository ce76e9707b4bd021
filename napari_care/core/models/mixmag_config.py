"""The options of the mixed-magnification encoder (:class:`MixMagConfig`), apart from the model.

:class:`~napari_care.core.models.mixmag.MixMagEncoder` is torch; its config is plain data, so
the command line can show its defaults (``napari-care pretrain mixmag --help``) without
importing torch. ``napari_care.core.models.mixmag`` re-exports :class:`MixMagConfig`:
checkpoints that name ``napari_care.core.models.mixmag.MixMagConfig`` load as before.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MixMagConfig"]


@dataclass(frozen=True)
class MixMagConfig:
    """Options of the mixed-magnification encoder (defaults are this project's choices).

    Parameters
    ----------
    in_dim
        Dimension D of the tile embeddings.
    dim, depth, heads, mlp_ratio, dropout
        Transformer width, layers, attention heads, MLP width / dim, dropout.
    objective
        ``"mem"`` or ``"cmem"`` (see :mod:`napari_care.core.models.mixmag`).
    readout
        ``"cls"`` or ``"cls+tile"`` (compressed, one token per region) or ``"tokens"``
        (16 per region).
    mask_ratio
        Share of a region's present tokens masked in pretraining (at least one masked, one
        visible, in regions of two or more tokens).
    loss
        ``"cosine"`` (1 - cosine similarity) or ``"mse"`` on the masked tokens.
    temperature, contrastive_weight
        InfoNCE temperature, and weight of the InfoNCE term against the MEM term (CMEM).
    feature_noise
        Std of Gaussian noise added to each input token of a view, relative to the
        standardised token's root mean square (0 = none).
    proj_dim
        Output width of the CMEM projection head.
    """

    in_dim: int
    dim: int = 256
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    objective: str = "mem"
    readout: str = "cls"
    mask_ratio: float = 0.5
    loss: str = "cosine"
    temperature: float = 0.1
    contrastive_weight: float = 1.0
    feature_noise: float = 0.0
    proj_dim: int = 128

    def __post_init__(self) -> None:
        choices = {
            "objective": ("mem", "cmem"),
            "readout": ("cls", "cls+tile", "tokens"),
            "loss": ("cosine", "mse"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"MixMagConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if min(self.in_dim, self.dim, self.depth, self.heads, self.proj_dim) < 1:
            raise ValueError(f"MixMagConfig sizes must be positive: {self}")
        if self.dim % self.heads:
            raise ValueError(f"MixMagConfig.dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"MixMagConfig.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.temperature <= 0 or self.feature_noise < 0:
            raise ValueError("MixMagConfig.temperature must be > 0 and feature_noise >= 0")
