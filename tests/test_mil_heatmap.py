"""The viewer's MIL contract: load a head written by train_mil and apply it to one slide's features."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_care.core.checkpoint import FeatureDimMismatch, save_checkpoint
from napari_care.core.mil.heads import MilOutput, load_mil_head
from napari_care.core.models.mixmag import MixMagConfig, MixMagEncoder
from napari_care.core.progress import run_to_end
from napari_care.core.train.mil import MILTrainConfig, train_mil

DIM = 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A head trained on bags whose label is the presence of one bright instance."""
    root = tmp_path_factory.mktemp("mil")
    rng = np.random.default_rng(0)
    bags, rows = {}, []
    for index in range(24):
        label = ["benign", "tumour"][index % 2]
        bag = rng.normal(0, 0.3, (10 + index % 5, DIM)).astype(np.float32)
        if label == "tumour":
            bag[index % 7, 0] += 4.0
        bags[f"s{index}"] = bag
        rows.append((f"s{index}", label))
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("slide_id", "label"), *rows])
    config = MILTrainConfig(max_epochs=15, patience=15, lr=5e-3, hidden=16, attn_dim=8, seed=0)
    result = run_to_end(train_mil(root / "labels.csv", bags, root / "out", config, encoder="fake"))
    return root, result


def test_head_loads_from_folder_json_or_weights(trained):
    root, result = trained
    for path in (root / "out", result.checkpoint, root / "out" / "abmil.safetensors"):
        head = load_mil_head(path)
        assert head.in_dim == DIM and head.class_names == ["benign", "tumour"] and head.encoder == "fake"


def test_apply_gives_attention_probabilities_and_prediction(trained):
    root, result = trained
    head = load_mil_head(root / "out")
    bag = np.random.default_rng(1).normal(0, 0.3, (12, DIM)).astype(np.float32)
    bag[5, 0] += 4.0
    out = head.apply(bag)
    assert isinstance(out, MilOutput)
    assert out.attention.shape == (12,) and out.attention.dtype == np.float32
    assert out.attention.sum() == pytest.approx(1.0, abs=1e-6) and (out.attention >= 0).all()
    assert int(np.argmax(out.attention)) == 5  # the bright instance draws the attention
    assert out.probabilities.shape == (2,) and out.probabilities.sum() == pytest.approx(1.0, abs=1e-6)
    assert out.predicted == "tumour"
    # the same numbers as the trained module
    import torch

    logits, attention = result.model(torch.from_numpy(bag))
    np.testing.assert_allclose(out.attention, attention.detach().numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.probabilities, torch.softmax(logits, -1).detach().numpy(), atol=1e-6)
    assert head.apply(bag[:1]).attention.tolist() == [1.0]


def test_bad_features_name_the_checkpoint(trained):
    root, _ = trained
    head = load_mil_head(root / "out")
    with pytest.raises(FeatureDimMismatch, match=r"abmil\.json expects D=6 .* got D=4"):
        head.apply(np.zeros((3, 4), np.float32))
    assert issubclass(FeatureDimMismatch, ValueError)
    with pytest.raises(ValueError, match="non-empty"):
        head.apply(np.zeros((0, DIM), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        head.apply(np.full((2, DIM), np.nan, np.float32))
    bag = np.zeros((3, DIM), np.float32)
    with pytest.raises(
        ValueError, match=r"abmil\.json was trained on 'fake' features, these come from 'default'"
    ):
        head.apply(bag, encoder="default")  # same width, another encoder: refused, not silently wrong
    assert head.apply(bag, encoder="fake").attention.shape == (3,)


def test_missing_or_wrong_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mil_head(tmp_path / "nothing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"junk\.json"):
        load_mil_head(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a napari_care checkpoint"):
        load_mil_head(tmp_path / "other.json")
    config = MixMagConfig(in_dim=4, dim=8, heads=2, depth=1)
    mem = save_checkpoint(tmp_path / "mem", MixMagEncoder(config), config)
    with pytest.raises(ValueError, match="not an AB-MIL head"):
        load_mil_head(mem)
    mem.with_suffix(".safetensors").unlink()
    with pytest.raises(ValueError, match="not an AB-MIL head"):
        load_mil_head(mem)


def test_apply_standardises_with_the_training_statistics(trained):
    import torch

    from napari_care.core.models.abmil import ABMIL

    root, result = trained
    head = load_mil_head(root / "out")
    mean, std = head.model.feature_mean.numpy(), head.model.feature_std.numpy()
    assert abs(mean[0]) > 0.05 and np.all(std > 0.25)  # the training instances' statistics, not the identity
    np.testing.assert_allclose(mean, result.model.feature_mean.numpy())
    bag = np.random.default_rng(3).normal(0, 0.3, (9, DIM)).astype(np.float32)
    identity = ABMIL(head.model.config).eval()
    identity.load_state_dict(
        {k: v for k, v in head.model.state_dict().items() if not k.startswith("feature_")}, strict=False
    )
    with torch.no_grad():
        logits, attention = identity(torch.from_numpy((bag - mean) / std))
    out = head.apply(bag)
    np.testing.assert_allclose(out.attention, attention.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.probabilities, torch.softmax(logits, -1).numpy(), atol=1e-6)
