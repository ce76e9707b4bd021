"""Patch encoders: tiles in, one embedding per tile out.

>>> from napari_care.core.encoders import create_encoder, list_encoders
>>> encoder = create_encoder("default")           # built-in, numpy, no weights
>>> features = encoder.encode(tiles)              # uint8 [B, H, W, 3] -> float32 [B, D]  # doctest: +SKIP
>>> uni = create_encoder("uni", weights="pytorch_model.bin")  # doctest: +SKIP
>>> get_encoder_cfg("conch_v15").tile_size_px     # TRIDENT's names are aliases; no torch
512

Importing this package, listing encoders and creating ``"default"`` never import torch;
the timm-backed encoders import it when they are created.
"""

from . import descriptor as _descriptor  # noqa: F401  registers "default"
from . import presets as _presets  # noqa: F401  registers the foundation-model presets
from .config import IMAGENET_MEAN, IMAGENET_STD, POOLINGS, EncoderCfg, PatchEncoder
from .registry import (
    canonical_encoder_name,
    create_encoder,
    get_encoder_cfg,
    list_aliases,
    list_encoders,
    register_alias,
    register_encoder,
    register_timm_preset,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "POOLINGS",
    "EncoderCfg",
    "PatchEncoder",
    "canonical_encoder_name",
    "create_encoder",
    "get_encoder_cfg",
    "list_aliases",
    "list_encoders",
    "register_alias",
    "register_encoder",
    "register_timm_preset",
]
