"""The widget on a feature file of the open slide: the same regions, and not one tile encoded."""

from __future__ import annotations

import numpy as np
import pytest
from gui_helpers import run_and_wait

from napari_care._care_layers import REGIONS
from napari_care.core.feature_files import features_path
from napari_care.core.features import save_features

pytestmark = pytest.mark.gui


def test_a_features_file_is_segmented_without_encoding(viewer_widget, qtbot, tmp_path, monkeypatch):
    viewer, widget = viewer_widget
    widget.scope.value = "whole slide"
    run_and_wait(widget, qtbot)
    encoded = widget.controller.result
    path = save_features(
        features_path(tmp_path, "small", encoded.options.encoder, "trident"), encoded.features
    )

    session = widget.controller.session(widget.slide_layer.value)
    encoder = session.encoder(widget.segment_options())
    tiles = []
    monkeypatch.setattr(encoder, "encode", lambda batch: tiles.append(len(batch)) or encoder.encode(batch))
    widget.features_file.value = path
    assert widget.features_path() == str(path)
    run_and_wait(widget, qtbot)

    result = widget.controller.result
    assert result.from_features and tiles == []
    assert "from the features file" in widget.status.value
    np.testing.assert_array_equal(result.care.region_of_patch, encoded.care.region_of_patch)
    assert result.care.roi == encoded.care.roi
    cells = viewer.layers[REGIONS].data[result.features.grid[:, 1], result.features.grid[:, 0]]
    np.testing.assert_array_equal(cells, encoded.care.region_of_patch + 1)  # the layer drawn from the file
