"""From a slide (or a box of it) to CARE's adaptive regions: the one entry point that the
widget, the command line and the cohort runner share.

>>> from napari_care.core import open_slide, run_to_end
>>> from napari_care.core.segment import SegmentOptions, segment
>>> with open_slide("slide.svs") as slide:
...     result = run_to_end(segment(slide, SegmentOptions(k=8)))
>>> from napari_care.core.features import load_features
>>> features = load_features("features_conch_v15/slide.h5")  # a TRIDENT file: nothing encoded
>>> result = run_to_end(segment_from_features(features, SegmentOptions(k=8)))
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from napari_care.core.care_result import CareResult
from napari_care.core.care_run import load_care_model, segment_features
from napari_care.core.encoders import create_encoder, get_encoder_cfg
from napari_care.core.extract import extract_features
from napari_care.core.features import PatchFeatures
from napari_care.core.models.care_blocks import DEFAULT_E_STAR, DEFAULT_K, DEFAULT_LAMBDA_SPF
from napari_care.core.models.care_free import CareFreeConfig
from napari_care.core.models.care_hf import HfCareEncoder
from napari_care.core.phenotypes import AUTO, phenotype_groups
from napari_care.core.progress import Progress
from napari_care.core.slide.handle import Slide
from napari_care.core.tiling import TileGrid, tile_grid
from napari_care.core.tissue import TissueMask, tissue_mask

Box = tuple[float, float, float, float]  # level-0 (x0, y0, x1, y1)

#: Objective magnifications a form offers (any positive value works; 20x = 0.5 um/px).
MAGNIFICATION_CHOICES = (40.0, 20.0, 10.0, 5.0)
#: The inclusive range a form offers for each numeric option of :class:`SegmentOptions`;
#: the command line leaves them open, and the core checks only what it needs (``k >= 1``, ...).
OPTION_RANGES: dict[str, tuple[float, float]] = {
    "k": (1, 64),
    "n_groups": (2, 12),
    "tissue_threshold": (0.0, 1.0),
    "min_tissue": (0.0, 1.0),
    "e_star": (0.0, 2.0),
    "lambda_spf": (0.0, 1.0),
}


#: The inclusive range the core accepts for each option of a run (checked before any work by
#: :func:`check_options`); wide enough never to refuse a real use, narrow enough to refuse a
#: typo (``--k 1000000``) before it computes degenerate output. None: no bound on that side.
OPTION_LIMITS: dict[str, tuple[float | None, float | None]] = {
    "k": (1, 256),
    "n_groups": (2, 64),  # or "auto"; at most the number of regions: checked by the run itself
    "tile_size_px": (16, 4096),  # below 16 px a tile holds no texture; 4096 px is a 16-megapixel tile
    "magnification": (None, None),  # > 0; above the scan's is refused per slide (core.preflight)
    "mpp": (None, 1000.0),  # > 0 when given
    "min_tissue": (0.0, 1.0),
    "tissue_threshold": (0.0, 1.0),
    "e_star": (0.0, None),
    "lambda_spf": (0.0, None),
    "batch_size": (1, 65536),
}
#: Options that must be above (not at) their lower bound: zero is no resolution.
_POSITIVE = ("magnification", "mpp")


class OptionError(ValueError):
    """An option of a run is out of its range (:data:`OPTION_LIMITS`); ``option`` names the field."""

    def __init__(self, option: str, value: Any, expected: str) -> None:
        super().__init__(f"{option} {value!r}: {expected}")
        self.option, self.value, self.expected = option, value, expected


def check_options(options: SegmentOptions) -> None:
    """Check every numeric option against :data:`OPTION_LIMITS` (cheap: no slide, no model).

    Raises
    ------
    OptionError
        The first option out of range; the message names it, its value and the range.
    """
    for name, (low, high) in OPTION_LIMITS.items():
        value = getattr(options, name)
        if value is None or (name == "n_groups" and value == AUTO):
            continue
        if name == "n_groups" and isinstance(value, str):
            raise OptionError(name, value, f"must be {AUTO!r} or a whole number between {low:g} and {high:g}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise OptionError(name, value, "must be a finite number")
        if name in _POSITIVE and not value > 0:
            raise OptionError(
                name, value, f"must be above 0{'' if high is None else f' and at most {high:g}'}"
            )
        if (low is not None and value < low) or (high is not None and value > high):
            if low is None:
                expected = f"must be at most {high:g}"
            elif high is None:
                expected = f"must be at least {low:g}"
            else:
                expected = f"must be between {low:g} and {high:g}"
            raise OptionError(name, value, expected)
    for name in ("k", "n_groups", "tile_size_px", "batch_size"):
        value = getattr(options, name)
        if value is not None and value != AUTO and int(value) != value:
            raise OptionError(name, getattr(options, name), "must be a whole number")


class NoTissueError(ValueError):
    """No tile with enough tissue where segmentation was asked for."""


@dataclass(frozen=True)
class SegmentOptions:
    """Every option of a segmentation run, as one frozen value.

    Parameters
    ----------
    encoder
        Patch encoder name (see :func:`napari_care.core.encoders.list_encoders`).
    encoder_weights
        Local weights file for the encoder (timm models and presets), if any.
    care_checkpoint
        A trained CARE checkpoint; None runs the training-free generator.
    magnification
        Target magnification of the tiles (20x = 0.5 um/px); ignored when ``mpp`` is set.
    mpp
        Target micrometres per tile pixel, overriding ``magnification``.
    tile_size_px
        Tile side at the target resolution; None (the default) is the encoder's preset tile
        side (:attr:`~napari_care.core.encoders.EncoderCfg.tile_size_px`: 512 for
        ``conch_v1_5``, 256 for ``uni``, 224 for the built-in ``default`` and ``timm:`` names),
        resolved when the options are made, so the value read back (and recorded in a run's
        settings) is always the side the tiles have. It stays None only for an unknown
        encoder name, which the checks before a run refuse.
    k
        Block side of the sub-region grid, in patches.
    tissue_threshold
        HSV saturation threshold of the tissue mask; None chooses it by Otsu.
    min_tissue
        Minimum tissue share of a tile to keep it.
    e_star
        Target expected candidate rank of the region structuring loss.
    lambda_spf
        Weight of the coverage prior in SPF.
    n_groups
        Number of phenotype groups the regions are clustered into, or ``"auto"`` (default):
        chosen over 2..12 (at most the regions) by the criterion of
        :func:`~napari_care.core.phenotypes.choose_n_groups`.
    batch_size
        Tiles per encoder batch.
    device
        Torch device of torch encoders: ``"cuda"``, ``"mps"`` or ``"cpu"`` (None: CUDA, then
        MPS, then the CPU).
    strict
        Fail the run on a file tile that cannot be decoded; by default the patches that need
        it are skipped with one warning and counted (``PatchFeatures.skipped_patches``).
    """

    encoder: str = "default"
    encoder_weights: str | None = None
    care_checkpoint: str | None = None
    magnification: float = 20.0
    mpp: float | None = None
    tile_size_px: int | None = None
    k: int = DEFAULT_K
    tissue_threshold: float | None = None
    min_tissue: float = 0.25
    e_star: float = DEFAULT_E_STAR
    lambda_spf: float = DEFAULT_LAMBDA_SPF
    n_groups: int | str = AUTO
    batch_size: int = 64
    device: str | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        if self.tile_size_px is None:  # the one place the encoder's preset tile side is resolved
            object.__setattr__(self, "tile_size_px", preset_tile_size(self.encoder))

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values."""
        return asdict(self)

    @property
    def bad_tile_policy(self) -> str:
        """What the extraction does with a file tile that cannot be decoded: ``"raise"`` or ``"skip"``."""
        return "raise" if self.strict else "skip"


