"""AB-MIL head and its training loop (napari_care.core.models.abmil, napari_care.core.train.mil)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from napari_care.core.checkpoint import load_checkpoint
from napari_care.core.models.abmil import ABMIL, ABMILConfig, pad_bags
from napari_care.core.progress import run_to_end
from napari_care.core.train.mil import MILTrainConfig, load_attention, stratified_split, train_mil

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def model() -> ABMIL:
    torch.manual_seed(0)
    return ABMIL(ABMILConfig(in_dim=8, hidden=16, attn_dim=8, n_classes=3, dropout=0.0)).eval()


def test_single_bag_shapes_and_softmax(model):
    logits, attention = model(torch.randn(25, 8))
    assert logits.shape == (3,) and attention.shape == (25,)
    assert torch.all(attention >= 0)
    assert float(attention.detach().sum()) == pytest.approx(1.0, abs=1e-6)


def test_padded_batch_matches_single_bags(model):
    bags = [torch.randn(n, 8) for n in (5, 17, 9)]
    batch, mask = pad_bags(bags)
    assert batch.shape == (3, 17, 8) and mask.sum(dim=1).tolist() == [5, 17, 9]
    logits, attention = model(batch, mask)
    assert logits.shape == (3, 3) and attention.shape == (3, 17)
    for b, bag in enumerate(bags):
        single_logits, single_attention = model(bag)
        torch.testing.assert_close(logits[b], single_logits, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(attention[b, : len(bag)], single_attention, atol=1e-6, rtol=1e-5)
        assert torch.all(attention[b, len(bag) :] == 0)


def test_permutation_invariance(model):
    bag = torch.randn(40, 8)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    logits, attention = model(bag)
    shuffled_logits, shuffled_attention = model(bag[order])
    torch.testing.assert_close(shuffled_logits, logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(shuffled_attention, attention[order], atol=1e-7, rtol=1e-5)


def test_bad_input(model):
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        model(torch.randn(10, 7))
    with pytest.raises(ValueError, match="empty bag"):
        model(torch.randn(0, 8))
    with pytest.raises(ValueError, match="all masked"):
        model(torch.randn(2, 4, 8), torch.tensor([[True] * 4, [False] * 4]))
    with pytest.raises(ValueError, match="n_classes"):
        ABMILConfig(in_dim=8, n_classes=1)


def test_stratified_split_keeps_class_shares():
    labels = np.array([0] * 50 + [1] * 20)
    split = stratified_split(labels, 0.2, 0.2, seed=3)
    assert (split[labels == 0] == "test").sum() == 10 and (split[labels == 0] == "val").sum() == 10
    assert (split[labels == 1] == "test").sum() == 4 and (split[labels == 1] == "val").sum() == 4
    assert np.array_equal(split, stratified_split(labels, 0.2, 0.2, seed=3))
    with pytest.raises(ValueError, match="too few"):
        stratified_split(np.array([0, 0, 1]), 0.4, 0.4, seed=0)


def _toy_cohort(tmp_path, n_slides=40, with_split=False, signal=4.0):
    """Positive slides hide 5 'tumour' instances (feature 0 shifted by signal) among 20-60 others."""
    rng = np.random.default_rng(0)
    slide_ids = [f"slide{i:02d}" for i in range(n_slides)]
    labels = ["tumour" if i % 2 else "normal" for i in range(n_slides)]
    bags = {}
    for slide_id, label in zip(slide_ids, labels, strict=True):
        bag = rng.normal(size=(int(rng.integers(20, 60)), 8)).astype(np.float32)
        if label == "tumour":
            bag[:5, 0] += signal
        bags[slide_id] = bag
    csv_path = tmp_path / "labels.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "label"] + (["split"] if with_split else []))
        for i, (slide_id, label) in enumerate(zip(slide_ids, labels, strict=True)):
            split = ["train", "train", "train", "val", "test"][i % 5] if with_split else None
            writer.writerow([slide_id, label] + ([split] if with_split else []))
    return csv_path, bags


FAST = MILTrainConfig(max_epochs=25, patience=6, lr=2e-3, hidden=32, attn_dim=16, dropout=0.0)


def test_train_mil_learns_and_writes_outputs(tmp_path):
    csv_path, bags = _toy_cohort(tmp_path)
    messages = []
    result = run_to_end(
        train_mil(csv_path, bags, tmp_path / "out", FAST), lambda p: messages.append(p.message)
    )
    assert result.class_names == ["normal", "tumour"]
    assert result.metrics["test_auroc"] >= 0.9
    assert result.metrics["test_balanced_accuracy"] >= 0.75
    assert result.metrics["n_slides"] == {"train": 24, "val": 8, "test": 8}
    assert messages[-1].startswith("test AUROC")
    # Attention finds the tumour instances of positive slides.
    attention = load_attention(result.attention_npz)
    assert set(attention) == set(bags)
    positive_attention = [attention[f"slide{i:02d}"] for i in range(1, 40, 2)]
    assert np.mean([a[:5].sum() for a in positive_attention]) > 0.5
    assert all(a.sum() == pytest.approx(1.0, abs=1e-5) for a in attention.values())
    with open(result.predictions_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 40 and set(rows[0]) == {
        "slide_id",
        "split",
        "label",
        "predicted",
        "prob_normal",
        "prob_tumour",
    }
    assert json.loads(result.metrics_json.read_text())["best_epoch"] == result.metrics["best_epoch"]
    head, config, extra = load_checkpoint(result.checkpoint)
    assert config.in_dim == 8 and extra["class_names"] == ["normal", "tumour"]
    bag = torch.as_tensor(bags["slide01"])
    torch.testing.assert_close(head(bag).logits, result.model(bag).logits)


def test_train_mil_uses_split_column_and_stops_early(tmp_path):
    csv_path, bags = _toy_cohort(tmp_path, with_split=True, signal=0.0)  # nothing to learn: val loss rises
    config = MILTrainConfig(max_epochs=40, patience=2, lr=5e-3, hidden=16, attn_dim=8, dropout=0.0)
    result = run_to_end(train_mil(csv_path, bags, tmp_path / "out", config))
    assert result.metrics["n_slides"] == {"train": 24, "val": 8, "test": 8}
    assert result.metrics["epochs_run"] < 40
    assert result.metrics["epochs_run"] == result.metrics["best_epoch"] + 2


def test_train_mil_reports_missing_bags(tmp_path):
    csv_path, bags = _toy_cohort(tmp_path)
    del bags["slide03"]
    with pytest.raises(ValueError, match=r"1 slides have no bag.*slide03"):
        run_to_end(train_mil(csv_path, bags, tmp_path / "out", FAST))
    (tmp_path / "bad.csv").write_text("slide,label\na,0\n")
    with pytest.raises(ValueError, match="needs columns 'slide_id' and 'label'"):
        run_to_end(train_mil(tmp_path / "bad.csv", bags, tmp_path / "out", FAST))


def test_standardisation_is_part_of_the_head(model, tmp_path):
    from napari_care.core.checkpoint import save_checkpoint

    rng = np.random.default_rng(2)
    instances = torch.as_tensor(rng.normal(5.0, 3.0, (200, 8)).astype(np.float32))
    instances[:, 7] = 2.5  # a constant dimension is only centred
    model.set_feature_stats(instances)
    torch.testing.assert_close(model.feature_mean, instances.double().mean(0).float())
    assert float(model.feature_std[7]) == 1.0
    torch.testing.assert_close(
        model.feature_std[:7], instances[:, :7].double().std(0, unbiased=False).float()
    )
    # raw features through the head == standardised features through an identity-stats twin
    twin = ABMIL(model.config).eval()
    twin.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("feature_")}, strict=False
    )
    bag = instances[:30]
    standardised = (bag - model.feature_mean) / model.feature_std
    torch.testing.assert_close(model(bag).logits, twin(standardised).logits)
    # the statistics travel in the checkpoint
    loaded, _, _ = load_checkpoint(save_checkpoint(tmp_path / "head", model, model.config))
    torch.testing.assert_close(loaded.feature_std, model.feature_std)
    torch.testing.assert_close(loaded(bag).attention, model(bag).attention)


def test_checkpoint_without_statistics_loads_as_identity(model, tmp_path):
    from safetensors.torch import save_file

    from napari_care.core.checkpoint import save_checkpoint

    json_path = save_checkpoint(tmp_path / "old", model, model.config)
    old_weights = {k: v for k, v in model.state_dict().items() if not k.startswith("feature_")}
    save_file(old_weights, str(tmp_path / "old.safetensors"), metadata={"format": "napari_care.checkpoint"})
    loaded, _, _ = load_checkpoint(json_path)
    assert torch.equal(loaded.feature_mean, torch.zeros(8)) and torch.equal(loaded.feature_std, torch.ones(8))
    bag = torch.randn(12, 8)
    torch.testing.assert_close(loaded(bag).logits, model(bag).logits)


def test_train_mil_stores_training_statistics(tmp_path):
    csv_path, bags = _toy_cohort(tmp_path, with_split=True)
    bags = {slide_id: bag * 50.0 + 300.0 for slide_id, bag in bags.items()}  # scale must not matter
    result = run_to_end(train_mil(csv_path, bags, tmp_path / "out", FAST))
    train_ids = [f"slide{i:02d}" for i in range(40) if i % 5 < 3]
    train_instances = np.concatenate([bags[s] for s in train_ids]).astype(np.float64)
    np.testing.assert_allclose(result.model.feature_mean.numpy(), train_instances.mean(0), rtol=1e-5)
    np.testing.assert_allclose(result.model.feature_std.numpy(), train_instances.std(0), rtol=1e-5)
    everything = np.concatenate(list(bags.values())).astype(np.float64)
    assert not np.allclose(
        result.model.feature_mean.numpy(), everything.mean(0), rtol=1e-6
    )  # val/test left out
    assert result.metrics["test_auroc"] >= 0.9
    head, _, _ = load_checkpoint(result.checkpoint)
    torch.testing.assert_close(head.feature_mean, result.model.feature_mean)


def test_feature_stats_merged_bag_by_bag_equal_those_of_all_instances():
    generator = torch.Generator().manual_seed(0)
    bags = [torch.randn(n, 5, generator=generator) * 50 + 300 for n in (3, 7, 1, 20)]
    model = ABMIL(ABMILConfig(5))
    model.set_feature_stats(iter(bags))  # a generator: never concatenated
    every = torch.cat(bags).double()
    torch.testing.assert_close(model.feature_mean.double(), every.mean(0), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(model.feature_std.double(), every.std(0, unbiased=False), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="at least one"):
        model.set_feature_stats([torch.zeros(0, 5)])


def test_two_pools_over_column_blocks():
    torch.manual_seed(0)
    head = ABMIL(ABMILConfig(in_dim=8, hidden=16, attn_dim=8, dropout=0.0, split_at=3)).eval()
    head.set_feature_stats(torch.randn(50, 8) * 3 + 1)
    assert [pool.embed[0].in_features for pool in head.pools] == [3, 5] and head.classifier.in_features == 32
    bag = torch.randn(12, 8)
    logits, attention = head(bag)
    assert logits.shape == (2,) and attention.shape == (12,)
    assert float(attention.detach().sum()) == pytest.approx(1.0, abs=1e-6)
    standardised = ((bag - head.feature_mean) / head.feature_std).unsqueeze(0)
    (first, first_attention), (second, second_attention) = (
        pool(block, None)
        for pool, block in zip(head.pools, (standardised[..., :3], standardised[..., 3:]), strict=True)
    )
    torch.testing.assert_close(logits, head.classifier(torch.cat([first, second], dim=-1))[0])
    torch.testing.assert_close(attention, (first_attention[0] + second_attention[0]) / 2)
    # the first pool's attention depends on its own columns only
    changed = bag.clone()
    changed[:, 3:] = torch.randn(12, 5)
    changed_standardised = ((changed - head.feature_mean) / head.feature_std).unsqueeze(0)
    torch.testing.assert_close(head.pools[0](changed_standardised[..., :3], None)[1], first_attention)
    assert not torch.allclose(head(changed).attention, attention)
    batch, mask = pad_bags([bag, bag[:5]])
    torch.testing.assert_close(head(batch, mask).logits[1], head(bag[:5]).logits)
    for split_at in (-1, 8, 9):
        with pytest.raises(ValueError, match="split_at"):
            ABMILConfig(in_dim=8, split_at=split_at)


def test_checkpoint_with_the_one_pool_at_the_top_level_loads(model, tmp_path):
    gates = {
        "attention.value": "attention_v",
        "attention.gate": "attention_u",
        "attention.score": "attention_w",
    }

    def old_gate_names(key: str) -> str:
        for new, old in gates.items():
            key = key.replace(new, old)
        return key

    pooled = {
        old_gate_names(key): value for key, value in model.state_dict().items()
    }  # before GatedAttention
    renamed = {key.replace("pools.0.", ""): value for key, value in pooled.items()}
    assert "embed.0.weight" in renamed and "attention_w.weight" in renamed  # the layout before the pools
    bag = torch.randn(7, 8)
    for state in (renamed, pooled):
        twin = ABMIL(model.config).eval()
        twin.load_state_dict(state)
        torch.testing.assert_close(twin(bag).logits, model(bag).logits)


def test_train_mil_with_two_pools_round_trips_to_the_viewer(tmp_path):
    from napari_care.core.mil.heads import load_mil_head

    csv_path, bags = _toy_cohort(tmp_path)
    config = MILTrainConfig(
        max_epochs=25, patience=6, lr=2e-3, hidden=32, attn_dim=16, dropout=0.0, split_at=4
    )
    result = run_to_end(train_mil(csv_path, bags, tmp_path / "out", config))
    assert result.metrics["test_auroc"] >= 0.9  # the signal sits in column 0, the first pool
    head, model_config, _ = load_checkpoint(result.checkpoint)
    assert model_config.split_at == 4
    bag = bags["slide01"]
    torch.testing.assert_close(head(torch.as_tensor(bag)).logits, result.model(torch.as_tensor(bag)).logits)
    viewer_head = load_mil_head(tmp_path / "out")
    output = viewer_head.apply(bag)
    assert output.attention.shape == (len(bag),) and output.attention.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(
        output.probabilities,
        torch.softmax(result.model(torch.as_tensor(bag)).logits, -1).detach().numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
