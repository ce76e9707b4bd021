"""Synthetic H&E whole-slide images with ground truth: the offline sample and test slides.

:func:`build_synthetic_slide` writes a pyramidal, tiled, JPEG-compressed OME-TIFF that looks
like an H&E section (tumour, stroma, fat, necrosis, epidermis, lymphocytes on glass) and,
beside it, the ground truth: a coarse map of tissue type ids (``<stem>.truth.npz``).
The same arguments always give the same pixels.

Tissue type ids are fixed; other parts of the project use them as ground truth:
0 glass, 1 tumour, 2 stroma, 3 fat, 4 necrosis, 5 epidermis, 6 lymphocytes.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_care.core.atomic import atomic_open
from napari_care.core.progress import Progress, run_to_end
from napari_care.core.synthetic.layouts import LAYOUTS, LayoutCanvas
from napari_care.core.synthetic.render import SlidePainter
from napari_care.core.synthetic.textures import (
    DEFAULT_PALETTE,
    RENDER_CLASS_NAMES,
    TYPE_OF_RENDER_CLASS,
    StainPalette,
    make_swatch,
)
from napari_care.core.synthetic.writer import write_pyramid

GENERATOR_VERSION = "1"  # bump whenever the pixels or the truth of a given spec change
TISSUE_TYPES = ("glass", "tumour", "stroma", "fat", "necrosis", "epidermis", "lymphocytes")
# Display colours of the legend (RGB), one per tissue type id.
TISSUE_COLOURS = (
    (255, 255, 255),
    (200, 30, 40),
    (240, 140, 180),
    (250, 220, 100),
    (120, 120, 120),
    (150, 80, 40),
    (50, 60, 200),
)
LAYOUT_NAMES = tuple(LAYOUTS)


def truth_path_for(slide_path: str | os.PathLike[str]) -> Path:
    """The ground-truth file that sits next to a synthetic slide (``<stem>.truth.npz``)."""
    slide_path = Path(slide_path)
    name = slide_path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return slide_path.with_name(name + ".truth.npz")


def truth_fractions(
    labels: np.ndarray, downsample: float, coords_level0_xy: np.ndarray, size_level0: float
) -> np.ndarray:
    """Share of each tissue type inside square patches, from a coarse label map.

    Parameters
    ----------
    labels
        ``[rows, cols]`` uint8 tissue type ids, one per ``downsample`` level-0 pixels.
    downsample
        Level-0 pixels per label cell.
    coords_level0_xy
        ``[N, 2]`` level-0 (x, y) of each patch's top-left corner.
    size_level0
        Patch side in level-0 pixels.

    Returns
    -------
    ``[N, 7]`` float32 fractions per tissue type id; a patch entirely off the map counts
    as glass.
    """
    coords = np.asarray(coords_level0_xy, dtype=np.float64).reshape(-1, 2)
    rows, cols = labels.shape
    counts = np.zeros((len(coords), len(TISSUE_TYPES)), np.float64)
    # Cell edges covered by each patch, rounded to the nearest cell boundary (at least one cell).
    x0 = np.clip(np.round(coords[:, 0] / downsample), 0, cols).astype(np.int64)
    y0 = np.clip(np.round(coords[:, 1] / downsample), 0, rows).astype(np.int64)
    span = max(1, round(size_level0 / downsample))
    x1 = np.clip(np.round(coords[:, 0] / downsample) + span, 0, cols).astype(np.int64)
    y1 = np.clip(np.round(coords[:, 1] / downsample) + span, 0, rows).astype(np.int64)
    for type_id in range(len(TISSUE_TYPES)):
        integral = np.zeros((rows + 1, cols + 1), np.int64)
        integral[1:, 1:] = np.cumsum(np.cumsum(labels == type_id, axis=0), axis=1)
        counts[:, type_id] = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    total = counts.sum(axis=1, keepdims=True)
    counts[total[:, 0] == 0, 0] = 1.0
    return (counts / np.maximum(total, 1)).astype(np.float32)


@dataclass(frozen=True)
class SyntheticSlide:
    """A synthetic slide on disk and its ground truth.

    Attributes
    ----------
    path, truth_path
        The OME-TIFF and its ``.truth.npz``.
    labels
        ``[rows, cols]`` uint8 tissue type ids (see :data:`TISSUE_TYPES`), one per
        ``downsample`` x ``downsample`` level-0 pixels.
    downsample
        Level-0 pixels per label cell (16: 8 um per cell at 0.5 mpp).
    mpp
        Micrometres per level-0 pixel.
    type_names
        Tissue type name per id.
    width, height
        Level-0 size in pixels.
    layout, seed
        What it was built from.
    """

    path: Path
    truth_path: Path
    labels: np.ndarray = field(repr=False)
    downsample: int
    mpp: float
    type_names: tuple[str, ...] = TISSUE_TYPES
    width: int = 0
    height: int = 0
    layout: str = "default"
    seed: int = 0

    def truth_fractions(self, coords_level0_xy: np.ndarray, size_level0: float) -> np.ndarray:
        """``[N, 7]`` share of each tissue type in square patches (see :func:`truth_fractions`)."""
        return truth_fractions(self.labels, self.downsample, coords_level0_xy, size_level0)

    def truth_at(self, coords_level0_xy: np.ndarray, size_level0: float) -> np.ndarray:
        """``[N]`` int64 majority tissue type id of square patches with level-0 (x, y) corners."""
        return self.truth_fractions(coords_level0_xy, size_level0).argmax(axis=1).astype(np.int64)


def load_synthetic_slide(path: str | os.PathLike[str]) -> SyntheticSlide:
    """Read a synthetic slide's ground truth, given the slide or its ``.truth.npz``."""
    path = Path(path)
    truth_path = path if path.name.endswith(".truth.npz") else truth_path_for(path)
    if not truth_path.is_file():
        raise FileNotFoundError(f"{truth_path}: no ground truth next to the synthetic slide {path.name}")
    with np.load(truth_path, allow_pickle=False) as npz:
        return SyntheticSlide(
            path=truth_path.with_name(str(npz["slide_name"])),
            truth_path=truth_path,
            labels=npz["labels"],
            downsample=int(npz["downsample"]),
            mpp=float(npz["mpp"]),
            type_names=tuple(str(name) for name in npz["type_names"]),
            width=int(npz["width"]),
            height=int(npz["height"]),
            layout=str(npz["layout"]),
            seed=int(npz["seed"]),
        )


