"""CARE on one slide's patch features: the training-free generator, a trained model, or the authors' model.

The entry point from features to a :class:`~napari_care.core.care_result.CareResult` that
segmentation runs, training evaluation and the experiments share. ``--care`` names a
napari_care checkpoint, or the authors' published model (``hf:Zipper-1/CARE`` or a snapshot
folder, :mod:`napari_care.core.models.care_hf`): that one gives the slide embedding only, so
its regions come from the training-free generator. torch is imported only when a model is
loaded or run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_care.core.care_result import CareResult
from napari_care.core.models.care_free import CareFreeConfig, segment_free
from napari_care.core.models.care_hf import (
    HfCareEncoder,
    check_care_features,
    load_hf_care,
    parse_care_source,
)

if TYPE_CHECKING:  # torch stays unimported until a model is used
    from napari_care.core.models.care import CareModel


def segment_features(
    features: np.ndarray,
    grid: np.ndarray,
    *,
    config: CareFreeConfig | None = None,
    model: CareModel | HfCareEncoder | None = None,
    coords: np.ndarray | None = None,
    patch_size_level0: float | None = None,
) -> CareResult:
    """Adaptive regions, weights and embeddings of one slide from its patch features.

    Parameters
    ----------
    features
        ``[N, D]`` patch features.
    grid
        ``[N, 2]`` integer (gx, gy) patch-grid indices.
    config
        Options of the training-free mode (default :class:`CareFreeConfig`); not valid with
        a :class:`CareModel` (it carries its own config). With an :class:`HfCareEncoder`
        they are the options of the training-free regions.
    model
        A trained (or random-init) :class:`CareModel`; the authors' model
        (:class:`~napari_care.core.models.care_hf.HfCareEncoder`, see :func:`load_care_model`),
        whose ``wsi_embedding`` replaces the slide embedding of the training-free regions
        (``slide_encoder`` of the result names it); or None for the training-free generator.
        A model runs in eval mode on its own device, without gradients.
    coords
        ``[N, 2]`` level-0 (x, y) of the patches' top-left corners; needed with an
        :class:`HfCareEncoder`, whose grid is ``coords // patch_size_level0``.
    patch_size_level0
        Patch side in level-0 pixels; needed with an :class:`HfCareEncoder`.

    Returns
    -------
    CareResult
    """
    if model is None:
        return segment_free(features, grid, config)
    if isinstance(model, HfCareEncoder):
        if coords is None or patch_size_level0 is None:
            raise ValueError(
                f"segment_features: the slide encoder {model.name} needs coords (level-0 x, y) and "
                "patch_size_level0 of the patches"
            )
        regions = segment_free(features, grid, config)
        embedding = model.embed(features, coords, patch_size_level0)
        return dataclasses.replace(regions, slide_embedding=embedding, slide_encoder=model.name)
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


def load_care_model(
    checkpoint: str | Path, *, in_dim: int, device: str | None = None
) -> CareModel | HfCareEncoder:
    """The CARE model ``--care`` names, checked against the features' dimension.

    Parameters
    ----------
    checkpoint
        A napari_care checkpoint (a trained :class:`CareModel`), or the authors' model:
        ``hf:Zipper-1/CARE`` (the local Hugging Face cache) or a snapshot folder of it
        (:func:`~napari_care.core.models.care_hf.parse_care_source`).
    in_dim
        Width of the patch features it will see.
    device
        Torch device of the authors' model (None: CUDA, then MPS, then the CPU); a
        checkpoint loads as :func:`~napari_care.core.checkpoint.load_checkpoint` places it.

    Raises
    ------
    ValueError
        A checkpoint of another feature width; for the authors' model a
        :class:`~napari_care.core.models.care_hf.HfCareError` (not 768-d features,
        transformers missing, the snapshot not found), naming the id or folder and the fix.
    """
    source = parse_care_source(checkpoint)
    if source is not None:
        check_care_features(source.label, embed_dim=in_dim)
        return load_hf_care(source, device=device)
    from napari_care.core.checkpoint import load_checkpoint  # torch and safetensors: only for a checkpoint
    from napari_care.core.models.care import CareModel  # torch: loaded when a model is used

    model, config, _ = load_checkpoint(checkpoint, CareModel)
    if config.in_dim != in_dim:
        raise ValueError(
            f"CARE checkpoint {checkpoint} expects D={config.in_dim} features but the encoder gives {in_dim}"
        )
    return model
