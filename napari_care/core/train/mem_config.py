"""The options of a MEM/CMEM pretraining run (:class:`MEMTrainConfig`), apart from the torch training loop.

:mod:`napari_care.core.train.mem` is torch; its config is plain data, so the command
line can show its defaults (``napari-care pretrain mixmag --help``) without importing torch.
``napari_care.core.train.mem`` re-exports :class:`MEMTrainConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MEMTrainConfig"]


@dataclass(frozen=True)
class MEMTrainConfig:
    """Options of a MEM/CMEM pretraining run.

    Parameters
    ----------
    steps
        Optimiser steps in total (a resumed run stops at the same total).
    batch_size
        Regions per step.
    lr, weight_decay
        AdamW peak learning rate and weight decay.
    warmup_steps
        Linear warmup before the cosine decay (to 0 at ``steps``).
    regions_per_slide
        Region subsampling: at most this many regions of each slide (drawn once, seeded)
        enter the pool; None keeps all.
    standardise_tokens
        A new model standardises tile embeddings per dimension with the mean and std of the
        pool's present tokens, and gets the ZCA whitening of the pool's standardised 20x
        tiles for the ``cls+tile`` readout (kept in the model; a resumed run keeps its
        checkpoint's). False: identity for both, i.e. the raw embeddings.
    checkpoint_every
        Save ``mem_step<step>`` every that many steps (0: only the final ``mem_final``).
    log_every
        Report progress every that many steps.
    seed
        Seed of all randomness of the run.
    device
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    """

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    regions_per_slide: int | None = None
    standardise_tokens: bool = True
    checkpoint_every: int = 0
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.log_every < 1:
            raise ValueError("MEMTrainConfig: steps, batch_size and log_every must be positive")
        if self.checkpoint_every < 0 or self.warmup_steps < 0:
            raise ValueError("MEMTrainConfig: checkpoint_every and warmup_steps must be >= 0")
        if self.regions_per_slide is not None and self.regions_per_slide < 1:
            raise ValueError(
                f"MEMTrainConfig.regions_per_slide must be positive, got {self.regions_per_slide}"
            )
