"""Synthetic slides with a chosen number of planted tissue types (3 to 8), for choosing the
number of phenotype groups.

The generator's other layouts (:mod:`~napari_care.core.synthetic.layouts`) always plant the
same six tissue types. Here one piece of tissue is cut into a mosaic of lobed patches
(a Voronoi partition of domain-warped coordinates), each painted with one of ``n_types``
textures drawn at random from :data:`PLANTED_TEXTURES`, every drawn texture on
:data:`PATCHES_PER_TYPE` patches. The catalogue holds the generator's tissue textures that
the saturation tissue mask keeps (fat and keratin are too pale: their tiles fall under the
default ``min_tissue``) and stain variants of three of them (a tissue stained paler or
darker, as a neighbouring block of another lab would be), so that up to 9 types can be
planted.

The truth map holds the type's slot 1..n (0 glass) and is written in the format
:func:`~napari_care.core.synthetic.slides.load_synthetic_slide` reads, with ``type_names``
the planted textures' names in slot order (glass first).
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_care.core.atomic import atomic_open
from napari_care.core.progress import run_to_end
from napari_care.core.synthetic.layouts import LayoutCanvas
from napari_care.core.synthetic.render import SlidePainter
from napari_care.core.synthetic.slides import GENERATOR_VERSION, truth_path_for
from napari_care.core.synthetic.textures import (
    DEFAULT_PALETTE,
    RENDER_CLASS_NAMES,
    StainPalette,
    make_swatch,
)
from napari_care.core.synthetic.writer import write_pyramid


@dataclass(frozen=True)
class PlantedTexture:
    """A texture a planted type is painted with: a render class under scaled stains."""

    name: str
    render_class: int
    hematoxylin_scale: float = 1.0
    eosin_scale: float = 1.0

    def palette(self) -> StainPalette:
        """The default palette with this texture's stain strengths."""
        base = DEFAULT_PALETTE
        return StainPalette(
            hematoxylin_od=tuple(value * self.hematoxylin_scale for value in base.hematoxylin_od),
            eosin_od=tuple(value * self.eosin_scale for value in base.eosin_od),
            glass_rgb=base.glass_rgb,
            variation=base.variation,
        )


_CLASS = {name: index for index, name in enumerate(RENDER_CLASS_NAMES)}
#: What a planted type can look like (the render classes by their name in ``RENDER_CLASS_NAMES``).
PLANTED_TEXTURES = (
    PlantedTexture("tumour", _CLASS["tumour"]),
    PlantedTexture("stroma", _CLASS["stroma"]),
    PlantedTexture("necrosis", _CLASS["necrosis"]),
    PlantedTexture("epidermis", _CLASS["epidermis"]),
    PlantedTexture("lymphocytes", _CLASS["lymphocytes"]),
    PlantedTexture("basal layer", _CLASS["basal"]),
    PlantedTexture("tumour, eosin-rich", _CLASS["tumour"], hematoxylin_scale=0.6, eosin_scale=1.8),
    PlantedTexture("stroma, hematoxylin-rich", _CLASS["stroma"], hematoxylin_scale=2.0, eosin_scale=0.8),
    PlantedTexture("necrosis, dark", _CLASS["necrosis"], hematoxylin_scale=1.6, eosin_scale=1.6),
)
#: The most types a slide can hold: one painter slot per type, slot 0 is glass.
MAX_PLANTED_TYPES = len(RENDER_CLASS_NAMES) - 1
PLANTED_LAYOUT = "planted"
#: Mosaic patches per planted type.
PATCHES_PER_TYPE = 2


