"""Mixed-magnification region encoder and MEM pretraining (models/mixmag.py, train/mem.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_care.core.checkpoint import FeatureDimMismatch, save_checkpoint
from napari_care.core.models.mixmag import (
    FIRST_20X_TOKEN,
    N_TOKENS,
    MixMagConfig,
    MixMagEncoder,
    RegionTokens,
    assemble_region_tokens,
)
from napari_care.core.models.mixmag_readout import salient_tile
from napari_care.core.progress import run_to_end
from napari_care.core.train.mem import MEMTrainConfig, region_bags, train_mem
from napari_care.core.train.schedule import cosine_schedule

D = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**options) -> MixMagEncoder:
    torch.manual_seed(0)
    return MixMagEncoder(MixMagConfig(in_dim=D, dim=32, depth=1, heads=2, **options))


def test_layout_constants():
    assert N_TOKENS == 21 and FIRST_20X_TOKEN == 5
    assert tiny().token_magnification.tolist() == [0] + [1] * 4 + [2] * 16


@pytest.mark.parametrize("readout", ["cls", "cls+tile", "tokens"])
def test_forward_shapes_and_readout(readout):
    model = tiny(readout=readout).eval()
    tokens = torch.randn(6, N_TOKENS, D)
    present = torch.ones(6, N_TOKENS, dtype=torch.bool)
    present[0, 10:] = False
    out = model(tokens, present)
    assert out.cls.shape == (6, 32) and out.tokens.shape == (6, N_TOKENS, 32)
    instances = model.mil_instances(tokens, present, batch_size=4)
    expected = int(present[:, FIRST_20X_TOKEN:].sum()) if readout == "tokens" else 6
    assert instances.shape == (expected, model.instance_dim)
    assert model.instance_dim == (32 + D if readout == "cls+tile" else 32)


def test_cls_tile_readout_keeps_the_most_salient_20x_tile():
    model = tiny(readout="cls+tile").eval()
    model.set_feature_stats(torch.full((D,), 1.0), torch.full((D,), 2.0))
    tokens = torch.ones(3, N_TOKENS, D)  # standardised: all zeros
    tokens[0, FIRST_20X_TOKEN + 7] += 6.0  # the outlier 20x tile of region 0: standardised 3
    tokens[0, 0] += 20.0  # a larger outlier at 5x is not a 20x tile
    tokens[1, FIRST_20X_TOKEN + 2, :4] -= 4.0
    tokens[1, FIRST_20X_TOKEN + 3] += 8.0  # the largest, but missing
    present = torch.ones(3, N_TOKENS, dtype=torch.bool)
    present[1, FIRST_20X_TOKEN + 3] = False
    present[2, FIRST_20X_TOKEN:] = False  # no 20x tile at all
    instances = model.mil_instances(tokens, present)
    torch.testing.assert_close(instances[:, :32], model(tokens, present).cls)
    expected_tiles = torch.zeros(3, D)
    expected_tiles[0] = 3.0
    expected_tiles[1, :4] = -2.0
    torch.testing.assert_close(instances[:, 32:], expected_tiles)
    # pretrained exactly as the CLS readout: same weights, same loss
    cls_model = tiny(readout="cls")
    cls_model.set_feature_stats(model.feature_mean, model.feature_std)
    cls_state, tile_state = cls_model.state_dict(), model.state_dict()
    assert cls_state.keys() == tile_state.keys() and all(
        torch.equal(cls_state[k], tile_state[k]) for k in cls_state
    )
    losses = [
        m.pretraining_loss(tokens, present, generator=torch.Generator().manual_seed(0))[0]
        for m in (cls_model, model)
    ]
    torch.testing.assert_close(losses[0], losses[1])


def test_salient_tile_follows_the_whitening():
    tiles = torch.zeros(1, 16, 2)
    tiles[0, 3] = torch.tensor([2.0, 0.0])  # large along a high-variance direction
    tiles[0, 9] = torch.tensor([0.0, 1.0])  # smaller, along a direction of little variance
    present = torch.ones(1, 16, dtype=torch.bool)
    torch.testing.assert_close(salient_tile(tiles, present, torch.eye(2)), torch.tensor([[2.0, 0.0]]))
    whitening = torch.diag(torch.tensor([0.5, 4.0]))  # std 2 and 0.25 in the pretraining tiles
    torch.testing.assert_close(salient_tile(tiles, present, whitening), torch.tensor([[0.0, 4.0]]))
    present[0, 9] = False
    torch.testing.assert_close(salient_tile(tiles, present, whitening), torch.tensor([[1.0, 0.0]]))


def test_missing_tokens_do_not_leak():
    model = tiny().eval()
    tokens = torch.randn(2, N_TOKENS, D)
    present = torch.ones(2, N_TOKENS, dtype=torch.bool)
    present[:, 12:] = False
    poisoned = tokens.clone()
    poisoned[:, 12:] = float("nan")
    reference = model(tokens, present)
    out = model(poisoned, present)
    assert torch.isfinite(out.cls).all()
    torch.testing.assert_close(out.cls, reference.cls)


def test_sample_mask_respects_presence_and_ratio():
    model = tiny(mask_ratio=0.5)
    present = torch.ones(4, N_TOKENS, dtype=torch.bool)
    present[1, 6:] = False  # 6 present tokens
    present[2, 1:] = False  # a single token: nothing to mask
    present[3, 2:] = False  # 2 tokens: mask one, keep one
    masked = model.sample_mask(present, torch.Generator().manual_seed(0))
    assert masked.sum(dim=1).tolist() == [10, 3, 0, 1]  # round(0.5 * 21) = 10 (round half to even)
    assert not (masked & ~present).any()
    again = model.sample_mask(present, torch.Generator().manual_seed(0))
    assert torch.equal(masked, again)


@pytest.mark.parametrize("objective", ["mem", "cmem"])
@pytest.mark.parametrize("readout", ["cls", "cls+tile", "tokens"])
@pytest.mark.parametrize("loss", ["cosine", "mse"])
def test_pretraining_loss_variants(objective, readout, loss):
    model = tiny(objective=objective, readout=readout, loss=loss, feature_noise=0.1)
    tokens = torch.randn(8, N_TOKENS, D)
    present = torch.rand(8, N_TOKENS, generator=torch.Generator().manual_seed(1)) > 0.3
    value, parts = model.pretraining_loss(tokens, present, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(value)
    assert set(parts) == ({"mem"} if objective == "mem" else {"mem", "contrastive"})
    if objective == "cmem":  # two views of a region are closer than two regions: below chance, log(8)
        assert 0.0 < parts["contrastive"] < np.log(8)
    value.backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0


def test_config_validation():
    with pytest.raises(ValueError, match="objective"):
        MixMagConfig(in_dim=D, objective="mae")
    with pytest.raises(ValueError, match="multiple of heads"):
        MixMagConfig(in_dim=D, dim=30, heads=4)
    with pytest.raises(ValueError, match="mask_ratio"):
        MixMagConfig(in_dim=D, mask_ratio=1.0)
    with pytest.raises(ValueError, match=r"tokens \[B, 21, 16\]"):
        tiny()(torch.randn(2, 20, D))


def test_assemble_region_tokens_places_tiles():
    region = 896.0
    origin = np.array([100, 50])  # grids need not start at (0, 0)
    coords_5x = origin + np.array([[0, 0], [896, 0]])
    coords_10x = origin + np.array([[448, 448], [896 + 448, 0]])
    coords_20x = origin + np.array(
        [[224 * 3, 224 * 1], [896, 896 - 224], [5000, 5000]]
    )  # the last: no region
    features = [
        np.full((len(c), 4), value, dtype=np.float32)
        for c, value in ((coords_5x, 0), (coords_10x, 0), (coords_20x, 0))
    ]
    for m, c in enumerate((coords_5x, coords_10x, coords_20x)):
        features[m][:, 0] = 100 * (m + 1) + np.arange(len(c))  # identifies the tile
    result = assemble_region_tokens(
        tuple(features), (coords_5x, coords_10x, coords_20x), region_size_level0=region, slide_id="s"
    )
    assert result.tokens.shape == (2, 21, 4) and result.slide_id == "s"
    assert np.array_equal(
        np.argwhere(result.token_present), [[0, 0], [0, 4], [0, 12], [1, 0], [1, 2], [1, 17]]
    )
    assert result.tokens[0, 4, 0] == 200 and result.tokens[1, 2, 0] == 201  # 10x (1,1) and (1,0)
    assert result.tokens[0, 12, 0] == 300 and result.tokens[1, 17, 0] == 301  # 20x (3,1) and (0,3)
    assert result.tokens[1, 0, 0] == 101 and result.tokens[0, 1, 0] == 0
    with pytest.raises(ValueError, match="different D"):
        assemble_region_tokens(
            (features[0], features[1], np.zeros((3, 5))),
            (coords_5x, coords_10x, coords_20x),
            region_size_level0=region,
        )


def _structured_slides(n_slides=2, regions=48, dim=D, seed=0) -> list[RegionTokens]:
    """Every token of a region is its prototype plus a little noise: masked tokens are predictable."""
    rng = np.random.default_rng(seed)
    slides = []
    for s in range(n_slides):
        prototypes = rng.normal(size=(regions, 1, dim))
        tokens = (prototypes + 0.2 * rng.normal(size=(regions, N_TOKENS, dim))).astype(np.float32)
        present = rng.random((regions, N_TOKENS)) > 0.2
        present[:, 0] = True
        slides.append(RegionTokens(tokens, present, np.zeros((regions, 2), np.int64), 896.0, f"s{s}"))
    return slides


def test_learning_rate_schedule():
    config = MEMTrainConfig(steps=100, lr=1.0, warmup_steps=10)
    assert cosine_schedule(0, config.steps, config.warmup_steps, config.lr) == pytest.approx(0.1)
    assert cosine_schedule(9, config.steps, config.warmup_steps, config.lr) == pytest.approx(1.0)
    assert cosine_schedule(55, config.steps, config.warmup_steps, config.lr) == pytest.approx(0.5)
    assert cosine_schedule(99, config.steps, config.warmup_steps, config.lr) < 0.01


def test_mem_pretraining_learns(tmp_path):
    model_config = MixMagConfig(in_dim=D, dim=32, depth=1, heads=2, mask_ratio=0.5)
    config = MEMTrainConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=5, log_every=20)
    reports = []
    result = run_to_end(train_mem(_structured_slides(), model_config, tmp_path, config), reports.append)
    assert [r.done for r in reports] == [20, 40, 60, 60]
    assert np.mean(result.losses[:5]) > 0.5  # cosine loss of an untrained predictor
    assert np.mean(result.losses[-5:]) < 0.25
    assert result.checkpoint == tmp_path / "mem_final.json" and result.checkpoint.exists()


def test_mem_resume_matches_an_uninterrupted_run(tmp_path):
    slides = _structured_slides(regions=20)
    model_config = MixMagConfig(
        in_dim=D, dim=16, depth=1, heads=2, objective="cmem", feature_noise=0.1, dropout=0.1
    )
    config = MEMTrainConfig(steps=6, batch_size=8, warmup_steps=2, checkpoint_every=3, log_every=1)
    full = run_to_end(train_mem(slides, model_config, tmp_path / "full", config))
    interrupted = train_mem(slides, model_config, tmp_path / "cut", config)
    for report in interrupted:  # stop consuming right after the step-3 checkpoint
        if report.message.startswith("saved"):
            break
    interrupted.close()
    assert not (tmp_path / "cut" / "mem_final.json").exists()
    resumed = run_to_end(
        train_mem(slides, None, tmp_path / "cut", config, resume_from=tmp_path / "cut" / "mem_step000003")
    )
    assert resumed.losses == full.losses
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_mem_resume_errors(tmp_path):
    slides = _structured_slides(regions=8)
    config = MEMTrainConfig(steps=2, batch_size=4, warmup_steps=0)
    run_to_end(train_mem(slides, MixMagConfig(in_dim=D, dim=16, depth=1, heads=2), tmp_path, config))
    narrow = [RegionTokens(s.tokens[:, :, :8], s.token_present, s.region_coords, 896.0) for s in slides]
    with pytest.raises(FeatureDimMismatch, match=f"expects D={D} features but the encoder 'uni' gives 8"):
        run_to_end(
            train_mem(narrow, None, tmp_path, config, resume_from=tmp_path / "mem_final", encoder="uni")
        )
    with pytest.raises(ValueError, match="pass model_config=None to resume"):
        run_to_end(
            train_mem(slides, MixMagConfig(in_dim=D), tmp_path, config, resume_from=tmp_path / "mem_final")
        )
    plain = tiny()
    save_checkpoint(tmp_path / "plain", plain, plain.config)
    with pytest.raises(ValueError, match="no MEM training state"):
        run_to_end(train_mem(slides, None, tmp_path, config, resume_from=tmp_path / "plain"))
    with pytest.raises(ValueError, match="give model_config"):
        run_to_end(train_mem(slides, None, tmp_path, config))


@pytest.mark.parametrize(
    ("readout", "per_slide"),
    [
        ("cls", lambda s: len(s.tokens)),
        ("cls+tile", lambda s: len(s.tokens)),
        ("tokens", lambda s: int(s.token_present[:, 5:].sum())),
    ],
)
def test_region_bags(readout, per_slide):
    slides = _structured_slides(regions=10)
    model = tiny(readout=readout)
    bags = region_bags(model, slides, batch_size=4)
    assert list(bags) == ["s0", "s1"]
    for slide in slides:
        assert bags[slide.slide_id].shape == (per_slide(slide), model.instance_dim)
        assert bags[slide.slide_id].dtype == np.float32
    unnamed = [RegionTokens(s.tokens, s.token_present, s.region_coords, 896.0) for s in slides]
    with pytest.raises(ValueError, match="unique, non-empty slide_id"):
        region_bags(model, unnamed)


def test_mem_standardises_tokens_with_the_pool_statistics(tmp_path):
    from safetensors.torch import save_file

    from napari_care.core.checkpoint import load_checkpoint

    scale = np.logspace(-3, 1, D)  # dimensions of very different scale, as with the built-in descriptor
    slides = [
        RegionTokens(
            (s.tokens * scale + 5.0).astype(np.float32), s.token_present, s.region_coords, 896.0, s.slide_id
        )
        for s in _structured_slides(regions=12)
    ]
    model_config = MixMagConfig(in_dim=D, dim=16, depth=1, heads=2)
    config = MEMTrainConfig(steps=2, batch_size=4, warmup_steps=0)
    model = run_to_end(train_mem(slides, model_config, tmp_path, config)).model
    present = np.concatenate([s.tokens[s.token_present] for s in slides]).astype(np.float64)
    np.testing.assert_allclose(model.feature_mean.numpy(), present.mean(0), rtol=1e-5)
    np.testing.assert_allclose(model.feature_std.numpy(), present.std(0), rtol=1e-4)
    # raw tokens through the model == standardised tokens through an identity-statistics twin
    twin = MixMagEncoder(model_config).eval()
    twin.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("feature_")}, strict=False
    )
    tokens, token_present = torch.from_numpy(slides[0].tokens), torch.from_numpy(slides[0].token_present)
    with torch.no_grad():
        torch.testing.assert_close(
            model(tokens, token_present).cls,
            twin((tokens - model.feature_mean) / model.feature_std, token_present).cls,
        )
    # the 20x tiles' ZCA whitening (cls+tile readout): W (C + shrinkage) W = I, W symmetric
    tiles = np.concatenate(
        [s.tokens[:, FIRST_20X_TOKEN:][s.token_present[:, FIRST_20X_TOKEN:]] for s in slides]
    )
    tiles = (tiles - present.mean(0)) / present.std(0)
    covariance = np.cov(tiles.T, bias=True)
    whitening = model.tile_whitening.double().numpy()
    shrunk = covariance + 1e-3 * np.linalg.eigvalsh(covariance).max() * np.eye(D)
    np.testing.assert_allclose(whitening @ shrunk @ whitening, np.eye(D), atol=2e-3)
    np.testing.assert_allclose(whitening, whitening.T, atol=1e-5)
    with pytest.raises(ValueError, match="finite"):
        model.set_tile_whitening(torch.eye(D - 1))
    # the statistics travel in the checkpoint
    loaded = load_checkpoint(tmp_path / "mem_final", MixMagEncoder)[0]
    np.testing.assert_allclose(
        region_bags(loaded, slides[:1])["s0"], region_bags(model, slides[:1])["s0"], rtol=1e-5, atol=1e-6
    )
    # a checkpoint from before the statistics loads as the identity
    old = save_checkpoint(tmp_path / "old", twin, model_config)
    save_file(
        {
            k: v
            for k, v in twin.state_dict().items()
            if k not in ("feature_mean", "feature_std", "tile_whitening")
        },
        str(tmp_path / "old.safetensors"),
        metadata={"format": "napari_care.checkpoint"},
    )
    loaded = load_checkpoint(old, MixMagEncoder)[0]
    assert torch.equal(loaded.feature_mean, torch.zeros(D)) and torch.equal(loaded.feature_std, torch.ones(D))
    assert torch.equal(loaded.tile_whitening, torch.eye(D))
    raw = run_to_end(
        train_mem(
            slides,
            model_config,
            tmp_path / "raw",
            MEMTrainConfig(steps=1, batch_size=4, warmup_steps=0, standardise_tokens=False),
        )
    ).model
    assert torch.equal(raw.feature_std, torch.ones(D)) and torch.equal(raw.tile_whitening, torch.eye(D))
