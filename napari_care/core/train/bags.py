"""What MEM pretraining and AB-MIL training read: region tokens, and the instance bags of AB-MIL.

* :func:`load_region_tokens`: :class:`~napari_care.core.models.mixmag.RegionTokens` from
  mixed-magnification feature files (``*.mixmag.h5``) or region-token ``.npz`` files.
* :func:`read_mil_bags`: slide id -> instances, from a folder of patch features, or the
  region bags a MEM checkpoint makes from region tokens (:class:`MilBags`).
* :func:`replace_region_encoder`: the mixing encoder kept beside a head trained on region
  bags (the viewer rebuilds the region instances with it), never an older one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_care.core.mil.heads import REGION_ENCODER_FILE, RegionEncoder, save_region_encoder
from napari_care.core.mixmag_features import SUFFIX, load_mixmag
from napari_care.core.train.feature_views import encoder_name, load_feature_folder

if TYPE_CHECKING:
    from napari_care.core.models.mixmag import RegionTokens

PathLike = str | os.PathLike[str]


def load_region_tokens(path: PathLike) -> list[RegionTokens]:
    """The region tokens of each slide, from a file or a folder of them.

    Parameters
    ----------
    path
        A mixed-magnification feature file (``<slide>.mixmag.h5``, from ``extract
        --mixmag``), a region-token ``.npz`` (keys ``tokens``, ``token_present`` and
        optionally ``region_coords``, ``region_size_level0``, ``slide_id``), or a folder
        of either (one per slide). The slide id is the file's name without its suffix
        unless the ``.npz`` names it.

    Raises
    ------
    FileNotFoundError
        A folder with neither kind of file.
    ValueError
        An ``.npz`` that cannot be read or lacks ``tokens`` / ``token_present``.
    """
    from napari_care.core.models.mixmag import RegionTokens  # torch: the model module defines them

    path = Path(path)
    files = sorted([*path.glob("*.npz"), *path.glob(f"*{SUFFIX}")]) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(
            f"{path}: no mixed-magnification feature files (*{SUFFIX}) or region tokens (*.npz)"
        )
    slides = []
    for file in files:
        if file.suffix.lower() in (".h5", ".hdf5"):
            tokens = load_mixmag(file).to_region_tokens()
            tokens.slide_id = file.name.removesuffix(SUFFIX) if file.name.endswith(SUFFIX) else file.stem
            slides.append(tokens)
            continue
        try:
            data = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"{file}: not a readable .npz file ({error})") from error
        with data:
            missing = sorted({"tokens", "token_present"} - set(data.files))
            if missing:
                raise ValueError(f"{file}: not a region-token file (missing {missing})")
            tokens = np.asarray(data["tokens"], dtype=np.float32)
            coords = (
                data["region_coords"]
                if "region_coords" in data.files
                else np.zeros((len(tokens), 2), np.int64)
            )
            size = float(data["region_size_level0"]) if "region_size_level0" in data.files else 0.0
            slide_id = str(data["slide_id"]) if "slide_id" in data.files else file.name.removesuffix(".npz")
            slides.append(
                RegionTokens(
                    tokens,
                    np.asarray(data["token_present"], dtype=bool),
                    np.asarray(coords, dtype=np.int64),
                    size,
                    slide_id,
                )
            )
    return slides


@dataclass(frozen=True)
class MilBags:
    """The instance bags of an AB-MIL run and what made them.

    Attributes
    ----------
    bags
        slide id -> ``[instances, D]`` float32 instance features.
    encoder
        Name of the encoder of the instances (``"mixmag"`` for region bags).
    cls_width
        Width of the CLS part of a ``cls+tile`` region instance, where a two-pool head
        splits it; 0 for other bags.
    region_encoder
        The :class:`~napari_care.core.mil.heads.RegionEncoder` that made region bags from
        ``.mixmag.h5`` files; None for patch features and ``.npz`` region tokens (which do
        not name their patch encoder).
    """

    bags: dict[str, np.ndarray]
    encoder: str
    cls_width: int = 0
    region_encoder: RegionEncoder | None = None


def read_mil_bags(bags_dir: PathLike, mem_checkpoint: PathLike | None = None, device: str = "cpu") -> MilBags:
    """The bags of an AB-MIL run: patch features, or region bags made with a MEM encoder.

    Parameters
    ----------
    bags_dir
        A folder of feature files (one per slide); with ``mem_checkpoint``, region tokens
        (see :func:`load_region_tokens`).
    mem_checkpoint
        A MEM checkpoint whose encoder turns each slide's region tokens into its bag.
    device
        Torch device of the encoder.

    Raises
    ------
    FileNotFoundError, ValueError
        Unreadable inputs, or tokens that do not fit the checkpoint.
    """
    bags_dir = Path(bags_dir)
    if mem_checkpoint is None:
        slides = load_feature_folder(bags_dir)
        return MilBags({slide.slide_id: slide.features for slide in slides}, encoder_name(slides))
    from napari_care.core.checkpoint import check_feature_dim, load_checkpoint  # torch: for a checkpoint
    from napari_care.core.models.mixmag import MixMagEncoder  # torch: for a checkpoint
    from napari_care.core.train.mem import region_bags  # torch: for a checkpoint

    slides = load_region_tokens(bags_dir)
    model, config, _ = load_checkpoint(mem_checkpoint, MixMagEncoder)
    check_feature_dim(config, slides[0].tokens.shape[-1], checkpoint=mem_checkpoint, encoder="of the tokens")
    cls_width = config.dim if config.readout == "cls+tile" else 0
    feature_files = sorted(bags_dir.glob(f"*{SUFFIX}")) if bags_dir.is_dir() else []
    region_encoder = (
        RegionEncoder.of_features(model, load_mixmag(feature_files[0]), feature_files[0])
        if feature_files
        else None
    )
    return MilBags(region_bags(model, slides, device=device), "mixmag", cls_width, region_encoder)


def replace_region_encoder(out_dir: PathLike, region_encoder: RegionEncoder | None) -> Path | None:
    """Remove the region encoder files in ``out_dir`` (so a head is never paired with an older
    encoder) and save ``region_encoder`` there; return its JSON path, or None without one."""
    for stale in Path(out_dir).glob(f"{REGION_ENCODER_FILE}.*"):
        stale.unlink()
    return None if region_encoder is None else save_region_encoder(out_dir, region_encoder)
