"""Checkpoints: safetensors + JSON round trips, path forms, extra state, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from napari_care import __version__
from napari_care.core.checkpoint import (
    FeatureDimMismatch,
    check_feature_dim,
    checkpoint_paths,
    load_checkpoint,
    read_checkpoint_description,
    save_checkpoint,
)
from napari_care.core.models.abmil import ABMIL, ABMILConfig


@pytest.fixture()
def head() -> tuple[ABMIL, ABMILConfig]:
    torch.manual_seed(0)
    config = ABMILConfig(in_dim=12, hidden=16, attn_dim=8, n_classes=3, dropout=0.0)
    return ABMIL(config).eval(), config


def test_round_trip_gives_the_same_outputs(tmp_path, head):
    model, config = head
    json_path = save_checkpoint(tmp_path / "head", model, config)
    assert json_path == tmp_path / "head.json"
    assert (tmp_path / "head.safetensors").exists() and not (tmp_path / "head.state.pt").exists()
    loaded, loaded_config, extra = load_checkpoint(tmp_path / "head")
    assert type(loaded) is ABMIL and loaded_config == config and extra == {}
    assert not loaded.training
    bag = torch.randn(30, 12)
    expected_logits, expected_attention = model(bag)
    logits, attention = loaded(bag)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    torch.testing.assert_close(attention, expected_attention, rtol=0, atol=0)
    assert not list(tmp_path.glob("*.part"))


def test_description_names_classes_and_version(tmp_path, head):
    model, config = head
    save_checkpoint(tmp_path / "head", model, config, extra_state={"class_names": ["a", "b", "c"]})
    description = json.loads((tmp_path / "head.json").read_text())
    assert description["model_class"] == "napari_care.core.models.abmil.ABMIL"
    assert description["config_class"] == "napari_care.core.models.abmil.ABMILConfig"
    assert description["config"]["in_dim"] == 12
    assert description["napari_care_version"] == __version__
    assert description["extra"] == {"class_names": ["a", "b", "c"]}
    assert read_checkpoint_description(tmp_path / "head.safetensors")["config"]["n_classes"] == 3


def test_extra_state_splits_json_and_tensors(tmp_path, head):
    model, config = head
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 12)).logits.sum().backward()
    optimizer.step()
    save_checkpoint(
        tmp_path / "run", model, config, extra_state={"step": 7, "optimizer": optimizer.state_dict()}
    )
    assert (tmp_path / "run.state.pt").exists()
    assert json.loads((tmp_path / "run.json").read_text())["extra"] == {"step": 7}
    _, _, extra = load_checkpoint(tmp_path / "run.json")
    assert extra["step"] == 7
    restored = torch.optim.AdamW(model.parameters(), lr=1e-3)
    restored.load_state_dict(extra["optimizer"])
    first = next(iter(optimizer.state.values()))
    torch.testing.assert_close(next(iter(restored.state.values()))["exp_avg"], first["exp_avg"])
    # Saving again without tensors removes the stale sidecar.
    save_checkpoint(tmp_path / "run", model, config, extra_state={"step": 8})
    assert not (tmp_path / "run.state.pt").exists()
    assert load_checkpoint(tmp_path / "run")[2] == {"step": 8}


@pytest.mark.parametrize("form", ["prefix", "json", "safetensors", "folder"])
def test_path_forms(tmp_path, head, form):
    model, config = head
    folder = tmp_path / "ckpt"
    folder.mkdir()
    target = {
        "prefix": folder / "checkpoint",
        "json": folder / "checkpoint.json",
        "safetensors": folder / "checkpoint.safetensors",
        "folder": folder,
    }[form]
    save_checkpoint(target, model, config)
    assert checkpoint_paths(folder)[1] == folder / "checkpoint.json"
    assert load_checkpoint(folder)[1] == config


def test_feature_dim_mismatch_message(head):
    _, config = head
    check_feature_dim(config, 12)
    with pytest.raises(FeatureDimMismatch) as error:
        check_feature_dim(ABMILConfig(in_dim=768), 96, checkpoint="runs/abmil.json", encoder="default")
    assert str(error.value) == (
        "checkpoint runs/abmil.json expects D=768 features but the encoder 'default' gives 96"
    )
    assert isinstance(error.value, ValueError)


def test_weights_that_do_not_fit_the_config(tmp_path, head):
    model, config = head
    save_checkpoint(tmp_path / "head", model, config)
    description = json.loads((tmp_path / "head.json").read_text())
    description["config"]["hidden"] = 32
    (tmp_path / "head.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match="does not fit ABMIL"):
        load_checkpoint(tmp_path / "head")


def test_foreign_classes_and_bad_files_are_refused(tmp_path, head):
    model, config = head
    save_checkpoint(tmp_path / "head", model, config)
    description = json.loads((tmp_path / "head.json").read_text())
    description["model_class"] = "os.system"
    (tmp_path / "head.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match="outside napari_care"):
        load_checkpoint(tmp_path / "head")
    assert type(load_checkpoint(tmp_path / "head", ABMIL)[0]) is ABMIL  # explicit class is trusted
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a napari_care checkpoint"):
        load_checkpoint(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(TypeError, match="dataclass instance"):
        save_checkpoint(tmp_path / "x", model, {"in_dim": 12})


def test_corrupt_and_foreign_files_name_the_file_and_what_was_expected(tmp_path, head):
    from napari_care.core.models.care import CareModel

    model, config = head
    json_path = save_checkpoint(tmp_path / "head", model, config)
    weights = tmp_path / "head.safetensors"
    good = weights.read_bytes()
    # a torch .pt from another program, with no description beside it
    torch.save({"weight": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(
        ValueError, match=r"foreign\.pt: not a napari_care checkpoint: no config JSON next to it"
    ):
        load_checkpoint(tmp_path / "foreign.pt")
    # a description that is binary, or empty
    (tmp_path / "binary.json").write_bytes(b"\x84\x00\xff" * 10)
    with pytest.raises(
        ValueError, match=r"binary\.json is not a napari_care checkpoint: its description is not JSON"
    ):
        load_checkpoint(tmp_path / "binary.json")
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ValueError, match=r"empty\.json is not a napari_care checkpoint"):
        read_checkpoint_description(tmp_path / "empty.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json is not a napari_care checkpoint"):
        read_checkpoint_description(tmp_path / "list.json")
    # weights whose header is garbage, cut short, or missing
    weights.write_bytes(b"\xff" * 8 + good[8:])
    with pytest.raises(ValueError, match=r"head\.safetensors is corrupt"):
        load_checkpoint(json_path)
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"head\.safetensors is corrupt"):
        load_checkpoint(json_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"head\.json: its weights head\.safetensors are missing"):
        load_checkpoint(json_path)
    weights.write_bytes(good)
    # another of the project's models where a CARE model was expected
    with pytest.raises(ValueError, match=r"head\.json holds the model ABMIL, expected CareModel"):
        load_checkpoint(json_path, CareModel)
    # a description whose config is not the model's
    description = json.loads(json_path.read_text())
    description["config"] = {"hidden": 3}
    json_path.write_text(json.dumps(description))
    with pytest.raises(ValueError, match=r"head\.json: its config does not fit ABMILConfig"):
        load_checkpoint(json_path)
