"""The authors' CARE model (Hugging Face ``Zipper-1/CARE``) as a slide encoder, offline.

A tiny stand-in is written by the tests: a configuration and a modelling file of its own,
with CARE's call signature ``model(features, n_values, grid)`` and an output whose
``wsi_embedding`` depends on the features and on the grid (so a grid without the division
by the patch size, or rounded instead of floored, shows). It is saved with
``save_pretrained`` into a snapshot folder and into a fake Hugging Face cache
(``models--Zipper-1--CARE/snapshots/<rev>/`` with ``refs/main``), and loaded through the
same code path as the real model, with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("transformers")
import torch
import transformers.dynamic_module_utils
import transformers.utils.hub

from napari_care.core.care_result import CareResult
from napari_care.core.care_run import load_care_model, segment_features
from napari_care.core.models.care import CareModel
from napari_care.core.models.care_free import CareFreeConfig, segment_free
from napari_care.core.models.care_hf import (
    CARE_HF_ID,
    HfCareEncoder,
    HfCareError,
    care_source_fingerprint,
    check_care_features,
    load_hf_care,
    model_grid,
    parse_care_source,
)
from napari_care.core.preflight import PreflightError, check_care_checkpoint

OLD_CHECKPOINTS = Path(__file__).parent / "data" / "checkpoints_v0_1_0"
PATCH = 512  # level-0 patch side of the test slides (512 px at 20x on a 20x scan)

CONFIGURATION = """
from transformers import PretrainedConfig


class FakeCAREConfig(PretrainedConfig):
    model_type = "fake_care"

    def __init__(self, in_dim=768, embed_dim=512, **kwargs):
        self.in_dim = in_dim
        self.embed_dim = embed_dim
        super().__init__(**kwargs)
"""

MODELING = '''
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_care import FakeCAREConfig


@dataclass
class FakeCAREOutput(ModelOutput):
    wsi_embedding: torch.Tensor = None
    aux_loss: torch.Tensor = None


class FakeCAREModel(PreTrainedModel):
    """CARE's call signature; the embedding depends on the features and on the grid."""

    config_class = FakeCAREConfig

    def __init__(self, config):
        super().__init__(config)
        self.features_proj = torch.nn.Linear(config.in_dim, config.embed_dim)
        self.grid_proj = torch.nn.Linear(2, config.embed_dim)
        self.calls = []
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, features, n_values, grid):
        self.calls.append({"features": features.clone(), "n_values": n_values.clone(), "grid": grid.clone()})
        pooled = self.features_proj(features).mean(dim=1)
        where = torch.tanh(self.grid_proj(grid.to(features.dtype))).mean(dim=1)
        return FakeCAREOutput(wsi_embedding=pooled + where, aux_loss=grid.to(features.dtype).var())
