"""CARE results as napari layer data: "CARE regions" (Labels), "CARE ROI" (Shapes) and
"CARE attention" (Image), each at patch-grid resolution, placed over the slide with
``scale`` and ``translate`` (never upsampled, never one shape per tile), and the hover text
that names the region, its weight and the attention under the cursor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_care._layer_draw import OneCallPerTurn, glyph_loaders, qt_window
from napari_care._layers import ROLE_KEY, level0_to_world, placement, world_scale, world_units
from napari_care.core.heatmap import heatmap_raster
from napari_care.core.measurements import default_group_names
from napari_care.core.qupath.objects import group_color
from napari_care.core.raster import GridRaster
from napari_care.core.regions import region_raster, region_table, roi_boxes
from napari_care.core.segment import SegmentResult
from napari_care.core.slide.handle import Slide

if TYPE_CHECKING:
    from napari_care.core.mil.heads import MilOutput

REGIONS = "CARE regions"
ROI = "CARE ROI"
ATTENTION = "CARE attention"
RESULT_KEY = "napari_care_result"  # the regions layer's metadata: the SegmentResult it draws
COLOUR_BY = ("region", "group")

# every character roi_layer's labels can hold, and those vispy measures every text's line height by
ROI_LABEL_CHARACTERS = "ROI: region (a=)0123456789.e-+" + "ÅÉÑŐjgpqy"
HOVER_SEPARATOR = " | "  # between napari's status and the CARE hover text
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
    from napari.utils.colormaps import DirectLabelColormap  # napari's GUI loads with the viewer

    colours: dict[int | None, Any] = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for region, group in enumerate(group_of_region):
        colours[region + 1] = (*(channel / 255 for channel in group_color(int(group))), 1.0)
    return DirectLabelColormap(color_dict=colours)


def transparent_floor(name: str):
    """The colormap ``name`` with values at its lower contrast limit (and below) transparent."""
    from napari.utils.colormaps import Colormap, ensure_colormap  # napari's GUI loads with the viewer

    base = ensure_colormap(name)
    colours = np.vstack([[0.0, 0.0, 0.0, 0.0], base.colors])
    controls = np.concatenate([[0.0], 1e-3 + (1 - 1e-3) * np.asarray(base.controls)])
    return Colormap(colours, controls=controls, name=f"{base.name} (clear below threshold)")


def slide_grid(raster: GridRaster, slide: Slide, fill: float | int) -> GridRaster:
    """``raster`` pasted into one covering the slide's whole patch grid, from cell (0, 0).

    Every run on a slide then gives the layers the same scale and translate: a rerun (a
    pan, the visible field) replaces only the data, and napari redraws once, not per setter.
    The grid of a slide is small (one cell per patch: 74 x 55 on a 16k x 12k slide at 20x).
    """
    values, stride = raster.values, raster.stride_level0
    (height, width), row0, col0 = values.shape, raster.origin_gy, raster.origin_gx
    slide_width, slide_height = slide.dimensions[0]
    rows = max(int(np.ceil(slide_height / stride)), row0 + height)
    cols = max(int(np.ceil(slide_width / stride)), col0 + width)
    full = np.full((rows, cols), fill, dtype=values.dtype)
    full[row0 : row0 + height, col0 : col0 + width] = values
    return GridRaster(full, 0, 0, stride)


def regions_layer(
    result: SegmentResult,
    slide: Slide,
    display: DisplayOptions,
    group_names: Mapping[int, str] | None = None,
    run: str | None = None,
) -> LayerData:
    """Labels: region id + 1 per patch (0 = no tissue patch), with the region table.

    The table's ``group_name`` column holds each region's group name (QuPath's ``"CARE group
    <id>"`` unless ``group_names`` names it); the metadata holds the result itself
    (:data:`RESULT_KEY`, what the groups panel corrects), the names and the ``run`` it was
    saved as (its ``care.json``; None for a run not saved yet).
    """
    raster = slide_grid(region_raster(result), slide, fill=-1)
    names = default_group_names(np.unique(result.group_of_region)) | dict(group_names or {})
    table = region_table(result) | {
        "group_name": np.array([names[int(g)] for g in result.group_of_region], dtype=object)
    }
    features = {"index": np.arange(len(table["region"]) + 1)}
    for column, values in table.items():  # row 0 is the background label
        pad = np.array(
            [
                ""
                if values.dtype == object
                else -1
                if values.dtype.kind in "iu"
                else False
                if values.dtype == bool
                else np.nan
            ]
        )
        features[column] = np.concatenate([pad.astype(values.dtype), values])
    kwargs: dict[str, Any] = {
        "name": REGIONS,
        "features": features,
        "opacity": 0.45,
        # what `napari-care segment` writes into the GeoJSON metadata, so an export from here matches
        "metadata": {
            ROLE_KEY: "regions",
            "colour_by": display.colour_by,
            "encoder": result.options.encoder,
            "k": result.care.k,
            "mode": result.care.mode,
            RESULT_KEY: result,
            "group_names": names,
            "run": run,
        },
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
    labels = [
        f"ROI: region {b.region} (a={b.a:.3g})" if b.is_top else f"region {b.region} (a={b.a:.3g})"
        for b in boxes
    ]
    kwargs = {
        "name": ROI,
        "shape_type": "rectangle",
        "units": world_units(slide),
        "edge_color": ["#ffd700" if b.is_top else "#00e5ff" for b in boxes],
        "face_color": "transparent",
        "edge_width": EDGE_WIDTH_SHARE
        * max(slide.dimensions[0])
        * world_scale(slide)[1],  # level-0 x -> world
        "features": {
            "region": [b.region for b in boxes],
            "a": [b.a for b in boxes],
            "is_roi": [b.is_top for b in boxes],
            "label": labels,
        },
        "text": {"string": "{label}", "anchor": "upper_left", "size": 11, "color": "white"},
        "metadata": {ROLE_KEY: "roi"},
    }
    return (rectangles, kwargs, "shapes")


def attention_layer(
    result: SegmentResult, slide: Slide, display: DisplayOptions, mil: MilOutput | None = None
) -> LayerData:
    """Image: normalised per-patch attention, transparent off tissue and below the threshold.

    The attention is CARE's patch attention, or the MIL head's when ``mil`` is given (one
    weight per patch of ``result``, in the same order; NaN for a patch the head did not see,
    outside every region of a region head: drawn as off tissue).
    """
    attention = result.care.patch_attention if mil is None else np.asarray(mil.attention, dtype=np.float32)
    if len(attention) != len(result.features):
        raise ValueError(f"attention has {len(attention)} values for {len(result.features)} patches")
    seen = np.isfinite(attention)
    raster = slide_grid(
        heatmap_raster(
            result.features.grid[seen],
            attention[seen],
            result.grid.stride_level0,
            mode=display.normalisation,
            blur_patches=display.blur_patches,
        ),
        slide,
        fill=np.nan,
    )
    values = raster.values
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    floor = low + display.heatmap_threshold * (high - low)
    high = max(high, floor + 1e-6)
    off_tissue = low - 1.0  # below every patch and the contrast floor: transparent, and told apart on hover
    kwargs = {
        "name": ATTENTION,
        "colormap": transparent_floor(display.colormap),
        "contrast_limits": (floor, high),
        "opacity": display.opacity,
        "blending": "translucent",
        "interpolation2d": "nearest",
        "metadata": {
            ROLE_KEY: "attention",
            "normalisation": display.normalisation,
            "source": "CARE" if mil is None else "MIL",
            "off_tissue": off_tissue,
        },
        **placement(slide, raster.origin_level0, raster.stride_level0),
    }
    return (np.where(np.isfinite(values), values, off_tissue).astype(np.float32), kwargs, "image")


def warm_up_roi_text(viewer) -> OneCallPerTurn:
    """Render the glyphs of the ROI labels into the viewer's font atlas, one per event-loop turn.

    A first ROI layer would otherwise render them all in its first paint (about 0.2 s here).
    The returned calls are ``pending`` until the last glyph is made.
    """
    glyphs = OneCallPerTurn(parent=qt_window(viewer))
    glyphs.start(glyph_loaders(viewer, ROI_LABEL_CHARACTERS))
    return glyphs


def care_layers(
    result: SegmentResult,
    slide: Slide,
    display: DisplayOptions | None = None,
    mil: MilOutput | None = None,
    *,
    group_names: Mapping[int, str] | None = None,
    run: str | None = None,
) -> list[LayerData]:
    """The three CARE layers of a result (the heatmap from ``mil`` when a MIL head ran; the
    groups' names and the saved run as :func:`regions_layer` takes them)."""
    display = display or DisplayOptions()
    return [
        regions_layer(result, slide, display, group_names, run),
        attention_layer(result, slide, display, mil),
        roi_layer(result, slide, display),
    ]


def hover_text(layers, world_position) -> str:
    """What the CARE layers hold at a world position: region id, its weight ``a``, attention.

    Parameters
    ----------
    layers
        The viewer's layer list.
    world_position
        napari world coordinates (row, col) of the cursor.

    Returns
    -------
    str
        For example ``"CARE region 3 (a=0.12) · attention 0.81 (min-max)"``; empty off tissue
        or before any run.
    """
    parts = []
    position = np.asarray(world_position, dtype=np.float64)[-2:]
    if REGIONS in layers:
        regions = layers[REGIONS]
        label = regions.get_value(position, world=True)
        if label is not None and int(label) > 0:
            table = regions.features
            row = np.flatnonzero(np.asarray(table["index"]) == int(label))
            if row.size:
                region, a = int(table["region"].iloc[row[0]]), float(table["a"].iloc[row[0]])
                parts.append(f"CARE region {region} (a={a:.3g})")
    if ATTENTION in layers:
        heatmap = layers[ATTENTION]
        value = heatmap.get_value(position, world=True)
        # off-tissue cells hold the lowest patch value - 1 (the margin absorbs float32 rounding)
        if value is not None and float(value) > heatmap.metadata.get("off_tissue", -np.inf) + 0.5:
            source = "MIL attention" if heatmap.metadata.get("source") == "MIL" else "attention"
            parts.append(f"{source} {float(value):.3g} ({heatmap.metadata.get('normalisation', '')})")
    return " · ".join(parts)


def with_hover(status: str | dict, layers, world_position) -> str | dict | None:
    """napari's status with the CARE hover text appended, or None when there is nothing to add.

    ``status`` is what napari set (a layer's status dict, or a plain string); None comes back
    off the CARE layers and when the text is there already (setting the status calls the
    handler that calls this again).
    """
    shown = status.get("coordinates", "") if isinstance(status, dict) else str(status)
    if HOVER_SEPARATOR in shown:
        return None
    text = hover_text(layers, world_position)
    if not text:
        return None
    if isinstance(status, dict):
        return {**status, "coordinates": f"{shown}{HOVER_SEPARATOR}{text}"}
    return f"{shown}{HOVER_SEPARATOR}{text}"
