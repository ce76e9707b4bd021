"""The napari sample data contributions: the offline sample and its planted tissue map."""

from __future__ import annotations

import numpy as np
import pytest

from napari_care.core.slide.handle import open_slide
from napari_care.core.synthetic.slides import build_synthetic_slide


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "small.ome.tif"
    return build_synthetic_slide(path, width=2048, height=1536, seed=3, swatch_px=512)


def test_offline_sample_returns_slide_and_truth(monkeypatch, small_sample):
    import napari_care.core.samples as samples
    from napari_care import _sample_data

    monkeypatch.setattr(samples, "offline_sample_path", lambda: small_sample.path)
    (image, truth) = _sample_data.offline_sample()
    _data, kwargs, layer_type = image
    assert layer_type == "image" and kwargs["name"] == "offline sample"
    assert kwargs["scale"] == (0.5, 0.5)
    labels, truth_kwargs, truth_type = truth
    assert truth_type == "labels" and truth_kwargs["visible"] is False
    np.testing.assert_array_equal(labels, small_sample.labels)
    assert list(truth_kwargs["features"]["tissue"]) == list(small_sample.type_names)


def test_truth_layer_lines_up_with_the_slide(small_sample):
    from napari_care._layers import level0_to_world
    from napari_care._sample_data import truth_layer_data

    with open_slide(small_sample.path) as slide:
        labels, kwargs, _ = truth_layer_data(small_sample, slide)
        scale, translate = np.array(kwargs["scale"]), np.array(kwargs["translate"])
        # the centre of truth cell (r, c) is at level-0 ((c + 0.5) * d, (r + 0.5) * d)
        d = small_sample.downsample
        for r, c in [(0, 0), (10, 20), (labels.shape[0] - 1, labels.shape[1] - 1)]:
            world = level0_to_world(slide, np.array([[(c + 0.5) * d, (r + 0.5) * d]]))[0]
            np.testing.assert_allclose((world - translate) / scale, [r, c], atol=1e-9)
