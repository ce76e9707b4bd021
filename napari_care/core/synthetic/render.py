"""Level-0 tiles of a synthetic slide: texture swatches picked per pixel by a smooth class map.

The layout lives on a coarse grid (one cell = ``downsample`` level-0 pixels). Each render
class gets a blurred one-hot score field on that grid; a tile upsamples the scores of the
classes near it bilinearly, adds fine boundary noise and takes the argmax, so boundaries
are smooth curves at any zoom and agree with the coarse truth (tiles far from any boundary
skip all that). Pixels come from wrap-padded class swatches by plain slicing, packed as
one uint32 per pixel so that picking between classes moves whole pixels; two variants of each swatch
(shifted, and rotated by 90 degrees) alternate over irregular patches about a millimetre
wide, which hides the swatch period. A slow per-channel gain drift adds stain variation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_care.core.synthetic.textures import RENDER_CLASS_NAMES, periodic_noise

BOUNDARY_NOISE = 0.22  # score units; displaces class boundaries by a few micrometres
PEN_RGB = np.array([40, 110, 80], dtype=np.float32)  # a green marker


@dataclass(frozen=True)
class Bilinear:
    """Bilinear interpolation from coarse cells to a run of level-0 pixels along one axis.

    Pixel ``i`` reads coarse cells ``first + lower[i]`` and ``first + lower[i] + 1`` with
    weights ``1 - weight[i]`` and ``weight[i]``; ``cells`` is how many coarse cells it spans.
    """

    first: int
    cells: int
    lower: np.ndarray
    weight: np.ndarray

    @classmethod
    def along(cls, start_px: int, count_px: int, downsample: int, cells: int) -> Bilinear:
        """Interpolation at the centres of pixels ``start_px .. start_px + count_px - 1``."""
        centres = (np.arange(start_px, start_px + count_px, dtype=np.float64) + 0.5) / downsample - 0.5
        centres = np.clip(centres, 0, cells - 1)
        lower = np.minimum(np.floor(centres).astype(np.int64), max(cells - 2, 0))
        first = int(lower.min())
        span = min(int(lower.max()) + 2, cells) - first
        weight = (centres - lower).astype(np.float32)
        return cls(first, span, np.minimum(lower - first, span - 1), weight)

    @property
    def cell_slice(self) -> slice:
        return slice(self.first, self.first + self.cells)

    def apply(self, values: np.ndarray, axis: int) -> np.ndarray:
        """Interpolate ``values`` (its ``axis`` holds this run's coarse cells) to pixels."""
        upper = np.minimum(self.lower + 1, self.cells - 1)
        shape = [1] * values.ndim
        shape[axis] = -1
        weight = self.weight.reshape(shape)
        low, high = np.take(values, self.lower, axis=axis), np.take(values, upper, axis=axis)
        return low + (high - low) * weight


def half_size(image: np.ndarray) -> np.ndarray:
    """Mean of 2x2 blocks (odd edges repeat their last row/column), uint8 in and out."""
    pad = ((0, image.shape[0] % 2), (0, image.shape[1] % 2), (0, 0))
    if any(p[1] for p in pad):
        image = np.pad(image, pad, mode="edge")
    total = (
        image[0::2, 0::2].astype(np.uint16) + image[1::2, 0::2] + image[0::2, 1::2] + image[1::2, 1::2] + 2
    )
    return (total >> 2).astype(np.uint8)


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 ``[h, w, 3]`` as one uint32 per pixel, so picking pixels moves 4 bytes at once."""
    rgba = np.zeros((*rgb.shape[:2], 4), np.uint8)
    rgba[..., :3] = rgb
    return rgba.view(np.uint32)[..., 0]


def _second_variant(render_class: int, swatch: np.ndarray) -> np.ndarray:
    """The swatch turned by 90 degrees; keratin is mirrored instead, to keep its layers flat."""
    return np.fliplr(swatch) if RENDER_CLASS_NAMES[render_class] == "keratin" else np.rot90(swatch)


@dataclass
class SlidePainter:
    """Everything needed to paint any level-0 tile of one synthetic slide.

    Parameters
    ----------
    render_labels
        ``[rows, cols]`` uint8 render class per coarse cell (argmax of ``scores``).
    scores
        ``[n_classes, rows, cols]`` float32 blurred one-hot class scores.
    swatches
        Per render class, two swatch variants ``[2, S + pad, S + pad]`` of RGB packed in
        uint32: a tileable swatch of period ``period_px`` and its 90-degree rotation (a
        mirror image for keratin), wrap-padded.
    offsets_px
        ``[n_classes, 2, 2]`` (x, y) swatch offsets per class and variant.
    variant_field, gain, pen
        Coarse fields: swatch variant choice (sign), per-channel stain gain ``[rows, cols, 3]``
        (edge-padded by one tile), pen-mark opacity (or None).
    boundary_noise
        Tileable level-0 noise that roughens class boundaries.
    downsample
        Level-0 pixels per coarse cell.
    period_px
        Period of the swatches and the boundary noise.
    """

    render_labels: np.ndarray
    scores: np.ndarray
    swatches: list[np.ndarray]
    offsets_px: np.ndarray
    variant_field: np.ndarray
    gain: np.ndarray
    pen: np.ndarray | None
    boundary_noise: np.ndarray
    downsample: int
    period_px: int

    @classmethod
    def create(
        cls,
        render_labels_raw: np.ndarray,
        swatches: list[np.ndarray],
        downsample: int,
        mpp: float,
        seed: int,
        stain_variation: float,
        tile_px: int,
        pen: np.ndarray | None = None,
    ) -> SlidePainter:
        """Blur the layout into score fields, pad the swatches and draw the slide-wide random fields.

        ``swatches`` holds one tileable ``[S, S, 3]`` swatch per render class; tiles of up to
        ``tile_px`` read them by plain slicing.
        """
        rng = np.random.default_rng([seed, 7])
        rows, cols = render_labels_raw.shape
        n_classes = len(RENDER_CLASS_NAMES)
        scores = np.stack(
            [
                ndimage.gaussian_filter((render_labels_raw == k).astype(np.float32), 0.7)
                for k in range(n_classes)
            ]
        )
        cell_um = downsample * mpp
        size_px = swatches[0].shape[0]
        variant_field = periodic_noise(rng, (rows, cols), 700.0 / cell_um)
        if max(rows, cols) * downsample <= 2 * size_px:
            variant_field[:] = 1  # a slide this small shows no period; seams would only hurt
        gain = 1 + stain_variation * np.stack(
            [periodic_noise(rng, (rows, cols), 1500.0 / cell_um) for _ in range(3)], axis=-1
        )
        # One global shift shared by all channels, plus independent per-channel drift; edge
        # padding covers tiles that reach past the slide's right and bottom edges.
        gain = gain * (1 + stain_variation * rng.uniform(-1, 1))
        pad_cells = -(-tile_px // downsample)
        gain = np.pad(gain, [(0, pad_cells), (0, pad_cells), (0, 0)], mode="edge").astype(np.float32)
        boundary_noise = 0.7 * periodic_noise(rng, size_px, 4.0 / mpp) + 0.7 * periodic_noise(
            rng, size_px, 14.0 / mpp
        )

        # Wrap-padding lets any tile read its window as one slice, with no modulo gather.
        def pad(image: np.ndarray) -> np.ndarray:
            return np.pad(image, [(0, tile_px), (0, tile_px)] + [(0, 0)] * (image.ndim - 2), mode="wrap")

        return cls(
            render_labels=scores.argmax(axis=0).astype(np.uint8),
            scores=scores,
            swatches=[
                np.stack([pad(_pack_rgb(sw)), pad(_pack_rgb(_second_variant(k, sw)))])
                for k, sw in enumerate(swatches)
            ],
            offsets_px=rng.integers(0, size_px, (n_classes, 2, 2)),
            variant_field=variant_field,
            gain=gain,
            pen=pen,
            boundary_noise=pad(boundary_noise),
            downsample=downsample,
            period_px=size_px,
        )

    def _window(self, padded: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
        """The ``size`` x ``size`` window at (x0, y0) of a wrap-padded periodic image."""
        period = self.period_px
        if size <= padded.shape[0] - period:
            return padded[y0 % period : y0 % period + size, x0 % period : x0 % period + size]
        rows, cols = np.arange(y0, y0 + size) % period, np.arange(x0, x0 + size) % period
        return padded.take(rows, axis=0).take(cols, axis=1)

    def _texture(
        self, render_class: int, x0: int, y0: int, size: int, variant: np.ndarray | None, use: int | None
    ) -> np.ndarray:
        """Packed swatch pixels of one class for the tile at (x0, y0); ``use`` picks one variant."""
        pieces = [
            self._window(
                self.swatches[render_class][v],
                x0 + self.offsets_px[render_class, v, 0],
                y0 + self.offsets_px[render_class, v, 1],
                size,
            )
            for v in ((0, 1) if use is None else (use,))
        ]
        if use is not None:
            return pieces[0].copy()
        return np.where(variant, pieces[0], pieces[1])

    def _noise(self, render_class: int, x0: int, y0: int, size: int) -> np.ndarray:
        shift = 389 * render_class  # each class reads its own part of the noise
        return self._window(self.boundary_noise, x0 + 2 * shift, y0 + shift, size)

    def render(self, x0: int, y0: int, size: int) -> np.ndarray:
        """Paint the level-0 tile ``[size, size, 3]`` uint8 whose top-left pixel is (x0, y0)."""
        rows, cols = self.render_labels.shape
        along_y = Bilinear.along(y0, size, self.downsample, rows)
        along_x = Bilinear.along(x0, size, self.downsample, cols)
        window = (along_y.cell_slice, along_x.cell_slice)

        def upsample(field: np.ndarray) -> np.ndarray:
            return along_x.apply(along_y.apply(field[window], axis=0), axis=1)

        # Classes whose blurred score reaches this tile.
        near = np.flatnonzero(self.scores[(slice(None), *window)].max(axis=(1, 2)) > 0.02)
        variant_window = self.variant_field[window]
        use = 0 if variant_window.min() > 0 else 1 if variant_window.max() < 0 else None
        variant = upsample(self.variant_field) > 0 if use is None else None

        packed = self._texture(near[0], x0, y0, size, variant, use)
        if len(near) > 1:
            # Running argmax over the classes' upsampled scores (plus boundary noise).
            best = upsample(self.scores[near[0]]) + BOUNDARY_NOISE * self._noise(near[0], x0, y0, size)
            for k in near[1:]:
                score = upsample(self.scores[k]) + BOUNDARY_NOISE * self._noise(k, x0, y0, size)
                better = score > best
                if better.any():
                    packed = np.where(better, self._texture(k, x0, y0, size, variant, use), packed)
                    np.maximum(best, score, out=best)
        tile = packed.view(np.uint8).reshape(size, size, 4)[..., :3]

        if self.pen is not None and self.pen[window].max() > 0.05:
            opacity = np.clip(upsample(self.pen), 0, 1)[..., None]
            tile = (tile * (1 - opacity * (1 - PEN_RGB / 255))).astype(np.uint8)
        # Stain drift: scale the darkness (255 - value) of each channel by a slow gain. It
        # changes by far less than a grey level across one coarse cell, so when the tile is
        # aligned with the cells every cell's block simply takes that cell's gain.
        darkness = np.subtract(255, tile, dtype=np.float32)
        ds = self.downsample
        if size % ds == 0 and x0 % ds == 0 and y0 % ds == 0:
            blocks = size // ds
            gain = self.gain[y0 // ds : y0 // ds + blocks, x0 // ds : x0 // ds + blocks]
            darkness.reshape(blocks, ds, size, 3)[...] *= np.repeat(gain, ds, axis=1)[:, None]
        else:
            darkness *= upsample(self.gain[:rows, :cols])
        np.subtract(255.5, darkness, out=darkness)
        return np.clip(darkness, 0, 255, out=darkness).astype(np.uint8)
