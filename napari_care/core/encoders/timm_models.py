"""Torch encoders: a timm backbone, an embedding recipe and cfg-derived preprocessing.

:func:`build_timm_encoder` turns an :class:`EncoderCfg` into a :class:`TorchEncoder`:
it gets the weights (local file, Hugging Face hub, or random), builds the timm model with
the preset's arguments, loads the weights strictly and wraps the model with the pooling
recipe. Inference runs under ``torch.inference_mode()``, channels-last, on the device
:func:`~napari_care.core.encoders.device.pick_device` chooses (CUDA, then MPS, then CPU)
and under the autocast dtype :func:`~napari_care.core.encoders.device.autocast_dtype`
gives (bfloat16 on CUDA where supported, float16 otherwise, none on the CPU unless asked).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from .config import RANDOM_WEIGHTS, EncoderCfg, check_finite, check_tiles
from .device import autocast_dtype, pick_device
from .weights import HUB_PREFIX, WeightsNotFoundError, fetch_hub_state_dict, load_into, read_state_dict


class AttentionalPooler(nn.Module):
    """Cross-attention of learned queries over all tokens (CONCH's ``attn_pool_contrast``).

    Parameter names match the CONCH v1.5 checkpoint: ``query``, ``ln_q``, ``ln_k``,
    ``to_q``, ``to_kv``, ``to_out``.
    """

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"AttentionalPooler: d_model {d_model} is not divisible by n_head {n_head}")
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.n_head = n_head
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, d_model * 2, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, N, C]`` -> ``[B, n_queries, d_model]``."""
        k, v = self.to_kv(self.ln_k(tokens)).chunk(2, dim=-1)
        q = self.to_q(self.ln_q(self.query)).expand(tokens.shape[0], -1, -1)
        # Softmax scale head_dim ** -0.5 (SDPA's default), as CONCH.
        attended = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        return self.to_out(attended.transpose(1, 2).flatten(2))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, n, h * d]`` -> ``[B, h, n, d]``."""
        return x.unflatten(-1, (self.n_head, -1)).transpose(1, 2)


class EmbeddingNet(nn.Module):
    """A timm backbone (``trunk``) plus the embedding recipe of an :class:`EncoderCfg`.

    ``forward(x [B, 3, S, S] normalised) -> [B, D]``.
    """

    def __init__(self, trunk: Any, pooling: str, head_dim: int | None = None) -> None:
        super().__init__()
        self.trunk = trunk  # a timm model: forward_features, num_features, num_prefix_tokens
        self.pooling = pooling
        if pooling in ("cls", "cls+mean") and getattr(trunk, "cls_token", None) is None:
            raise ValueError(f"pooling {pooling!r} needs a class token; {type(trunk).__name__} has none")
        if pooling in ("cls", "cls+mean", "mean", "attn_pool") and not hasattr(trunk, "forward_features"):
            raise ValueError(f"pooling {pooling!r} needs a token-level backbone")
        if pooling == "attn_pool":
            if head_dim is None:
                raise ValueError("pooling 'attn_pool' needs head_dim")
            self.attn_pool_contrast = AttentionalPooler(
                head_dim, int(self.trunk.num_features), n_head=8, n_queries=1
            )
            self.ln_contrast = nn.LayerNorm(head_dim)

    @property
    def embed_dim(self) -> int:
        """Length of the pooled embedding."""
        if self.pooling == "attn_pool":
            return int(self.ln_contrast.normalized_shape[0])
        width = int(self.trunk.num_features)
        return 2 * width if self.pooling == "cls+mean" else width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling == "head":
            return self.trunk(x)
        tokens = self.trunk.forward_features(x)  # after the final norm
        patch_tokens = tokens[:, self.trunk.num_prefix_tokens :]  # skips class and register tokens
        if self.pooling == "cls":
            return tokens[:, 0]
        if self.pooling == "cls+mean":
            return torch.cat([tokens[:, 0], patch_tokens.mean(dim=1)], dim=-1)
        if self.pooling == "mean":
            return patch_tokens.mean(dim=1)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


class TorchEncoder:
    """A patch encoder backed by a torch model.

    Parameters
    ----------
    cfg
        The encoder's config; input size, mean, std and interpolation drive
        preprocessing.
    model
        The :class:`EmbeddingNet` (moved to ``device``, eval mode, channels-last).
    device
        Torch device (string or device); None chooses (see ``pick_device``).
    weights_source
        Where the weights came from (file path, hub id or ``"random"``), for messages.
    precision
        ``"auto"``, ``"bf16"``, ``"fp16"`` or ``"fp32"`` (see ``autocast_dtype``).
    """

    def __init__(
        self,
        cfg: EncoderCfg,
        model: EmbeddingNet,
        device: str | torch.device | None,
        weights_source: str,
        precision: str = "auto",
    ) -> None:
        self.cfg = cfg
        self.device = pick_device(device)
        self.precision = precision
        self.autocast_dtype = autocast_dtype(self.device, precision)
        self.weights_source = weights_source
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        self._mean = torch.tensor(cfg.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.std, device=self.device).view(1, 3, 1, 1)

    @property
    def embed_dim(self) -> int:
        """Length of one tile's embedding."""
        return self.cfg.embed_dim

    def __repr__(self) -> str:
        return (
            f"TorchEncoder({self.cfg.name!r}, embed_dim={self.embed_dim}, device={self.device}, "
            f"autocast={self.autocast_dtype}, weights={self.weights_source!r})"
        )

    def preprocess(self, tiles: np.ndarray | torch.Tensor) -> torch.Tensor:
        """RGB uint8 ``[B, H, W, 3]`` -> normalised float ``[B, 3, S, S]`` on the device.

        Resizes to ``cfg.input_size / cfg.crop_pct`` (antialiased), centre-crops
        ``cfg.input_size`` when that is larger, scales to [0, 1], normalises with
        ``cfg.mean``/``cfg.std`` and returns a channels-last tensor. Accepts a uint8 tensor
        already on the device, so a pipeline can do this step on the GPU.
        """
        batch = torch.from_numpy(np.ascontiguousarray(tiles)) if isinstance(tiles, np.ndarray) else tiles
        x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        resize_px = round(self.cfg.input_size / self.cfg.crop_pct)
        if x.shape[-1] != resize_px or x.shape[-2] != resize_px:
            x = F.interpolate(
                x,
                size=(resize_px, resize_px),
                mode=self.cfg.interpolation,
                align_corners=False,
                antialias=True,
            )
        if resize_px != self.cfg.input_size:  # timm-style centre crop
            top = (resize_px - self.cfg.input_size) // 2
            x = x[..., top : top + self.cfg.input_size, top : top + self.cfg.input_size]
        x = (x / 255.0 - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last)

    def forward_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``[B, 3, S, S]`` on the device -> float32 embeddings ``[B, D]``.

        Runs under autocast in :attr:`autocast_dtype` (none when it is None).
        """
        dtype = self.autocast_dtype
        autocast = (
            contextlib.nullcontext()
            if dtype is None
            else torch.autocast(device_type=self.device.type, dtype=dtype)
        )
        with torch.inference_mode(), autocast:
            return self.model(x).float()

    def encode(self, tiles: np.ndarray) -> np.ndarray:
        """RGB uint8 tiles ``[B, H, W, 3]`` (square, any side) -> float32 ``[B, D]``."""
        tiles = check_tiles(tiles, self.cfg.name)
        if len(tiles) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        with torch.inference_mode():
            embeddings = self.forward_tensor(self.preprocess(tiles)).cpu().numpy()
        return check_finite(embeddings, self.cfg.name)


def build_timm_encoder(
    cfg: EncoderCfg,
    *,
    weights: str | None = None,
    device: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    precision: str | None = None,
) -> TorchEncoder:
    """Build a :class:`TorchEncoder` from a timm-backed cfg (see ``create_encoder``)."""
    chosen = pick_device(device)  # first: a bad device fails before weights or a model cost anything
    autocast_dtype(chosen, precision or "auto")  # checks the precision the same way
    if cfg.arch is None:
        raise ValueError(f"encoder {cfg.name!r} has no timm architecture")
    state, source = _resolve_weights(cfg, weights)  # first, so a failed download costs no model build
    model = build_embedding_net(cfg, model_kwargs)
    if state is not None:
        load_into(model, model.trunk, state, source)
    cfg = _cfg_for_built_model(cfg, model)
    return TorchEncoder(cfg, model, chosen, source, precision=precision or "auto")


def build_embedding_net(cfg: EncoderCfg, model_kwargs: Mapping[str, Any] | None = None) -> EmbeddingNet:
    """The network of a timm-backed cfg with (seeded) random weights, on torch's current device.

    Build it under ``with torch.device("meta"):`` to get the full-size architecture without
    allocating it (shapes only), e.g. to check a preset's embedding width.
    """
    if cfg.arch is None:
        raise ValueError(f"encoder {cfg.name!r} has no timm architecture")
    kwargs = {**cfg.timm_kwargs, **(model_kwargs or {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random weights are the same on every run
        try:
            trunk = timm.create_model(cfg.arch, pretrained=False, **_resolve_layers(kwargs))
        except (RuntimeError, TypeError, ValueError, AssertionError) as err:
            raise ValueError(
                f"encoder {cfg.name!r}: timm could not build {cfg.arch!r} with {kwargs}: {err}"
            ) from err
        head_dim = cfg.embed_dim if cfg.pooling == "attn_pool" else None
        return EmbeddingNet(trunk, cfg.pooling, head_dim=head_dim)


def _resolve_weights(cfg: EncoderCfg, weights: str | None) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The state dict to load (``None`` for random init) and a label of its source."""
    assert cfg.arch is not None  # checked by the caller
    if weights == RANDOM_WEIGHTS:
        return None, RANDOM_WEIGHTS
    if weights is not None and weights.startswith(HUB_PREFIX):
        return fetch_hub_state_dict(weights, None, cfg.name), weights
    if weights is not None:
        return read_state_dict(weights), weights
    if cfg.hf_id:
        return fetch_hub_state_dict(cfg.hf_id, cfg.hf_filename, cfg.name), f"{HUB_PREFIX}{cfg.hf_id}"
    pretrained = timm.models.get_pretrained_cfg(cfg.arch)
    hub_id = getattr(pretrained, "hf_hub_id", None) if pretrained is not None else None
    if not hub_id:
        raise WeightsNotFoundError(
            f"encoder {cfg.name!r}: timm has no downloadable weights for {cfg.arch!r}; "
            "pass weights='path/to/checkpoint' or weights='random'"
        )
    filename = getattr(pretrained, "hf_hub_filename", None)
    return fetch_hub_state_dict(hub_id, filename, cfg.name), f"{HUB_PREFIX}{hub_id}"