'''


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """A snapshot folder of the stand-in, written by ``save_pretrained`` (code files, config, weights)."""
    root = tmp_path_factory.mktemp("care_src")
    package = f"fake_care_{uuid.uuid4().hex[:8]}"
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    (root / package / "configuration_care.py").write_text(CONFIGURATION)
    (root / package / "modeling_care.py").write_text(MODELING)
    sys.path.insert(0, str(root))
    try:
        configuration = importlib.import_module(f"{package}.configuration_care")
        modeling = importlib.import_module(f"{package}.modeling_care")
        configuration.FakeCAREConfig.register_for_auto_class()
        modeling.FakeCAREModel.register_for_auto_class("AutoModel")
        torch.manual_seed(0)
        model = modeling.FakeCAREModel(configuration.FakeCAREConfig())
        folder = tmp_path_factory.mktemp("care_snapshot") / "CARE"
        model.save_pretrained(folder)
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name.startswith(package)]:
            del sys.modules[name]
    assert {"config.json", "modeling_care.py", "configuration_care.py"} <= {p.name for p in folder.iterdir()}
    return folder


@pytest.fixture(scope="module", autouse=True)
def remote_code_folder(tmp_path_factory):
    """The snapshots' model code is copied into a modules folder of this module's, not the user's."""
    if "transformers_modules" in sys.modules:  # set up earlier in this process: stay with it
        yield
        return
    folder = str(tmp_path_factory.mktemp("hf_modules"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", folder)
        patch.setattr(transformers.utils.hub, "HF_MODULES_CACHE", folder)
        yield
    for name in [name for name in sys.modules if name.partition(".")[0] == "transformers_modules"]:
        del sys.modules[name]
    if folder in sys.path:
        sys.path.remove(folder)


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face home and cache in tmp_path, offline."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home / "hub"


@pytest.fixture
def cached(snapshot, offline_hub) -> str:
    """The stand-in in the fake cache as ``Zipper-1/CARE`` (hub layout, refs/main); its revision."""
    revision = uuid.uuid4().hex + uuid.uuid4().hex[:8]  # 40 hex digits, unique: a fresh module name
    repo = offline_hub / "models--Zipper-1--CARE"
    shutil.copytree(snapshot, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return revision


@pytest.fixture
def local_snapshot(snapshot, tmp_path) -> Path:
    """A copy of the snapshot folder of its own (a fresh module name per test)."""
    folder = tmp_path / f"CARE_{uuid.uuid4().hex[:8]}"
    shutil.copytree(snapshot, folder)
    return folder


def slide_patches(n_side: int = 6, offset: int = 300, dim: int = 768, seed: int = 0):
    """Features and level-0 coords of an n x n patch grid whose origin is not a multiple of the patch side.

    ``floor(coords / 512)`` is the grid; ``round(coords / 512)`` is off by one (offset 300 > 256).
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side)), -1).reshape(-1, 2) + np.array([3, 5])
    coords = grid * PATCH + offset
    features = rng.normal(size=(len(grid), dim)).astype(np.float32)
    return features, coords.astype(np.int64), grid.astype(np.int64)


def one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    return message


# --- sources ----------------------------------------------------------------------------


def test_parse_source_tells_hub_ids_folders_and_checkpoints_apart(local_snapshot, tmp_path):
    hub = parse_care_source("hf:Zipper-1/CARE")
    assert hub.repo_id == CARE_HF_ID and hub.folder is None and hub.label == "hf:Zipper-1/CARE"
    folder = parse_care_source(local_snapshot)
    assert folder.folder == local_snapshot and folder.name == CARE_HF_ID
    assert parse_care_source(OLD_CHECKPOINTS / "care") is None  # a napari_care checkpoint prefix
    assert parse_care_source(tmp_path) is None  # a folder without config.json (checkpoint folder)
    with pytest.raises(HfCareError, match="hf:<owner>/<name>") as error:
        parse_care_source("hf:CARE")
    one_line(error.value)


def test_a_folder_of_another_model_is_refused_naming_it(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"], "model_type": "bert"}')
    with pytest.raises(HfCareError) as error:
        parse_care_source(tmp_path)
    message = one_line(error.value)
    assert str(tmp_path) in message and "auto_map" in message and CARE_HF_ID in message
    (tmp_path / "config.json").write_text('{"auto_map": {"AutoModel": "modeling_x.TitanModel"}}')
    with pytest.raises(HfCareError, match="TitanModel, not CARE"):
        parse_care_source(tmp_path)


# --- loading and running -----------------------------------------------------------------


def test_hub_id_loads_from_the_cache_and_embeds(cached):
    encoder = load_hf_care("hf:Zipper-1/CARE", device="cpu")
    assert isinstance(encoder, HfCareEncoder)
    assert encoder.name == CARE_HF_ID and encoder.snapshot.name == cached
    assert (encoder.in_dim, encoder.patch_size_px, encoder.magnification) == (768, 512, 20.0)
    features, coords, grid = slide_patches()
    embedding = encoder.embed(features, coords, PATCH)
    assert embedding.shape == (512,) and embedding.dtype == np.float32
    with torch.inference_mode():  # the model's own output on the inputs CARE's authors give it
        own = encoder.model(
            torch.from_numpy(features)[None],
            torch.tensor([float(len(features))]),
            torch.from_numpy(grid)[None],
        ).wsi_embedding[0]
    np.testing.assert_allclose(embedding, own.numpy(), rtol=1e-6, atol=1e-6)


def test_the_model_sees_floored_grid_cells_and_n_as_float(local_snapshot):
    encoder = load_hf_care(local_snapshot, device="cpu")
    features, coords, grid = slide_patches()
    encoder.embed(features, coords, PATCH)
    call = encoder.model.calls[-1]
    assert call["grid"].dtype == torch.long and call["grid"].shape == (1, len(grid), 2)
    assert np.array_equal(call["grid"][0].numpy(), grid)  # coords // patch, not round(coords / patch)
    assert not np.array_equal(np.rint(coords / PATCH), grid)  # (the offset makes rounding differ)
    assert call["n_values"].dtype == torch.float32 and call["n_values"].tolist() == [float(len(grid))]
    assert call["features"].shape == (1, len(grid), 768) and call["features"].dtype == torch.float32
    shifted = encoder.embed(features, coords + PATCH, PATCH)  # the grid reaches the output
    assert not np.allclose(shifted, encoder.embed(features, coords, PATCH))
    assert np.array_equal(model_grid(coords, float(PATCH)), grid)


def test_folder_and_hub_id_give_the_same_embedding(cached, local_snapshot):
    features, coords, _ = slide_patches(seed=3)
    from_hub = load_hf_care("hf:Zipper-1/CARE", device="cpu").embed(features, coords, PATCH)
    from_folder = load_hf_care(local_snapshot, device="cpu").embed(features, coords, PATCH)
    np.testing.assert_array_equal(from_hub, from_folder)


def test_segment_features_keeps_training_free_regions_and_takes_the_models_embedding(cached, tmp_path):
    features, coords, grid = slide_patches(n_side=10)
    model = load_care_model("hf:Zipper-1/CARE", in_dim=768, device="cpu")
    assert isinstance(model, HfCareEncoder)
    config = CareFreeConfig(k=4)
    result = segment_features(
        features, grid, config=config, model=model, coords=coords, patch_size_level0=float(PATCH)
    )
    free = segment_free(features, grid, config)
    assert np.array_equal(result.region_of_patch, free.region_of_patch) and result.roi == free.roi
    np.testing.assert_array_equal(result.a, free.a)
    np.testing.assert_array_equal(result.slide_embedding, model.embed(features, coords, PATCH))
    assert result.slide_embedding.shape == (512,)
    assert (result.mode, result.slide_encoder) == ("training-free", CARE_HF_ID)
    again = CareResult.load(result.save(tmp_path / "result.npz"))
    assert again.slide_encoder == CARE_HF_ID
    np.testing.assert_array_equal(again.slide_embedding, result.slide_embedding)
    with pytest.raises(ValueError, match="needs coords"):
        segment_features(features, grid, model=model)


def test_results_without_a_slide_encoder_field_still_load(tmp_path):
    features, _, grid = slide_patches(n_side=4, dim=8)
    result = segment_features(features, grid)
    assert result.slide_encoder == "" and result.mode == "training-free"
    path = result.save(tmp_path / "new.npz")
    with np.load(path) as data:  # as files written before the field existed
        np.savez(tmp_path / "old.npz", **{name: data[name] for name in data.files if name != "slide_encoder"})
    old = CareResult.load(tmp_path / "old.npz")
    assert old.slide_encoder == "" and np.array_equal(old.region_of_patch, result.region_of_patch)


def test_fingerprints_name_the_revision_or_the_files(cached, local_snapshot):
    assert care_source_fingerprint(parse_care_source("hf:Zipper-1/CARE")) == f"{CARE_HF_ID}@{cached}"
    before = care_source_fingerprint(parse_care_source(local_snapshot))
    assert before.startswith("sha256:")
    (local_snapshot / "modeling_care.py").write_text(
        (local_snapshot / "modeling_care.py").read_text() + "\n# x\n"
    )
    assert care_source_fingerprint(parse_care_source(local_snapshot)) != before


# --- errors: one line, naming the id or folder and the fix --------------------------------


def test_not_in_the_cache_says_how_to_get_it(offline_hub):
    with pytest.raises(HfCareError) as error:
        load_care_model("hf:Zipper-1/CARE", in_dim=768)
    message = one_line(error.value)
    assert "hf:Zipper-1/CARE" in message and str(offline_hub) in message and "HF_HUB_OFFLINE" in message
    assert "https://huggingface.co/Zipper-1/CARE" in message and "download Zipper-1/CARE" in message
    assert "--care DIR" in message


def test_transformers_missing_names_the_extra(local_snapshot, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    for value in ("hf:Zipper-1/CARE", local_snapshot):
        with pytest.raises(HfCareError) as error:
            load_hf_care(value)
        message = one_line(error.value)
        assert str(value) in message and "pip install 'napari-care[care]'" in message
    with pytest.raises(PreflightError, match=r"napari-care\[care\]"):
        check_care_checkpoint(local_snapshot, "conch_v1_5", tile_size_px=512, mpp=0.5)


def test_features_of_another_width_are_refused_before_loading(local_snapshot):
    with pytest.raises(HfCareError) as error:
        load_care_model(local_snapshot, in_dim=767)
    message = one_line(error.value)
    assert str(local_snapshot) in message and "767-d" in message and "--encoder conch_v15" in message
    encoder = load_hf_care(local_snapshot, device="cpu")
    features, coords, _ = slide_patches(n_side=3, dim=767)
    with pytest.raises(HfCareError, match="767-d"):
        encoder.embed(features, coords, PATCH)


def test_tiles_of_another_size_or_magnification_are_refused_saying_what_they_are():
    with pytest.raises(HfCareError) as error:
        check_care_features("hf:Zipper-1/CARE", embed_dim=768, patch_size_px=224, mpp=0.5, where="slide.h5")
    message = one_line(error.value)
    assert "hf:Zipper-1/CARE" in message and "224-px tiles at 20x" in message and "512-px" in message
    with pytest.raises(HfCareError, match="512-px tiles at 10x"):
        check_care_features("hf:Zipper-1/CARE", embed_dim=768, patch_size_px=512, mpp=1.0)
    check_care_features("hf:Zipper-1/CARE", embed_dim=768, patch_size_px=512, mpp=0.5025)  # a 20x scanner


def test_an_incomplete_snapshot_is_refused(local_snapshot):
    (local_snapshot / "model.safetensors").unlink()
    with pytest.raises(HfCareError) as error:
        load_hf_care(local_snapshot)
    message = one_line(error.value)
    assert str(local_snapshot) in message and "no weights" in message


# --- the checks before a run ------------------------------------------------------------


def test_preflight_accepts_the_model_with_conch_tiles(cached, local_snapshot):
    for value in ("hf:Zipper-1/CARE", str(local_snapshot)):
        assert check_care_checkpoint(value, "conch_v15", tile_size_px=512, mpp=0.5) == []


def test_preflight_refuses_other_features_tiles_and_a_missing_snapshot(local_snapshot):
    with pytest.raises(PreflightError, match=r"1024-d; extract them with --encoder conch_v15") as error:
        check_care_checkpoint(local_snapshot, "uni", tile_size_px=256, mpp=0.5)
    assert str(local_snapshot) in one_line(error.value)
    with pytest.raises(PreflightError, match="this run's tiles are of 224-px tiles at 20x"):
        check_care_checkpoint(local_snapshot, "conch_v1_5", tile_size_px=224, mpp=0.5)
    with pytest.raises(PreflightError, match="not in the Hugging Face cache"):
        check_care_checkpoint("hf:Zipper-1/CARE", "conch_v1_5", tile_size_px=512, mpp=0.5)
    notes = check_care_checkpoint(local_snapshot, "phikon", tile_size_px=512, mpp=0.5)  # 768-d, not CONCH
    assert len(notes) == 1 and "CONCH v1.5" in notes[0]


def test_napari_care_checkpoints_load_as_before():
    model = load_care_model(OLD_CHECKPOINTS / "care", in_dim=6)
    assert isinstance(model, CareModel)
    with pytest.raises(ValueError, match="expects D=6 features but the encoder gives 7"):
        load_care_model(OLD_CHECKPOINTS / "care", in_dim=7)


def test_care_run_stays_free_of_torch_and_transformers():
    code = (
        "import sys, napari_care.core.care_run; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_grid_floor_division_is_tridents():
    coords = np.array([[0, 0], [511, 1023], [512, 1024], [1535, 300]])
    assert model_grid(coords, 512.0).tolist() == [[0, 0], [0, 1], [1, 2], [2, 0]]
    with pytest.raises(ValueError):
        model_grid(coords, 0)


def write_conch_features(path: Path, *, patch_px: int = 512, dim: int = 768) -> Path:
    """A TRIDENT file of CONCH v1.5-like features: 512-px patches at 20x on a 20x scan."""
    features, coords, _ = slide_patches(n_side=8, dim=dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("coords", data=coords)
        f["features"].attrs.update({"name": path.stem, "encoder": "conch_v15"})
        f["coords"].attrs.update(
            {
                "patch_size": patch_px,
                "patch_size_level0": PATCH,
                "level0_magnification": 20,
                "target_magnification": 20,
                "overlap": 0,
                "name": path.stem,
            }
        )
    return path


def test_segment_features_with_the_authors_model_through_the_cli(local_snapshot, tmp_path):
    from click.testing import CliRunner

    from napari_care.cli.app import main

    source = write_conch_features(tmp_path / "job" / "features_conch_v15" / "s1.h5")
    runner = CliRunner()
    free = runner.invoke(
        main, ["segment", "--features", str(source), "--out", str(tmp_path / "free"), "--quiet"]
    )
    assert free.exit_code == 0, free.output
    done = runner.invoke(
        main,
        [
            "segment",
            "--features",
            str(source),
            "--care",
            str(local_snapshot),
            "--out",
            str(tmp_path / "hf"),
            "--quiet",
        ],
    )
    assert done.exit_code == 0, done.output
    document = json.loads((tmp_path / "hf" / "s1.care.json").read_text())
    assert (document["slide_encoder"], document["regions_from"]) == (CARE_HF_ID, "training-free")
    assert document["method"] == "CARE (training-free regions)"  # the authors' model encodes, not the regions
    assert document["roi_rule"].startswith("argmax of a = lambda_spf * coverage")
    assert document["settings"]["care_model"].startswith("sha256:")
    with h5py.File(tmp_path / "hf" / "s1.slide_features.h5") as f:
        assert f["features"].shape == (512,) and f.attrs["slide_encoder"] == CARE_HF_ID
    baseline = json.loads((tmp_path / "free" / "s1.care.json").read_text())
    assert baseline["slide_encoder"] == "CARE (training-free)"
    assert document["regions"] == baseline["regions"] and document["roi"] == baseline["roi"]

    narrow = write_conch_features(tmp_path / "narrow" / "s2.h5", dim=1024)
    refused = runner.invoke(
        main,
        ["segment", "--features", str(narrow), "--care", str(local_snapshot), "--out", str(tmp_path / "x")],
    )
    assert refused.exit_code == 2 and "1024" in refused.stderr and "768" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.output