@dataclass(frozen=True)
class PlantedSlide:
    """A slide with planted tissue types, on disk, and its truth.

    Attributes
    ----------
    path, truth_path
        The OME-TIFF and its ``.truth.npz``.
    labels
        ``[rows, cols]`` uint8 render class id per cell of ``downsample`` level-0 pixels.
    downsample
        Level-0 pixels per truth cell.
    planted_types
        The planted textures, in slot order (slot ``i + 1`` of ``labels`` is ``planted_types[i]``).
    seed
        What it was built from.
    """

    path: Path
    truth_path: Path
    labels: np.ndarray
    downsample: int
    planted_types: tuple[PlantedTexture, ...]
    seed: int

    @property
    def n_types(self) -> int:
        """Number of planted types."""
        return len(self.planted_types)

    def truth_at(self, coords_level0_xy: np.ndarray, size_level0: float) -> np.ndarray:
        """``[N]`` int64 majority slot (0 glass, ``i + 1`` type ``i``) of square patches; see
        :func:`majority_class`."""
        return majority_class(self.labels, self.downsample, coords_level0_xy, size_level0)


def majority_class(
    labels: np.ndarray, downsample: float, coords_level0_xy: np.ndarray, size_level0: float
) -> np.ndarray:
    """``[N]`` int64 majority label of the truth cells under square patches (level-0 (x, y)
    top-left corners, side ``size_level0``); a patch off the map is 0 (glass)."""
    coords = np.asarray(coords_level0_xy, np.float64).reshape(-1, 2)
    rows, cols = labels.shape
    n_labels = int(labels.max()) + 1
    span = max(1, round(size_level0 / downsample))
    x0 = np.clip(np.round(coords[:, 0] / downsample), 0, cols).astype(np.int64)
    y0 = np.clip(np.round(coords[:, 1] / downsample), 0, rows).astype(np.int64)
    x1, y1 = np.minimum(x0 + span, cols), np.minimum(y0 + span, rows)
    counts = np.zeros((len(coords), n_labels), np.int64)
    for label in range(n_labels):
        integral = np.zeros((rows + 1, cols + 1), np.int64)
        integral[1:, 1:] = np.cumsum(np.cumsum(labels == label, axis=0), axis=1)
        counts[:, label] = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return counts.argmax(axis=1).astype(np.int64)


