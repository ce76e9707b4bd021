"""CARE Stage II: molecular tables, gradients into the region generator, retrieval, schedule."""

import csv

import numpy as np
import pytest
import torch

from napari_care.core.checkpoint import load_checkpoint
from napari_care.core.models.care import CareConfig, CareModel, pad_slides
from napari_care.core.molecular import (
    ProteinTable,
    RNATable,
    load_protein_table,
    load_rna_table,
    molecular_encoder,
)
from napari_care.core.progress import run_to_end
from napari_care.core.train.care_stage2 import (
    Stage2Config,
    Stage2Network,
    aligned_vectors,
    contrastive_loss,
    pretrain_care_stage2,
    retrieval_top1,
    train_care_stage2,
)
from napari_care.core.train.feature_views import SlideFeatures

DIM, GENES = 12, 40
CARE_CONFIG = CareConfig(in_dim=DIM, embed_dim=16, heads=2, k=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mixed_slides(n: int, side: int = 8):
    """Slides of four tissue types cut at random lines; the 'RNA' is a linear map of the tissue mix."""
    prototypes = np.random.default_rng(0).normal(size=(4, DIM)) * 2
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    slides, mixes = [], []
    for seed in range(n):
        rng = np.random.default_rng(seed + 1)
        cut = rng.uniform(0.1, 0.9, size=2) * side
        truth = (grid[:, 0] > cut[0]).astype(int) + 2 * (grid[:, 1] > cut[1])
        features = prototypes[truth] + rng.normal(size=(len(grid), DIM))
        slides.append(SlideFeatures(features.astype(np.float32), grid, f"s{seed}", "toy"))
        mixes.append(np.bincount(truth, minlength=4) / len(truth))
    genes = np.array(mixes) @ np.random.default_rng(9).normal(size=(4, GENES))
    table = RNATable(
        tuple(s.slide_id for s in slides), genes.astype(np.float32), tuple(f"g{i}" for i in range(GENES))
    )
    return slides, table


def tiny_config(**options) -> Stage2Config:
    values = {
        "steps": 100,
        "batch_size": 16,
        "lr": 3e-3,
        "warmup_steps": 3,
        "log_every": 20,
        "proj_dim": 16,
        "molecular_dim": 16,
        "temperature": 0.1,
    }
    return Stage2Config(**{**values, **options})


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_tables_read_rna_values_and_top_proteins(tmp_path):
    rna = load_rna_table(
        write_csv(
            tmp_path / "rna.csv", ["case", "TP53", "EGFR"], [["a", "1", "3"], ["b", "", "7"], ["c", "3", "0"]]
        ),
        log1p=True,
    )
    assert rna.slide_ids == ("a", "b", "c") and rna.gene_names == ("TP53", "EGFR")
    np.testing.assert_allclose(rna.values[:, 1], np.log1p([3, 7, 0]), rtol=1e-6)
    assert rna.values[1, 0] == pytest.approx(np.mean(np.log1p([1, 3])))  # a gap becomes the gene mean
    levels = load_protein_table(
        write_csv(
            tmp_path / "rppa.csv",
            ["slide_id", "P1", "P2", "P3"],
            [["a", "0.1", "2", "-1"], ["b", "5", "NA", "1"]],
        ),
        top_k=2,
    )
    np.testing.assert_array_equal(levels.tokens, [[1, 0], [0, 2]])
    named = load_protein_table(
        write_csv(tmp_path / "top.csv", ["slide_id", "p1", "p2"], [["a", "MYC", "KRAS"], ["b", "KRAS", ""]]),
        top_k=3,
    )
    assert named.protein_names == ("KRAS", "MYC")
    np.testing.assert_array_equal(named.tokens, [[1, 0, -1], [0, -1, -1]])
    with pytest.raises(ValueError, match="numbers"):
        load_rna_table(write_csv(tmp_path / "bad.csv", ["slide_id", "g"], [["a", "high"]]))


def test_encoders_map_profiles_to_the_alignment_space():
    _slides, table = mixed_slides(4)
    rna = molecular_encoder(table, out_dim=8, dim=16)
    assert rna(torch.from_numpy(table.values)).shape == (4, 8)
    np.testing.assert_allclose(rna.gene_mean.numpy(), table.values.mean(axis=0), rtol=1e-5, atol=1e-6)
    proteins = ProteinTable(("a", "b"), np.array([[2, 0, -1], [1, -1, -1]]), ("X", "Y", "Z"))
    encoder = molecular_encoder(proteins, out_dim=8, dim=16)
    assert encoder(torch.from_numpy(proteins.tokens)).shape == (2, 8)


def test_gradients_reach_the_region_generator():
    slides, table = mixed_slides(4)
    torch.manual_seed(0)
    network = Stage2Network(
        CareModel(CARE_CONFIG), molecular_encoder(table, out_dim=16, dim=16), tiny_config()
    )
    features, grid, valid = pad_slides([(s.features, s.grid) for s in slides])
    loss = contrastive_loss(network, features, grid, valid, torch.from_numpy(table.values))
    loss.backward()
    care = network.care
    generator = {
        "block query": care.block_encoder.query,
        "block CLS": care.block_encoder.cls_token,
        "block attention": care.block_encoder.layers[0].attention.query.weight,
        "block position": care.block_position.weight,
    }
    for name, parameter in generator.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_alignment_makes_slides_find_their_profile(tmp_path):
    slides, table = mixed_slides(16)
    config = tiny_config()
    torch.manual_seed(0)
    before = Stage2Network(CareModel(CARE_CONFIG), molecular_encoder(table, out_dim=16, dim=16), config)
    chance_like = retrieval_top1(*aligned_vectors(before, slides, table))
    result = run_to_end(train_care_stage2(slides, table, tmp_path, config, model_config=CARE_CONFIG))
    assert np.mean(result.losses[-10:]) < 0.8 * np.mean(result.losses[:10])
    after = retrieval_top1(*aligned_vectors(result.network, slides, table))
    assert after >= 0.3 and after > chance_like + 0.2  # chance is 1/16
    model, _, extra = load_checkpoint(result.checkpoint)
    assert isinstance(model, CareModel) and extra["modality"] == "rna" and extra["step"] == 100


def test_schedule_runs_rna_then_protein_and_resumes_a_phase(tmp_path):
    slides, rna = mixed_slides(6)
    proteins = ProteinTable(rna.slide_ids, np.argsort(-rna.values, axis=1)[:, :3], rna.gene_names)
    config = tiny_config(steps=4, batch_size=4, checkpoint_every=2)
    results = run_to_end(
        pretrain_care_stage2(slides, rna, proteins, tmp_path / "a", config, model_config=CARE_CONFIG)
    )
    assert [r.modality for r in results] == ["rna", "protein"]
    # The protein phase starts from the RNA phase's model and projection.
    resumed = run_to_end(
        pretrain_care_stage2(
            slides,
            rna,
            proteins,
            tmp_path / "b",
            config,
            resume_from=tmp_path / "a" / "care_stage2_protein_step000002.json",
        )
    )
    assert [r.modality for r in resumed] == ["protein"]
    assert resumed[0].losses == results[1].losses
    for name, value in results[1].network.state_dict().items():
        assert torch.equal(resumed[0].network.state_dict()[name], value), name
