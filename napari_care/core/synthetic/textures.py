"""H&E-like texture swatches for the synthetic slide generator.

Each render class (a tissue type, or one layer of the epidermis) gets one square,
seamlessly tileable swatch at level-0 resolution. Swatches are painted as stain
concentration maps (hematoxylin ``h`` and eosin ``e``, optical density units) and turned
into RGB with the Beer-Lambert law, so colours mix the way real stains do. All feature
sizes are in micrometres and converted to pixels through ``mpp``.

Everything here wraps around the swatch edges (FFT noise, stamps with modulo indices,
periodic Voronoi cells), so a slide can read any window with modulo arithmetic and see
no seams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import fft, ndimage


@dataclass(frozen=True)
class StainPalette:
    """The colours of a synthetic H&E slide.

    Parameters
    ----------
    hematoxylin_od, eosin_od
        Optical density per unit of stain in (R, G, B): purple-blue hematoxylin, pink eosin.
    glass_rgb
        Transmission of clean glass under the scanner lamp (off-white, a little blue).
    variation
        Relative amplitude of the slow stain-intensity drift across the slide, per channel.
    """

    hematoxylin_od: tuple[float, float, float] = (0.62, 0.73, 0.29)
    eosin_od: tuple[float, float, float] = (0.10, 0.86, 0.42)
    glass_rgb: tuple[float, float, float] = (243.0, 241.0, 246.0)
    variation: float = 0.08


DEFAULT_PALETTE = StainPalette()

# Render classes: the tissue types 0..6, plus the keratin and basal layers of the epidermis.
RENDER_CLASS_NAMES = (
    "glass",
    "tumour",
    "stroma",
    "fat",
    "necrosis",
    "epidermis",
    "lymphocytes",
    "keratin",
    "basal",
)
TYPE_OF_RENDER_CLASS = np.array([0, 1, 2, 3, 4, 5, 6, 5, 5], dtype=np.uint8)


def periodic_noise(rng: np.random.Generator, size_px: int | tuple[int, int], scale_px: float) -> np.ndarray:
    """Smooth, tileable Gaussian noise with zero mean and unit standard deviation.

    ``size_px`` is the side of a square or a (rows, cols) shape; ``scale_px`` is the
    Gaussian correlation length in pixels.
    """
    shape = (size_px, size_px) if isinstance(size_px, int) else tuple(size_px)
    white = rng.standard_normal(shape, dtype=np.float32)
    f2 = (
        fft.fftfreq(shape[0]).astype(np.float32)[:, None] ** 2
        + fft.rfftfreq(shape[1]).astype(np.float32)[None, :] ** 2
    )
    spectrum = fft.rfft2(white) * np.exp(np.float32(-2.0 * (math.pi * scale_px) ** 2) * f2)
    field = fft.irfft2(spectrum, s=shape)
    field -= field.mean()
    return field / (field.std() + 1e-8)


def fibre_noise(
    rng: np.random.Generator, size_px: int, period_px: float, angle_rad: float, spread_rad: float
) -> np.ndarray:
    """Tileable band-pass noise whose streaks run along ``angle_rad`` (wavy fibres)."""
    white = rng.standard_normal((size_px, size_px), dtype=np.float32)
    fy = fft.fftfreq(size_px).astype(np.float32)[:, None]
    fx = fft.rfftfreq(size_px).astype(np.float32)[None, :]
    radius = np.hypot(fx, fy) + 1e-9
    # Streaks along angle a have their spectral energy across it, at angle a + 90 degrees.
    across = np.abs(np.cos(np.arctan2(fy, fx) - (angle_rad + math.pi / 2)))
    angular = np.exp(-((np.arccos(np.clip(across, 0, 1)) / spread_rad) ** 2))
    radial = np.exp(-((np.log(radius * period_px)) ** 2) / 0.5)
    field = fft.irfft2(fft.rfft2(white) * (angular * radial).astype(np.float32), s=(size_px, size_px))
    return field / (field.std() + 1e-8)


def jittered_grid(
    rng: np.random.Generator, size_px: int, spacing_px: float, jitter: float = 0.4, keep: float = 1.0
) -> np.ndarray:
    """Points on a tileable jittered grid, ``[n, 2]`` (x, y) pixels; ``keep`` thins them."""
    cells = max(1, round(size_px / spacing_px))
    step = size_px / cells
    gy, gx = np.mgrid[0:cells, 0:cells].astype(np.float32)
    points = np.stack([gx.ravel(), gy.ravel()], axis=1) + 0.5
    points += rng.uniform(-jitter, jitter, points.shape).astype(np.float32)
    points = points[rng.random(len(points)) < keep]
    return (points * step) % size_px


def stamp_blobs(
    canvas: np.ndarray,
    rng: np.random.Generator,
    centres_xy: np.ndarray,
    radius_x_px: np.ndarray,
    radius_y_px: np.ndarray,
    angle_rad: np.ndarray,
    amplitude: np.ndarray,
    *,
    irregularity: float = 0.08,
    rim: float = 0.0,
    softness_px: float = 1.0,
) -> None:
    """Add irregular elliptic blobs (nuclei, dots) into ``canvas`` in place, wrapping around.

    The outline radius wobbles with random 2nd and 3rd harmonics (``irregularity``);
    ``rim`` > 0 darkens the rim against the centre (vesicular chromatin).
    """
    count = len(centres_xy)
    if count == 0:
        return
    size_y, size_x = canvas.shape
    half = math.ceil(max(radius_x_px.max(), radius_y_px.max()) * (1 + 2 * irregularity)) + 2
    offsets = np.arange(-half, half + 1, dtype=np.float32)
    # Harmonic amplitudes as (cos, sin) pairs: a*cos(k*theta + phi) = p*cos(k*theta) - q*sin(k*theta).
    phase = rng.uniform(0, 2 * math.pi, (count, 2))
    size = rng.uniform(0, irregularity, (count, 2))
    harmonics = np.stack([size * np.cos(phase), size * np.sin(phase)], axis=-1).astype(np.float32)
    total = np.zeros(canvas.size, np.float64)
    for start in range(0, count, 512):  # batches keep the (n, p, p) arrays small
        sl = slice(start, start + 512)
        cx, cy = centres_xy[sl, 0], centres_xy[sl, 1]
        ix = np.floor(cx)[:, None] + offsets
        iy = np.floor(cy)[:, None] + offsets
        dx = (ix - cx[:, None])[:, None, :]
        dy = (iy - cy[:, None])[:, :, None]
        cos, sin = np.cos(angle_rad[sl])[:, None, None], np.sin(angle_rad[sl])[:, None, None]
        u = (dx * cos + dy * sin) / radius_x_px[sl, None, None]
        v = (dy * cos - dx * sin) / radius_y_px[sl, None, None]
        r = np.sqrt(u * u + v * v) + 1e-6
        c, s = u / r, v / r
        c2, s2 = c * c - s * s, 2 * c * s
        c3, s3 = c * (4 * c * c - 3), s * (3 - 4 * s * s)
        hp = harmonics[sl, :, :, None, None]
        edge = 1 + hp[:, 0, 0] * c2 - hp[:, 0, 1] * s2 + hp[:, 1, 0] * c3 - hp[:, 1, 1] * s3
        mean_radius = np.sqrt(radius_x_px[sl] * radius_y_px[sl])[:, None, None]
        alpha = np.clip((edge - r) * (mean_radius / softness_px) + 0.5, 0.0, 1.0)
        if rim:
            alpha *= (1 - rim) + rim * np.minimum(r / edge, 1) ** 3
        alpha *= amplitude[sl, None, None]
        flat = (iy.astype(np.int64) % size_y)[:, :, None] * size_x + (ix.astype(np.int64) % size_x)[
            :, None, :
        ]
        total += np.bincount(flat.ravel(), weights=alpha.ravel(), minlength=canvas.size)
    canvas += total.reshape(canvas.shape).astype(np.float32)


def voronoi_edges(seeds_xy: np.ndarray, size_px: int, cell_px: float) -> np.ndarray:
    """Distance (px) to the nearest edge of the periodic Voronoi cells of ``seeds_xy``.

    ``seeds_xy`` must come from :func:`jittered_grid` with spacing ``cell_px`` and
    ``keep=1``, so every grid cell owns one seed and the 3x3 neighbouring cells hold the
    two nearest seeds.
    """
    cells = max(1, round(size_px / cell_px))
    step = size_px / cells
    seeds = seeds_xy.reshape(cells, cells, 2)
    coords = np.arange(size_px, dtype=np.float32) + 0.5
    pixels_per_cell = np.bincount(np.minimum((coords // step).astype(np.int64), cells - 1), minlength=cells)
    index = np.arange(cells)
    best1 = np.full((size_px, size_px), np.inf, np.float32)
    best2 = np.full((size_px, size_px), np.inf, np.float32)
    # Positions of the nearest and second-nearest seeds, for the exact distance to their bisector.
    near1 = np.zeros((2, size_px, size_px), np.float32)
    near2 = np.zeros((2, size_px, size_px), np.float32)
    for dj in (-1, 0, 1):
        for di in (-1, 0, 1):
            neighbour = seeds[(index[:, None] + dj) % cells, (index[None, :] + di) % cells]
            # Unwrap the neighbour's seed to this cell's side of the torus.
            sx = (
                neighbour[..., 0]
                + np.round(((index[None, :] + di) * step - neighbour[..., 0]) / size_px) * size_px
            )
            sy = (
                neighbour[..., 1]
                + np.round(((index[:, None] + dj) * step - neighbour[..., 1]) / size_px) * size_px
            )
            seed = np.stack(
                [np.repeat(np.repeat(a, pixels_per_cell, axis=0), pixels_per_cell, axis=1) for a in (sx, sy)]
            ).astype(np.float32)
            d2 = (coords[None, :] - seed[0]) ** 2
            d2 += (coords[:, None] - seed[1]) ** 2
            first, second = d2 < best1, (d2 >= best1) & (d2 < best2)
            np.copyto(near2, near1, where=first)
            np.copyto(best2, best1, where=first)
            np.copyto(near2, seed, where=second)
            np.copyto(best2, d2, where=second)
            np.copyto(near1, seed, where=first)
            np.copyto(best1, d2, where=first)
    separation = np.hypot(near2[0] - near1[0], near2[1] - near1[1])
    return (best2 - best1) / (2 * np.maximum(separation, 1e-3))


def warp(field: np.ndarray, shift_x_px: np.ndarray, shift_y_px: np.ndarray) -> np.ndarray:
    """Sample a tileable ``field`` at pixel positions shifted by the given maps (wraps)."""
    size_y, size_x = field.shape
    yy, xx = np.mgrid[0:size_y, 0:size_x].astype(np.float32)
    return ndimage.map_coordinates(field, [yy + shift_y_px, xx + shift_x_px], order=1, mode="grid-wrap")


def stains_to_rgb(
    h: np.ndarray, e: np.ndarray, palette: StainPalette = DEFAULT_PALETTE, extra_od: np.ndarray | float = 0.0
) -> np.ndarray:
    """Beer-Lambert: stain concentrations (OD units) to an RGB uint8 image."""
    rgb = np.empty((*h.shape, 3), np.uint8)
    for channel in range(3):
        od = (
            h * np.float32(palette.hematoxylin_od[channel])
            + e * np.float32(palette.eosin_od[channel])
            + extra_od
        )
        light = np.exp(-np.maximum(od, 0, out=od), out=od)
        light = light * np.float32(palette.glass_rgb[channel]) + np.float32(0.5)
        rgb[..., channel] = np.minimum(light, 255, out=light)
    return rgb


# ---------------------------------------------------------------- painters, one per render class
# Each returns (hematoxylin, eosin) concentration maps, float32 [size, size].


def _nuclei(
    rng,
    canvas,
    centres,
    radius_um,
    elong,
    amplitude,
    mpp,
    *,
    irregularity=0.08,
    rim=0.0,
    angle=None,
    angle_sd=math.pi,
):
    """Stamp nuclei with log-normal sizes around ``radius_um`` (um) and elongation ``elong``."""
    n = len(centres)
    # Clipped log-normal spreads: pleomorphism without rare giants that slow the stamping.
    radius = radius_um / mpp * np.exp(np.clip(rng.normal(0.0, 0.15, n), -0.3, 0.3)).astype(np.float32)
    stretch = np.sqrt(elong * np.exp(np.clip(rng.normal(0.0, 0.1, n), -0.2, 0.2))).astype(np.float32)
    base = rng.uniform(0, 2 * math.pi, n) if angle is None else angle + rng.normal(0, angle_sd, n)
    amp = amplitude * rng.lognormal(0.0, 0.15, n).astype(np.float32)
    stamp_blobs(
        canvas,
        rng,
        centres,
        radius * stretch,
        radius / stretch,
        base.astype(np.float32),
        amp,
        irregularity=irregularity,
        rim=rim,
        softness_px=max(0.6, 0.4 / mpp),
    )


def paint_glass(rng, size, mpp):
    h = np.zeros((size, size), np.float32)
    e = 0.004 + 0.003 * periodic_noise(rng, size, 40 / mpp)
    # A little dust: rare tiny specks.
    specks = rng.uniform(0, size, (int(size * size * mpp * mpp / 40000), 2)).astype(np.float32)
    _nuclei(rng, e, specks, 1.0, 1.5, 0.15, mpp)
    return h, e


def paint_stroma(rng, size, mpp):
    angle = rng.uniform(0, math.pi)
    # Two fibre directions blended by a slow mask: bundles change course across the field.
    fibres = [fibre_noise(rng, size, 6 / mpp, angle + turn, 0.3) for turn in (0.0, 0.7)]
    mix = np.clip(0.5 + 0.8 * periodic_noise(rng, size, 60 / mpp), 0, 1)
    fibres = mix * fibres[0] + (1 - mix) * fibres[1]
    # Crimp: shift across the fibres by a wave that varies along them.
    crimp = 2.5 / mpp * periodic_noise(rng, size, 10 / mpp)
    fibres = warp(fibres, -math.sin(angle) * crimp, math.cos(angle) * crimp)
    bundles = fibre_noise(rng, size, 40 / mpp, angle + 0.35, 0.6)
    clefts = np.clip((bundles + 2.0) * 1.2, 0, 1)  # thin white gaps between collagen bundles
    e = (0.36 + 0.11 * np.clip(fibres, -1.5, 1.5)) * clefts
    e += 0.06 * periodic_noise(rng, size, 50 / mpp)
    h = 0.02 + 0.01 * periodic_noise(rng, size, 30 / mpp)
    centres = jittered_grid(rng, size, 40 / mpp, 0.5, keep=0.8)
    _nuclei(
        rng,
        h,
        centres,
        3.0,
        6.0,
        1.0,
        mpp,
        angle=angle + 0.35 * (mix[centres[:, 1].astype(int), centres[:, 0].astype(int)] < 0.5),
        angle_sd=0.25,
        irregularity=0.05,
    )
    return h, np.clip(e, 0, None)


def paint_tumour(rng, size, mpp):
    grain = periodic_noise(rng, size, 0.8 / mpp)
    # Thin fibrous septa split the tumour into nests.
    seeds = jittered_grid(rng, size, 220 / mpp)
    septum_px = voronoi_edges(seeds, size, 220 / mpp)
    septa = np.exp(-((septum_px * mpp / 4.0) ** 2))
    e = 0.30 + 0.06 * periodic_noise(rng, size, 6 / mpp) + 0.25 * septa
    h = 0.20 + 0.04 * periodic_noise(rng, size, 8 / mpp)
    centres = jittered_grid(rng, size, 14.5 / mpp, 0.45, keep=0.92)
    nuc = np.zeros_like(h)
    _nuclei(rng, nuc, centres, 6.0, 1.6, 1.05, mpp, irregularity=0.16, rim=0.45)
    nucleoli = centres[rng.random(len(centres)) < 0.35] + rng.normal(0, 0.8 / mpp, (1, 2)).astype(np.float32)
    _nuclei(rng, nuc, nucleoli % size, 1.1, 1.0, 0.9, mpp)
    nuc *= 0.85 + 0.3 * np.clip(grain, -1.5, 1.5) / 1.5
    h += nuc * (1 - septa)
    return h, e


def paint_fat(rng, size, mpp):
    cell_px = 65 / mpp
    seeds = jittered_grid(rng, size, cell_px, 0.42)
    edge_px = voronoi_edges(seeds, size, cell_px)
    thickness_um = 1.0 * np.exp(0.15 * periodic_noise(rng, size, 15 / mpp))  # membranes vary a little
    membrane = np.exp(-((edge_px * mpp / thickness_um) ** 2))
    e = 0.005 + 0.5 * membrane
    h = 0.01 * membrane
    # Occasional flattened nuclei sitting on a membrane.
    candidates = rng.uniform(0, size, (int(size * size * mpp * mpp / 2500), 2)).astype(np.float32)
    on_edge = edge_px[candidates[:, 1].astype(int), candidates[:, 0].astype(int)] < 1.0 / mpp
    _nuclei(rng, h, candidates[on_edge], 2.6, 5.0, 0.8, mpp)
    return h, e


def paint_necrosis(rng, size, mpp):
    patchy = periodic_noise(rng, size, 25 / mpp)
    e = 0.24 + 0.09 * patchy + 0.06 * periodic_noise(rng, size, 3 / mpp)
    # Ghost cells: faint eosinophilic outlines without nuclei.
    seeds = jittered_grid(rng, size, 16 / mpp)
    ghost_px = voronoi_edges(seeds, size, 16 / mpp)
    e += 0.08 * np.exp(-((ghost_px * mpp / 1.2) ** 2))
    e *= np.clip(1.2 + 0.6 * periodic_noise(rng, size, 12 / mpp), 0.4, 1.2)  # fragmentation
    h = 0.10 + 0.04 * patchy  # basophilic smudge of nuclear dust
    # Karyorrhexis: clusters of tiny dark nuclear fragments, plus some pyknotic nuclei.
    cluster = periodic_noise(rng, size, 10 / mpp)
    dots = rng.uniform(0, size, (int(size * size * mpp * mpp / 25), 2)).astype(np.float32)
    dots = dots[cluster[dots[:, 1].astype(int), dots[:, 0].astype(int)] > 0.3]
    _nuclei(rng, h, dots, 0.9, 1.3, 1.2, mpp, irregularity=0.2)
    pyknotic = rng.uniform(0, size, (int(size * size * mpp * mpp / 900), 2)).astype(np.float32)
    _nuclei(rng, h, pyknotic, 2.4, 1.2, 1.4, mpp)
    return h, np.clip(e, 0.02, None)


def paint_spinous(rng, size, mpp):
    cell_px = 13 / mpp
    seeds = jittered_grid(rng, size, cell_px, 0.45)
    edge_px = voronoi_edges(seeds, size, cell_px)
    border = np.exp(-((edge_px * mpp / 0.7) ** 2))
    e = 0.48 + 0.05 * periodic_noise(rng, size, 4 / mpp) - 0.22 * border
    h = 0.06 + 0.02 * periodic_noise(rng, size, 5 / mpp)
    nuc = np.zeros_like(h)
    _nuclei(rng, nuc, seeds, 3.0, 1.2, 0.85, mpp, rim=0.4)
    nuc *= 0.85 + 0.15 * periodic_noise(rng, size, 0.8 / mpp)
    return h + nuc, e


def paint_basal(rng, size, mpp):
    centres = jittered_grid(rng, size, 7.0 / mpp, 0.35)
    h = 0.28 + 0.05 * periodic_noise(rng, size, 5 / mpp)
    _nuclei(rng, h, centres, 3.0, 1.8, 1.05, mpp, irregularity=0.1)
    e = 0.30 + 0.05 * periodic_noise(rng, size, 5 / mpp)
    return h, e


def paint_keratin(rng, size, mpp):
    angle = rng.uniform(0, math.pi)
    lamellae = fibre_noise(rng, size, 9 / mpp, angle, 0.25)
    weave = np.clip(lamellae * 0.8 + 0.3, 0, 1)  # basket-weave: pink sheets with open gaps
    e = 0.38 * weave + 0.04 * periodic_noise(rng, size, 30 / mpp)
    h = 0.015 * weave
    return h, np.clip(e, 0.01, None)


def paint_lymphocytes(rng, size, mpp):
    centres = jittered_grid(rng, size, 8.2 / mpp, 0.3, keep=0.95)
    h = 0.10 + 0.03 * periodic_noise(rng, size, 10 / mpp)
    _nuclei(rng, h, centres, 3.1, 1.1, 1.5, mpp, irregularity=0.06)
    # A few larger, paler cells (histiocytes) break the monotony.
    big = rng.uniform(0, size, (int(size * size * mpp * mpp / 4000), 2)).astype(np.float32)
    _nuclei(rng, h, big, 5.5, 1.3, -0.5, mpp)
    e = 0.18 + 0.04 * periodic_noise(rng, size, 8 / mpp)
    return np.clip(h, 0.05, None), e


PAINTERS = (
    paint_glass,
    paint_tumour,
    paint_stroma,
    paint_fat,
    paint_necrosis,
    paint_spinous,
    paint_lymphocytes,
    paint_keratin,
    paint_basal,
)


def make_swatch(
    render_class: int, seed: int, size_px: int, mpp: float, palette: StainPalette = DEFAULT_PALETTE
) -> np.ndarray:
    """Paint the tileable RGB swatch ``[size_px, size_px, 3]`` uint8 of one render class.

    Parameters
    ----------
    render_class
        Index into :data:`RENDER_CLASS_NAMES`.
    seed
        Seeds the painter (each class draws from its own stream).
    size_px
        Side of the square swatch in level-0 pixels.
    mpp
        Micrometres per level-0 pixel; texture sizes are fixed in micrometres.
    palette
        Stain colours.
    """
    rng = np.random.default_rng([seed, render_class])
    h, e = PAINTERS[render_class](rng, size_px, mpp)
    # Unbound stain and tissue thickness: a faint, slow, colour-neutral haze.
    haze = 0.015 * periodic_noise(rng, size_px, 20 / mpp) if render_class else np.float32(0)
    return stains_to_rgb(h, e, palette, haze)
