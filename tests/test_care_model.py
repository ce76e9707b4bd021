"""CARE model: block geometry, ARG, ARSA, SPF, RSL, batching and scaling."""

import numpy as np
import pytest
import torch

from napari_care.core.care_run import segment_features
from napari_care.core.models.care import CareConfig, CareModel, pad_slides
from napari_care.core.models.care_attention import group_batches
from napari_care.core.models.care_blocks import block_partition, candidate_blocks
from napari_care.core.models.care_free import CareFreeConfig, segment_free

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def full_grid(width: int, height: int) -> np.ndarray:
    gx, gy = np.meshgrid(np.arange(width), np.arange(height))
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def two_type_slide(side: int = 24, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    grid = full_grid(side, side)
    truth = (grid[:, 1] > side / 2 + 3 * np.sin(grid[:, 0] / 3)).astype(np.int64)
    features = rng.normal(size=(2, dim))[truth] + rng.normal(size=(len(grid), dim))
    return torch.tensor(features, dtype=torch.float32), grid


def small_model(**options) -> CareModel:
    torch.manual_seed(0)
    config = CareConfig(**{"in_dim": 16, "embed_dim": 16, "heads": 2, "k": 4, **options})
    return CareModel(config)


def test_candidates_are_the_three_nearest_blocks_with_gaussian_containment():
    grid = full_grid(12, 12)  # k = 4: 3 x 3 blocks, ids by * 3 + bx
    blocks = block_partition(grid, k=4)
    assert blocks.n_blocks == 9
    np.testing.assert_allclose(blocks.anchors[4], [5.5, 5.5])
    candidates = candidate_blocks(grid, blocks, n_candidates=3, temperature=0.5)
    patch = np.flatnonzero((grid[:, 0] == 4) & (grid[:, 1] == 4))[0]
    # Patch (4, 4) sits 1.5 left of and above the centre of block 4: own block first, then
    # the blocks above (1) and to the left (3), both at squared distance 8.5 (tie: row-major).
    np.testing.assert_array_equal(candidates.blocks[patch], [4, 1, 3])
    squared = np.array([12.5, 8.5, 30.25 + 6.25, 8.5, 4.5, 30.25 + 2.25, 36.5, 32.5, 60.5]) / 16
    kernel = np.exp(-squared / 0.5)
    np.testing.assert_allclose(candidates.containment[patch], kernel[[4, 1, 3]] / kernel.sum())
    # An isolated block has only itself as candidate.
    lonely = candidate_blocks(
        np.array([[0, 0], [1, 1], [40, 40]]), block_partition(np.array([[0, 0], [1, 1], [40, 40]]), k=4)
    )
    np.testing.assert_array_equal(lonely.blocks[2], [1, -1, -1])
    np.testing.assert_array_equal(lonely.containment[2], [1.0, 0.0, 0.0])


@pytest.mark.parametrize("affinity_prior", ["none", "input"])
def test_rsl_target_moves_the_expected_rank(affinity_prior):
    features, grid = two_type_slide()
    final = {}
    for e_star in (0.0, 1.0):
        model = small_model(e_star=e_star, affinity_prior=affinity_prior)
        start = float(model.eval()(features, grid).expected_rank.detach())
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
        # With the input prior the RSL acts through two learned scales (the prior's weight
        # and the learned affinity's, which starts at 0), so it needs more steps.
        for _ in range(12 if affinity_prior == "none" else 30):
            output = model(features, grid)
            optimizer.zero_grad()
            output.rsl.backward()
            optimizer.step()
        with torch.no_grad():
            final[e_star] = float(model.eval()(features, grid).expected_rank)
    assert final[0.0] < start - 0.1
    assert final[1.0] > start + 0.2
    assert final[1.0] - final[0.0] > 0.4


def test_weights_sum_to_one_and_roi_is_argmax():
    features, grid = two_type_slide()
    output = small_model().eval()(features, grid)
    n_regions = int(output.region_of_patch.max()) + 1
    assert output.region_features.shape == (n_regions, 16)
    for weights in (output.alpha, output.beta, output.a):
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-5)
    assert output.roi == int(output.a.argmax())
    torch.testing.assert_close(output.roi_feature, output.region_features[output.roi])
    torch.testing.assert_close(output.slide_embedding, output.a @ output.region_features)
    sizes = torch.bincount(output.region_of_patch, minlength=n_regions).float()
    torch.testing.assert_close(output.alpha, sizes / len(grid))
    assert float(output.patch_attention.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(output.rsl) == pytest.approx((float(output.expected_rank) - 0.5) ** 2, abs=1e-6)
    result = output.to_result()
    assert result.mode == "model" and result.n_regions == n_regions and result.roi == output.roi


def test_permuting_patches_permutes_the_output():
    features, grid = two_type_slide()
    model = small_model().eval()
    order = np.random.default_rng(5).permutation(len(grid))
    with torch.no_grad():
        output = model(features, grid)
        permuted = model(features[order], grid[order])
    # Region ids follow block order, so they match even without relabelling.
    torch.testing.assert_close(permuted.region_of_patch, output.region_of_patch[order])
    torch.testing.assert_close(permuted.patch_attention, output.patch_attention[order])
    torch.testing.assert_close(permuted.slide_embedding, output.slide_embedding, rtol=1e-4, atol=1e-5)


def test_dimensions_follow_the_config():
    torch.manual_seed(0)
    model = CareModel(CareConfig(in_dim=24, embed_dim=12, heads=3, k=2)).eval()
    grid = full_grid(6, 5)
    output = model(torch.randn(len(grid), 24), grid)
    assert output.slide_embedding.shape == (12,) and output.roi_feature.shape == (12,)
    assert output.region_features.shape[1] == 12 and output.block_of_patch.max() == 8
    with pytest.raises(ValueError, match="24"):
        model(torch.randn(len(grid), 23), grid)
    with pytest.raises(ValueError, match="grid has"):
        model(torch.randn(len(grid), 24), grid[:-1])
    with pytest.raises(ValueError, match="divisible"):
        CareConfig(in_dim=8, embed_dim=10, heads=3)
    with pytest.raises(ValueError, match="hard_assignment"):
        CareConfig(in_dim=8, hard_assignment="soft")
    config = CareConfig(in_dim=8, e_star=0.1)
    assert CareConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("mode", "affinity_prior"),
    [("straight-through", "none"), ("gumbel", "none"), ("straight-through", "input")],
)
def test_gradient_reaches_the_region_generator(mode, affinity_prior):
    features, grid = two_type_slide()
    model = small_model(hard_assignment=mode, affinity_prior=affinity_prior).train()
    if affinity_prior == "input":
        with torch.no_grad():  # as after some training: a fresh model's learned affinity weighs 0
            model.affinity_scale.fill_(0.5)
    head = torch.nn.Linear(16, 1)
    output = model(features, grid)
    # A main loss on the slide embedding alone (no RSL): its gradient reaches the block
    # encoder only through the hard assignment's gate.
    head(output.slide_embedding).sum().backward()
    generator = model.block_encoder
    parameters = [generator.cls_token, generator.query, generator.layers[0].attention.query.weight]
    if affinity_prior == "input":
        parameters += [model.affinity_scale, model.log_prior_scale]
    for parameter in parameters:
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0


