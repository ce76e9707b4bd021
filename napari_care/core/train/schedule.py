"""What every training loop here shares: the learning-rate schedule and per-step seeds."""

from __future__ import annotations

import math

import numpy as np


def cosine_schedule(step: int, steps: int, warmup_steps: int, peak: float) -> float:
    """Learning rate of a 0-based step: linear warmup to ``peak``, then cosine decay to 0."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_seed(seed: int, step: int) -> int:
    """The seed of one step's randomness (so a resumed run draws what an unbroken one would)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])