def preset_tile_size(encoder: str) -> int | None:
    """The tile side (pixels at the target resolution) that encoder ``encoder`` was made for, or
    None for an unknown name (cheap: a registry look-up, no network is built)."""
    try:
        return int(get_encoder_cfg(encoder).tile_size_px)
    except KeyError:
        return None


@dataclass(frozen=True)
class SegmentResult:
    """What one segmentation run found.

    Attributes
    ----------
    features
        The patch features the regions were computed on (level-0 coords, patch size).
    care
        CARE's regions, weights, ROI and embeddings.
    group_of_region
        ``[R]`` phenotype group of each region (0..n_groups-1).
    grid
        The tiles of the run.
    tissue
        The tissue mask used; None for a run on a feature file (:func:`segment_from_features`).
    options
        The options of the run.
    box
        The level-0 box of the run, or None for the whole slide.
    encoded_tiles
        How many tiles the encoder ran on (the rest came from the cache).
    slide_mpp
        The slide's (x, y) micrometres per level-0 pixel, or None.
    extras
        Anything a caller adds to the result.
    """

    features: PatchFeatures
    care: CareResult
    group_of_region: np.ndarray
    grid: TileGrid
    tissue: TissueMask | None
    options: SegmentOptions
    box: Box | None
    encoded_tiles: int
    slide_mpp: tuple[float, float] | None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def from_features(self) -> bool:
        """True for a run on features read from a file (:func:`segment_from_features`): no tile
        was read or encoded, and there is no tissue mask."""
        return self.tissue is None

    @property
    def cached_tiles(self) -> int:
        """How many of the run's tiles came from the cache rather than the encoder."""
        return len(self.features) - self.encoded_tiles

    @property
    def area_um2_of_region(self) -> np.ndarray | None:
        """``[R]`` area of each region in square micrometres (stride^2 per patch), or None."""
        if self.slide_mpp is None:
            return None
        patch_area = (self.grid.stride_level0**2) * self.slide_mpp[0] * self.slide_mpp[1]
        return self.care.region_sizes * patch_area


