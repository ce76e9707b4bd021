"""MIL heads in the "CARE: segment regions" widget: a head on 20x patch features, a head on region tokens."""

from __future__ import annotations

import numpy as np
import pytest
from gui_helpers import run_and_wait

from napari_care._care_layers import ATTENTION

pytestmark = pytest.mark.gui


def test_mil_checkpoint_from_train_mil_runs_in_the_widget(viewer_widget, qtbot, tmp_path):
    import torch

    from napari_care.core.checkpoint import save_checkpoint
    from napari_care.core.mil.heads import load_mil_head
    from napari_care.core.models.abmil import ABMIL, ABMILConfig

    viewer, widget = viewer_widget
    torch.manual_seed(0)
    encoder = widget.controller.session(widget.slide_layer.value).encoder(widget.segment_options())
    config = ABMILConfig(in_dim=encoder.embed_dim, hidden=16, attn_dim=8, n_classes=2)
    checkpoint = save_checkpoint(
        tmp_path / "abmil", ABMIL(config).eval(), config, extra_state={"class_names": ["benign", "tumour"]}
    )
    widget.mil_head.value = checkpoint
    widget.normalisation.value = "raw"
    widget.scope.value = "whole slide"
    run_and_wait(widget, qtbot)
    result = widget.controller.result
    expected = load_mil_head(checkpoint).apply(result.features.features)
    assert widget.status.value.endswith(
        f"MIL predicts {expected.predicted} (p={expected.probabilities.max():.2f})"
    )
    heatmap = viewer.layers[ATTENTION]
    assert heatmap.metadata["source"] == "MIL"
    shown = heatmap.data[result.features.grid[:, 1], result.features.grid[:, 0]]
    np.testing.assert_allclose(shown, expected.attention, rtol=1e-5)
    assert not np.allclose(shown, result.care.patch_attention, rtol=1e-2)  # not CARE's attention

    wrong = ABMILConfig(in_dim=encoder.embed_dim + 1, hidden=16, attn_dim=8, n_classes=2)
    widget.mil_head.value = save_checkpoint(
        tmp_path / "wrong", ABMIL(wrong), wrong, extra_state={"class_names": ["a", "b"]}
    )
    run_and_wait(widget, qtbot)
    assert widget.status.value.startswith("failed:") and "wrong" in widget.status.value


def test_a_region_head_draws_its_region_attention_over_the_patches(
    viewer_widget, qtbot, tmp_path, monkeypatch
):
    import torch

    from napari_care.core.checkpoint import save_checkpoint
    from napari_care.core.mil.heads import RegionEncoder, load_mil_head, save_region_encoder
    from napari_care.core.mil.regions import patch_output
    from napari_care.core.models.abmil import ABMIL, ABMILConfig
    from napari_care.core.models.mixmag import MixMagConfig, MixMagEncoder
    from napari_care.core.progress import run_to_end

    viewer, widget = viewer_widget
    torch.manual_seed(0)
    session = widget.controller.session(widget.slide_layer.value)
    in_dim = session.encoder(widget.segment_options()).embed_dim
    mixer = MixMagEncoder(MixMagConfig(in_dim=in_dim, dim=16, depth=1, heads=2)).eval()
    config = ABMILConfig(in_dim=mixer.instance_dim, hidden=16, attn_dim=8, n_classes=2)
    head_path = save_checkpoint(
        tmp_path / "mil" / "abmil",
        ABMIL(config).eval(),
        config,
        extra_state={"class_names": ["benign", "tumour"], "encoder": "mixmag"},
    )
    save_region_encoder(tmp_path / "mil", RegionEncoder(mixer, "default", 896, 0.5))
    widget.mil_head.value = head_path
    widget.normalisation.value = "raw"
    widget.scope.value = "whole slide"
    run_and_wait(widget, qtbot)
    result = widget.controller.result
    regions = run_to_end(session.attend_regions(widget.segment_options(), load_mil_head(head_path)))
    expected = patch_output(regions, result.features.coords, result.features.patch_size_level0)
    assert widget.status.value.endswith(
        f"MIL predicts {expected.predicted} (p={expected.probabilities.max():.2f})"
    )
    heatmap = viewer.layers[ATTENTION]
    shown = heatmap.data[result.features.grid[:, 1], result.features.grid[:, 0]]
    inside = np.isfinite(expected.attention)
    assert 0.5 < inside.mean() < 1 and len(np.unique(expected.attention[inside])) == len(
        regions.output.attention
    )
    np.testing.assert_allclose(shown[inside], expected.attention[inside], rtol=1e-5)
    assert (
        shown[~inside] == heatmap.metadata["off_tissue"]
    ).all()  # patches of no region: drawn as off tissue

    def no_region(*args, **kwargs):  # e.g. zoomed in at a tissue edge: no region has enough tissue
        return None
        yield

    monkeypatch.setattr(type(session), "attend_regions", no_region)
    run_and_wait(widget, qtbot)
    assert widget.status.value.endswith("MIL: no region of the head on tissue here")
    assert widget.status.value.startswith(
        f"CARE (training-free regions): {widget.controller.result.care.n_regions} regions over"
    )  # still drawn
    assert (viewer.layers[ATTENTION].data == viewer.layers[ATTENTION].metadata["off_tissue"]).all()