def _resolve_layers(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Turn string ``*_layer`` arguments (``"SwiGLUPacked"``, ``"SiLU"``) into classes."""
    resolved = dict(kwargs)
    for key, value in kwargs.items():
        if key.endswith("_layer") and isinstance(value, str):
            layer = getattr(timm.layers, value, None) or getattr(nn, value, None)
            if layer is None:
                raise ValueError(f"{key}={value!r} names no class in timm.layers or torch.nn")
            resolved[key] = layer
    return resolved


def _cfg_for_built_model(cfg: EncoderCfg, model: EmbeddingNet) -> EncoderCfg:
    """The cfg with input size and embedding size read from the model actually built.

    They differ from the preset when ``model_kwargs`` change them (tiny test variants);
    for generic ``timm:`` models the normalisation, centre crop and interpolation also
    come from timm's data config of the architecture.
    """
    updates: dict[str, Any] = {"embed_dim": model.embed_dim}
    img_size = getattr(getattr(model.trunk, "patch_embed", None), "img_size", None)
    if img_size is not None:
        updates["input_size"] = int(img_size[0])
    if cfg.pooling == "head":
        data_cfg = timm.data.resolve_model_data_config(model.trunk)
        updates.update(
            input_size=int(data_cfg["input_size"][-1]),
            mean=tuple(float(m) for m in data_cfg["mean"]),
            std=tuple(float(s) for s in data_cfg["std"]),
            crop_pct=min(1.0, float(data_cfg.get("crop_pct", 1.0))),
            interpolation=data_cfg["interpolation"]
            if data_cfg["interpolation"] in ("bilinear", "bicubic")
            else "bicubic",
        )
    return dataclasses.replace(cfg, **updates)
