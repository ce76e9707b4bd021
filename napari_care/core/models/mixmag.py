"""Mixed-magnification region encoder (MEM, CMEM, compressed CLS).

After "Mixed Magnification Aggregation for Generalizable Region-Level Representations in
Computational Pathology" (arXiv 2602.22176). The paper published no code; the layout below
is this project's reconstruction (see ``docs/method.md``, section 2).

A region is the footprint of one 5x tile. Its 21 tokens, in this order: index 0 the 5x
tile (the whole region), 1-4 the 2 x 2 tiles at 10x, 5-20 the 4 x 4 tiles at 20x (each grid
row-major, top-left first).

Tile embeddings are first standardised per dimension (``feature_mean``/``feature_std``
buffers set by :func:`~napari_care.core.train.mem.train_mem` from the pretraining tokens,
kept in the checkpoint; identity in older checkpoints). Inputs and MEM targets both use
them: otherwise the loss and the input LayerNorm weigh each dimension by its raw scale, and
small informative dimensions (nuclear detail in the built-in descriptor) are compressed away.

Each token is a (standardised) tile embedding plus a learned magnification embedding and
a learned position embedding within the region (one table per magnification: 1, 4, 16).
A small transformer with a CLS token mixes them. Tokens missing from the data (a 20x tile
outside tissue) are left out of attention with a key padding mask, never masked or predicted.

Pretraining objectives (``MixMagConfig.objective``):

``"mem"``  masked embedding modeling: a share of the present tokens is replaced by a
           learned mask token and the model predicts their input embeddings.
``"cmem"`` MEM on two views of each region (independent random masks and optional
           feature noise) plus a symmetric InfoNCE between the views' CLS projections.

Readouts (``MixMagConfig.readout``), i.e. what goes to the AB-MIL head downstream:

``"cls"``      compressed CLS: one token per region. The masked tokens are then predicted
               from the CLS output alone (plus the query's magnification and position), so
               the CLS is trained to summarise the region (this project's choice).
``"cls+tile"`` one token per region too: the CLS (pretrained as with ``"cls"``) and the
               whitened embedding of the region's most salient 20x tile (see
               :mod:`.mixmag_readout`), concatenated, width ``dim + in_dim``.
``"tokens"``   the 16 contextualised 20x tokens of each region (as many instances as 20x
               tiling); masked tokens are predicted from their own output tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_care.core.models.mixmag_config import MixMagConfig
from napari_care.core.models.mixmag_layout import FIRST_20X_TOKEN, MAGNIFICATIONS, N_TOKENS, TILES_PER_SIDE
from napari_care.core.models.mixmag_readout import salient_tile


class MixMagOutput(NamedTuple):
    """Encoder outputs: ``cls`` ``[B, dim]`` and ``tokens`` ``[B, 21, dim]`` (after the final norm)."""

    cls: torch.Tensor
    tokens: torch.Tensor


def _token_magnification() -> torch.Tensor:
    return torch.cat([torch.full((side * side,), index) for index, side in enumerate(TILES_PER_SIDE)])


class MixMagEncoder(nn.Module):
    """Transformer over the 21 mixed-magnification tokens of a region, with pretraining heads;
    ``config``: the options (:class:`MixMagConfig`)."""

    config_cls = MixMagConfig
    token_magnification: torch.Tensor  # buffers: [21] magnification index (0, 1, 2) of each token slot,
    feature_mean: torch.Tensor  # [D] and [D]: standardisation of tile embeddings,
    feature_std: torch.Tensor
    tile_whitening: torch.Tensor  # [D, D]: whitening of standardised 20x tiles (cls+tile readout)

    def __init__(self, config: MixMagConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        # LayerNorm first: encoders differ wildly in feature scale.
        self.input_proj = nn.Sequential(nn.LayerNorm(config.in_dim), nn.Linear(config.in_dim, dim))
        self.mag_embed = nn.Parameter(torch.zeros(len(MAGNIFICATIONS), dim))
        self.pos_embed = nn.Parameter(torch.zeros(N_TOKENS, dim))  # per-magnification tables, concatenated
        self.cls_token = nn.Parameter(torch.zeros(dim))
        self.mask_token = nn.Parameter(torch.zeros(dim))
        for parameter in (self.mag_embed, self.pos_embed, self.cls_token, self.mask_token):
            nn.init.trunc_normal_(parameter, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            config.heads,
            int(dim * config.mlp_ratio),
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.predictor: nn.Module
        if config.readout != "tokens":  # compressed: masked tokens predicted from the CLS alone
            self.predictor = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, config.in_dim))
        else:
            self.predictor = nn.Linear(dim, config.in_dim)
        if config.objective == "cmem":
            self.projector = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, config.proj_dim))
        self.register_buffer("token_magnification", _token_magnification(), persistent=False)
        self.register_buffer("feature_mean", torch.zeros(config.in_dim))
        self.register_buffer("feature_std", torch.ones(config.in_dim))
        self.register_buffer(
            "tile_whitening", torch.eye(config.in_dim)
        )  # [D, D], applied to standardised tiles

    @property
    def instance_dim(self) -> int:
        """Width of one AB-MIL instance of :meth:`mil_instances`."""
        return self.config.dim + (self.config.in_dim if self.config.readout == "cls+tile" else 0)

    def salient_tile(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Whitened embedding of each region's most salient present 20x tile, ``[B, D]``; zeros if none
        (:func:`~napari_care.core.models.mixmag_readout.salient_tile` with this model's statistics)."""
        tiles = self.standardise(tokens, present)[:, FIRST_20X_TOKEN:]
        return salient_tile(tiles, present[:, FIRST_20X_TOKEN:], self.tile_whitening)

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor, min_std: float = 1e-6) -> None:
        """Standardise tile embeddings with per-dimension ``mean`` and ``std`` (``[D]`` each); a
        dimension whose std is below ``min_std`` (constant in the data) is only centred."""
        if mean.shape != (self.config.in_dim,) or std.shape != (self.config.in_dim,):
            raise ValueError(
                f"MixMagEncoder.set_feature_stats needs mean and std of shape [{self.config.in_dim}], "
                f"got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(torch.where(std < min_std, torch.ones_like(std), std))

    @torch.no_grad()
    def set_tile_whitening(self, whitening: torch.Tensor) -> None:
        """Whiten standardised 20x tiles with ``whitening`` ``[D, D]`` in the ``cls+tile`` readout."""
        if whitening.shape != (self.config.in_dim, self.config.in_dim) or not bool(
            torch.isfinite(whitening).all()
        ):
            raise ValueError(
                f"MixMagEncoder.set_tile_whitening needs a finite [{self.config.in_dim}, "
                f"{self.config.in_dim}] matrix, got {tuple(whitening.shape)}"
            )
        self.tile_whitening.copy_(whitening)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints from before input standardisation / whitening lack them: keep the identity.
        for name in ("feature_mean", "feature_std", "tile_whitening"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def standardise(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Tokens standardised per dimension, zeros where missing (a NaN there must not leak)."""
        scaled = (tokens - self.feature_mean) / self.feature_std
        return torch.where(present.unsqueeze(-1), scaled, torch.zeros_like(scaled))

    def _check(self, tokens: torch.Tensor, token_present: torch.Tensor | None) -> torch.Tensor:
        expected = (N_TOKENS, self.config.in_dim)
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != expected:
            raise ValueError(
                f"MixMagEncoder expects tokens [B, {N_TOKENS}, {self.config.in_dim}], "
                f"got {tuple(tokens.shape)}"
            )
        if token_present is None:
            return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        if token_present.shape != tokens.shape[:2]:
            raise ValueError(
                f"token_present shape {tuple(token_present.shape)} does not match "
                f"tokens {tuple(tokens.shape[:2])}"
            )
        return token_present.bool()

    def token_queries(self) -> torch.Tensor:
        """Magnification + position embedding of each token slot, ``[21, dim]``."""
        return self.mag_embed[self.token_magnification] + self.pos_embed

    def forward(
        self,
        tokens: torch.Tensor,
        token_present: torch.Tensor | None = None,
        token_masked: torch.Tensor | None = None,
    ) -> MixMagOutput:
        """Encode regions into a :class:`MixMagOutput`.

        Parameters
        ----------
        tokens
            ``[B, 21, D]`` raw tile embeddings in the module docstring's layout (standardised inside).
        token_present
            ``[B, 21]`` bool, False for missing tiles (default: all present).
        token_masked
            ``[B, 21]`` bool, True where the input is replaced by the mask token.
        """
        present = self._check(tokens, token_present)
        x = self.input_proj(self.standardise(tokens, present))
        if token_masked is not None:
            x = torch.where(token_masked.bool().unsqueeze(-1), self.mask_token.expand_as(x), x)
        x = x + self.token_queries()
        x = torch.cat([self.cls_token.expand(len(x), 1, -1), x], dim=1)
        padding = torch.cat([torch.zeros_like(present[:, :1]), ~present], dim=1)
        x = self.norm(self.transformer(x, src_key_padding_mask=padding))
        return MixMagOutput(x[:, 0], x[:, 1:])

    @torch.no_grad()
    def mil_instances(
        self, tokens: torch.Tensor, token_present: torch.Tensor | None = None, *, batch_size: int = 256
    ) -> torch.Tensor:
        """The AB-MIL bag of one slide: its regions' readout, ``[instances, instance_dim]``.

        With ``readout="cls"`` one instance per region (``[R, dim]``), with ``"cls+tile"``
        one per region with its salient 20x tile appended (``[R, dim + D]``); with
        ``"tokens"`` the contextualised 20x tokens that are present, region by region.
        """
        present = self._check(tokens, token_present)
        parts = []
        for start in range(0, len(tokens), batch_size):
            batch, batch_present = tokens[start : start + batch_size], present[start : start + batch_size]
            out = self(batch, batch_present)
            if self.config.readout == "tokens":
                parts.append(out.tokens[:, FIRST_20X_TOKEN:][batch_present[:, FIRST_20X_TOKEN:]])
            elif self.config.readout == "cls+tile":
                parts.append(torch.cat([out.cls, self.salient_tile(batch, batch_present)], dim=1))
            else:
                parts.append(out.cls)
        return torch.cat(parts) if parts else tokens.new_zeros((0, self.instance_dim))

    def sample_mask(
        self, token_present: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw which present tokens to mask, ``[B, 21]`` bool (``mask_ratio`` of each region)."""
        n_present = token_present.sum(dim=1)
        n_masked = torch.round(self.config.mask_ratio * n_present).long()
        n_masked = torch.minimum(torch.clamp(n_masked, min=1), torch.clamp(n_present - 1, min=0))
        scores = torch.rand(token_present.shape, generator=generator).to(token_present.device)
        scores = scores.masked_fill(~token_present, 2.0)  # missing tokens rank last
        rank = scores.argsort(dim=1).argsort(dim=1)
        return rank < n_masked.unsqueeze(1)

    def _predict(self, out: MixMagOutput) -> torch.Tensor:
        if self.config.readout != "tokens":
            return self.predictor(out.cls.unsqueeze(1) + self.token_queries())
        return self.predictor(out.tokens)

    def _reconstruction_loss(
        self, predicted: torch.Tensor, target: torch.Tensor, masked: torch.Tensor
    ) -> torch.Tensor:
        if not bool(masked.any()):
            return predicted.sum() * 0.0  # nothing to predict (regions of a single token)
        predicted, target = predicted[masked], target[masked]
        if self.config.loss == "cosine":
            return (1.0 - F.cosine_similarity(predicted, target, dim=-1)).mean()
        return F.mse_loss(predicted, target)

    def _view(self, tokens: torch.Tensor, present: torch.Tensor, generator: torch.Generator | None):
        masked = self.sample_mask(present, generator)
        if self.config.feature_noise > 0:  # relative to the standardised token, so every dimension alike
            rms = self.standardise(tokens, present).pow(2).mean(dim=-1, keepdim=True).sqrt()
            noise = torch.randn(tokens.shape, generator=generator).to(tokens.device)
            tokens = tokens + self.config.feature_noise * rms * noise * self.feature_std
        out = self(tokens, present, masked)
        return out, masked

    def pretraining_loss(
        self,
        tokens: torch.Tensor,
        token_present: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The MEM or CMEM loss of a batch of regions: ``(loss, parts)``, the scalar to minimise
        and its parts as floats (``"mem"``, ``"contrastive"``).

        ``tokens`` and ``token_present`` as in :meth:`forward`; ``generator``: CPU random
        generator of masks and noise (for reproducible runs).
        """
        present = self._check(tokens, token_present)
        target = self.standardise(tokens, present)  # predict what the encoder sees
        out, masked = self._view(tokens, present, generator)
        mem = self._reconstruction_loss(self._predict(out), target, masked)
        if self.config.objective == "mem":
            return mem, {"mem": float(mem.detach())}
        out2, masked2 = self._view(tokens, present, generator)
        mem = 0.5 * (mem + self._reconstruction_loss(self._predict(out2), target, masked2))
        z1 = F.normalize(self.projector(out.cls), dim=-1)
        z2 = F.normalize(self.projector(out2.cls), dim=-1)
        logits = z1 @ z2.T / self.config.temperature
        labels = torch.arange(len(logits), device=logits.device)
        contrastive = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        loss = mem + self.config.contrastive_weight * contrastive
        return loss, {"mem": float(mem.detach()), "contrastive": float(contrastive.detach())}


@dataclass
class RegionTokens:
    """The mixed-magnification tokens of one slide.

    Attributes
    ----------
    tokens
        ``[R, 21, D]`` float32 tile embeddings (zeros where missing).
    token_present
        ``[R, 21]`` bool.
    region_coords
        ``[R, 2]`` int64 level-0 (x, y) of each region's top-left corner (its 5x tile).
    region_size_level0
        Region side in level-0 pixels (the 5x tile side).
    slide_id
        Name of the slide.
    """

    tokens: np.ndarray
    token_present: np.ndarray
    region_coords: np.ndarray
    region_size_level0: float
    slide_id: str = ""


def assemble_region_tokens(
    features: tuple[np.ndarray, np.ndarray, np.ndarray],
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    region_size_level0: float,
    slide_id: str = "",
) -> RegionTokens:
    """Group tile embeddings at 5x, 10x and 20x into region tokens.

    Each 5x tile is a region; a 10x or 20x tile belongs to the region (and slot) under its
    centre. Fine tiles under no 5x tile are dropped; slots with no tile stay missing. With
    :class:`~napari_care.core.features.PatchFeatures` ``p5, p10, p20``:
    ``assemble_region_tokens((p5.features, p10.features, p20.features), (p5.coords, p10.coords, p20.coords),
    region_size_level0=p5.patch_size_level0)``.

    Parameters
    ----------
    features
        ``[N_m, D]`` embeddings at 5x, 10x, 20x (the same encoder, so the same D).
    coords
        ``[N_m, 2]`` level-0 (x, y) top-left corners of those tiles.
    region_size_level0
        Side of a 5x tile in level-0 pixels (a 10x tile is half of it, a 20x tile a quarter).
    slide_id
        Name kept with the result.
    """
    if len(features) != 3 or len(coords) != 3:
        raise ValueError("assemble_region_tokens needs features and coords at 5x, 10x and 20x (three each)")
    dims = {np.asarray(f).shape[1] for f in features}
    if len(dims) != 1:
        raise ValueError(f"assemble_region_tokens: the three magnifications have different D: {sorted(dims)}")
    region_coords = np.asarray(coords[0], dtype=np.int64).reshape(-1, 2)
    offset = region_coords[0] % region_size_level0 if len(region_coords) else np.zeros(2)
    region_cell = np.floor((region_coords - offset) / region_size_level0 + 0.5).astype(np.int64)
    region_of_cell = {tuple(cell): index for index, cell in enumerate(region_cell)}
    n_regions, dim = len(region_coords), dims.pop()
    tokens = np.zeros((n_regions, N_TOKENS, dim), dtype=np.float32)
    present = np.zeros((n_regions, N_TOKENS), dtype=bool)
    first_slot = 0
    for mag_features, mag_coords, side in zip(features, coords, TILES_PER_SIDE, strict=True):
        mag_coords = np.asarray(mag_coords, dtype=np.float64).reshape(-1, 2)
        tile_size = region_size_level0 / side
        centre = (mag_coords + tile_size / 2 - offset) / region_size_level0
        cell = np.floor(centre).astype(np.int64)
        sub = np.clip(np.floor((centre - cell) * side).astype(np.int64), 0, side - 1)
        regions = np.array([region_of_cell.get(tuple(c), -1) for c in cell], dtype=np.int64)
        keep = regions >= 0
        slots = first_slot + sub[keep, 1] * side + sub[keep, 0]  # row-major: y then x
        tokens[regions[keep], slots] = np.asarray(mag_features, dtype=np.float32)[keep]
        present[regions[keep], slots] = True
        first_slot += side * side
    return RegionTokens(tokens, present, region_coords, float(region_size_level0), slide_id)
