"""CARE results as napari layer data: "CARE regions" (Labels), "CARE ROI" (Shapes) and
"CARE attention" (Image), each at patch-grid resolution, placed over the slide with
``scale`` and ``translate`` (never upsampled, never one shape per tile)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_care._layers import level0_to_world, placement, world_units
from napari_care.core.heatmap import heatmap_raster
from napari_care.core.regions import region_raster, region_table, roi_boxes
from napari_care.core.segment import SegmentResult
from napari_care.core.slide import Slide

REGIONS = "CARE regions"
ROI = "CARE ROI"
ATTENTION = "CARE attention"
COLOUR_BY = ("region", "group")
GROUP_PALETTE = np.array([  # distinct, colour-blind friendly (Okabe-Ito, then Tol)
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
    (204, 121, 167), (136, 34, 85), (68, 170, 153), (153, 153, 51), (51, 34, 136), (221, 204, 119),
]) / 255.0  # fmt: skip

EDGE_WIDTH_SHARE = 0.002  # ROI outline width as a share of the slide's longer side

LayerData = tuple[Any, dict, str]


@dataclass(frozen=True)
class DisplayOptions:
    """How the CARE layers look.

    Parameters
    ----------
    colour_by
        ``"region"`` (one colour per region) or ``"group"`` (one per phenotype group).
    roi_threshold
        Regions with ``a >= roi_threshold * max(a)`` are drawn as ROIs (1.0: the ROI only).
    heatmap_threshold
        Normalised attention below this is transparent.
    normalisation
        ``"raw"``, ``"min-max"`` or ``"rank"``.
    colormap
        A napari colormap name for the heatmap.
    opacity
        Heatmap opacity.
    blur_patches
        Gaussian blur of the heatmap, in patches (0: none).
    """

    colour_by: str = "region"
    roi_threshold: float = 1.0
    heatmap_threshold: float = 0.0
    normalisation: str = "min-max"
    colormap: str = "turbo"
    opacity: float = 0.6
    blur_patches: float = 0.0


def group_colormap(group_of_region: np.ndarray):
    """A label colormap giving each region (label = id + 1) its phenotype group's colour."""
    from napari.utils.colormaps import DirectLabelColormap

    colours: dict[int | None, Any] = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for region, group in enumerate(group_of_region):
        colours[region + 1] = (*GROUP_PALETTE[int(group) % len(GROUP_PALETTE)], 1.0)
    return DirectLabelColormap(color_dict=colours)


def transparent_floor(name: str):
    """The colormap ``name`` with values at its lower contrast limit (and below) transparent."""
    from napari.utils.colormaps import Colormap, ensure_colormap

    base = ensure_colormap(name)
    colours = np.vstack([[0.0, 0.0, 0.0, 0.0], base.colors])
    controls = np.concatenate([[0.0], 1e-3 + (1 - 1e-3) * np.asarray(base.controls)])
    return Colormap(colours, controls=controls, name=f"{base.name} (clear below threshold)")


def regions_layer(result: SegmentResult, slide: Slide, display: DisplayOptions) -> LayerData:
    """Labels: region id + 1 per patch (0 = no tissue patch), with the region table."""
    raster = region_raster(result)
    table = region_table(result)
    features = {"index": np.arange(len(table["region"]) + 1)}
    for column, values in table.items():  # row 0 is the background label
        pad = np.array([-1 if values.dtype.kind in "iu" else (False if values.dtype == bool else np.nan)])
        features[column] = np.concatenate([pad.astype(values.dtype), values])
    kwargs: dict[str, Any] = {
        "name": REGIONS,
        "features": features,
        "opacity": 0.45,
        "metadata": {"napari_care_role": "regions"},
        **placement(slide, raster.origin_level0, raster.stride_level0),
    }
    if display.colour_by == "group":
        kwargs["colormap"] = group_colormap(result.group_of_region)
    return (raster.values + 1, kwargs, "labels")


def roi_layer(result: SegmentResult, slide: Slide, display: DisplayOptions) -> LayerData:
    """Shapes: rectangles around the ROI and the regions above the ROI threshold."""
    boxes = roi_boxes(result, display.roi_threshold)
    rectangles = []
    for box in boxes:
        x0, y0, x1, y1 = box.box_level0
        corners = level0_to_world(slide, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
        rectangles.append(corners)
    labels = [f"ROI: region {b.region} (a={b.a:.3g})" if b.is_top else f"region {b.region} (a={b.a:.3g})"
              for b in boxes]
    kwargs = {
        "name": ROI,
        "shape_type": "rectangle",
        "units": world_units(slide),
        "edge_color": ["#ffd700" if b.is_top else "#00e5ff" for b in boxes],
        "face_color": "transparent",
        "edge_width": EDGE_WIDTH_SHARE * max(slide.dimensions[0]) * (slide.mpp[0] if slide.mpp else 1.0),
        "features": {"region": [b.region for b in boxes], "a": [b.a for b in boxes],
                     "is_roi": [b.is_top for b in boxes], "label": labels},
        "text": {"string": "{label}", "anchor": "upper_left", "size": 11, "color": "white"},
        "metadata": {"napari_care_role": "roi"},
    }
    return (rectangles, kwargs, "shapes")


def attention_layer(result: SegmentResult, slide: Slide, display: DisplayOptions) -> LayerData:
    """Image: normalised per-patch attention, transparent off tissue and below the threshold."""
    raster = heatmap_raster(result.features.grid, result.care.patch_attention, result.grid.stride_level0,
                            mode=display.normalisation, blur_patches=display.blur_patches)
    values = raster.values
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    floor = low + display.heatmap_threshold * (high - low)
    high = max(high, floor + 1e-6)
    kwargs = {
        "name": ATTENTION,
        "colormap": transparent_floor(display.colormap),
        "contrast_limits": (floor, high),
        "opacity": display.opacity,
        "blending": "translucent",
        "interpolation2d": "nearest",
        "metadata": {"napari_care_role": "attention", "normalisation": display.normalisation},
        **placement(slide, raster.origin_level0, raster.stride_level0),
    }
    return (np.where(np.isfinite(values), values, floor - 1.0).astype(np.float32), kwargs, "image")


def care_layers(result: SegmentResult, slide: Slide, display: DisplayOptions | None = None) -> list[LayerData]:
    """The three CARE layers of a result."""
    display = display or DisplayOptions()
    return [regions_layer(result, slide, display), attention_layer(result, slide, display),
            roi_layer(result, slide, display)]