def test_a_fresh_model_with_the_input_prior_cuts_as_the_training_free_generator():
    features, grid = two_type_slide()
    with torch.no_grad():
        output = small_model(affinity_prior="input").eval()(features, grid)
        paper = small_model(affinity_prior="none").eval()(features, grid)
    free = segment_free(features.numpy(), grid, CareFreeConfig(k=4))
    np.testing.assert_array_equal(output.candidate_rank.numpy(), free.candidate_rank)
    np.testing.assert_array_equal(output.block_of_patch.numpy(), free.block_of_patch)
    assert (paper.candidate_rank.numpy() != free.candidate_rank).mean() > 0.05  # random projections differ


def test_batch_matches_single_slides():
    first, grid_first = two_type_slide(side=20, seed=1)
    second, grid_second = two_type_slide(side=13, seed=2)
    model = small_model().eval()
    with torch.no_grad():
        batch = model.forward_batch(*pad_slides([(first, grid_first), (second, grid_second)]))
        singles = [model(first, grid_first), model(second, grid_second)]
    assert batch.n_slides == 2 and batch.patch_mask.sum() == len(grid_first) + len(grid_second)
    torch.testing.assert_close(batch.a.sum(dim=1), torch.ones(2))
    for index, single in enumerate(singles):
        sliced = batch.slide(index)
        torch.testing.assert_close(sliced.region_of_patch, single.region_of_patch)
        torch.testing.assert_close(sliced.slide_embedding, single.slide_embedding, rtol=1e-4, atol=1e-5)
        assert sliced.roi == single.roi


def test_segment_features_with_a_model_keeps_its_mode():
    features, grid = two_type_slide()
    model = small_model().train()
    result = segment_features(features.numpy(), grid, model=model)
    assert model.training and result.mode == "model"
    assert result.roi == int(np.argmax(result.a))  # the published ROI: argmax of the fused SPF weight
    assert result.method_label == "CARE (trained checkpoint)" and result.roi_rule.endswith("as published")
    np.testing.assert_array_equal(np.unique(result.region_of_patch), np.arange(result.n_regions))


def test_group_batches_respect_the_token_budget():
    group_of_token = np.repeat(np.arange(5), [3, 1, 4, 2, 4])
    batches = group_batches(group_of_token, 6, max_tokens=8)
    assert sorted(int(g) for batch in batches for g in batch.groups) == [0, 1, 2, 3, 4]  # 5 is empty
    for batch in batches:
        assert batch.index.numel() <= 8
        for group, index, mask in zip(batch.groups, batch.index, batch.mask, strict=True):
            np.testing.assert_array_equal(
                np.sort(index[mask].numpy()), np.flatnonzero(group_of_token == int(group))
            )


def test_fifty_thousand_patches_without_n_by_n_attention(monkeypatch):
    grid = full_grid(250, 200)
    features = torch.randn(len(grid), 8)
    model = CareModel(CareConfig(in_dim=8, embed_dim=8, heads=2)).eval()  # k = 8
    largest = {"keys": 0, "scores": 0}
    attention = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, **options):
        largest["keys"] = max(largest["keys"], k.shape[-2])
        largest["scores"] = max(largest["scores"], q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2])
        return attention(q, k, v, **options)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    with torch.no_grad():
        output = model(features, grid)
    # A region holds patches of at most its 3 x 3 block neighbourhood (+1 CLS token).
    assert 64 < largest["keys"] <= 9 * 64 + 1  # recorded, and bounded by the neighbourhood
    assert largest["scores"] <= 2 * 32768 * (9 * 64 + 1)  # one chunk, far below 50k^2 = 2.5e9
    assert output.region_of_patch.shape == (50_000,)
