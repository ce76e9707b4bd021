"""Models over patch features: CARE (trained and training-free), AB-MIL, mixed magnification.

Names load lazily, so ``import napari_care.core.models.care_free`` (numpy only) never pulls
in torch; ``from napari_care.core.models import CareModel`` does.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CareConfig": "care_config",
    "CareModel": "care",
    "CareOutput": "care",
    "CareBatchOutput": "care",
    "pad_slides": "care",
    "CareFreeConfig": "care_free",
    "segment_free": "care_free",
    "BlockPartition": "care_blocks",
    "Candidates": "care_blocks",
    "block_partition": "care_blocks",
    "candidate_blocks": "care_blocks",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
