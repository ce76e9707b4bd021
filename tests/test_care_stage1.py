"""CARE Stage I: sub-slides and views, the loss falls, resuming equals not stopping."""

import numpy as np
import pytest
import torch

from napari_care.core.checkpoint import FeatureDimMismatch, load_checkpoint
from napari_care.core.models.care import CareConfig, CareModel
from napari_care.core.progress import run_to_end
from napari_care.core.train.care_stage1 import Stage1Config, train_care_stage1
from napari_care.core.train.feature_views import (
    Augmentation,
    SlideFeatures,
    augment_features,
    random_crop,
    split_subslides,
)

DIM = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def full_grid(width: int, height: int, x0: int = 0, y0: int = 0) -> np.ndarray:
    gx, gy = np.meshgrid(np.arange(width) + x0, np.arange(height) + y0)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def structured_slide(seed: int, side: int = 16) -> SlideFeatures:
    """Four tissue types in wavy layers: one prototype feature each, plus noise."""
    rng = np.random.default_rng(seed)
    grid = full_grid(side, side)
    truth = ((grid[:, 1] + 3 * np.sin(grid[:, 0] / 3 + seed)) > side / 2).astype(int) + 2 * (
        grid[:, 0] > side * 0.6
    )
    prototypes = np.random.default_rng(0).normal(size=(4, DIM)) * 2
    features = prototypes[truth] + rng.normal(size=(len(grid), DIM))
    return SlideFeatures(features.astype(np.float32), grid, f"slide{seed}", "toy")


def tiny_config(**options) -> Stage1Config:
    values = {
        "steps": 30,
        "batch_size": 4,
        "lr": 3e-3,
        "warmup_steps": 3,
        "max_patches": 128,
        "log_every": 10,
        "head_hidden": 32,
        "head_bottleneck": 16,
        "prototypes": 32,
        "teacher_momentum": 0.9,
    }
    return Stage1Config(**{**values, **options})


CARE_CONFIG = CareConfig(in_dim=DIM, embed_dim=16, heads=2, k=4)


def test_subslides_follow_tissue_pieces_and_stay_small():
    grid = np.concatenate([full_grid(30, 20), full_grid(5, 5, x0=100), full_grid(2, 2, x0=200)])
    parts = split_subslides(grid, max_patches=160, min_patches=16)
    sizes = sorted(len(part) for part in parts)
    assert sizes == [25, 150, 150, 150, 150]  # 600 patches halved twice; 5 x 5 alone; 2 x 2 dropped
    assert sorted(np.concatenate(parts).tolist()) == list(range(625))
    for part in parts:  # never two tissue pieces in one sub-slide
        assert len(np.unique(grid[part, 0] >= 100)) == 1
        extent = np.ptp(grid[part], axis=0)
        assert extent.max() <= 15  # halves of a 30 x 20 piece are compact


def test_crop_is_compact_and_augmentation_is_seeded():
    grid = full_grid(20, 20)
    crop = random_crop(grid, 50, np.random.default_rng(3))
    assert len(crop) == 50 == len(np.unique(crop))
    assert np.ptp(grid[crop], axis=0).max() <= 9  # about a disc of radius 4
    features = np.random.default_rng(0).normal(size=(50, DIM)).astype(np.float32)
    augmentation = Augmentation(channel_dropout=0.25, noise_std=0.1)
    first = augment_features(features, augmentation, np.random.default_rng(1))
    np.testing.assert_array_equal(first, augment_features(features, augmentation, np.random.default_rng(1)))
    dropped = (first == 0).all(axis=0)
    assert 0 < dropped.sum() < DIM
    kept = ~dropped
    ratio = first[:, kept] / features[:, kept]
    assert 0.8 < np.median(ratio) < 1.2