# The name napari_care._sample_data imports: the truth of a slide is its SyntheticSlide.
load_truth = load_synthetic_slide


def pen_mark_field(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Opacity of a marker loop drawn around the tissue, on glass only, on the coarse grid."""
    rows, cols = labels.shape
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    tissue_y, tissue_x = np.nonzero(labels)
    cy, cx = tissue_y.mean(), tissue_x.mean()
    ry, rx = 0.5 * np.ptp(tissue_y) + 0.05 * rows, 0.5 * np.ptp(tissue_x) + 0.05 * cols
    angle = np.arctan2((y - cy) / ry, (x - cx) / rx)
    radius = np.hypot((y - cy) / ry, (x - cx) / rx) * (1 + 0.04 * np.sin(3 * angle + rng.uniform(0, 6)))
    width = 0.012 * (1 + 0.3 * np.sin(5 * angle))
    opacity = np.clip(1 - np.abs(radius - 1) / width, 0, 1) * (angle > rng.uniform(-3, -1))
    return (0.8 * opacity * (labels == 0)).astype(np.float32)


def _check_arguments(
    width: int,
    height: int,
    mpp: float,
    layout: str,
    tile_size: int,
    truth_downsample: int,
    swatch_px: int,
    jpeg_quality: int,
) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is unknown; choose one of {', '.join(LAYOUTS)}")
    if width < 256 or height < 256:
        raise ValueError(f"width and height must be at least 256 px; got {width} x {height}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive (micrometres per pixel); got {mpp}")
    if tile_size % 16 or tile_size < 64:
        raise ValueError(f"tile_size must be a multiple of 16 and at least 64; got {tile_size}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be within 1..100; got {jpeg_quality}")
    if truth_downsample < 1 or swatch_px < 256:
        raise ValueError(
            f"truth_downsample must be >= 1 and swatch_px >= 256; got {truth_downsample}, {swatch_px}"
        )


def iter_build_synthetic_slide(
    path: str | os.PathLike[str],
    *,
    width: int = 16384,
    height: int = 12288,
    mpp: float = 0.5,
    seed: int = 0,
    layout: str = "default",
    tile_size: int = 512,
    truth_downsample: int = 16,
    swatch_px: int = 1024,
    jpeg_quality: int = 85,
    pen_marks: bool = False,
    palette: StainPalette = DEFAULT_PALETTE,
    workers: int | None = None,
) -> Generator[Progress, None, SyntheticSlide]:
    """Build a synthetic slide, yielding progress; returns the :class:`SyntheticSlide`.

    Same arguments as :func:`build_synthetic_slide`.
    """
    _check_arguments(width, height, mpp, layout, tile_size, truth_downsample, swatch_px, jpeg_quality)
    path = Path(path)
    workers = workers or min(4, os.cpu_count() or 1)
    n_classes = len(RENDER_CLASS_NAMES)
    with ThreadPoolExecutor(workers) as pool:
        jobs = [pool.submit(make_swatch, k, seed, swatch_px, mpp, palette) for k in range(n_classes)]
        rows, cols = math.ceil(height / truth_downsample), math.ceil(width / truth_downsample)
        canvas = LayoutCanvas(rows, cols, truth_downsample * mpp, np.random.default_rng([seed, 1]))
        render_labels = LAYOUTS[layout](canvas)
        swatches = []
        for k, job in enumerate(jobs):
            swatches.append(job.result())
            yield Progress("textures", k + 1, n_classes, f"painted {RENDER_CLASS_NAMES[k]}")
    pen = pen_mark_field(render_labels, np.random.default_rng([seed, 2])) if pen_marks else None
    painter = SlidePainter.create(
        render_labels, swatches, truth_downsample, mpp, seed, palette.variation, tile_size, pen
    )
    labels = TYPE_OF_RENDER_CLASS[painter.render_labels]

    slide = SyntheticSlide(
        path=path,
        truth_path=truth_path_for(path),
        labels=labels,
        downsample=truth_downsample,
        mpp=mpp,
        width=width,
        height=height,
        layout=layout,
        seed=seed,
    )
    # Truth first: whoever sees the slide file can rely on its truth being there.
    with atomic_open(slide.truth_path, "wb") as handle:
        np.savez_compressed(
            handle,
            labels=labels,
            downsample=truth_downsample,
            mpp=mpp,
            width=width,
            height=height,
            type_names=np.array(TISSUE_TYPES),
            type_colours=np.array(TISSUE_COLOURS, np.uint8),
            layout=layout,
            seed=seed,
            slide_name=path.name,
            generator_version=GENERATOR_VERSION,
        )
    recipe = (
        GENERATOR_VERSION,
        width,
        height,
        mpp,
        seed,
        layout,
        tile_size,
        truth_downsample,
        swatch_px,
        jpeg_quality,
        pen_marks,
        palette,
    )
    try:
        yield from write_pyramid(
            path,
            painter.render,
            width=width,
            height=height,
            mpp=mpp,
            tile_size=tile_size,
            jpeg_quality=jpeg_quality,
            workers=workers,
            uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"napari_care-synthetic:{recipe}")),
        )
    except BaseException:
        slide.truth_path.unlink(missing_ok=True)  # no truth without its slide
        raise
    return slide


def build_synthetic_slide(
    path: str | os.PathLike[str],
    *,
    width: int = 16384,
    height: int = 12288,
    mpp: float = 0.5,
    seed: int = 0,
    layout: str = "default",
    tile_size: int = 512,
    truth_downsample: int = 16,
    swatch_px: int = 1024,
    jpeg_quality: int = 85,
    pen_marks: bool = False,
    palette: StainPalette = DEFAULT_PALETTE,
    workers: int | None = None,
) -> SyntheticSlide:
    """Write a synthetic H&E slide (pyramidal OME-TIFF) and its ground truth.

    Parameters
    ----------
    path
        The slide file to write (``.ome.tif`` recommended); replaced atomically.
    width, height
        Level-0 size in pixels (at least 256).
    mpp
        Micrometres per level-0 pixel; tissue features keep their real size in micrometres.
    seed
        Same seed, same slide, pixel for pixel.
    layout
        ``"default"`` (a skin excision with a tumour: all seven types, a main piece and a
        fragment), ``"islands"`` (separate fragments) or ``"bands"`` (wavy layers).
    tile_size
        TIFF tile side in pixels (a multiple of 16).
    truth_downsample
        Level-0 pixels per cell of the ground-truth map.
    swatch_px
        Side of the texture swatches in level-0 pixels.
    jpeg_quality
        JPEG quality, 1..100.
    pen_marks
        Draw a green marker loop on the glass around the tissue (the truth stays glass).
    palette
        Stain colours and the strength of stain variation.
    workers
        Threads for painting and compression (default: up to 4, one per core).

    Returns
    -------
    The slide's :class:`SyntheticSlide` (paths, label map, downsample, mpp, type names).
    """
    return run_to_end(
        iter_build_synthetic_slide(
            path,
            width=width,
            height=height,
            mpp=mpp,
            seed=seed,
            layout=layout,
            tile_size=tile_size,
            truth_downsample=truth_downsample,
            swatch_px=swatch_px,
            jpeg_quality=jpeg_quality,
            pen_marks=pen_marks,
            palette=palette,
            workers=workers,
        )
    )
