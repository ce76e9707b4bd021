"""Tissue detection on a low-resolution view of the slide.

Stained tissue is coloured; glass, dust and grey debris are not. The mask is the median-
blurred HSV saturation above an Otsu (or fixed) threshold, closed, with small objects and
small holes removed. Pen marks (blue/green ink, black ink) are saturated too, so they are
found by hue and darkness and taken out before the threshold is chosen.

Fat (adipose tissue) is mostly white: thin pink membranes around large empty cells, too pale
for the saturation threshold. It is found by texture instead: the local standard deviation of
the grey level over 24 um is high where membranes cross the view and
near zero on glass. Its median over 40 um keeps lone dust specks below the threshold,
ink and its rim are taken out, and an opening (a disk of 24 um) drops the thin textured band
that any sharp edge of tissue casts onto the glass beside it; pieces smaller than
``min_object_um2`` go.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

from napari_care.core.pixels import block_mean

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
# Texture cue (fat): grey-level standard deviation over TEXTURE_WINDOW_UM, its median over
# TEXTURE_SMOOTH_UM. The threshold and the opening were chosen on the generator's development
# seeds 100-101 (`python benchmarks/bench_tissue.py --phase dev`, docs/results/tissue_development.json).
TEXTURE_SD_THRESHOLD = 2.0
TEXTURE_WINDOW_UM = 24.0
TEXTURE_SMOOTH_UM = 40.0
INK_RIM_PX = 3  # the anti-aliased rim of a pen stroke is textured too
FAINT_INK_MIN_SATURATION = 0.06  # above the saturation of plain glass on the dev seeds
# Radius of the opening of the pale textured pixels: the window straddling an edge of tissue
# makes a band ~2 mask px wide on the glass (chosen with the threshold, see above).
TEXTURE_OPEN_UM = 24.0
# The mask's pixels at most: its working set (~80 bytes a pixel at the peak) stays under
# ~0.7 GB whatever the slide's size. 2^23 px = 26 x 20 mm at 8 um/px (a 100,000 x 80,000 px
# scan at 0.25 um/px fits); a larger slide gets a coarser mask.
MAX_MASK_PIXELS = 2**23
HSV_BAND_PIXELS = 2**20  # pixels per band of hsv_channels' float32 temporaries
FALLBACK_MPP_MASK = 8.0  # um per mask pixel assumed for the texture windows when the slide has no mpp


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
        dtype = np.int32 if self.mask.size < 2**31 else np.int64  # half the memory of int64
        table = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), dtype=dtype)
        table[1:, 1:] = self.mask.cumsum(axis=0, dtype=dtype).cumsum(axis=1, dtype=dtype)
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
    chunk by chunk (dask; integer sums rounded half up, :func:`~napari_care.core.pixels.block_mean`,
    where the level's chunks are whole blocks), so a slide without a coarse level never sits
    in memory whole.

    Returns
    -------
    (rgb uint8 [h, w, 3], downsample of that view in level-0 pixels per pixel)
    """
    level = slide.get_best_level_for_downsample(target_downsample)
    level_downsample = float(slide.level_downsamples[level])
    factor = max(1, round(target_downsample / level_downsample))
    pixels = slide.levels[level]
    factor = min(factor, pixels.shape[0], pixels.shape[1])
    if factor == 1:
        return np.asarray(pixels.compute(scheduler="threads")), level_downsample
    inner = [size for sizes in pixels.chunks[:2] for size in sizes[:-1]]
    if pixels.dtype == np.uint8 and all(size % factor == 0 for size in inner):
        # each chunk (a file tile) by integer block sums; only the last row and column of
        # chunks lose their excess pixels, as the whole level's trim would
        chunks = tuple(tuple(size // factor for size in sizes) for sizes in pixels.chunks[:2])
        reduced = pixels.map_blocks(
            _trimmed_block_mean, factor, chunks=(*chunks, pixels.chunks[2]), dtype=np.uint8
        )
        rgb = reduced[: pixels.shape[0] // factor, : pixels.shape[1] // factor]
        return np.asarray(rgb.compute(scheduler="threads")), level_downsample * factor
    import dask.array as da  # lazy: 0.2 s to import, which reopening a saved run need not pay

    pixels = da.coarsen(np.mean, pixels, {0: factor, 1: factor}, trim_excess=True, dtype=np.float32)
    rgb = np.asarray(pixels.compute(scheduler="threads"))
    return np.rint(rgb).clip(0, 255).astype(np.uint8), level_downsample * factor


def _trimmed_block_mean(chunk: np.ndarray, factor: int) -> np.ndarray:
    """``block_mean`` of ``chunk`` less its rows and columns past whole blocks."""
    height, width = chunk.shape[0] // factor * factor, chunk.shape[1] // factor * factor
    return block_mean(chunk[:height, :width], factor)


def hsv_channels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue, saturation and value in [0, 1] (float32 [h, w] each) of a uint8 RGB view.

    The definitions of ``skimage.color.rgb2hsv`` (hue 0 where the pixel is grey), in float32,
    in bands of rows so that its temporaries stay small: about 8x faster than skimage on a
    gigapixel slide's 8 um/px view.
    """
    height = rgb.shape[0]
    hue, saturation, value = (np.empty(rgb.shape[:2], np.float32) for _ in range(3))
    band = max(1, HSV_BAND_PIXELS // max(1, rgb.shape[1]))
    for top in range(0, height, band):
        rows = slice(top, min(top + band, height))
        hue[rows], saturation[rows], value[rows] = _hsv_band(rgb[rows])
    return hue, saturation, value


def _hsv_band(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`hsv_channels` of a few rows."""
    channels = rgb.astype(np.float32) * np.float32(1 / 255)
    red, green, blue = channels[..., 0], channels[..., 1], channels[..., 2]
    value = channels.max(axis=-1)
    delta = value - channels.min(axis=-1)
    grey = delta == 0
    safe = np.where(grey, np.float32(1), delta)
    # where two channels tie for the largest, blue wins over green over red, as in skimage
    hue = np.where(value == red, (green - blue) / safe, 0).astype(np.float32)
    hue = np.where(value == green, 2 + (blue - red) / safe, hue)
    hue = np.where(value == blue, 4 + (red - green) / safe, hue)
    hue = (hue / 6) % 1
    hue[grey] = 0
    saturation = np.where(value > 0, delta / np.where(value > 0, value, np.float32(1)), 0)
    return hue, saturation, value


def pen_mask(rgb: np.ndarray, hsv: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """True where a pixel looks like ink: blue/green hue, saturated, or very dark.

    ``hsv``: :func:`hsv_channels` of ``rgb`` when the caller has them already.
    """
    hue, sat, val = hsv if hsv is not None else hsv_channels(rgb)
    coloured_ink = (hue >= PEN_HUE_RANGE[0]) & (hue < PEN_HUE_RANGE[1]) & (sat >= PEN_MIN_SATURATION)
    return coloured_ink | (val < DARK_VALUE)


def faint_ink_mask(
    rgb: np.ndarray, hsv: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """True where a pale pixel has an ink hue: the thin rim of a pen stroke, textured like fat."""
    hue, sat, _ = hsv if hsv is not None else hsv_channels(rgb)
    return (hue >= PEN_HUE_RANGE[0]) & (hue < PEN_HUE_RANGE[1]) & (sat >= FAINT_INK_MIN_SATURATION)


def _majority(mask: np.ndarray, size: int) -> np.ndarray:
    """The median filter of a boolean mask over ``size`` x ``size``: scipy's, by counting.

    scipy's median of ``n`` pixels is the one of rank ``n // 2``: True where at least
    ``n - n // 2`` of the window are. A running mean counts them two orders of magnitude
    faster than a rank filter, with the same window placement.
    """
    window = size * size
    counts = ndimage.uniform_filter(mask.astype(np.float32), size, mode="reflect") * window
    return np.rint(counts) >= window - window // 2


def _median_u8(values: np.ndarray, size: int) -> np.ndarray:
    """Median filter of a uint8 image over ``size`` x ``size`` (a sliding histogram).

    scikit-image's rank median; in the interior it equals scipy's ``median_filter`` and at
    the border it takes only the pixels inside the image (scipy reflects them).
    """
    from skimage.filters import rank  # scikit-image submodules load on first use

    if size == 1:
        return values
    return rank.median(values, np.ones((size, size), dtype=bool))


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


def texture_mask(
    rgb: np.ndarray, mpp_mask: float | None, threshold: float = TEXTURE_SD_THRESHOLD
) -> np.ndarray:
    """True where the view is textured like tissue: the local grey-level standard deviation.

    Parameters
    ----------
    rgb
        uint8 [h, w, 3] low-resolution view.
    mpp_mask
        Micrometres per pixel of that view (None: :data:`FALLBACK_MPP_MASK`).
    threshold
        Standard deviation in grey levels (0-255) above which a pixel is textured.

    Returns
    -------
    bool [h, w]
    """
    mpp = mpp_mask if mpp_mask is not None else FALLBACK_MPP_MASK
    window = max(3, round(TEXTURE_WINDOW_UM / mpp) | 1)
    smooth = max(1, round(TEXTURE_SMOOTH_UM / mpp) | 1)
    grey = rgb.astype(np.float32).mean(axis=-1)
    mean = ndimage.uniform_filter(grey, window, mode="reflect")
    variance = ndimage.uniform_filter(grey * grey, window, mode="reflect") - mean * mean
    sd = np.sqrt(np.maximum(variance, 0.0))
    # a median, not a mean: a lone speck or the edge of a piece does not spread its texture;
    # median > threshold is "most of the window > threshold"
    return _majority(sd > threshold, smooth)


def _radius_px(um: float, mpp_mask: float | None) -> int:
    """A length in mask pixels (:data:`FALLBACK_MPP_MASK` when the slide has no mpp)."""
    mpp = mpp_mask if mpp_mask is not None else FALLBACK_MPP_MASK
    return max(0, round(um / mpp))


def _open(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` opened by a disk of ``radius`` px, the border padded so edge pieces stay."""
    if radius < 1 or not mask.any():
        return mask
    from skimage.morphology import disk

    padded = np.pad(mask, radius, mode="edge")
    opened = ndimage.binary_opening(padded, structure=disk(radius).astype(bool))
    return opened[radius:-radius, radius:-radius]


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
    texture_threshold: float | None = TEXTURE_SD_THRESHOLD,
    texture_open_um: float = TEXTURE_OPEN_UM,
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
    texture_threshold
        Grey-level standard deviation (0-255) above which a textured but pale region (fat)
        is tissue too; None keeps the saturation cue alone (fat is left out).
    texture_open_um
        Radius (um) of the opening that drops thin textured bands, such as the one an edge of
        tissue casts on the glass beside it, from what the texture cue adds (0: none).

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
    width0, height0 = slide.dimensions[0]
    # a slide larger than MAX_MASK_PIXELS at the target gets a coarser mask, not more memory
    target_downsample = max(target_downsample, (width0 * height0 / MAX_MASK_PIXELS) ** 0.5)
    rgb, downsample = read_thumbnail(slide, max(target_downsample, 1.0))
    mpp_mask = mpp0 * downsample if mpp0 is not None else None

    hsv = hsv_channels(rgb)
    # the saturation in 1/255 steps, so that its median is a sliding histogram's
    saturation_u8 = np.rint(hsv[1] * 255).astype(np.uint8)
    saturation = _median_u8(saturation_u8, median_size).astype(np.float32) / 255
    ink = np.zeros(rgb.shape[:2], dtype=bool)
    if exclude_pen:
        ink = _majority(pen_mask(rgb, hsv), median_size)

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
    if texture_threshold is not None:
        if not texture_threshold > 0:
            raise ValueError(f"texture_threshold must be positive (grey levels), got {texture_threshold}")
        ink_rim = ink | faint_ink_mask(rgb, hsv)
        ink_rim = ndimage.binary_dilation(ink_rim, iterations=INK_RIM_PX) if ink_rim.any() else ink_rim
        pale = texture_mask(rgb, mpp_mask, texture_threshold) & ~ink_rim & ~mask
        mask |= _open(pale, _radius_px(texture_open_um, mpp_mask))
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
