"""The frozen description of a patch encoder, and the interface every encoder offers.

An :class:`EncoderCfg` holds everything needed to build an encoder and to prepare its
input: the architecture, the input size, the normalisation, the resolution it was trained
at, how the tokens become one embedding, where its weights live and under which licence.
Preprocessing is derived from it, never hard-coded in an encoder (the timm way).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

RANDOM_WEIGHTS = "random"  # the weights of an encoder built without a checkpoint (tests, baselines)

#: How the tokens of a transformer become one embedding per tile.
#: ``"cls"``: the class token after the final norm. ``"cls+mean"``: the class token
#: concatenated with the mean of the patch tokens (register tokens skipped).
#: ``"mean"``: the mean of the patch tokens. ``"head"``: whatever the timm model returns
#: with its classifier removed (``num_classes=0``: timm's own pooling, e.g. for CNNs).
#: ``"attn_pool"``: an attentional pooler plus layer norm on all tokens (CONCH).
#: ``"descriptor"``: not a network; hand-made statistics (the built-in ``default``).
Pooling = Literal["cls", "cls+mean", "mean", "head", "attn_pool", "descriptor"]

POOLINGS: tuple[str, ...] = ("cls", "cls+mean", "mean", "head", "attn_pool", "descriptor")

#: Normalisation constants used by several models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderCfg:
    """Everything that defines one patch encoder.

    Parameters
    ----------
    name
        Registry name, e.g. ``"uni"`` or ``"timm:vit_small_patch16_224"``.
    arch
        timm architecture name (``None`` for the built-in numpy descriptor).
    input_size
        Side in pixels of the square image the network sees; tiles of any other side are
        resized to it.
    mean, std
        Per-channel RGB normalisation applied after scaling to [0, 1].
    native_mpp
        Micrometres per pixel the model was trained at (0.5 = 20x).
    embed_dim
        Length of one tile's embedding (after pooling).
    pooling
        Embedding recipe, one of :data:`POOLINGS`.
    tile_size_px
        Recommended tile side in pixels at ``native_mpp`` before resizing to
        ``input_size`` (e.g. 512 for CONCH v1.5, resized to 448).
    crop_pct
        timm's centre-crop share: tiles are resized to ``input_size / crop_pct`` and the
        central ``input_size`` square is kept (1.0: no crop).
    interpolation
        Resize mode for tiles whose side differs from the resize target
        (``"bilinear"`` or ``"bicubic"``; antialiased when shrinking).
    license
        Licence note; most pathology foundation models are gated and non-commercial.
    hf_id
        Hugging Face repository of the official weights, or ``None``.
    hf_filename
        Weights file in that repository when it is not the usual ``model.safetensors`` /
        ``pytorch_model.bin``.
    timm_kwargs
        Keyword arguments for ``timm.create_model``. A string value of a ``*_layer``
        argument names a class in ``timm.layers`` or ``torch.nn`` (e.g.
        ``"SwiGLUPacked"``, ``"SiLU"``), so that this module needs no torch import.
        Other values must be plain numbers, strings and booleans.
    description
        One line for menus and ``--help``.
    """

    name: str
    arch: str | None
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    native_mpp: float
    embed_dim: int
    pooling: Pooling
    tile_size_px: int = 224
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    license: str = ""
    hf_id: str | None = None
    hf_filename: str | None = None
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    description: str = ""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"EncoderCfg {self.name!r}: pooling {self.pooling!r} is not one of {POOLINGS}")
        if self.input_size <= 0 or self.embed_dim <= 0 or self.native_mpp <= 0:
            raise ValueError(
                f"EncoderCfg {self.name!r}: input_size, embed_dim and native_mpp must be positive"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"EncoderCfg {self.name!r}: mean and std need 3 values, std > 0")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"EncoderCfg {self.name!r}: crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"EncoderCfg {self.name!r}: interpolation must be 'bilinear' or 'bicubic'")
        # A read-only view keeps the frozen promise for the one mutable field.
        object.__setattr__(self, "timm_kwargs", MappingProxyType(dict(self.timm_kwargs)))

    @property
    def magnification(self) -> float:
        """Objective magnification of ``native_mpp`` (10 / mpp: 0.5 um/px is 20x)."""
        return 10.0 / self.native_mpp

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A mapping proxy cannot be pickled: rebuild from plain values (dask, processes).
        values = [getattr(self, f.name) for f in fields(self)]
        return type(self), tuple(dict(value) if isinstance(value, Mapping) else value for value in values)


@runtime_checkable
class PatchEncoder(Protocol):
    """What the extraction pipeline needs from an encoder.

    ``encode`` takes RGB uint8 tiles ``[B, H, W, 3]`` of any square side and returns
    float32 embeddings ``[B, embed_dim]``; it raises ``FloatingPointError`` if the result
    holds NaN or inf.
    """

    cfg: EncoderCfg

    @property
    def embed_dim(self) -> int: ...

    def encode(self, tiles: np.ndarray) -> np.ndarray: ...


def check_tiles(tiles: object, encoder_name: str) -> np.ndarray:
    """Validate an ``encode`` input and return it as an array.

    Raises
    ------
    TypeError
        If ``tiles`` is not a uint8 numpy array.
    ValueError
        If it is not ``[B, H, W, 3]`` with ``H == W > 0``.
    """
    if not isinstance(tiles, np.ndarray):
        raise TypeError(f"{encoder_name}.encode(tiles): expected a numpy array, got {type(tiles).__name__}")
    if tiles.dtype != np.uint8:
        raise TypeError(f"{encoder_name}.encode(tiles): expected dtype uint8 RGB, got {tiles.dtype}")
    if tiles.ndim != 4 or tiles.shape[3] != 3:
        raise ValueError(
            f"{encoder_name}.encode(tiles): expected shape [B, H, W, 3], got {list(tiles.shape)}"
        )
    if tiles.shape[1] != tiles.shape[2] or tiles.shape[1] == 0:
        raise ValueError(
            f"{encoder_name}.encode(tiles): tiles must be square and non-empty, "
            f"got {tiles.shape[1]}x{tiles.shape[2]}"
        )
    return tiles


def check_finite(embeddings: np.ndarray, encoder_name: str) -> np.ndarray:
    """Raise ``FloatingPointError`` naming the bad tiles if ``embeddings`` holds NaN/inf."""
    finite_per_tile = np.isfinite(embeddings).all(axis=1)
    if not finite_per_tile.all():
        bad = np.flatnonzero(~finite_per_tile)
        raise FloatingPointError(
            f"encoder {encoder_name!r} produced NaN/inf embeddings for {bad.size} of {len(embeddings)} tiles "
            f"(first: tile {int(bad[0])}); the weights may be corrupt "
            "or the model overflowed in reduced precision"
        )
    return embeddings
