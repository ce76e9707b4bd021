"""CARE on one slide's patch features: the training-free generator or a trained model, one call.

The entry point from features to a :class:`~napari_care.core.care_result.CareResult` that
segmentation runs, training evaluation and the experiments share. torch is imported only
when a trained model is loaded or run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_care.core.care_result import CareResult
from napari_care.core.models.care_free import CareFreeConfig, segment_free

if TYPE_CHECKING:  # torch stays unimported until a model is used
    from napari_care.core.models.care import CareModel


def segment_features(
    features: np.ndarray,
    grid: np.ndarray,
    *,
    config: CareFreeConfig | None = None,
    model: CareModel | None = None,
) -> CareResult:
    """Adaptive regions, weights and embeddings of one slide from its patch features.

    Parameters
    ----------
    features
        ``[N, D]`` patch features.
    grid
        ``[N, 2]`` integer (gx, gy) patch-grid indices.
    config
        Options of the training-free mode (default :class:`CareFreeConfig`); only valid
        without ``model`` (a model carries its own config).
    model
        A trained (or random-init) :class:`CareModel`; None runs the training-free
        generator. The model runs in eval mode on its own device, without gradients.

    Returns
    -------
    CareResult
    """
    if model is None:
        return segment_free(features, grid, config)
    if config is not None:
        raise ValueError("segment_features: pass either config (training-free mode) or model, not both")
    import torch  # only a trained model needs it

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            output = model(torch.as_tensor(np.asarray(features), dtype=torch.float32, device=device), grid)
    finally:
        model.train(was_training)
    return output.to_result()


def load_care_model(checkpoint: str | Path, *, in_dim: int) -> CareModel:
    """A trained CARE model from a checkpoint, checked against the features' dimension."""
    from napari_care.core.checkpoint import load_checkpoint  # torch and safetensors: only for a checkpoint
    from napari_care.core.models.care import CareModel  # torch: loaded when a model is used

    model, config, _ = load_checkpoint(checkpoint, CareModel)
    if config.in_dim != in_dim:
        raise ValueError(
            f"CARE checkpoint {checkpoint} expects D={config.in_dim} features but the encoder gives {in_dim}"
        )
    return model
