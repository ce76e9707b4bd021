"""The napari boundary for layer data: where level-0 (x, y) pixels become napari's (row, col)
world coordinates in micrometres (or pixels when a slide has no mpp) and back, and where layers
go into a viewer (in place; :mod:`napari_care._layer_draw` spreads them over event-loop turns).

The conversion itself is :class:`~napari_care.core.level0_frame.Level0Frame`; this module
applies it to slides, to layers' ``scale``/``translate`` and to the viewer's slide layer, and
every other boundary module calls it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from napari_care.core.level0_frame import SLIDE_INFO_KEY, Level0Frame
from napari_care.core.slide.handle import Slide

MICROMETRE = "micrometer"
FRAME_KEY = "napari_care_frame"  # layer metadata: the Level0Frame (to_dict) of layers placed over a slide
ROLE_KEY = "napari_care_role"  # layer metadata: what a layer of this plugin holds ("regions", "roi", ...)


def slide_frame(slide: Slide) -> Level0Frame:
    """Where ``slide``'s level-0 pixels sit in the world (its mpp; no bounds offset)."""
    return Level0Frame.from_mpp(slide.mpp)


def world_scale(slide: Slide) -> tuple[float, float]:
    """(row, col) world units per level-0 pixel: (mpp_y, mpp_x), or (1, 1) without mpp."""
    return slide_frame(slide).scale


def world_units(slide: Slide) -> tuple[str, str]:
    """Units of the world axes: micrometres when the slide is calibrated, else pixels."""
    unit = MICROMETRE if slide.mpp is not None else "pixel"
    return (unit, unit)


def slide_layer_data(slide: Slide, *, name: str) -> tuple[Any, dict, str]:
    """A multiscale RGB image layer tuple for ``slide``."""
    kwargs = {
        "name": name,
        "rgb": True,
        "multiscale": True,
        "contrast_limits": (0, 255),
        "scale": world_scale(slide),
        "units": world_units(slide),
        "metadata": {SLIDE_INFO_KEY: slide.metadata(), "slide": slide},
    }
    return (slide.tiled_levels, kwargs, "image")


def slide_layers(viewer) -> list:
    """The viewer's layers that hold a slide opened by this plugin (see :func:`slide_layer_data`)."""
    return [layer for layer in viewer.layers if "slide" in getattr(layer, "metadata", {})]


def viewer_frame(viewer=None, *, use_bounds: bool = True) -> Level0Frame:
    """The frame of the selected slide layer (else the first one) of ``viewer`` or the current viewer.

    ``Level0Frame()`` (pixels, no offset) when there is no viewer or no slide.
    """
    if viewer is None:
        try:
            import napari  # napari's GUI loads with the viewer

            viewer = napari.current_viewer()
        except ImportError:
            viewer = None
    if viewer is None:
        return Level0Frame()

    slides = slide_layers(viewer)
    active = viewer.layers.selection.active
    layer = active if active in slides else (slides[0] if slides else None)
    return Level0Frame.from_slide_metadata(layer.metadata, use_bounds=use_bounds) if layer else Level0Frame()


def layer_frame(attributes: dict) -> Level0Frame:
    """The frame stored in a layer's metadata (:data:`FRAME_KEY`), else that of the current viewer's slide."""
    stored = (attributes.get("metadata") or {}).get(FRAME_KEY)
    return Level0Frame.from_dict(stored) if stored else viewer_frame()


def placement(slide: Slide, origin_level0: tuple[float, float], pixel_level0: float) -> dict[str, tuple]:
    """``scale``, ``translate`` and ``units`` that put a raster over the slide image.

    The raster's pixel (0, 0) covers level-0 [x0, x0 + p) x [y0, y0 + p) with
    (x0, y0) = ``origin_level0`` and p = ``pixel_level0`` (see :meth:`Level0Frame.raster_placement`).
    """
    return {"units": world_units(slide), **slide_frame(slide).raster_placement(origin_level0, pixel_level0)}


def level0_to_world(slide: Slide, xy_level0: np.ndarray) -> np.ndarray:
    """[N, 2] level-0 (x, y) pixel-edge coordinates -> [N, 2] napari world (row, col)."""
    return slide_frame(slide).level0_to_world(xy_level0)


def world_to_level0(slide: Slide, rowcol_world: np.ndarray) -> np.ndarray:
    """[N, 2] napari world (row, col) -> [N, 2] level-0 (x, y) pixel-edge coordinates."""
    return slide_frame(slide).world_to_level0(rowcol_world)


def layer_placement(attributes: dict) -> tuple[np.ndarray, np.ndarray]:
    """A layer's ``scale`` and ``translate`` from its attributes (napari's defaults when absent)."""
    scale = np.asarray(attributes.get("scale", (1.0, 1.0)), dtype=np.float64)
    translate = np.asarray(attributes.get("translate", np.zeros(len(scale))), dtype=np.float64)
    return scale, translate


def layer_data_to_level0(rowcol: np.ndarray, attributes: dict, frame: Level0Frame) -> np.ndarray:
    """``[N, D]`` data coordinates of a layer (its last two axes: row, col) -> ``[N, 2]`` level-0 (x, y)."""
    return frame.data_to_level0(rowcol, *layer_placement(attributes))


