"""The options of a CARE Stage II phase (:class:`Stage2Config`), apart from the torch training loop.

:mod:`napari_care.core.train.care_stage2` is torch; its config is plain data, so the command
line can show its defaults (``napari-care pretrain care-stage2 --help``) without importing torch.
``napari_care.core.train.care_stage2`` re-exports :class:`Stage2Config`.
"""

from __future__ import annotations

from dataclasses import dataclass

from napari_care.core.train.feature_views import Augmentation

__all__ = ["PROTEIN_TOP_K", "Stage2Config"]

# Top proteins per slide (paper: 10): the default of napari_care.core.molecular.load_protein_table,
# kept here so that the command line shows it without importing that (torch) module.
PROTEIN_TOP_K = 10


@dataclass(frozen=True)
class Stage2Config:
    """Options of one Stage II phase.

    Parameters
    ----------
    steps
        Optimiser steps of the phase.
    batch_size
        Slides per step (the InfoNCE negatives); at most the number of matched slides.
    lr, weight_decay, warmup_steps
        AdamW peak learning rate, weight decay and linear warmup before the cosine decay.
    max_patches
        Larger slides are read as a random compact crop of this many patches each step.
    augmentation
        Feature augmentation of the slides.
    proj_dim, molecular_dim
        Width of the alignment space and of the molecular encoder.
    temperature
        Initial InfoNCE temperature (``1 / exp(s)``).
    learn_temperature
        Learn the logit scale (CLIP) or keep it fixed.
    checkpoint_every, log_every
        Save every that many steps (0: only the final one); report every that many steps.
    seed, device
        Seed of all randomness of the phase; torch device.
    """

    steps: int = 500
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    max_patches: int = 1024
    augmentation: Augmentation = Augmentation(channel_dropout=0.05, noise_std=0.05)  # noqa: RUF009 (frozen)
    proj_dim: int = 128
    molecular_dim: int = 128
    temperature: float = 0.07
    learn_temperature: bool = True
    checkpoint_every: int = 0
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if (
            min(
                self.steps,
                self.batch_size,
                self.log_every,
                self.max_patches,
                self.proj_dim,
                self.molecular_dim,
            )
            < 1
        ):
            raise ValueError(
                "Stage2Config: steps, batch_size, log_every, max_patches and widths must be >= 1"
            )
        if self.batch_size < 2:
            raise ValueError("Stage2Config.batch_size must be >= 2 (InfoNCE needs negatives)")
        if self.checkpoint_every < 0 or self.warmup_steps < 0 or self.temperature <= 0:
            raise ValueError("Stage2Config: checkpoint_every, warmup_steps >= 0 and temperature > 0 required")
