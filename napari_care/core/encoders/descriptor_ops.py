"""Vectorised numpy building blocks of the built-in descriptor.

Every function works on a whole batch at once (leading axis = tile), because per-tile
Python loops would cost more than the arithmetic. Images are float32 ``[B, H, W]`` unless
said otherwise.
"""

from __future__ import annotations

import numpy as np

#: Ruifrok & Johnston (2001) stain vectors (optical density of pure stain, rows =
#: haematoxylin, eosin, DAB), as in scikit-image's ``rgb_from_hed``; rows are
#: normalised to unit length before inversion.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)).astype(
    np.float32
)


def block_sum(tiles: np.ndarray, out_px: int) -> tuple[np.ndarray, int]:
    """Sum RGB uint8 tiles ``[B, S, S, 3]`` over ``k x k`` blocks down to ``out_px``.

    Returns channel-planar uint16 block sums ``[B, 3, out_px, out_px]`` and ``k * k``
    (the number of pixels summed). A side that is not a multiple of ``out_px`` is first
    sampled to the nearest multiple (nearest neighbour).
    """
    batch, side = tiles.shape[:2]
    factor = max(1, round(side / out_px))
    if side != factor * out_px:
        index = (np.arange(factor * out_px) * side) // (factor * out_px)
        tiles = tiles[:, index][:, :, index]
    # Rows first: contiguous runs of k rows, summed in uint16 (holds 257 pixels of 255).
    rows = tiles.reshape(batch, out_px, factor, factor * out_px * 3)
    summed = rows[:, :, 0].astype(np.uint16)
    for dy in range(1, factor):
        summed += rows[:, :, dy]
    # Then columns, without a slow trailing axis of 3: shift-add the interleaved rows by
    # whole pixels, then every (3k)-th value from offset c is channel c of one block.
    width = summed.shape[-1] - 3 * (factor - 1)
    across = summed[..., :width].copy()
    for dx in range(1, factor):
        across += summed[..., 3 * dx : 3 * dx + width]
    planar = np.empty((batch, 3, out_px, out_px), np.uint16)
    for channel in range(3):
        planar[:, channel] = across[..., channel :: 3 * factor]
    return planar, factor * factor


def optical_density_lut(pixels_per_sum: int) -> np.ndarray:
    """Look-up table from a block sum of ``pixels_per_sum`` pixels to optical density.

    OD = -log10((mean + 1) / 256), so white glass is ~0 and the darkest pixel ~2.4.
    """
    mean = np.arange(255 * pixels_per_sum + 1, dtype=np.float64) / pixels_per_sum
    return (-np.log10((mean + 1.0) / 256.0)).astype(np.float32)


