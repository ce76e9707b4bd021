"""``napari-care pretrain ...``, ``train-mil`` and ``evaluate`` on tiny data; exit codes 0 and 2."""

from __future__ import annotations

import csv
import json

import click
import numpy as np
import pytest
from click.testing import CliRunner

from napari_care.cli import evaluate as _cli_evaluate
from napari_care.cli import train as _cli_train
from napari_care.core.features import PatchFeatures, save_features
from napari_care.core.models.mixmag import N_TOKENS

N_SLIDES, DIM = 18, 8
TINY_CARE = ["--k", "4", "--embed-dim", "16", "--heads", "2", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cli() -> click.Group:
    @click.group()
    def group() -> None:
        """Stand-in for napari_care.cli.app.main."""

    _cli_train.register(group)
    _cli_evaluate.register(group)
    return group


def invoke(cli, *args: str):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Feature files of 18 slides (two classes that shift the features), labels, RNA and protein tables."""
    root = tmp_path_factory.mktemp("cli_train")
    rng = np.random.default_rng(0)
    prototypes = rng.normal(size=(3, DIM)) * 2
    gx, gy = np.meshgrid(np.arange(10), np.arange(10))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    for name, dim in (("features", DIM), ("wide", DIM + 4)):
        (root / name).mkdir()
        for index in range(N_SLIDES):
            truth = (grid[:, 0] > 2 + index % 6).astype(int) + index % 2
            features = np.pad(prototypes[truth], ((0, 0), (0, dim - DIM))) + rng.normal(size=(len(grid), dim))
            save_features(
                root / name / f"s{index}.features.h5",
                PatchFeatures(features, grid * 224, 224, 224.0, 0.5, "default", f"s{index}"),
            )
    write_csv(
        root / "labels.csv",
        ["slide_id", "label"],
        [[f"s{i}", "odd" if i % 2 else "even"] for i in range(N_SLIDES)],
    )
    write_csv(
        root / "rna.csv",
        ["slide_id"] + [f"g{j}" for j in range(6)],
        [[f"s{i}", *list(rng.normal(size=6) + i % 2)] for i in range(N_SLIDES)],
    )
    write_csv(
        root / "protein.csv",
        ["slide_id", "P1", "P2", "P3", "P4"],
        [[f"s{i}", *list(rng.normal(size=4))] for i in range(N_SLIDES)],
    )
    (root / "tokens").mkdir()
    for index in range(4):
        tokens = rng.normal(size=(12, N_TOKENS, DIM)).astype(np.float32)
        np.savez(
            root / "tokens" / f"s{index}.npz",
            tokens=tokens,
            token_present=np.ones((12, N_TOKENS), bool),
            region_coords=np.zeros((12, 2), np.int64),
            region_size_level0=896.0,
            slide_id=f"s{index}",
        )
    return root


def test_every_command_has_help(cli):
    for command in (
        ["pretrain"],
        ["pretrain", "care-stage1"],
        ["pretrain", "care-stage2"],
        ["pretrain", "mixmag"],
        ["train-mil"],
        ["evaluate"],
    ):
        result = invoke(cli, *command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output, command


def test_stage1_recipe_options_reach_the_model_and_the_loss(cli, data, tmp_path):
    result = invoke(
        cli,
        "pretrain",
        "care-stage1",
        data / "features",
        "--out",
        tmp_path,
        "--steps",
        2,
        "--batch-size",
        2,
        "--affinity-prior",
        "input",
        "--consistency-weight",
        1,
        *TINY_CARE,
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "care_stage1_final.json").read_text())
    assert '"affinity_prior": "input"' in json.dumps(saved)
    assert '"consistency_weight": 1.0' in json.dumps(saved)
    consistency = saved["extra"]["components"]["consistency"]
    assert len(consistency) == 2 and all(value > 0 for value in consistency)  # the term was trained on
    wrong = invoke(
        cli,
        "pretrain",
        "care-stage1",
        data / "features",
        "--out",
        tmp_path / "x",
        "--affinity-prior",
        "learned",
        *TINY_CARE,
    )
    assert wrong.exit_code == 2 and "learned" in wrong.output


def test_stage1_runs_resumes_and_refuses_other_features(cli, data, tmp_path):
    result = invoke(
        cli,
        "pretrain",
        "care-stage1",
        data / "features",
        "--out",
        tmp_path,
        "--steps",
        4,
        "--batch-size",
        2,
        "--checkpoint-every",
        2,
        *TINY_CARE,
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "care_stage1_final.json").exists() and (
        tmp_path / "care_stage1_step000002.json"
    ).exists()
    resumed = invoke(
        cli,
        "pretrain",
        "care-stage1",
        data / "features",
        "--out",
        tmp_path / "r",
        "--steps",
        4,
        "--batch-size",
        2,
        "--resume",
        tmp_path / "care_stage1_step000002.json",
        "--quiet",
    )
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.splitlines()[0] == result.output.splitlines()[0]  # same losses
    checkpoint = tmp_path / "care_stage1_final.json"
    for args in (
        ["pretrain", "care-stage1", data / "wide", "--out", tmp_path / "w", "--resume", checkpoint],
        [
            "pretrain",
            "care-stage2",
            data / "wide",
            "--rna",
            data / "rna.csv",
            "--init",
            checkpoint,
            "--out",
            tmp_path / "w",
        ],
        ["evaluate", data / "wide", data / "labels.csv", "--out", tmp_path / "r.json", "--care", checkpoint],
    ):
        mismatch = invoke(cli, *args, "--quiet")
        assert mismatch.exit_code == 2, (args[:2], mismatch.output)
        assert (
            f"checkpoint {checkpoint} expects D={DIM} features but the encoder 'default' gives {DIM + 4}"
            in mismatch.stderr
        )


def test_stage2_runs_rna_then_protein(cli, data, tmp_path):
    result = invoke(
        cli,
        "pretrain",
        "care-stage2",
        data / "features",
        "--rna",
        data / "rna.csv",
        "--protein",
        data / "protein.csv",
        "--top-k",
        2,
        "--out",
        tmp_path,
        "--steps",
        3,
        "--batch-size",
        4,
        *TINY_CARE,
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("rna: 3 steps") and "protein: 3 steps" in result.output
    assert (tmp_path / "care_stage2_protein_final.json").exists()
    missing = invoke(cli, "pretrain", "care-stage2", data / "features", "--out", tmp_path)
    assert missing.exit_code == 2 and "--rna" in missing.stderr


def test_mixmag_and_mil_on_features_and_region_bags(cli, data, tmp_path):
    result = invoke(
        cli,
        "pretrain",
        "mixmag",
        data / "tokens",
        "--out",
        tmp_path / "mem",
        "--steps",
        3,
        "--batch-size",
        8,
        "--dim",
        16,
        "--depth",
        1,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    mil = invoke(
        cli,
        "train-mil",
        data / "labels.csv",
        data / "features",
        "--out",
        tmp_path / "mil",
        "--max-epochs",
        2,
        "--quiet",
    )
    assert mil.exit_code == 0, mil.output
    metrics = json.loads((tmp_path / "mil" / "metrics.json").read_text())
    assert metrics["n_slides"] == {"train": 10, "val": 4, "test": 4} and metrics["encoder"] == "default"
    # the head standardises with the training slides' instances (kept in its checkpoint)
    from napari_care.core.features import load_features
    from napari_care.core.mil.heads import load_mil_head

    with open(tmp_path / "mil" / "predictions.csv", newline="") as handle:
        train_ids = [row["slide_id"] for row in csv.DictReader(handle) if row["split"] == "train"]
    train_instances = np.concatenate(
        [load_features(data / "features" / f"{s}.features.h5").features for s in train_ids]
    ).astype(np.float64)
    head = load_mil_head(tmp_path / "mil")
    np.testing.assert_allclose(head.model.feature_mean.numpy(), train_instances.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.model.feature_std.numpy(), train_instances.std(0), rtol=1e-5)
    labels = write_csv(
        tmp_path / "four.csv",
        ["slide_id", "label", "split"],
        [["s0", "a", "train"], ["s1", "b", "train"], ["s2", "a", "val"], ["s3", "b", "test"]],
    )
    bags = invoke(
        cli,
        "train-mil",
        labels,
        data / "tokens",
        "--out",
        tmp_path / "mil_mem",
        "--mem",
        tmp_path / "mem" / "mem_final.json",
        "--max-epochs",
        1,
        "--quiet",
    )
    assert bags.exit_code == 0, bags.output
    assert (tmp_path / "mil_mem" / "attention.npz").exists()
    refused = invoke(
        cli,
        "train-mil",
        labels,
        data / "tokens",
        "--out",
        tmp_path / "mil_two",
        "--mem",
        tmp_path / "mem" / "mem_final.json",
        "--two-pools",
        "--quiet",
    )
    assert refused.exit_code == 2 and "cls+tile" in refused.stderr  # a cls checkpoint has no tile columns


def test_train_mil_two_pools_on_cls_plus_tile_tokens(cli, data, tmp_path):
    mem = invoke(
        cli,
        "pretrain",
        "mixmag",
        data / "tokens",
        "--out",
        tmp_path / "mem",
        "--steps",
        1,
        "--batch-size",
        4,
        "--dim",
        8,
        "--depth",
        1,
        "--readout",
        "cls+tile",
        "--quiet",
    )
    assert mem.exit_code == 0, mem.output
    labels = write_csv(
        tmp_path / "four.csv",
        ["slide_id", "label", "split"],
        [["s0", "a", "train"], ["s1", "b", "train"], ["s2", "a", "val"], ["s3", "b", "test"]],
    )
    mil = invoke(
        cli,
        "train-mil",
        labels,
        data / "tokens",
        "--out",
        tmp_path / "mil",
        "--mem",
        tmp_path / "mem" / "mem_final.json",
        "--two-pools",
        "--max-epochs",
        1,
        "--quiet",
    )
    assert mil.exit_code == 0, mil.output
    from napari_care.core.mil.heads import load_mil_head

    head = load_mil_head(tmp_path / "mil")
    assert head.model.config.split_at == 8 and len(head.model.pools) == 2


def test_pretrain_mixmag_standardise_tokens_flag(cli, data, tmp_path):
    from napari_care.core.checkpoint import load_checkpoint
    from napari_care.core.models.mixmag import MixMagEncoder

    stats = {}
    for flag in ("--standardise-tokens", "--no-standardise-tokens"):
        result = invoke(
            cli,
            "pretrain",
            "mixmag",
            data / "tokens",
            "--out",
            tmp_path / flag,
            "--steps",
            1,
            "--batch-size",
            4,
            "--dim",
            8,
            "--depth",
            1,
            "--quiet",
            "--readout",
            "cls+tile",
            flag,
        )
        assert result.exit_code == 0, result.output
        model, config, extra = load_checkpoint(tmp_path / flag / "mem_final.json", MixMagEncoder)
        assert extra["train_config"]["standardise_tokens"] is (flag == "--standardise-tokens")
        assert config.readout == "cls+tile" and model.instance_dim == 8 + DIM
        stats[flag] = model.feature_mean.abs().sum().item(), model.feature_std.numpy()
    assert stats["--standardise-tokens"][0] > 0 and not np.allclose(stats["--standardise-tokens"][1], 1.0)
    assert stats["--no-standardise-tokens"][0] == 0 and np.all(stats["--no-standardise-tokens"][1] == 1.0)


def test_evaluate_reads_features_npz_and_csv(cli, data, tmp_path):
    saved = tmp_path / "embeddings.npz"
    result = invoke(
        cli,
        "evaluate",
        data / "features",
        data / "labels.csv",
        "--out",
        tmp_path / "a.json",
        "--folds",
        3,
        "--save-embeddings",
        saved,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["n_samples"] == N_SLIDES and report["class_names"] == ["even", "odd"]
    assert report["summary"]["logistic"]["balanced_accuracy"]["mean"] > 0.8  # the classes shift the features
    with np.load(saved) as npz:
        slide_ids, vectors = list(npz["slide_id"]), npz["embedding"]
    assert vectors.shape == (N_SLIDES, DIM)
    table = write_csv(
        tmp_path / "embeddings.csv",
        ["slide_id"] + [f"e{j}" for j in range(DIM)],
        [[s, *list(v)] for s, v in zip(slide_ids, vectors, strict=True)],
    )
    again = invoke(cli, "evaluate", table, data / "labels.csv", "--out", tmp_path / "b.json", "--folds", 3)
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "b.json").read_text())["summary"] == report["summary"]
    survival = invoke(
        cli, "evaluate", saved, data / "labels.csv", "--out", tmp_path / "c.json", "--task", "survival"
    )
    assert survival.exit_code == 2 and "time" in survival.stderr
