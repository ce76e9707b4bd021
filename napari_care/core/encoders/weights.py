"""Reading encoder weights: local checkpoint files and the Hugging Face hub.

A checkpoint is read into a flat ``{key: tensor}`` state dict, unwrapped from the usual
training containers (``"teacher"``, ``"model"``, ``"state_dict"``, ``"module"``), cleaned of
wrapper prefixes (``module.``, ``backbone.``, ``_orig_mod.``) and of self-supervised
training heads, and converted from the Hugging Face ``transformers`` ViT or DINOv2 layout
when it comes in one of them (Phikon, Phikon-v2). Hub weights come from the local Hugging
Face cache when they are there, else they are downloaded (unless ``HF_HUB_OFFLINE`` is set);
a missing file raises :class:`WeightsNotFoundError` naming the repository, the files and
the cache folder looked in. Loading is strict: a checkpoint of the wrong architecture raises
an error that lists the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_PREFIX = "hf-hub:"

_CONTAINER_KEYS = ("teacher", "model", "state_dict", "module")
_WRAPPER_PREFIXES = ("module.", "backbone.", "_orig_mod.", "vit.")
# Heads of DINO/iBOT-style training runs and the transformers ViT pooler: never part of the
# feature extractor.
_TRAINING_HEADS = ("dino_head.", "ibot_head.", "student.", "teacher.", "pooler.")
#: Files tried, in order, in a Hugging Face repository whose preset names none.
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TRUE = ("1", "on", "yes", "true")


class WeightsNotFoundError(FileNotFoundError):
    """An encoder's weights are neither a local file nor obtainable from the Hugging Face hub or cache."""