def mean_pool(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks of the last two axes (multiples of ``factor``)."""
    if factor == 1:
        return image.astype(np.float32)
    total = np.add(image[..., 0::factor, 0::factor], image[..., 0::factor, 1::factor], dtype=np.float32)
    for dy in range(factor):
        for dx in range(factor):
            if dy or dx > 1:
                total += image[..., dy::factor, dx::factor]
    total *= np.float32(1.0 / (factor * factor))
    return total


def histogram_quantiles(
    values: np.ndarray, lo: float, hi: float, quantiles: tuple[float, ...], bins: int = 64
) -> np.ndarray:
    """Per-tile quantiles of ``values [B, P]`` from a ``bins``-bin histogram on [lo, hi].

    One ``bincount`` for the whole batch instead of a sort per tile; the resolution
    is ``(hi - lo) / bins``, plenty for a descriptor. Returns ``[B, len(quantiles)]``.
    """
    batch, count = values.shape
    scaled = (values - lo) * (bins / (hi - lo))
    index = np.clip(scaled, 0, bins - 1).astype(np.int32)
    index += (np.arange(batch, dtype=np.int32) * bins)[:, None]
    cdf = np.cumsum(np.bincount(index.ravel(), minlength=batch * bins).reshape(batch, bins), axis=1)
    centres = lo + (np.arange(bins, dtype=np.float32) + 0.5) * ((hi - lo) / bins)
    return np.stack([centres[np.argmax(cdf >= q * count, axis=1)] for q in quantiles], axis=1)


def local_variance(fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Mean variance within the blocks of ``fine`` that ``coarse`` is the 2x2 mean of."""
    return (mean_pool(fine * fine, 2) - coarse * coarse).mean(axis=(1, 2))


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """Mean absolute forward difference ``|dx| + |dy|`` per tile of ``[B, H, W]``."""
    dx = np.abs(np.diff(image, axis=2)).mean(axis=(1, 2))
    dy = np.abs(np.diff(image, axis=1)).mean(axis=(1, 2))
    return (dx + dy).astype(np.float32)


def coherence(image: np.ndarray, block: int, energy_floor: float = 1e-4) -> np.ndarray:
    """Mean structure-tensor coherence over ``block x block`` windows, per tile.

    Coherence = sqrt((Jxx - Jyy)^2 + 4 Jxy^2) / (Jxx + Jyy), in [0, 1]: 1 for parallel
    fibres (stroma), ~0 for isotropic texture (tumour, lymphocytes). Rotation invariant.
    ``energy_floor`` (mean squared gradient per window) keeps flat glass, whose noise has
    no meaningful direction, near 0.
    """
    gx = image[:, 1:-1, 2:] - image[:, 1:-1, :-2]
    gy = image[:, 2:, 1:-1] - image[:, :-2, 1:-1]
    side = (gx.shape[1] // block) * block
    gx, gy = gx[:, :side, :side], gy[:, :side, :side]
    jxx, jyy, jxy = mean_pool(gx * gx, block), mean_pool(gy * gy, block), mean_pool(gx * gy, block)
    trace = jxx + jyy
    anisotropy = np.sqrt((jxx - jyy) ** 2 + 4.0 * jxy * jxy)
    # Weight windows by their energy so that flat glass does not dilute the mean.
    windows = trace.shape[1] * trace.shape[2]
    return (anisotropy.sum(axis=(1, 2)) / (trace.sum(axis=(1, 2)) + windows * energy_floor)).astype(
        np.float32
    )


def autocorrelation(image: np.ndarray, lags: tuple[int, ...], variance_floor: float = 1e-3) -> np.ndarray:
    """Normalised spatial autocorrelation at ``lags`` (pixels), x and y averaged.

    A co-occurrence-style texture measure: it stays high over the lag for smooth or
    coarse structure (stroma, fat) and falls fast for fine granular texture
    (lymphocytes, necrotic debris). ``variance_floor`` keeps near-flat tiles (glass) near
    0 instead of measuring their noise. Returns ``[B, len(lags)]``.
    """
    centred = image - image.mean(axis=(1, 2), keepdims=True)
    variance = (centred * centred).mean(axis=(1, 2)) + variance_floor
    out = np.empty((image.shape[0], len(lags)), np.float32)
    for i, lag in enumerate(lags):
        cx = (centred[:, :, lag:] * centred[:, :, :-lag]).mean(axis=(1, 2))
        cy = (centred[:, lag:, :] * centred[:, :-lag, :]).mean(axis=(1, 2))
        out[:, i] = 0.5 * (cx + cy) / variance
    return out


def neighbour_rank_shares(image: np.ndarray, margin: float) -> np.ndarray:
    """LBP-like texture code: the share of pixels by how many of 8 neighbours exceed them.

    A neighbour counts when it is brighter than the centre by more than ``margin`` (so
    flat areas code as 0). Returns ``[B, 3]``: shares with 0-2 (local maxima, ridges),
    3-5 (slopes) and 6-8 (local minima, pits) brighter neighbours.
    """
    centre = image[:, 1:-1, 1:-1] + margin
    height, width = centre.shape[1:]
    count = np.zeros(centre.shape, np.uint8)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy != 1 or dx != 1:
                count += image[:, dy : dy + height, dx : dx + width] > centre
    total = float(height * width)
    low = (count <= 2).sum(axis=(1, 2)) / total
    high = (count >= 6).sum(axis=(1, 2)) / total
    return np.stack([low, 1.0 - low - high, high], axis=1).astype(np.float32)


def euler_number(mask: np.ndarray) -> np.ndarray:
    """8-connected Euler number per tile of a boolean ``[B, H, W]`` mask (Gray's bit quads).

    For blobs without holes (nuclei) it is the number of blobs, obtained without
    labelling: E8 = (n(Q1) - n(Q3) - 2 n(QD)) / 4 over all 2x2 windows of the zero-padded
    mask.
    """
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    a, b = padded[:, :-1, :-1], padded[:, :-1, 1:]
    c, d = padded[:, 1:, :-1], padded[:, 1:, 1:]
    ones = a.astype(np.uint8) + b + c + d
    q1 = (ones == 1).sum(axis=(1, 2))
    q3 = (ones == 3).sum(axis=(1, 2))
    qd = ((ones == 2) & (a == d)).sum(axis=(1, 2))
    return ((q1 - q3 - 2 * qd) / 4.0).astype(np.float32)


def eroded_share(mask: np.ndarray, prior_px: float = 20.0) -> np.ndarray:
    """Share of mask pixels whose 4 neighbours are also in the mask (blob thickness).

    ``prior_px`` pixels are added to the denominator, so that a handful of pixels gives a
    share near 0 rather than a noisy 0 or 1.
    """
    core = (
        mask[:, 1:-1, 1:-1] & mask[:, :-2, 1:-1] & mask[:, 2:, 1:-1] & mask[:, 1:-1, :-2] & mask[:, 1:-1, 2:]
    )
    inside = mask[:, 1:-1, 1:-1].sum(axis=(1, 2))
    return (core.sum(axis=(1, 2)) / (inside + prior_px)).astype(np.float32)