def planted_layout(canvas: LayoutCanvas, n_types: int) -> np.ndarray:
    """``[rows, cols]`` uint8 slots 0..n_types (0 glass): one lobed piece of tissue cut into a
    mosaic of :data:`PATCHES_PER_TYPE` patches per type (the types shuffled over the patches)."""
    c, rng = canvas, canvas.rng
    labels = np.zeros((c.rows, c.cols), np.uint8)
    lobes = c.warped(0.04, 0.15)
    # A rounded rectangle (a superellipse of degree 4), so that the mosaic's corner patches
    # lie on tissue as much as the others.
    superellipse = ((lobes[0] - 0.5 * c.aspect) / (0.46 * c.aspect)) ** 4 + ((lobes[1] - 0.5) / 0.45) ** 4
    tissue = ndimage.binary_fill_holes(superellipse < 1)
    n_patches = PATCHES_PER_TYPE * n_types
    # Mosaic seeds on a jittered grid over the tissue's box, so the patches have similar sizes.
    grid_cols = max(1, round(math.sqrt(n_patches * c.aspect)))
    grid_rows = math.ceil(n_patches / grid_cols)
    cells = rng.permutation(grid_rows * grid_cols)[:n_patches]
    seed_x = (cells % grid_cols + 0.5 + rng.uniform(-0.3, 0.3, n_patches)) / grid_cols * 0.9 * c.aspect
    seed_y = (cells // grid_cols + 0.5 + rng.uniform(-0.3, 0.3, n_patches)) / grid_rows * 0.9
    seed_x, seed_y = seed_x + 0.05 * c.aspect, seed_y + 0.05
    x, y = c.warped(0.05, 0.12)
    distance = (x[None] - seed_x[:, None, None]) ** 2 + (y[None] - seed_y[:, None, None]) ** 2
    patch_of_cell = distance.argmin(axis=0)
    type_of_patch = rng.permutation(np.repeat(np.arange(1, n_types + 1, dtype=np.uint8), PATCHES_PER_TYPE))
    labels[tissue] = type_of_patch[patch_of_cell[tissue]]
    return labels


def build_planted_slide(
    path: str | os.PathLike[str],
    n_types: int,
    *,
    seed: int = 0,
    width: int = 4096,
    height: int = 3072,
    mpp: float = 0.5,
    tile_size: int = 512,
    truth_downsample: int = 16,
    swatch_px: int = 1024,
    jpeg_quality: int = 85,
    workers: int | None = None,
) -> PlantedSlide:
    """Write a slide with ``n_types`` planted tissue types (pyramidal OME-TIFF) and its truth.

    Parameters
    ----------
    path
        The slide file (``.ome.tif``); written atomically, the truth first.
    n_types
        Number of planted types, 1 to :data:`MAX_PLANTED_TYPES` (textures drawn from
        :data:`PLANTED_TEXTURES` by ``seed``).
    seed
        Same seed and arguments, same slide pixel for pixel.
    width, height, mpp
        Level-0 size in pixels and micrometres per pixel.
    tile_size, truth_downsample, swatch_px, jpeg_quality, workers
        As for :func:`~napari_care.core.synthetic.slides.build_synthetic_slide`.

    Returns
    -------
    PlantedSlide
    """
    if not 1 <= n_types <= MAX_PLANTED_TYPES:
        raise ValueError(f"n_types must be within 1..{MAX_PLANTED_TYPES}; got {n_types}")
    path = Path(path)
    workers = workers or min(4, os.cpu_count() or 1)
    rng = np.random.default_rng([seed, n_types, 11])
    planted = tuple(
        PLANTED_TEXTURES[int(i)] for i in rng.choice(len(PLANTED_TEXTURES), n_types, replace=False)
    )
    rows, cols = math.ceil(height / truth_downsample), math.ceil(width / truth_downsample)
    canvas = LayoutCanvas(rows, cols, truth_downsample * mpp, np.random.default_rng([seed, n_types, 1]))
    layout = planted_layout(canvas, n_types)
    # Slot i + 1 of the painter holds type i's swatch; unused slots repeat glass (never painted).
    glass = make_swatch(0, seed, swatch_px, mpp, DEFAULT_PALETTE)
    swatches = [glass] + [
        make_swatch(texture.render_class, seed, swatch_px, mpp, texture.palette()) for texture in planted
    ]
    swatches += [glass] * (len(RENDER_CLASS_NAMES) - len(swatches))
    painter = SlidePainter.create(
        layout, swatches, truth_downsample, mpp, seed, DEFAULT_PALETTE.variation, tile_size
    )
    slide = PlantedSlide(
        path=path,
        truth_path=truth_path_for(path),
        labels=painter.render_labels,
        downsample=truth_downsample,
        planted_types=planted,
        seed=seed,
    )
    with atomic_open(slide.truth_path, "wb") as handle:
        np.savez_compressed(
            handle,
            labels=slide.labels,
            downsample=truth_downsample,
            mpp=mpp,
            width=width,
            height=height,
            type_names=np.array(["glass", *(texture.name for texture in planted)]),
            layout=PLANTED_LAYOUT,
            seed=seed,
            slide_name=path.name,
            generator_version=GENERATOR_VERSION,
        )
    recipe = (GENERATOR_VERSION, PLANTED_LAYOUT, planted, width, height, mpp, seed, tile_size, swatch_px)
    try:
        run_to_end(
            write_pyramid(
                path,
                painter.render,
                width=width,
                height=height,
                mpp=mpp,
                tile_size=tile_size,
                jpeg_quality=jpeg_quality,
                workers=workers,
                uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"napari_care-planted:{recipe}")),
            )
        )
    except BaseException:
        slide.truth_path.unlink(missing_ok=True)  # no truth without its slide
        raise
    return slide
