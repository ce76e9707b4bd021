"""From a slide (or a box of it) to CARE's adaptive regions: the one entry point that the
widget, the command line and the cohort runner share.

>>> from napari_care.core import open_slide, run_to_end
>>> from napari_care.core.segment import SegmentOptions, segment
>>> with open_slide("slide.svs") as slide:
...     result = run_to_end(segment(slide, SegmentOptions(k=8)))
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from napari_care.core.care_result import CareResult
from napari_care.core.care_run import load_care_model, segment_features
from napari_care.core.encoders import create_encoder
from napari_care.core.extract import extract_features
from napari_care.core.features import PatchFeatures
from napari_care.core.models.care_blocks import DEFAULT_E_STAR, DEFAULT_K, DEFAULT_LAMBDA_SPF
from napari_care.core.models.care_free import CareFreeConfig
from napari_care.core.phenotypes import phenotype_groups
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
    "n_groups": (2, 64),  # at most the number of regions: checked by the run itself
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
        if value is None:
            continue
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
        if int(getattr(options, name)) != getattr(options, name):
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
        Tile side at the target resolution.
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
        Number of phenotype groups the regions are clustered into.
    batch_size
        Tiles per encoder batch.
    device
        Torch device for torch encoders and models (None: CUDA when available).
    strict
        Fail the run on a file tile that cannot be decoded; by default the patches that need
        it are skipped with one warning and counted (``PatchFeatures.skipped_patches``).
    """

    encoder: str = "default"
    encoder_weights: str | None = None
    care_checkpoint: str | None = None
    magnification: float = 20.0
    mpp: float | None = None
    tile_size_px: int = 224
    k: int = DEFAULT_K
    tissue_threshold: float | None = None
    min_tissue: float = 0.25
    e_star: float = DEFAULT_E_STAR
    lambda_spf: float = DEFAULT_LAMBDA_SPF
    n_groups: int = 6
    batch_size: int = 64
    device: str | None = None
    strict: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values."""
        return asdict(self)

    @property
    def bad_tile_policy(self) -> str:
        """What the extraction does with a file tile that cannot be decoded: ``"raise"`` or ``"skip"``."""
        return "raise" if self.strict else "skip"


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
        The tissue mask used.
    options
        The options of the run.
    box
        The level-0 box of the run, or None for the whole slide.
    encoded_tiles
        How many tiles the encoder ran on (the rest came from the cache).
    slide_mpp
        The slide's (x, y) micrometres per level-0 pixel, or None.
    """

    features: PatchFeatures
    care: CareResult
    group_of_region: np.ndarray
    grid: TileGrid
    tissue: TissueMask
    options: SegmentOptions
    box: Box | None
    encoded_tiles: int
    slide_mpp: tuple[float, float] | None
    extras: dict[str, Any] = field(default_factory=dict)

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
    yield Progress("segment", 0, 1, f"finding adaptive regions among {len(features)} patches")
    if model is None and options.care_checkpoint:
        model = load_care_model(options.care_checkpoint, in_dim=features.embed_dim)
    care = _run_care(features, options, model)
    groups = phenotype_groups(
        care, n_groups=options.n_groups, patch_features=features.features
    ).group_of_region
    yield Progress("segment", 1, 1, f"{care.n_regions} regions, ROI = region {care.roi}")
    return SegmentResult(
        features=features,
        care=care,
        group_of_region=groups,
        grid=grid,
        tissue=tissue,
        options=options,
        box=box,
        encoded_tiles=int(getattr(features, "encoded_count", len(features))),
        slide_mpp=slide.mpp,
    )


def build_encoder(options: SegmentOptions):
    """The patch encoder ``options`` name."""
    return create_encoder(options.encoder, weights=options.encoder_weights, device=options.device)


def _run_care(features: PatchFeatures, options: SegmentOptions, model) -> CareResult:
    if model is not None:
        return segment_features(features.features, features.grid, model=model)
    config = CareFreeConfig(k=options.k, e_star=options.e_star, lambda_spf=options.lambda_spf)
    return segment_features(features.features, features.grid, config=config)