def segment(
    slide: Slide,
    options: SegmentOptions | None = None,
    *,
    box: Box | None = None,
    tissue: TissueMask | None = None,
    cache=None,
    encoder=None,
    model=None,
    cancel: threading.Event | Callable[[], bool] | None = None,
) -> Generator[Progress, None, SegmentResult]:
    """Segment a slide (or the tiles of ``box``) into CARE's adaptive regions.

    A generator: it yields :class:`Progress` and returns a :class:`SegmentResult`.

    Parameters
    ----------
    slide
        The open slide.
    options
        The run's options (defaults: :class:`SegmentOptions`).
    box
        Level-0 (x0, y0, x1, y1) to work on (the visible field); None is the whole slide.
    tissue
        A tissue mask computed earlier for this slide and threshold (reused across runs).
    cache
        A :class:`napari_care.core.feature_cache.FeatureCache`: only tiles it lacks are encoded.
    encoder, model
        Already built encoder / CARE model to reuse; built from ``options`` when None.
    cancel
        An event (or callable) that stops the run within one encoder batch.

    Raises
    ------
    NoTissueError
        When no tile has enough tissue.
    napari_care.core.extract.Cancelled
        When ``cancel`` was set.
    """
    options = options or SegmentOptions()
    where = "the view" if box is not None else "the slide"
    if tissue is None:
        yield Progress("tissue", 0, 1, "finding tissue")
        tissue = tissue_mask(slide, saturation_threshold=options.tissue_threshold)
    grid = tile_grid(
        slide,
        mpp=options.mpp,
        magnification=None if options.mpp else options.magnification,
        tile_size_px=options.tile_size_px,
        min_tissue=options.min_tissue,
        tissue=tissue,
        box=box,
    )
    yield Progress("tissue", 1, 1, f"{len(grid)} tiles on tissue in {where}")
    if len(grid) == 0:
        raise NoTissueError(f"{slide.path.name}: no tissue in {where}")
    if encoder is None:
        encoder = build_encoder(options)
    features = yield from extract_features(
        slide,
        grid,
        encoder,
        batch_size=options.batch_size,
        cache=cache,
        cancel=cancel,
        on_bad_tile=options.bad_tile_policy,
    )
    return (
        yield from _find_regions(
            features,
            options,
            model,
            grid=grid,
            tissue=tissue,
            box=box,
            encoded_tiles=len(features) if features.encoded_count is None else int(features.encoded_count),
            slide_mpp=slide.mpp,
        )
    )


def segment_from_features(
    features: PatchFeatures,
    options: SegmentOptions | None = None,
    *,
    slide: Slide | None = None,
    box: Box | None = None,
    model=None,
) -> Generator[Progress, None, SegmentResult]:
    """CARE's adaptive regions of patch features read from a file: no slide needed, nothing encoded.

    A generator like :func:`segment`, over the features a file holds (TRIDENT, CLAM or
    napari_care's, :func:`~napari_care.core.features.load_features`): the tiles are the
    features' coords and patch size (:func:`features_grid`). The same features give the same
    regions as :func:`segment` of the slide that made them.

    Parameters
    ----------
    features
        The patch features.
    options
        The run's options; only CARE's count (``k``, ``e_star``, ``lambda_spf``,
        ``care_checkpoint``, ``n_groups``). The result's options record the features'
        encoder, patch side and mpp instead of ``options``' extraction settings.
    slide
        The slide the features are of, when it is at hand: its pixel size is the result's
        (without one, the features' mpp scaled to level 0, or None), and its levels are where
        the tiles would be read.
    box
        Level-0 (x0, y0, x1, y1): only the patches that meet it (the visible field).
    model
        An already loaded CARE model; loaded from ``options.care_checkpoint`` when None.

    Raises
    ------
    NoTissueError
        When there are no patches (in ``box``).
    ValueError
        When ``options.care_checkpoint`` expects features of another width.
    """
    options = options or SegmentOptions()
    if box is not None:
        features = _features_in_box(features, box)
    if len(features) == 0:
        where = "the view" if box is not None else "the feature file"
        raise NoTissueError(f"{features.slide_id or 'features'}: no patches in {where}")
    grid = features_grid(features, slide)
    yield Progress("tissue", 1, 1, f"{len(features)} patches from the feature file")
    recorded = replace(
        options,
        encoder=features.encoder or "unknown",
        tile_size_px=features.patch_size_px,
        mpp=features.mpp,
        encoder_weights=None,
    )
    slide_mpp = slide.mpp if slide is not None else None
    if slide_mpp is None and features.mpp is not None:  # the patches' mpp scaled to a level-0 pixel
        level0_mpp = features.mpp * features.patch_size_px / features.patch_size_level0
        slide_mpp = (level0_mpp, level0_mpp)
    return (
        yield from _find_regions(
            features, recorded, model, grid=grid, tissue=None, box=box, encoded_tiles=0, slide_mpp=slide_mpp
        )
    )


