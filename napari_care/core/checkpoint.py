"""Model checkpoints: safetensors weights plus a JSON description, written atomically.

A checkpoint named ``<name>`` is two or three files side by side:

``<name>.safetensors``
    The model's ``state_dict`` (weights and buffers), loadable without pickle.
``<name>.json``
    What is needed to rebuild the model: the model and config classes (dotted paths), the
    config fields, the napari_care version, and the JSON-able part of the extra state
    (e.g. class names of a classifier head, the training step).
``<name>.state.pt`` (only when needed)
    The rest of the extra state, e.g. an optimizer ``state_dict`` for resuming training,
    written with :func:`torch.save` and read back with ``weights_only=True`` (so it holds
    tensors, numbers, strings, lists and dicts only, never arbitrary objects).

The JSON file is written last: a checkpoint whose JSON exists is complete.

Models follow one convention: ``Model(config)`` builds the module from a frozen config
dataclass, and the config has an ``in_dim`` field when the model reads patch features.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from napari_care import __version__
from napari_care.core.atomic import atomic_open, atomic_path

FORMAT_NAME = "napari_care.checkpoint"
FORMAT_VERSION = 1
_SUFFIXES = (".safetensors", ".json", ".state.pt")
FOREIGN_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")  # weights other programs write


class FeatureDimMismatch(ValueError):
    """The features given to a model have another dimension than the one it was trained on."""


def checkpoint_paths(path: str | Path) -> tuple[Path, Path, Path]:
    """Return the (weights, description, state) paths of a checkpoint.

    Parameters
    ----------
    path
        A folder (the checkpoint is then ``<folder>/checkpoint.*``), a prefix such as
        ``runs/mem_step000100``, or any of the checkpoint's own files.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint"
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return (
        path.with_name(name + ".safetensors"),
        path.with_name(name + ".json"),
        path.with_name(name + ".state.pt"),
    )


def _dotted_name(obj: type) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _import_class(dotted: str, json_path: Path) -> type:
    # Importing a class named in a file is code execution: only our own package is trusted.
    if not dotted.startswith("napari_care."):
        raise ValueError(
            f"{json_path}: class {dotted!r} is outside napari_care; pass model_cls to load it explicitly"
        )
    module_name, _, class_name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{json_path}: cannot import {dotted!r} ({error})") from error


