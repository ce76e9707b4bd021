"""Patch encoders: tiles in, one embedding per tile out.

>>> from napari_care.core.encoders import create_encoder, list_encoders
>>> encoder = create_encoder("default")           # built-in, numpy, no weights
>>> features = encoder.encode(tiles)              # uint8 [B, H, W, 3] -> float32 [B, D]  # doctest: +SKIP
>>> uni = create_encoder("uni", weights="pytorch_model.bin")  # doctest: +SKIP

Importing this package, listing encoders and creating ``"default"`` never import torch;
the timm-backed encoders import it when they are created.
"""

from . import descriptor as _descriptor  # noqa: F401  registers "default"
from . import presets as _presets  # noqa: F401  registers the foundation-model presets
from .config import IMAGENET_MEAN, IMAGENET_STD, POOLINGS, EncoderCfg, PatchEncoder
from .registry import create_encoder, get_encoder_cfg, list_encoders, register_encoder, register_timm_preset

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "POOLINGS",
    "EncoderCfg",
    "PatchEncoder",
    "create_encoder",
    "get_encoder_cfg",
    "list_encoders",
    "register_encoder",
    "register_timm_preset",
]