def features_grid(features: PatchFeatures, slide: Slide | None = None) -> TileGrid:
    """The :class:`~napari_care.core.tiling.TileGrid` of patch features: their coords, grid and patch size.

    With ``slide``, the level the tiles would be read from is the slide's best level for
    the patches' downsample; without, level 0. No tissue share is known (NaN).
    """
    downsample = features.patch_size_level0 / features.patch_size_px
    read_level = 0 if slide is None else int(slide.get_best_level_for_downsample(downsample))
    return TileGrid(
        coords=features.coords,
        grid=features.grid,
        tile_size_px=features.patch_size_px,
        tile_size_level0=features.patch_size_level0,
        stride_level0=float(features.stride_level0 or features.patch_size_level0),
        target_mpp=features.mpp,
        read_level=read_level,
        read_downsample=1.0 if slide is None else float(slide.level_downsamples[read_level]),
        tissue_fraction=np.full(len(features), np.nan),
    )


def _features_in_box(features: PatchFeatures, box: Box) -> PatchFeatures:
    x0, y0, x1, y1 = box
    size = features.patch_size_level0
    x, y = features.coords[:, 0], features.coords[:, 1]
    keep = (x < x1) & (x + size > x0) & (y < y1) & (y + size > y0)
    return replace(features, features=features.features[keep], coords=features.coords[keep])


def _find_regions(
    features: PatchFeatures,
    options: SegmentOptions,
    model,
    *,
    grid: TileGrid,
    tissue: TissueMask | None,
    box: Box | None,
    encoded_tiles: int,
    slide_mpp: tuple[float, float] | None,
) -> Generator[Progress, None, SegmentResult]:
    """CARE and the phenotype groups on ``features``: the part of a run after the features exist."""
    yield Progress("segment", 0, 1, f"finding adaptive regions among {len(features)} patches")
    if model is None and options.care_checkpoint:
        model = load_care_model(options.care_checkpoint, in_dim=features.embed_dim, device=options.device)
    care = _run_care(features, options, model)
    phenotypes = phenotype_groups(care, n_groups=options.n_groups, patch_features=features.features)
    status = f"{care.n_regions} regions, ROI = region {care.roi}"
    if phenotypes.criterion is not None:
        status += f"; {phenotypes.n_groups} phenotype groups (chosen by {phenotypes.criterion})"
    if care.slide_encoder:
        status += f"; regions from the training-free mode, slide embedding from {care.slide_encoder}"
    yield Progress("segment", 1, 1, status)
    return SegmentResult(
        features=features,
        care=care,
        group_of_region=phenotypes.group_of_region,
        grid=grid,
        tissue=tissue,
        options=options,
        box=box,
        encoded_tiles=encoded_tiles,
        slide_mpp=slide_mpp,
        extras={"phenotypes": phenotypes},  # the chosen number of groups and the criterion's scores
    )


def build_encoder(options: SegmentOptions):
    """The patch encoder ``options`` name."""
    return create_encoder(options.encoder, weights=options.encoder_weights, device=options.device)


def _run_care(features: PatchFeatures, options: SegmentOptions, model) -> CareResult:
    config = CareFreeConfig(k=options.k, e_star=options.e_star, lambda_spf=options.lambda_spf)
    if isinstance(model, HfCareEncoder):  # the authors' model: the slide embedding; regions training-free
        model.check_features(
            embed_dim=features.embed_dim,
            patch_size_px=features.patch_size_px,
            mpp=features.mpp,
            encoder=features.encoder,
            where=f"the features of {features.slide_id or 'the slide'}",
        )
        return segment_features(
            features.features,
            features.grid,
            config=config,
            model=model,
            coords=features.coords,
            patch_size_level0=features.patch_size_level0,
        )
    if model is not None:
        return segment_features(features.features, features.grid, model=model)
    return segment_features(features.features, features.grid, config=config)
