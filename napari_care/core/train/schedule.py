"""What every training loop here shares: the learning-rate schedule, per-step seeds, and a
warmup that fits short runs."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

import numpy as np

Config = TypeVar("Config")


def cosine_schedule(step: int, steps: int, warmup_steps: int, peak: float) -> float:
    """Learning rate of a 0-based step: linear warmup to ``peak``, then cosine decay to 0."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_seed(seed: int, step: int) -> int:
    """The seed of one step's randomness (so a resumed run draws what an unbroken one would)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def with_short_warmup(config_type: type[Config], **options: Any) -> Config:
    """``config_type(**options)`` whose warmup is its default, or a tenth of its steps when
    that is shorter (a short run is not all warmup).

    ``config_type`` is a training config dataclass with ``steps`` and ``warmup_steps``
    fields (:class:`~napari_care.core.train.care_stage1.Stage1Config`, ...).
    """
    defaults = {option.name: option.default for option in dataclasses.fields(config_type)}
    steps = options.get("steps", defaults["steps"])
    return config_type(**options, warmup_steps=min(defaults["warmup_steps"], steps // 10))
