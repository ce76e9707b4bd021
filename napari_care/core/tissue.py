"""Tissue detection on a low-resolution view of the slide.

Stained tissue is coloured; glass, dust and grey debris are not. The mask is the median-
blurred HSV saturation above an Otsu (or fixed) threshold, closed, with small objects and
small holes removed. Pen marks (blue/green ink, black ink) are saturated too, so they are
found by hue and darkness and taken out before the threshold is chosen.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

# Saturation of JPEG noise on glass stays below this; an Otsu split of an empty slide would
# otherwise call the noisier half of the glass "tissue".
MIN_SATURATION = 0.07
# H&E is pink (hue ~0.85-1 and 0-0.05), purple (~0.7-0.85) or, with IHC, brown (~0.05-0.15).
# Blue and green ink sit in between, at hue ~0.17-0.64.
PEN_HUE_RANGE = (0.17, 0.64)
PEN_MIN_SATURATION = 0.25
DARK_VALUE = 0.2  # brightest channel below 20%: black ink or folds of ink, never stained tissue
FALLBACK_MIN_OBJECT_PX = 64  # used when the slide has no mpp and no pixel threshold is given
FALLBACK_MIN_HOLE_PX = 16


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask over the slide.

    Parameters
    ----------
    mask
        bool [h, w]; True where there is tissue.
    downsample
        Level-0 pixels per mask pixel.
    """

    mask: np.ndarray
    downsample: float

    @property
    def any(self) -> bool:
        """True when the mask holds any tissue."""
        return bool(self.mask.any())

    @cached_property
    def _integral(self) -> np.ndarray:
        # summed-area table with a zero row and column in front: box sums in O(1); made once
        # per mask (cached_property writes the instance dict, which a frozen dataclass allows)
        table = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), dtype=np.int64)
        table[1:, 1:] = self.mask.cumsum(axis=0, dtype=np.int64).cumsum(axis=1)
        return table

    def fraction_for_tiles(self, coords_xy: np.ndarray, size_level0: float) -> np.ndarray:
        """Share of tissue under each square tile.

        Parameters
        ----------
        coords_xy
            [N, 2] level-0 (x, y) of the tiles' top-left corners.
        size_level0
            Tile side in level-0 pixels.

        Returns
        -------
        [N] float64 in [0, 1]; parts of a tile outside the slide count as no tissue.
        """
        coords_xy = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
        h, w = self.mask.shape
        start = np.rint(coords_xy / self.downsample).astype(np.int64)
        side = max(1, round(size_level0 / self.downsample))
        x0, y0 = start[:, 0], start[:, 1]
        x1, y1 = x0 + side, y0 + side
        cx0, cx1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
        cy0, cy1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
        table = self._integral
        inside = table[cy1, cx1] - table[cy0, cx1] - table[cy1, cx0] + table[cy0, cx0]
        return inside / float(side * side)

    def fraction_in(self, box_level0: tuple[float, float, float, float]) -> float:
        """Share of tissue in a level-0 box (x0, y0, x1, y1); outside the slide is no tissue."""
        x0, y0, x1, y1 = (v / self.downsample for v in box_level0)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box_level0 must have x1 > x0 and y1 > y0, got {box_level0}")
        ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
        ix1, iy1 = max(int(np.ceil(x1)), ix0 + 1), max(int(np.ceil(y1)), iy0 + 1)
        area = (ix1 - ix0) * (iy1 - iy0)
        part = self.mask[max(iy0, 0) : max(iy1, 0), max(ix0, 0) : max(ix1, 0)]
        return float(part.sum()) / area


def read_thumbnail(slide, target_downsample: float) -> tuple[np.ndarray, float]:
    """An RGB view of the whole slide near ``target_downsample`` (level-0 px per pixel).

    Reads the finest-or-equal pyramid level and averages integer blocks down to the target,
    chunk by chunk (dask), so a slide without a coarse level never sits in memory whole.

    Returns
    -------
    (rgb uint8 [h, w, 3], downsample of that view in level-0 pixels per pixel)
    """
    level = slide.get_best_level_for_downsample(target_downsample)
    level_downsample = float(slide.level_downsamples[level])
    factor = max(1, round(target_downsample / level_downsample))
    pixels = slide.levels[level]
    factor = min(factor, pixels.shape[0], pixels.shape[1])
    if factor > 1:
        import dask.array as da  # lazy: 0.2 s to import, which reopening a saved run need not pay

        pixels = da.coarsen(np.mean, pixels, {0: factor, 1: factor}, trim_excess=True, dtype=np.float32)
    rgb = np.asarray(pixels.compute(scheduler="threads"))
    return np.rint(rgb).clip(0, 255).astype(np.uint8), level_downsample * factor


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """True where a pixel looks like ink: blue/green hue, saturated, or very dark."""
    from skimage.color import rgb2hsv  # scikit-image submodules load on first use

    hsv = rgb2hsv(rgb)
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    coloured_ink = (hue >= PEN_HUE_RANGE[0]) & (hue < PEN_HUE_RANGE[1]) & (sat >= PEN_MIN_SATURATION)
    return coloured_ink | (val < DARK_VALUE)


