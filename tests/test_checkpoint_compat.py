"""Checkpoints saved before the house move still load by the class paths they name, and compute the same."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_care.core.care_run import segment_features
from napari_care.core.checkpoint import load_checkpoint, read_checkpoint_description
from napari_care.core.mil.heads import load_mil_head

OLD = Path(__file__).parent / "data" / "checkpoints_v0_1_0"


@pytest.fixture(scope="module")
def inputs() -> tuple[np.ndarray, np.ndarray, dict]:
    """The features and grid the old code ran on (seed 0), and what it computed."""
    features = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    grid = np.stack(np.meshgrid(np.arange(8), np.arange(5)), -1).reshape(-1, 2)
    return features, grid, json.loads((OLD / "expected.json").read_text())


@pytest.mark.parametrize("name", ["abmil", "care", "mixmag"])
def test_old_checkpoints_load_by_the_class_they_name(name):
    description = read_checkpoint_description(OLD / f"{name}.json")
    assert description["napari_care_version"] == "0.1.0"
    model, config, _ = load_checkpoint(OLD / name)
    assert f"{type(model).__module__}.{type(model).__qualname__}" == description["model_class"]
    module, _, class_name = description["config_class"].rpartition(
        "."
    )  # a config class may have moved: its old
    assert getattr(importlib.import_module(module), class_name) is type(config)  # path still names it


def test_an_old_care_model_gives_the_same_regions(inputs):
    features, grid, expected = inputs
    model, _, _ = load_checkpoint(OLD / "care")
    result = segment_features(features, grid, model=model)
    assert result.region_of_patch.tolist() == expected["care_region_of_patch"]
    assert result.roi == expected["care_roi"]
    np.testing.assert_allclose(result.slide_embedding, expected["care_slide_embedding"], rtol=1e-5, atol=1e-6)


def test_an_old_mil_head_gives_the_same_attention(inputs):
    features, _, expected = inputs
    head = load_mil_head(OLD / "abmil.json")
    assert head.class_names == ["a", "b"] and head.encoder == "default"
    with torch.no_grad():
        attention = head.model(torch.from_numpy(features)).attention
    np.testing.assert_allclose(attention.numpy(), expected["abmil_attention"], rtol=1e-5, atol=1e-7)
