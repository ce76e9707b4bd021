"""napari sample data: the generated offline slide, and CMU-1-Small-Region downloaded on demand."""

from __future__ import annotations

from typing import Any

from napari_care._reader import read_slide


def offline_sample() -> list[tuple[Any, dict, str]]:
    """The offline sample slide (built once into the user's cache) and its planted tissue map."""
    from napari_care._layers import truth_layer_data
    from napari_care.core.samples import offline_sample_path
    from napari_care.core.synthetic import load_truth

    path = offline_sample_path()
    layers = read_slide(str(path))
    slide = layers[0][1]["metadata"]["slide"]
    layers.append(truth_layer_data(load_truth(path), slide))
    return layers


def cmu_small_region() -> list[tuple[Any, dict, str]]:
    """CMU-1-Small-Region.svs from the OpenSlide test data (downloaded once, checksum pinned)."""
    from napari_care.core.samples import cmu_small_region_path

    return read_slide(str(cmu_small_region_path()))