_SHOW_KEYS = 5


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a clean, flat state dict.

    Parameters
    ----------
    path
        A ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` file.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the suffix is not supported or the file cannot be read as a checkpoint.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"weights file {path}: unsupported type {path.suffix!r}; use one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file  # torch loads only when a model runs

            raw: Any = load_file(str(path), device="cpu")
        else:
            # weights_only: a checkpoint is data, never code to run.
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the readers raise many types for a corrupt file
        raise ValueError(
            f"weights file {path}: could not be read as a checkpoint ({type(err).__name__}: {err})"
        ) from err
    return clean_state_dict(raw, source=str(path))


def clean_state_dict(raw: Any, source: str) -> dict[str, torch.Tensor]:
    """Unwrap containers, strip wrapper prefixes, drop training heads, convert layouts."""
    while isinstance(raw, Mapping):
        container = next((key for key in _CONTAINER_KEYS if isinstance(raw.get(key), Mapping)), None)
        if container is None:
            break
        raw = raw[container]
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"weights {source}: expected a state dict (a mapping of names to tensors), "
            f"got {type(raw).__name__}"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            continue  # epoch counters, configs and the like
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        if not key.startswith(_TRAINING_HEADS):
            state[key] = value
    if not state:
        raise ValueError(f"weights {source}: no tensors found in the checkpoint")
    if "embeddings.patch_embeddings.projection.weight" in state:
        state = convert_hf_vit(state)
    return state


def convert_hf_vit(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ``transformers`` ``ViTModel`` or ``Dinov2Model`` state dict to timm ViT names.

    Query, key and value projections (``attention.attention.query`` in checkpoints
    saved by transformers 4, ``attention.q_proj`` by transformers 5) are concatenated into
    timm's fused ``qkv``; DINOv2 layer scales ``lambda1`` become ``gamma``; ViT's
    ``layernorm_before/after``, ``intermediate.dense`` and ``output.dense`` become
    ``norm1/2``, ``mlp.fc1`` and ``mlp.fc2``; the mask token (training only) is dropped.
    """
    renames = [
        (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
        (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
        (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
        (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
        (r"^embeddings\.cls_token$", "cls_token"),
        (r"^embeddings\.position_embeddings$", "pos_embed"),
        (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
        (r"^encoder\.layer\.(\d+)\.norm(\d)\.", r"blocks.\1.norm\2."),
        (r"^encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
        (r"^encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1$", r"blocks.\1.ls\2.gamma"),
        (r"^encoder\.layer\.(\d+)\.mlp\.fc(\d)\.", r"blocks.\1.mlp.fc\2."),
        (r"^layernorm\.", "norm."),
    ]
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "embeddings.mask_token":
            continue
        match = re.match(
            r"^encoder\.layer\.(\d+)\.attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)"
            r"\.(weight|bias)$",
            key,
        )
        if match:
            qkv.setdefault((int(match[1]), match[3]), {})[match[2][0]] = value  # "q", "k" or "v"
            continue
        for pattern, replacement in renames:
            if re.match(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        out[key] = value
    for (block, kind), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        else:  # leave the pieces so that the strict check names them
            out.update({f"blocks.{block}.attn.{name}.{kind}": tensor for name, tensor in parts.items()})
    return out


convert_hf_dinov2 = convert_hf_vit  # the name of earlier versions


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time.

    ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``XDG_CACHE_HOME/huggingface/hub``, else
    ``~/.cache/huggingface/hub`` (the rules of ``huggingface_hub``).
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    """True when downloads are switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    flags = (os.environ.get(var, "").strip().lower() for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in _TRUE for flag in flags)


def find_hub_weights(hub_id: str, filename: str | None, encoder_name: str) -> Path:
    """The local path of a hub repository's weights file: from the cache, else downloaded.

    Parameters
    ----------
    hub_id
        ``"org/repo"`` (an ``"hf-hub:"`` prefix is accepted).
    filename
        The weights file in the repository; None tries :data:`HUB_WEIGHT_FILES` in order.
    encoder_name
        For messages.

    Raises
    ------
    WeightsNotFoundError
        If no file is in the cache and downloads are off, or the download fails (gated
        repository without access, no such file, no network); the one-line message names
        the repository, the files tried and the cache folder, and how to fix it.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache  # lazy: only for hub weights
    from huggingface_hub.errors import EntryNotFoundError

    hub_id = hub_id[len(HUB_PREFIX) :] if hub_id.startswith(HUB_PREFIX) else hub_id
    candidates = (filename,) if filename else HUB_WEIGHT_FILES
    cache = hub_cache_dir()
    for name in candidates:
        cached = try_to_load_from_cache(hub_id, name, cache_dir=str(cache))
        if isinstance(cached, str):
            return Path(cached)
    files = " or ".join(candidates)
    fix = (
        f"download it where the hub is reachable (`hf download {hub_id} {candidates[0]}`; the repository "
        "may be gated: request access on its model card and `hf auth login` first) into that cache, "
        "or pass weights='path/to/checkpoint'"
    )
    if hub_offline():
        raise WeightsNotFoundError(
            f"encoder {encoder_name!r}: weights {files} of Hugging Face {hub_id!r} are not in the cache "
            f"{cache} and downloads are off (HF_HUB_OFFLINE); {fix}"
        )
    for name in candidates:
        try:
            return Path(hf_hub_download(hub_id, name, cache_dir=str(cache)))
        except EntryNotFoundError:
            continue  # try the next file name
        except Exception as err:  # network, auth and cache errors come in many types
            first_line = str(err).splitlines()[0] if str(err) else ""
            raise WeightsNotFoundError(
                f"encoder {encoder_name!r}: could not get {name} of Hugging Face {hub_id!r} into the cache "
                f"{cache} ({type(err).__name__}: {first_line}); {fix}"
            ) from err
    raise WeightsNotFoundError(
        f"encoder {encoder_name!r}: Hugging Face {hub_id!r} has no {files} (cache {cache}); {fix}"
    )


def fetch_hub_state_dict(hub_id: str, filename: str | None, encoder_name: str) -> dict[str, torch.Tensor]:
    """The cleaned state dict of a hub repository's weights (cache first, see :func:`find_hub_weights`).

    Raises
    ------
    WeightsNotFoundError
        If the weights are neither cached nor downloadable.
    ValueError
        If the file cannot be read as a checkpoint.
    """
    return read_state_dict(find_hub_weights(hub_id, filename, encoder_name))


def load_into(model: nn.Module, trunk: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly into ``model``, whose timm backbone is ``model.trunk``.

    ``state`` may use plain timm names (``blocks.0...``) or the wrapped layout
    (``trunk.blocks.0...`` plus head keys, as CONCH v1.5 ships). timm's own checkpoint
    filter of the backbone's module is applied (position-embedding resampling, original
    DINOv2 layout); classifier weights are dropped when the model has no classifier.

    Raises
    ------
    ValueError
        If keys are missing or unexpected or shapes differ; lists the first few of each.
    """
    expected = model.state_dict()
    if not any(key.startswith("trunk.") for key in state):
        state = {f"trunk.{key}": value for key, value in state.items()}
    trunk_state = {key[len("trunk.") :]: value for key, value in state.items() if key.startswith("trunk.")}
    try:
        trunk_state = _timm_filter(trunk)(trunk_state, trunk)
    except Exception:  # a checkpoint of another shape can trip the filter: let the check below report it
        pass
    trunk_state = _drop_unused_classifier(trunk, trunk_state)
    state = {
        **{k: v for k, v in state.items() if not k.startswith("trunk.")},
        **{f"trunk.{k}": v for k, v in trunk_state.items()},
    }

    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {list(state[key].shape)} (model {list(expected[key].shape)})"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        plain = all(key.startswith("trunk.") for key in expected)
        show = (lambda key: key[len("trunk.") :]) if plain else (lambda key: key)
        lines = [f"weights {source} do not fit this architecture:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                listed = ", ".join(show(key) for key in keys[:_SHOW_KEYS])
                more = f" (+{len(keys) - _SHOW_KEYS} more)" if len(keys) > _SHOW_KEYS else ""
                lines.append(f"  {len(keys)} {label} keys: {listed}{more}")
        lines.append("  Check that the encoder name matches the checkpoint (e.g. 'uni' vs 'uni2-h').")
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def _timm_filter(trunk: nn.Module):
    """timm's ``checkpoint_filter_fn`` of the module that defines ``trunk``, or identity."""
    module = importlib.import_module(type(trunk).__module__)
    return getattr(module, "checkpoint_filter_fn", lambda state, model: dict(state))


def _drop_unused_classifier(trunk: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop classifier weights when the model was built without one (``num_classes=0``)."""
    classifier = getattr(trunk, "pretrained_cfg", {}).get("classifier")
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier] if classifier else []
    expected = trunk.state_dict()
    for name in names:
        if not any(key.startswith(f"{name}.") for key in expected):
            state = {key: value for key, value in state.items() if not key.startswith(f"{name}.")}
    return state
