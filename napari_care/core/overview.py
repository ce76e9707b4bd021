"""A PNG overview of a segmentation: regions and ROI over the thumbnail, beside the heatmap,
with a legend of the phenotype groups (colour, name, share of the tissue)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from napari_care.core.atomic import atomic_path
from napari_care.core.heatmap import heatmap_raster
from napari_care.core.measurements import group_measurements
from napari_care.core.qupath.objects import group_color
from napari_care.core.regions import region_raster, roi_boxes
from napari_care.core.segment import SegmentResult
from napari_care.core.slide.handle import Slide

ROI_COLOUR = np.array([255, 215, 0], dtype=np.uint8)


def _on_thumbnail(
    raster_values: np.ndarray,
    origin_xy: tuple[float, float],
    cell_level0: float,
    shape: tuple[int, int],
    thumb_downsample: float,
    fill,
) -> np.ndarray:
    """Resample a patch-grid raster onto thumbnail pixels (nearest cell)."""
    rows = (np.arange(shape[0]) + 0.5) * thumb_downsample
    cols = (np.arange(shape[1]) + 0.5) * thumb_downsample
    r = np.floor((rows - origin_xy[1]) / cell_level0).astype(np.int64)
    c = np.floor((cols - origin_xy[0]) / cell_level0).astype(np.int64)
    inside_r = (r >= 0) & (r < raster_values.shape[0])
    inside_c = (c >= 0) & (c < raster_values.shape[1])
    out = np.full(shape, fill, dtype=raster_values.dtype)
    out[np.ix_(inside_r, inside_c)] = raster_values[np.ix_(r[inside_r], c[inside_c])]
    return out


def turbo(values: np.ndarray) -> np.ndarray:
    """A compact polynomial approximation of the turbo colormap; [..] in [0, 1] -> [.., 3] uint8."""
    x = np.clip(values, 0.0, 1.0)[..., None]
    coeffs = np.array(
        [
            [0.13572138, 0.09140261, 0.10667330],
            [4.61539260, 2.19418839, 12.64194608],
            [-42.66032258, 4.84296658, -60.58204836],
            [132.13108234, -14.18503333, 110.36276771],
            [-152.94239396, 4.27729857, -89.90310912],
            [59.28637943, 2.82956604, 27.34824973],
        ]
    )
    rgb = sum(coeffs[i] * x**i for i in range(len(coeffs)))
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def legend(result: SegmentResult, width: int, names: Mapping[int, str] | None = None) -> np.ndarray:
    """A white strip ``width`` pixels wide: per phenotype group a colour swatch, its name and its
    share of the tissue, in rows of as many entries as fit."""
    from PIL import Image, ImageDraw, ImageFont  # Pillow only when an overview is drawn

    table = group_measurements(result, names)
    entries = [
        (tuple(int(c[k : k + 2], 16) for k in (1, 3, 5)), f"{name}  {100 * share:.1f}%")
        for c, name, share in zip(table["color"], table["name"], table["tissue_share"], strict=True)
    ]
    try:
        font = ImageFont.load_default(size=16)
    except TypeError:  # Pillow before 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    entry_width, row_height, margin = 260, 26, 8
    per_row = max(1, (width - 2 * margin) // entry_width)
    rows = max(1, -(-len(entries) // per_row))
    image = Image.new("RGB", (width, rows * row_height + 2 * margin), "white")
    draw = ImageDraw.Draw(image)
    for i, (colour, text) in enumerate(entries):
        x = margin + (i % per_row) * entry_width
        y = margin + (i // per_row) * row_height
        draw.rectangle([x, y + 3, x + 18, y + 21], fill=colour, outline=(40, 40, 40))
        draw.text((x + 26, y + 3), text, fill=(20, 20, 20), font=font)
    return np.asarray(image, dtype=np.float32)


def render_overview(
    result: SegmentResult, slide: Slide, *, max_size: int = 1200, names: Mapping[int, str] | None = None
) -> np.ndarray:
    """Two panels side by side: regions (phenotype colours, outlines) with ROI boxes, and the
    heatmap; below them the groups' legend (``names``: group id -> name)."""
    from skimage.segmentation import find_boundaries  # scikit-image submodules load on first use

    thumb = slide.thumbnail(max_size).astype(np.float32)
    downsample = slide.dimensions[0][0] / thumb.shape[1]
    shape = thumb.shape[:2]
    regions = region_raster(result)
    region_px = _on_thumbnail(
        regions.values, regions.origin_level0, regions.stride_level0, shape, downsample, -1
    )
    tissue = region_px >= 0
    group_px = np.where(tissue, result.group_of_region[np.maximum(region_px, 0)], 0)
    palette = np.array([group_color(g) for g in range(int(group_px.max()) + 1)], np.float32)
    colours = palette[group_px]
    left = np.where(tissue[..., None], 0.55 * thumb + 0.45 * colours, thumb)
    left[find_boundaries(region_px, mode="inner") & tissue] = (40, 40, 40)
    heat = heatmap_raster(
        result.features.grid, result.care.patch_attention, result.grid.stride_level0, mode="rank"
    )
    heat_px = _on_thumbnail(heat.values, heat.origin_level0, heat.stride_level0, shape, downsample, np.nan)
    right = thumb.copy()
    has_heat = np.isfinite(heat_px)
    right[has_heat] = 0.4 * thumb[has_heat] + 0.6 * turbo(heat_px[has_heat])
    for box in roi_boxes(result):
        x0, y0, x1, y1 = (round(v / downsample) for v in box.box_level0)
        for panel in (left, right):
            panel[max(y0, 0) : y1, max(x0, 0) : min(x0 + 3, shape[1])] = ROI_COLOUR
            panel[max(y0, 0) : y1, max(x1 - 3, 0) : x1] = ROI_COLOUR
            panel[max(y0, 0) : min(y0 + 3, shape[0]), max(x0, 0) : x1] = ROI_COLOUR
            panel[max(y1 - 3, 0) : y1, max(x0, 0) : x1] = ROI_COLOUR
    gap = np.full((shape[0], 8, 3), 255.0, dtype=np.float32)
    panels = np.concatenate([left, gap, right], axis=1)
    key = legend(result, panels.shape[1], names)
    return np.concatenate([panels, key], axis=0).clip(0, 255).astype(np.uint8)


def write_overview(
    result: SegmentResult,
    slide: Slide,
    path: str | Path,
    *,
    max_size: int = 1200,
    names: Mapping[int, str] | None = None,
) -> Path:
    """Render :func:`render_overview` and save it as a PNG atomically."""
    import imageio.v3 as iio  # imageio only when a PNG is written

    path = Path(path)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, render_overview(result, slide, max_size=max_size, names=names), extension=".png")
    return path
