"""The encoder registry: names to factories, the timm way.

A factory is registered with :func:`register_encoder` under its :class:`EncoderCfg`;
:func:`create_encoder` looks the name up and builds the encoder. Names that start with
``timm:`` build any timm model by its architecture name. Nothing here imports torch: the
torch encoders are imported only when one is created.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .config import IMAGENET_MEAN, IMAGENET_STD, EncoderCfg, PatchEncoder

#: Build an encoder from its cfg: ``factory(cfg, weights=..., device=..., model_kwargs=...)``.
EncoderFactory = Callable[..., PatchEncoder]
F = TypeVar("F", bound=EncoderFactory)

_CFGS: dict[str, EncoderCfg] = {}
_FACTORIES: dict[str, EncoderFactory] = {}
_ALIASES: dict[str, str] = {}  # other spellings (TRIDENT's) -> registry name

TIMM_PREFIX = "timm:"


def register_encoder(cfg: EncoderCfg) -> Callable[[F], F]:
    """Decorator: register ``factory`` under ``cfg.name``.

    Parameters
    ----------
    cfg
        The encoder's frozen config; its ``name`` is the registry key.

    Examples
    --------
    >>> @register_encoder(EncoderCfg(name="mine", arch=None, ...))  # doctest: +SKIP
    ... def _mine(cfg, *, weights=None, device=None, model_kwargs=None):
    ...     return MyEncoder(cfg)
    """

    def decorate(factory: F) -> F:
        if cfg.name in _CFGS:
            raise ValueError(f"encoder {cfg.name!r} is already registered")
        _CFGS[cfg.name] = cfg
        _FACTORIES[cfg.name] = factory
        return factory

    return decorate


def register_alias(alias: str, name: str) -> None:
    """Let ``alias`` (e.g. TRIDENT's ``"uni_v2"``) stand for the registered encoder ``name``.

    Raises
    ------
    ValueError
        If ``alias`` is already a registered name or alias, or ``name`` is not registered.
    """
    if alias in _CFGS or alias in _ALIASES:
        raise ValueError(f"encoder alias {alias!r} is already taken")
    if name not in _CFGS:
        raise ValueError(f"encoder alias {alias!r}: {name!r} is not a registered encoder")
    _ALIASES[alias] = name


def list_aliases() -> dict[str, str]:
    """Other accepted spellings (TRIDENT's encoder names) and the encoder each stands for."""
    return dict(sorted(_ALIASES.items()))


def canonical_encoder_name(name: str) -> str:
    """The registry name ``name`` stands for (an alias resolved; ``timm:`` names as they are).

    Raises
    ------
    KeyError
        If the name is unknown (see :func:`get_encoder_cfg`).
    """
    return get_encoder_cfg(name).name


def list_encoders() -> list[str]:
    """Names of the registered encoders, ``"default"`` first, then alphabetical.

    Aliases are not listed (see :func:`list_aliases`). Any timm architecture is also
    available as ``"timm:<architecture>"``.
    """
    return sorted(_CFGS, key=lambda name: (name != "default", name))


def get_encoder_cfg(name: str) -> EncoderCfg:
    """The :class:`EncoderCfg` of a registered encoder, an alias of one, or ``timm:<arch>``.

    Cheap: a dictionary look-up that never imports torch or builds a network, so callers
    can read an encoder's tiling (``cfg.tile_size_px`` at ``cfg.native_mpp``, i.e.
    ``cfg.magnification``) and embedding width before choosing to build it. An alias (e.g.
    TRIDENT's ``"conch_v15"``) gives the cfg of its preset, whose ``name`` is canonical.

    Raises
    ------
    KeyError
        If the name is unknown; the message lists the known names.
    """
    if name in _CFGS:
        return _CFGS[name]
    if name in _ALIASES:
        return _CFGS[_ALIASES[name]]
    if name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX):
        return _generic_timm_cfg(name)
    close = difflib.get_close_matches(name, [*_CFGS, *_ALIASES], n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise KeyError(
        f"unknown encoder {name!r}.{hint} Known encoders: {', '.join(list_encoders())}; "
        f"or any timm model as 'timm:<architecture>' (e.g. 'timm:vit_small_patch16_224')."
    )


def create_encoder(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    precision: str | None = None,
) -> PatchEncoder:
    """Build a patch encoder by name.

    Parameters
    ----------
    name
        A name from :func:`list_encoders` (``"default"`` is the built-in descriptor
        that needs no weights) or ``"timm:<architecture>"``.
    weights
        Where the network's weights come from: a local file (``.safetensors``,
        ``.pth``, ``.pt``, ``.bin``), ``"hf-hub:<org>/<repo>"``, ``"random"`` (random
        initialisation, for tests and benchmarks) or ``None`` (the preset's official
        Hugging Face weights, or timm's pretrained weights for ``timm:`` names; needs
        internet access and, for gated models, a Hugging Face login). Ignored by the
        descriptor.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; ``None`` picks CUDA, then MPS, then
        the CPU. A device the machine lacks is a ValueError. Ignored by the descriptor.
    model_kwargs
        Extra ``timm.create_model`` arguments that override the preset's, e.g.
        ``{"depth": 2, "embed_dim": 64, "num_heads": 2}`` for a tiny variant with the
        same recipe.
    precision
        Autocast of torch encoders: ``None``/``"auto"`` (bfloat16 on CUDA where supported,
        float16 on older GPUs and MPS, float32 on the CPU), ``"bf16"``, ``"fp16"`` or
        ``"fp32"``. Ignored by the descriptor.

    Returns
    -------
    PatchEncoder
        ``encode(tiles [B, H, W, 3] uint8) -> [B, D] float32``, ``.cfg``, ``.embed_dim``.

    Raises
    ------
    KeyError
        Unknown name (the message lists the known ones).
    FileNotFoundError, ValueError
        Missing, unreadable or wrong-architecture weights file.
    WeightsNotFoundError
        A ``FileNotFoundError``: official weights neither in the Hugging Face cache nor
        downloadable (offline, gated); the message names the repository, files and cache.
    """
    cfg = get_encoder_cfg(name)
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"create_encoder(weights=...): expected a path or string, got {type(weights).__name__}"
        )
    if isinstance(weights, os.PathLike):
        weights = str(Path(weights))
    factory = _FACTORIES.get(cfg.name, _timm_factory)
    return factory(
        cfg, weights=weights, device=device, model_kwargs=dict(model_kwargs or {}), precision=precision
    )


def _timm_factory(cfg: EncoderCfg, **kwargs: Any) -> PatchEncoder:
    # Imported here so that importing the registry never imports torch.
    from .timm_models import build_timm_encoder  # torch: loaded when a model is used

    return build_timm_encoder(cfg, **kwargs)


def register_timm_preset(cfg: EncoderCfg) -> EncoderCfg:
    """Register a timm-backed preset (no factory of its own needed)."""
    register_encoder(cfg)(_timm_factory)
    return cfg


def _generic_timm_cfg(name: str) -> EncoderCfg:
    """A cfg for ``timm:<arch>``: ImageNet normalisation, timm's own pooling (``head``).

    The real input size, mean/std and embedding size are read from the model once it is
    built (see :func:`napari_care.core.encoders.timm_models.build_timm_encoder`).
    """
    return EncoderCfg(
        name=name,
        arch=name[len(TIMM_PREFIX) :],
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=0.5,
        embed_dim=1,  # replaced by the model's num_features once built
        pooling="head",
        license="see the timm model card of the weights you load",
        timm_kwargs={"num_classes": 0},
        description=f"any timm model: {name[len(TIMM_PREFIX) :]}",
    )