def _drop_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    """``mask`` without connected components smaller than ``min_px`` (8-connectivity).

    Written with scipy's labelling because skimage renamed remove_small_objects' argument.
    """
    if min_px <= 1 or not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def _area_px(um2: float, px: int | None, mpp_mask: float | None, fallback: int) -> int:
    """A minimum area in mask pixels from pixels (first choice) or square micrometres."""
    if px is not None:
        return int(px)
    if mpp_mask is None:
        return fallback
    return round(um2 / (mpp_mask * mpp_mask))


def tissue_mask(
    slide,
    *,
    target_mpp: float = 8.0,
    fallback_downsample: float = 32.0,
    saturation_threshold: float | None = None,
    median_size: int = 7,
    closing_radius: int = 2,
    min_object_um2: float = 50_000.0,
    min_object_px: int | None = None,
    min_hole_um2: float = 10_000.0,
    min_hole_px: int | None = None,
    exclude_pen: bool = True,
) -> TissueMask:
    """Find the tissue of a slide.

    Parameters
    ----------
    slide
        A :class:`~napari_care.core.slide.handle.Slide`.
    target_mpp
        Micrometres per mask pixel aimed at (8 um/px: a 20x slide becomes a 1/16 view).
    fallback_downsample
        Level-0 pixels per mask pixel when the slide has no mpp.
    saturation_threshold
        HSV saturation in [0, 1] above which a pixel is tissue; None chooses it by Otsu
        (never below ``MIN_SATURATION``).
    median_size
        Side of the median filter on the saturation, in mask pixels.
    closing_radius
        Radius of the disk that closes small gaps, in mask pixels (0: no closing).
    min_object_um2, min_object_px
        Tissue pieces smaller than this are dropped; pixels win over square micrometres.
    min_hole_um2, min_hole_px
        Holes smaller than this are filled; pixels win over square micrometres.
    exclude_pen
        Take blue/green and black ink out of the tissue.

    Returns
    -------
    TissueMask
        Empty (all False) with a warning when the slide shows no tissue.
    """
    from skimage.filters import threshold_otsu  # scikit-image submodules load on first use
    from skimage.morphology import disk  # scikit-image submodules load on first use

    if median_size < 1 or closing_radius < 0:
        raise ValueError(
            f"median_size must be >= 1 and closing_radius >= 0, got {median_size}, {closing_radius}"
        )
    mpp0 = float(np.mean(slide.mpp)) if slide.mpp is not None else None
    target_downsample = target_mpp / mpp0 if mpp0 is not None else float(fallback_downsample)
    rgb, downsample = read_thumbnail(slide, max(target_downsample, 1.0))
    mpp_mask = mpp0 * downsample if mpp0 is not None else None

    brightest = rgb.max(axis=-1).astype(np.float32)
    darkest = rgb.min(axis=-1).astype(np.float32)
    saturation = np.where(brightest > 0, (brightest - darkest) / np.maximum(brightest, 1.0), 0.0)
    saturation = ndimage.median_filter(saturation.astype(np.float32), size=median_size)
    ink = np.zeros(rgb.shape[:2], dtype=bool)
    if exclude_pen:
        ink = ndimage.median_filter(pen_mask(rgb).astype(np.uint8), size=median_size).astype(bool)

    if saturation_threshold is None:
        candidates = saturation[~ink]
        threshold = MIN_SATURATION
        if candidates.size and candidates.max() > candidates.min():
            threshold = max(float(threshold_otsu(candidates)), MIN_SATURATION)
    else:
        if not 0.0 <= saturation_threshold <= 1.0:
            raise ValueError(f"saturation_threshold must lie in [0, 1], got {saturation_threshold}")
        threshold = float(saturation_threshold)

    mask = (saturation > threshold) & ~ink
    if closing_radius > 0:
        # pad first: scipy's erosion treats the border as background and would eat edge tissue
        padded = np.pad(mask, closing_radius, mode="edge")
        closed = ndimage.binary_closing(padded, structure=disk(closing_radius).astype(bool))
        mask = closed[closing_radius:-closing_radius, closing_radius:-closing_radius] & ~ink
    mask = _drop_small(mask, _area_px(min_object_um2, min_object_px, mpp_mask, FALLBACK_MIN_OBJECT_PX))
    min_hole = _area_px(min_hole_um2, min_hole_px, mpp_mask, FALLBACK_MIN_HOLE_PX)
    small_holes = ~mask & ~_drop_small(~mask, min_hole)
    mask = mask | (small_holes & ~ink)
    if not mask.any():
        warnings.warn(f"no tissue found in slide {slide.path}", stacklevel=2)
    return TissueMask(mask=mask, downsample=float(downsample))
