"""napari sample data: the generated offline slide, and CMU-1-Small-Region downloaded on demand."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_care._layers import ROLE_KEY, placement
from napari_care._reader import read_slide
from napari_care.core import samples
from napari_care.core.synthetic.slides import load_synthetic_slide

LayerData = tuple[Any, dict, str]


def offline_sample() -> list[LayerData]:
    """The offline sample slide (built once into the user's cache) and its planted tissue map."""
    path = samples.offline_sample_path()
    layers = read_slide(str(path))
    layers[0][1]["name"] = "offline sample"
    slide = layers[0][1]["metadata"]["slide"]
    layers.append(truth_layer_data(load_synthetic_slide(path), slide))
    return layers


def truth_layer_data(truth, slide) -> LayerData:
    """The planted tissue types as a hidden Labels layer over the slide (glass transparent)."""
    from napari.utils.colormaps import DirectLabelColormap  # napari's GUI loads with the viewer

    names = list(truth.type_names)
    colours: dict[int | None, Any] = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    palette = _type_colours(truth)
    for type_id in range(1, len(names)):
        colours[type_id] = (*palette[type_id], 1.0)
    kwargs = {
        "name": "planted tissue types",
        "visible": False,
        "opacity": 0.5,
        "colormap": DirectLabelColormap(color_dict=colours),
        "features": {"index": np.arange(len(names)), "tissue": names},
        "metadata": {ROLE_KEY: "truth"},
        **placement(slide, (0.0, 0.0), float(truth.downsample)),
    }
    return (np.asarray(truth.labels), kwargs, "labels")


def _type_colours(truth) -> np.ndarray:
    """RGB in [0, 1] per tissue type, from the truth file."""
    with np.load(truth.truth_path, allow_pickle=False) as npz:
        return np.asarray(npz["type_colours"], dtype=np.float64) / 255.0


def cmu_small_region() -> list[LayerData]:
    """CMU-1-Small-Region.svs from the OpenSlide test data (downloaded once, checksum pinned)."""
    return read_slide(str(samples.cmu_small_region_path()))