def layer_shapes_to_level0(shapes: list, attributes: dict, frame: Level0Frame) -> list[np.ndarray]:
    """Every shape's vertices (a Shapes layer's data) in level-0 (x, y), transformed in one pass."""
    if not len(shapes):
        return []
    arrays = [np.asarray(vertices, dtype=np.float64) for vertices in shapes]
    xy = layer_data_to_level0(np.concatenate(arrays), attributes, frame)
    return np.split(xy, np.cumsum([len(a) for a in arrays])[:-1])


def layer_raster_origin(
    attributes: dict, frame: Level0Frame
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Level-0 (x, y) of a raster layer's pixel (0, 0) corner and its pixel size (x, y)."""
    return frame.raster_origin(*layer_placement(attributes))


def visible_box_level0(layer) -> tuple[float, float, float, float]:
    """The level-0 (x0, y0, x1, y1) box of what the canvas shows of a slide layer.

    napari keeps ``corner_pixels`` (the visible extent) in pixels of the displayed level
    ``data_level``; scaling by that level's downsample gives level-0 pixels.
    """
    slide: Slide = layer.metadata["slide"]
    level = layer.data_level if layer.multiscale else 0
    downsample = slide.level_downsamples[level]
    (row0, col0), (row1, col1) = np.asarray(layer.corner_pixels)[:, -2:]
    width0, height0 = slide.dimensions[0]
    return (
        float(max(col0 * downsample, 0.0)),
        float(max(row0 * downsample, 0.0)),
        float(min((col1 + 1) * downsample, width0)),
        float(min((row1 + 1) * downsample, height0)),
    )


def unproxied(viewer):
    """The viewer itself when napari hands a plugin a ``PublicOnlyProxy`` of it.

    The proxy warns on (and will one day refuse) private attributes; the few this plugin
    reaches for on purpose (:func:`put_layer`, :mod:`napari_care._layer_draw`) are read from
    the viewer itself, each guarded so that a napari without one only loses a speed-up.
    """
    return getattr(viewer, "__wrapped__", viewer)


_UPDATABLE = ("scale", "translate", "features", "colormap", "contrast_limits")
_UPDATABLE_BY_TYPE = {
    "image": ("opacity",),  # the heatmap's opacity is a widget option; the other layers keep the user's
    "shapes": ("edge_width", "edge_color", "face_color"),  # per shape: set again after the data
}


def put_layer(viewer, data: Any, kwargs: dict, layer_type: str, *, activate: bool = True):
    """Update the layer named ``kwargs["name"]`` in place, or add it when there is none.

    An added layer becomes the active one (napari's way) unless ``activate`` is False: then
    the user's selection stays, and napari skips switching the layer controls and building
    the new layer's editing overlays (a tenth of a second for the three CARE layers).

    In-place updates keep the layer's position in the list and what the user set by hand
    (visibility, blending; opacity except an image's); data, placement, colours and tables
    are replaced (a Shapes layer's text template stays). Only what changed is set: every
    napari setter refreshes the layer.
    """
    name = kwargs["name"]
    viewer = unproxied(viewer)
    existing = viewer.layers[name] if name in viewer.layers else None
    if existing is None or type(existing).__name__.lower() != layer_type:
        from napari.layers import Layer  # napari's GUI loads with the viewer

        if existing is not None:
            viewer.layers.remove(existing)
        layers, activating = viewer.layers, getattr(viewer.layers, "_activate_on_insert", None)
        if activating is not None:
            layers._activate_on_insert = activate and activating
        try:
            return viewer.add_layer(Layer.create(data, kwargs, layer_type))
        finally:
            if activating is not None:
                layers._activate_on_insert = activating
    quiet = contextlib.nullcontext()
    if layer_type == "shapes" and not existing.selected_data and existing.mode == "pan_zoom":
        # no selection or hover outline to show, before or after: redrawing the (empty) highlight
        # would only make vispy rebuild its shader program (tens of ms in software rendering)
        quiet = existing.events.highlight.blocker()
    with quiet:
        if layer_type == "shapes":  # one data assignment (one dims update, one refresh), then the styles
            existing.data = [(shape, kwargs.get("shape_type", "rectangle")) for shape in data]
        else:
            existing.data = data
        for key in _UPDATABLE + _UPDATABLE_BY_TYPE.get(layer_type, ()):
            if key in kwargs and not _same(getattr(existing, key, None), kwargs[key]):
                setattr(existing, key, kwargs[key])
    if layer_type == "labels" and "colormap" not in kwargs and existing.metadata.get("colour_by") != "region":
        from napari.utils.colormaps import label_colormap  # napari's GUI loads with the viewer

        existing.colormap = label_colormap()  # back from a group colouring to napari's label colours
    existing.metadata = {**existing.metadata, **kwargs.get("metadata", {})}
    return existing


def _same(current: Any, new: Any) -> bool:
    """True when setting ``new`` would change nothing worth a refresh (numbers, colormap names)."""
    if isinstance(new, (tuple, list, np.ndarray, int, float)) and not isinstance(current, (str, dict)):
        try:
            return bool(np.array_equal(np.asarray(current, dtype=float), np.asarray(new, dtype=float)))
        except (TypeError, ValueError):
            return False
    if type(new).__name__ == "Colormap":  # image colormaps are made fresh per draw; their name says it all
        return new.name == getattr(current, "name", None)
    return False
