"""AB-MIL heads over mixed-magnification region tokens, applied to a slide on screen.

A head trained with ``napari-care train-mil --mem`` weighs *regions* (896 px squares at 20x,
each encoded from its tiles at 5x, 10x and 20x by a MEM mixing encoder), not patches.
Training keeps a copy of that mixing encoder beside the head (``mem_encoder.json`` /
``.safetensors``) with what is needed to rebuild the region tokens of any slide: the patch
encoder's name, the region side, the finest grid's pixel size and the minimum tissue.
Here, for the slide (or the visible field) in the viewer: extract the regions' tiles,
encode them, apply the head, and spread each instance's attention (a region's, or with the
``tokens`` readout a 20x tile's) over the patches of the run whose centre it holds, so that
the attention heatmap layer draws it like any other per-patch attention.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from napari_care.core.mil.heads import MilHead, MilOutput, RegionEncoder
from napari_care.core.mixmag_features import extract_mixmag
from napari_care.core.models.mixmag_layout import FIRST_20X_TOKEN, TILES_PER_SIDE
from napari_care.core.progress import Progress, map_progress
from napari_care.core.tiling import grid_rows

if TYPE_CHECKING:
    from napari_care.core.extract import CancelSignal
    from napari_care.core.feature_cache import FeatureCache
    from napari_care.core.tissue import TissueMask


class RegionAttention(NamedTuple):
    """What :func:`attend_regions` returns.

    Attributes
    ----------
    output
        The head's :class:`~napari_care.core.mil.heads.MilOutput` over its instances
        (attention ``[N]`` summing to 1, probabilities, predicted class).
    instance_coords
        ``[N, 2]`` level-0 (x, y) top-left corner of each instance: its region, or its 20x
        tile with the ``tokens`` readout.
    instance_size_level0
        Side of an instance's square in level-0 pixels.
    n_regions
        Regions the head saw.
    """

    output: MilOutput
    instance_coords: np.ndarray
    instance_size_level0: float
    n_regions: int


def attend_regions(
    slide: Any,
    head: MilHead,
    region_encoder: RegionEncoder,
    patch_encoder: Any,
    *,
    box: tuple[float, float, float, float] | None = None,
    tissue: TissueMask | None = None,
    cache: FeatureCache | None = None,
    min_tissue: float = 0.25,
    batch_size: int = 64,
    cancel: CancelSignal = None,
) -> Generator[Progress, None, RegionAttention | None]:
    """Apply a region head to a slide, or to the regions that meet ``box`` (level-0 x0, y0, x1, y1).

    ``patch_encoder`` is the built encoder named by ``region_encoder.patch_encoder``.
    Returns None when no region on tissue meets the box (or the slide).

    Raises
    ------
    ValueError
        When the patch encoder is not the one (or not as wide as the one) the head's tokens came from.
    """
    import torch  # torch loads only when a model runs

    if (patch_encoder.cfg.name, patch_encoder.embed_dim) != (
        region_encoder.patch_encoder,
        region_encoder.model.config.in_dim,
    ):
        raise ValueError(
            f"MIL head {head.path}: its regions were encoded with '{region_encoder.patch_encoder}' "
            f"(D={region_encoder.model.config.in_dim}), not '{patch_encoder.cfg.name}' "
            f"(D={patch_encoder.embed_dim})"
        )
    work = extract_mixmag(
        slide,
        patch_encoder,
        region_size_px=region_encoder.region_size_px,
        mpp=region_encoder.mpp,
        min_tissue=min_tissue,
        tissue=tissue,
        cache=cache,
        box=box,
        batch_size=batch_size,
        cancel=cancel,
    )
    # Its own stage, not "extract": the widget's time-left estimate is per stage.
    features = yield from map_progress(work, lambda report: replace(report, stage="regions"))
    if features.n_regions == 0:
        return None
    yield Progress("mil", 0, 1, f"mixing {features.n_regions} regions")
    tokens = features.to_region_tokens()
    with torch.no_grad():
        instances = region_encoder.model.mil_instances(
            torch.from_numpy(tokens.tokens), torch.from_numpy(tokens.token_present)
        ).numpy()
    coords, size = _instance_squares(region_encoder.model.config.readout, tokens)
    return RegionAttention(head.apply(instances, encoder="mixmag"), coords, size, features.n_regions)


def _instance_squares(readout: str, tokens) -> tuple[np.ndarray, float]:
    """Top-left corners and side of the instances of ``mil_instances``: regions, or present 20x
    tiles in order."""
    if readout != "tokens":
        return tokens.region_coords, float(tokens.region_size_level0)
    side = TILES_PER_SIDE[-1]  # 20x tiles along a region's side, slots row-major
    tile_level0 = tokens.region_size_level0 / side
    region, slot = np.nonzero(tokens.token_present[:, FIRST_20X_TOKEN:])  # region by region, slot order
    offsets = np.stack([slot % side, slot // side], axis=1) * tile_level0
    return tokens.region_coords[region] + offsets, float(tile_level0)


def attention_of_patches(
    patch_coords: np.ndarray,
    patch_size_level0: float,
    region_coords: np.ndarray,
    region_size_level0: float,
    attention: np.ndarray,
) -> np.ndarray:
    """Each patch takes the attention of the square (region or tile) that holds its centre; NaN outside all.

    Parameters
    ----------
    patch_coords
        ``[N, 2]`` level-0 (x, y) top-left corners of the patches.
    patch_size_level0
        Patch side in level-0 pixels.
    region_coords, region_size_level0
        ``[R, 2]`` top-left corners and side of the squares (a grid anchored at the origin).
    attention
        ``[R]`` attention per square.

    Returns
    -------
    ``[N]`` float32.
    """
    attention = np.asarray(attention, dtype=np.float32)
    region_coords = np.asarray(region_coords, dtype=np.float64).reshape(-1, 2)
    if len(attention) != len(region_coords):
        raise ValueError(f"{len(attention)} attention values for {len(region_coords)} squares")
    centres = np.asarray(patch_coords, dtype=np.float64).reshape(-1, 2) + patch_size_level0 / 2
    rows = grid_rows(
        np.floor(region_coords / region_size_level0 + 0.5),  # corners sit on the grid
        np.floor(centres / region_size_level0),
    )
    result = np.full(len(rows), np.nan, dtype=np.float32)
    result[rows >= 0] = attention[rows[rows >= 0]]
    return result


def patch_output(regions: RegionAttention, patch_coords: np.ndarray, patch_size_level0: float) -> MilOutput:
    """The head's output with its attention spread over patches, for the per-patch heatmap layer.

    Each patch carries the weight of the instance (region or tile) under its centre, so the
    values do not sum to 1; NaN outside every instance.
    """
    attention = attention_of_patches(
        patch_coords,
        patch_size_level0,
        regions.instance_coords,
        regions.instance_size_level0,
        regions.output.attention,
    )
    return MilOutput(attention, regions.output.probabilities, regions.output.predicted)