def _split_extra(extra_state: Mapping[str, Any] | None) -> tuple[dict, dict]:
    """Split extra state into a JSON-able part and a tensor part (for the ``.pt`` sidecar)."""
    as_json, as_torch = {}, {}
    for key, value in (extra_state or {}).items():
        try:
            json.dumps(value)
            as_json[key] = value
        except (TypeError, ValueError):
            as_torch[key] = value
    return as_json, as_torch


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, config: Any, *, extra_state: Mapping[str, Any] | None = None
) -> Path:
    """Save a model, its config and optional extra state atomically.

    Parameters
    ----------
    path
        Folder, prefix or file name of the checkpoint (see :func:`checkpoint_paths`).
    model
        The module; its class must accept ``config`` as its only constructor argument.
    config
        The model's config dataclass instance.
    extra_state
        Anything else to keep: JSON-able values go into the JSON file, the others (tensors,
        optimizer state) into ``<name>.state.pt``.

    Returns
    -------
    Path of the JSON description (the file to pass to :func:`load_checkpoint`).
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"save_checkpoint: config must be a dataclass instance, got {type(config).__name__}")
    weights_path, json_path, state_path = checkpoint_paths(path)
    as_json, as_torch = _split_extra(extra_state)
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    with atomic_path(weights_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT_NAME})
    if as_torch:
        with atomic_path(state_path) as tmp:
            torch.save(as_torch, tmp)
    elif state_path.exists():
        state_path.unlink()  # a stale sidecar from an earlier save must not be read back
    description = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "napari_care_version": __version__,
        "model_class": _dotted_name(type(model)),
        "config_class": _dotted_name(type(config)),
        "config": dataclasses.asdict(config),
        "extra": as_json,
        "state_file": state_path.name if as_torch else None,
    }
    with atomic_open(json_path, "w") as handle:
        json.dump(description, handle, indent=2)
    return json_path


def read_checkpoint_description(path: str | Path) -> dict:
    """Read a checkpoint's JSON description without loading weights (cheap; no model built).

    Raises
    ------
    FileNotFoundError
        When the JSON file is missing.
    ValueError
        When the file is not a napari_care checkpoint: another program's weights file with no
        description beside it, a description that is not JSON, or JSON of another format.
        The message names the file.
    """
    given = Path(path)
    json_path = checkpoint_paths(path)[1]
    if not json_path.exists():
        if given.is_file() and given.suffix.lower() in FOREIGN_WEIGHT_SUFFIXES:
            raise ValueError(
                f"{given}: not a napari_care checkpoint: no config JSON next to it ({json_path.name}); "
                "napari_care checkpoints are <name>.json + <name>.safetensors, written by "
                "`napari-care train`, `pretrain` or `train-mil`"
            )
        raise FileNotFoundError(f"checkpoint description {json_path} does not exist")
    try:
        description = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(
            f"{json_path} is not a napari_care checkpoint: its description is not JSON ({error})"
        ) from error
    if not isinstance(description, dict) or description.get("format") != FORMAT_NAME:
        found = description.get("format") if isinstance(description, dict) else type(description).__name__
        raise ValueError(f"{json_path} is not a napari_care checkpoint (format={found!r})")
    missing = [key for key in ("model_class", "config_class", "config") if key not in description]
    if missing:
        raise ValueError(f"{json_path}: a napari_care checkpoint description without {', '.join(missing)}")
    return description


def _config_from_dict(config_cls: type, fields: Any, json_path: Path) -> Any:
    if not isinstance(fields, Mapping):
        raise ValueError(f"{json_path}: its config is a {type(fields).__name__}, not a mapping of fields")
    # JSON turns tuples into lists; frozen configs expect tuples (hashable, immutable).
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()}
    known = {field.name for field in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{json_path}: config fields {unknown} are unknown to {config_cls.__name__}")
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as error:  # a required field missing, or a value its checks refuse
        raise ValueError(f"{json_path}: its config does not fit {config_cls.__name__}: {error}") from error


def load_checkpoint(
    path: str | Path,
    model_cls: type[torch.nn.Module] | None = None,
    *,
    map_location: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, Any, dict]:
    """Rebuild a model from a checkpoint.

    Parameters
    ----------
    path
        Folder, prefix or any file of the checkpoint.
    model_cls
        The model class; by default the one named in the JSON (only ``napari_care.*``).
    map_location
        Device of the loaded weights.

    Returns
    -------
    (model, config, extra)
        The model in eval mode, its config, and the extra state (JSON part and ``.pt``
        sidecar merged; empty when none was saved).

    Raises
    ------
    FileNotFoundError
        When the description or the weights are missing.
    ValueError
        When the files are not a napari_care checkpoint, hold another model than
        ``model_cls``, are corrupt, or do not fit their description; the message names the
        file and what was expected. Every checkpoint the project loads comes through here.
    """
    weights_path, json_path, state_path = checkpoint_paths(path)
    description = read_checkpoint_description(path)
    saved_class = description["model_class"]
    if (
        model_cls is not None
        and saved_class.startswith("napari_care.")
        and saved_class != _dotted_name(model_cls)
    ):
        # another of the project's models (an explicit class is trusted over a name from elsewhere)
        raise ValueError(
            f"{json_path} holds the model {saved_class.rpartition('.')[2]}, "
            f"expected {model_cls.__name__} ({saved_class})"
        )
    model_cls = model_cls or _import_class(description["model_class"], json_path)
    config_cls = _import_class(description["config_class"], json_path)
    config = _config_from_dict(config_cls, description["config"], json_path)
    model = model_cls(config)
    if not weights_path.is_file():
        raise FileNotFoundError(f"{json_path}: its weights {weights_path.name} are missing")
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (
        Exception
    ) as error:  # safetensors raises its own error type, OSError, or ValueError for a bad header
        raise ValueError(f"{weights_path} is corrupt: {error}") from error
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # missing/unexpected keys or shapes that differ from the config
        raise ValueError(
            f"{weights_path} does not fit {model_cls.__name__} built from {json_path.name}: {error}"
        ) from error
    model.eval()
    extra = dict(description.get("extra") or {})
    if description.get("state_file"):
        try:
            extra.update(torch.load(state_path, map_location=map_location, weights_only=True))
        except Exception as error:  # a truncated or foreign pickle
            raise ValueError(f"{state_path} is corrupt or missing: {error}") from error
    return model, config, extra


def check_feature_dim(
    config: Any, feature_dim: int, *, checkpoint: str | Path = "in memory", encoder: str = "default"
) -> None:
    """Raise :class:`FeatureDimMismatch` when features do not fit a model's ``in_dim``.

    Parameters
    ----------
    config
        A model config with an ``in_dim`` field.
    feature_dim
        D of the features at hand.
    checkpoint
        Where the model came from (for the message).
    encoder
        Name of the patch encoder that gave the features (for the message).
    """
    expected = int(config.in_dim)
    if expected != int(feature_dim):
        raise FeatureDimMismatch(
            f"checkpoint {checkpoint} expects D={expected} features "
            f"but the encoder '{encoder}' gives {int(feature_dim)}"
        )
