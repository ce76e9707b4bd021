"""The options of an AB-MIL training run (:class:`MILTrainConfig`), apart from the torch training loop.

:mod:`napari_care.core.train.mil` is torch; its config is plain data, so the command
line can show its defaults (``napari-care train-mil --help``) without importing torch.
``napari_care.core.train.mil`` re-exports :class:`MILTrainConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MILTrainConfig"]


@dataclass(frozen=True)
class MILTrainConfig:
    """Options of an AB-MIL training run.

    Parameters
    ----------
    max_epochs, patience
        Epoch limit; stop after ``patience`` epochs without a lower validation loss.
    lr, weight_decay
        Adam learning rate and weight decay.
    hidden, attn_dim, dropout, split_at
        Head sizes and pools (see :class:`~napari_care.core.models.abmil.ABMILConfig`).
    val_fraction, test_fraction
        Shares of each class for validation and test when the CSV has no split column.
    balance_classes
        Weight the training loss by inverse class frequency.
    max_instances
        Draw at most this many instances of a training bag per step (None: all).
    seed
        Seed of the split, the initial weights and the training order.
    device
        Torch device.
    """

    max_epochs: int = 50
    patience: int = 10
    lr: float = 2e-4
    weight_decay: float = 1e-5
    hidden: int = 256
    attn_dim: int = 128
    dropout: float = 0.25
    split_at: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    balance_classes: bool = True
    max_instances: int | None = None
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or self.patience < 1:
            raise ValueError("MILTrainConfig: max_epochs and patience must be positive")
        if not (
            0 < self.val_fraction < 1
            and 0 < self.test_fraction < 1
            and self.val_fraction + self.test_fraction < 1
        ):
            raise ValueError(
                "MILTrainConfig: val_fraction and test_fraction must be in (0, 1) and sum below 1"
            )
