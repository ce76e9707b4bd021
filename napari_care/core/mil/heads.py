"""A trained AB-MIL head applied to one slide's features: attention for the heatmap, and the prediction.

The viewer's side of :func:`napari_care.core.train.mil.train_mil`: load the head it wrote
(``abmil.json`` / ``abmil.safetensors``), apply it to the instance features of the slide on
screen (the whole slide, or the tiles of the visible field) and draw the attention.
Attention is a softmax over the instances given, so on a visible field it says which of
*those* tiles the head weighs most; the prediction is the head's answer for that bag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from napari_care.core.mixmag_features import MixMagFeatures
    from napari_care.core.models.mixmag import MixMagEncoder

ABMIL_CLASS = "napari_care.core.models.abmil.ABMIL"


REGION_ENCODER_FILE = "mem_encoder"  # checkpoint prefix beside abmil.json
KIND = "mil_region_encoder"


@dataclass
class RegionEncoder:
    """What turns a slide into the region instances of a head trained on region tokens.

    Attributes
    ----------
    model
        The mixing encoder (eval mode), with its readout.
    patch_encoder
        Name of the patch encoder of its tile embeddings (:func:`~napari_care.core.encoders.create_encoder`).
    region_size_px
        Region side in pixels at the finest magnification.
    mpp
        Micrometres per pixel of the finest (20x) grid.
    min_tissue
        The tissue share a region and its tiles needed in training (None: not recorded).
    """

    model: MixMagEncoder
    patch_encoder: str
    region_size_px: int
    mpp: float
    min_tissue: float | None = None

    @classmethod
    def of_features(
        cls,
        model: MixMagEncoder,
        features: MixMagFeatures,
        source: str | os.PathLike[str] = "",
    ) -> RegionEncoder:
        """The region encoder of ``model`` applied to features extracted like ``features``
        (read from ``source``)."""
        finest = features.levels[2]
        if finest.mpp is None:
            raise ValueError(
                f"{source or features.slide_id}: mixed-magnification features without a pixel size (mpp)"
            )
        min_tissue = float(features.min_tissue) if np.isfinite(features.min_tissue) else None
        return cls(
            model.eval(), features.encoder, int(4 * finest.patch_size_px), float(finest.mpp), min_tissue
        )


def save_region_encoder(out_dir: str | os.PathLike[str], region_encoder: RegionEncoder) -> Path:
    """Write ``mem_encoder.json`` / ``.safetensors`` into ``out_dir`` (atomically); returns the JSON path."""
    from napari_care.core.checkpoint import save_checkpoint  # torch: loaded when a model is used

    model = region_encoder.model
    return save_checkpoint(
        Path(out_dir) / REGION_ENCODER_FILE,
        model,
        model.config,
        extra_state={
            "kind": KIND,
            "patch_encoder": region_encoder.patch_encoder,
            "region_size_px": region_encoder.region_size_px,
            "mpp": region_encoder.mpp,
            "min_tissue": region_encoder.min_tissue,
        },
    )


def load_region_encoder(path: str | os.PathLike[str]) -> RegionEncoder:
    """Read what :func:`save_region_encoder` wrote (its folder or either file).

    Raises
    ------
    FileNotFoundError
        When the checkpoint is missing.
    ValueError
        When it is not a region encoder saved with an AB-MIL head.
    """
    from napari_care.core.checkpoint import (  # torch: loaded when a model is used
        checkpoint_paths,
        load_checkpoint,
    )
    from napari_care.core.models.mixmag import MixMagEncoder  # torch: loaded when a model is used

    path = Path(path)
    json_path = checkpoint_paths(path / REGION_ENCODER_FILE if path.is_dir() else path)[1]
    if not json_path.is_file():
        raise FileNotFoundError(
            f"{json_path}: the mixing encoder of this region head is missing "
            "(train-mil --mem writes it beside abmil.json)"
        )
    model, _, extra = load_checkpoint(json_path, MixMagEncoder)
    missing = sorted({"patch_encoder", "region_size_px", "mpp"} - set(extra))
    if extra.get("kind") != KIND or missing:
        raise ValueError(
            f"{json_path}: not a region encoder written by train-mil --mem "
            f"(missing {missing or 'its kind'}: which patch encoder and geometry made its tokens)"
        )
    min_tissue = extra.get("min_tissue")
    return RegionEncoder(
        model.eval(),
        str(extra["patch_encoder"]),
        int(extra["region_size_px"]),
        float(extra["mpp"]),
        None if min_tissue is None else float(min_tissue),
    )


class MilOutput(NamedTuple):
    """What :meth:`MilHead.apply` returns.

    attention
        ``[N]`` float32, one weight per instance, summing to 1.
    probabilities
        ``[C]`` float32 class probabilities, in the order of ``MilHead.class_names``.
    predicted
        The name of the most probable class.
    """

    attention: np.ndarray
    probabilities: np.ndarray
    predicted: str


@dataclass
class MilHead:
    """A trained AB-MIL head, ready for inference on the CPU.

    Attributes
    ----------
    path
        The checkpoint's description file (``abmil.json``).
    in_dim
        Feature dimension D the head was trained on.
    class_names
        Class names in the order of the probabilities.
    encoder
        What made the training bags: a patch encoder's name, or ``"mixmag"`` for region
        embeddings of a mixed-magnification encoder.
    model
        The :class:`~napari_care.core.models.abmil.ABMIL` module (eval mode).
    region_encoder
        For ``"mixmag"`` heads, the :class:`RegionEncoder`
        saved beside the head (None when it is absent, and for heads on patch features).
    """

    path: Path
    in_dim: int
    class_names: list[str]
    encoder: str
    model: object
    region_encoder: RegionEncoder | None = None

    def apply(self, features: np.ndarray, *, encoder: str | None = None) -> MilOutput:
        """Attention and prediction of the head for one bag of instance features.

        Parameters
        ----------
        features
            ``[N, D]`` float32 instance features, N >= 1.

        Raises
        ------
        ValueError
            When D differs from :attr:`in_dim` (a :class:`~napari_care.core.checkpoint.FeatureDimMismatch`
            naming the checkpoint), the array is not ``[N, D]`` with N >= 1, or holds NaN/inf.
        """
        import torch  # torch loads only when a model runs

        from napari_care.core.checkpoint import FeatureDimMismatch  # torch: loaded when a model is used

        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or len(features) == 0:
            raise ValueError(
                f"MIL head {self.path}: features must be a non-empty [N, D] array, got shape {features.shape}"
            )
        if features.shape[1] != self.in_dim:
            raise FeatureDimMismatch(
                f"MIL head {self.path} expects D={self.in_dim} features "
                f"(encoder '{self.encoder}'), got D={features.shape[1]}"
            )
        if encoder and self.encoder and encoder != self.encoder:
            raise ValueError(
                f"MIL head {self.path} was trained on '{self.encoder}' features, these come from '{encoder}'"
            )
        if not np.isfinite(features).all():
            raise ValueError(f"MIL head {self.path}: features hold NaN or infinite values")
        with torch.no_grad():
            logits, attention = self.model(torch.from_numpy(features))
            probabilities = torch.softmax(logits.double(), dim=-1).numpy().astype(np.float32)
        attention = attention.double().numpy()
        attention = (attention / attention.sum()).astype(np.float32)  # exact sum 1 after float32 softmax
        return MilOutput(attention, probabilities, self.class_names[int(np.argmax(probabilities))])


def _description_path(path: Path) -> Path:
    """The JSON of the head: a training output folder holds ``abmil.json``."""
    from napari_care.core.checkpoint import checkpoint_paths  # torch: loaded when a model is used

    if path.is_dir() and checkpoint_paths(path / "abmil")[1].is_file():
        return checkpoint_paths(path / "abmil")[1]
    return checkpoint_paths(path)[1]


def load_mil_head(path: str | os.PathLike[str]) -> MilHead:
    """Load an AB-MIL head written by :func:`~napari_care.core.train.mil.train_mil`.

    Parameters
    ----------
    path
        ``abmil.json``, ``abmil.safetensors``, their prefix, or the training output folder.

    Raises
    ------
    FileNotFoundError
        When the checkpoint does not exist.
    ValueError
        When the file is not a napari_care checkpoint, holds another model than an AB-MIL
        head, or its weights do not fit its description.
    """
    from napari_care.core.checkpoint import (  # torch: loaded when a model is used
        checkpoint_paths,
        load_checkpoint,
        read_checkpoint_description,
    )
    from napari_care.core.models.abmil import ABMIL  # torch: loaded when a model is used

    json_path = _description_path(Path(path))
    description = read_checkpoint_description(json_path)
    if description["model_class"] != ABMIL_CLASS:
        raise ValueError(
            f"{json_path}: holds a {description['model_class']!r}, not an AB-MIL head "
            "(train one with `napari-care train-mil`)"
        )
    model, config, extra = load_checkpoint(json_path, ABMIL)
    class_names = [str(name) for name in extra.get("class_names", range(config.n_classes))]
    if len(class_names) != config.n_classes:
        raise ValueError(f"{json_path}: {len(class_names)} class names for {config.n_classes} classes")
    encoder = str(extra.get("encoder", ""))
    region_encoder = None
    if encoder == "mixmag" and checkpoint_paths(json_path.parent / REGION_ENCODER_FILE)[1].is_file():
        region_encoder = load_region_encoder(json_path.parent)
        if region_encoder.model.instance_dim != config.in_dim:
            raise ValueError(
                f"{json_path}: its mixing encoder gives {region_encoder.model.instance_dim} values per "
                f"region, the head expects {config.in_dim}"
            )
    return MilHead(json_path, int(config.in_dim), class_names, encoder, model, region_encoder)