def test_loss_falls_on_structured_features(tmp_path):
    slides = [structured_slide(seed) for seed in range(4)]
    result = run_to_end(train_care_stage1(slides, CARE_CONFIG, tmp_path, tiny_config()))
    losses = np.array(result.losses)
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert losses[-5:].mean() < 0.9 * losses[:5].mean()
    assert np.mean(result.components["mim"][-5:]) < np.mean(result.components["mim"][:5])
    model, config, extra = load_checkpoint(result.checkpoint)
    assert isinstance(model, CareModel) and config == CARE_CONFIG
    assert extra["kind"] == "care_stage1" and extra["step"] == 30
    # The saved model is the teacher returned, and it segments a slide.
    saved = model.state_dict()
    assert all(torch.equal(saved[name], value) for name, value in result.model.state_dict().items())
    assert result.model(slides[0].features, slides[0].grid).slide_embedding.shape == (16,)


def test_resume_gives_the_uninterrupted_result(tmp_path):
    slides = [structured_slide(seed) for seed in range(3)]
    config = tiny_config(steps=8, batch_size=2, checkpoint_every=4)
    straight = run_to_end(train_care_stage1(slides, CARE_CONFIG, tmp_path / "a", config))
    resumed = run_to_end(
        train_care_stage1(
            slides, None, tmp_path / "b", config, resume_from=tmp_path / "a" / "care_stage1_step000004.json"
        )
    )
    assert resumed.losses == straight.losses
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_runs_saved_with_one_optimizer_group_still_resume(tmp_path):
    """Stage I states written before the generator's gain group existed (one group) resume."""
    slides = [structured_slide(seed) for seed in range(3)]
    config = tiny_config(steps=4, batch_size=2, checkpoint_every=2)
    straight = run_to_end(train_care_stage1(slides, CARE_CONFIG, tmp_path / "a", config))
    state_path = tmp_path / "a" / "care_stage1_step000002.state.pt"
    state = torch.load(state_path, weights_only=False)
    groups = state["optimizer"]["param_groups"]
    assert len(groups) == 2 and not groups[1]["params"]  # the paper's generator has no gains
    state["optimizer"]["param_groups"] = [{k: v for k, v in groups[0].items() if k != "lr_factor"}]
    torch.save(state, state_path)
    resumed = run_to_end(
        train_care_stage1(
            slides, None, tmp_path / "b", config, resume_from=tmp_path / "a" / "care_stage1_step000002.json"
        )
    )
    assert resumed.losses == straight.losses


def test_resume_with_other_features_names_both_dimensions(tmp_path):
    slides = [structured_slide(seed) for seed in range(2)]
    run_to_end(train_care_stage1(slides, CARE_CONFIG, tmp_path, tiny_config(steps=1, batch_size=1)))
    wide = [SlideFeatures(np.zeros((64, 24), np.float32), full_grid(8, 8), "wide", "uni")]
    with pytest.raises(FeatureDimMismatch, match="expects D=16 features but the encoder 'uni' gives 24"):
        run_to_end(
            train_care_stage1(
                wide,
                None,
                tmp_path,
                tiny_config(steps=2),
                resume_from=tmp_path / "care_stage1_final.json",
                encoder="uni",
            )
        )


def test_input_prior_and_consistency_train_the_generator_scales(tmp_path):
    slides = [structured_slide(seed) for seed in range(4)]
    care_config = CareConfig(in_dim=DIM, embed_dim=16, heads=2, k=4, affinity_prior="input")
    config = tiny_config(consistency_weight=1.0, checkpoint_every=15)
    result = run_to_end(train_care_stage1(slides, care_config, tmp_path, config))
    consistency = np.array(result.components["consistency"])
    assert len(consistency) == 30 and np.isfinite(result.losses).all()
    assert consistency[-5:].mean() < consistency[:5].mean()
    # The scalar weights learn with scale_lr_factor (20) x lr: Adam's step of ~lr alone would
    # leave them within 30 * 3e-3 = 0.09 of their start.
    with torch.no_grad():
        moved = max(abs(float(result.model.affinity_scale)), abs(float(result.model.log_prior_scale)))
    assert moved > 0.1
    resumed = run_to_end(
        train_care_stage1(
            slides, None, tmp_path / "b", config, resume_from=tmp_path / "care_stage1_step000015.json"
        )
    )
    assert resumed.losses == result.losses
