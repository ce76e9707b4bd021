"""The options of a CARE Stage I run (:class:`Stage1Config`), apart from the torch training loop.

:mod:`napari_care.core.train.care_stage1` is torch; its config is plain data, so the command
line can show its defaults (``napari-care pretrain care-stage1 --help``) without importing torch.
``napari_care.core.train.care_stage1`` re-exports :class:`Stage1Config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from napari_care.core.train.feature_views import Augmentation

__all__ = ["Stage1Config"]


@dataclass(frozen=True)
class Stage1Config:
    """Options of a Stage I run (all this project's choices; see the module docstring of
    :mod:`napari_care.core.train.care_stage1`).

    Parameters
    ----------
    steps
        Optimiser steps in total (a resumed run stops at the same total).
    batch_size
        Sub-slides per step (two views each).
    lr, weight_decay, warmup_steps
        AdamW peak learning rate, weight decay, linear warmup before the cosine decay.
    max_patches, min_patches
        Sub-slide size limit and the smallest tissue piece kept (paper: about 360).
    crop_fraction, mask_ratio
        Ranges of the share of a sub-slide's patches a view keeps, and of a view's patches
        masked in the student (each drawn uniformly).
    augmentation
        Feature augmentation of each view.
    head_hidden, head_bottleneck, prototypes
        Projection heads: ``E -> hidden -> bottleneck -> L2-normalise -> prototypes``.
    student_temperature, teacher_temperature, center_momentum
        Softmax temperatures of student and teacher outputs; EMA momentum of the centres.
    teacher_momentum
        Initial EMA momentum of the teacher (rises to 1 at the last step).
    mim_weight, consistency_weight
        Weights of ``L_mim`` and ``L_cons`` (0: off, the default; not in the paper).
    scale_lr_factor
        Learning-rate factor of the generator's scalar weights (``CareConfig.affinity_prior
        ="input"``): Adam moves a parameter by about ``lr`` per step, too little for a
        scalar that sets how semantic the whole partition is.
    checkpoint_every, log_every
        Save ``care_stage1_step<step>`` (0: only the final one) and report progress every
        that many steps.
    seed, device
        Seed of all randomness of the run (initial weights included); torch device.
    """

    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.04
    warmup_steps: int = 50
    max_patches: int = 360
    min_patches: int = 16
    crop_fraction: tuple[float, float] = (0.5, 1.0)
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    augmentation: Augmentation = Augmentation()  # noqa: RUF009 (frozen, so sharing it is safe)
    head_hidden: int = 256
    head_bottleneck: int = 64
    prototypes: int = 256
    student_temperature: float = 0.1
    teacher_temperature: float = 0.04
    center_momentum: float = 0.9
    teacher_momentum: float = 0.99
    mim_weight: float = 1.0
    consistency_weight: float = 0.0
    scale_lr_factor: float = 20.0
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
                self.min_patches,
                self.head_hidden,
                self.head_bottleneck,
                self.prototypes,
            )
            < 1
        ):
            raise ValueError(
                "Stage1Config: steps, batch_size, log_every, patch limits and head sizes must be >= 1"
            )
        if self.checkpoint_every < 0 or self.warmup_steps < 0:
            raise ValueError("Stage1Config: checkpoint_every and warmup_steps must be >= 0")
        for name in ("crop_fraction", "mask_ratio"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(f"Stage1Config.{name} must satisfy 0 < low <= high <= 1, got {(low, high)}")
        if not 0.0 <= self.teacher_momentum < 1.0 or not 0.0 <= self.center_momentum < 1.0:
            raise ValueError("Stage1Config: teacher_momentum and center_momentum must be in [0, 1)")
        if (
            self.student_temperature <= 0
            or self.teacher_temperature <= 0
            or self.mim_weight < 0
            or self.consistency_weight < 0
            or self.scale_lr_factor <= 0
        ):
            raise ValueError(
                "Stage1Config: temperatures and scale_lr_factor must be > 0, mim_weight and "
                "consistency_weight >= 0"
            )

    def to_dict(self) -> dict:
        """The options as a JSON-able dict."""
        return dataclasses.asdict(self)
