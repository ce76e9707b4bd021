"""Encoder registry, presets and the torch encoders, with tiny random-weight variants.

No test downloads weights: presets are built small (``model_kwargs``) with random
weights, written to checkpoint files in ``tmp_path`` and loaded back through the real
loading code.
"""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys

import numpy as np
import pytest

from napari_care.core.encoders import (
    EncoderCfg,
    create_encoder,
    get_encoder_cfg,
    list_encoders,
    register_encoder,
    registry,
)

PRESETS = [
    "conch_v1_5",
    "h-optimus-0",
    "h-optimus-1",
    "phikon",
    "phikon-v2",
    "prov-gigapath",
    "uni",
    "uni2-h",
    "virchow2",
    "virchow2-cls",
]


def test_import_and_default_encoder_do_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from napari_care.core.encoders import create_encoder, list_encoders, get_encoder_cfg\n"
        "list_encoders(); get_encoder_cfg('uni')\n"
        "create_encoder('default').encode(np.full((2, 224, 224, 3), 200, np.uint8))\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_registry_lists_default_first_then_presets():
    names = list_encoders()
    assert names[0] == "default"
    assert sorted(names[1:]) == names[1:]
    assert set(PRESETS) <= set(names)


def test_unknown_encoder_lists_known_names_and_suggests():
    with pytest.raises(KeyError, match="Known encoders: default, conch_v1_5") as info:
        create_encoder("uni3")
    assert "Did you mean 'uni'" in str(info.value)


def test_register_encoder_decorator(monkeypatch):
    monkeypatch.setattr(registry, "_CFGS", dict(registry._CFGS))
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    cfg = EncoderCfg(
        name="mean-rgb",
        arch=None,
        input_size=8,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        native_mpp=1.0,
        embed_dim=3,
        pooling="descriptor",
    )

    class MeanRgb:
        def __init__(self, cfg):
            self.cfg, self.embed_dim = cfg, 3

        def encode(self, tiles):
            return tiles.mean(axis=(1, 2)).astype(np.float32)

    @register_encoder(cfg)
    def _factory(cfg, **_):
        return MeanRgb(cfg)

    assert "mean-rgb" in list_encoders()
    encoder = create_encoder("mean-rgb")
    assert encoder.encode(np.full((1, 8, 8, 3), 10, np.uint8)).tolist() == [[10.0, 10.0, 10.0]]
    with pytest.raises(ValueError, match="already registered"):
        register_encoder(cfg)(_factory)


def test_encoder_cfg_is_frozen_and_validated():
    cfg = get_encoder_cfg("uni")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.input_size = 448
    with pytest.raises(TypeError):
        cfg.timm_kwargs["depth"] = 2
    with pytest.raises(ValueError, match="pooling"):
        dataclasses.replace(cfg, pooling="max")
    with pytest.raises(ValueError, match="crop_pct"):
        dataclasses.replace(cfg, crop_pct=1.5)
    assert pickle.loads(pickle.dumps(cfg)) == cfg and hash(cfg) == hash(get_encoder_cfg("uni"))


@pytest.mark.parametrize(
    ("name", "arch", "input_size", "embed_dim", "pooling", "hf_id"),
    [
        ("uni", "vit_large_patch16_224", 224, 1024, "cls", "MahmoodLab/UNI"),
        ("uni2-h", "vit_giant_patch14_224", 224, 1536, "cls", "MahmoodLab/UNI2-h"),
        ("conch_v1_5", "vit_large_patch16_224", 448, 768, "attn_pool", "MahmoodLab/conchv1_5"),
        ("virchow2", "vit_huge_patch14_224", 224, 2560, "cls+mean", "paige-ai/Virchow2"),
        ("virchow2-cls", "vit_huge_patch14_224", 224, 1280, "cls", "paige-ai/Virchow2"),
        ("h-optimus-0", "vit_giant_patch14_reg4_dinov2", 224, 1536, "cls", "bioptimus/H-optimus-0"),
        ("h-optimus-1", "vit_giant_patch14_reg4_dinov2", 224, 1536, "cls", "bioptimus/H-optimus-1"),
        ("phikon", "vit_base_patch16_224", 224, 768, "cls", "owkin/phikon"),
        ("phikon-v2", "vit_large_patch16_224", 224, 1024, "cls", "owkin/phikon-v2"),
        ("prov-gigapath", "vit_giant_patch14_dinov2", 224, 1536, "cls", "prov-gigapath/prov-gigapath"),
    ],
)
def test_preset_facts(name, arch, input_size, embed_dim, pooling, hf_id):
    cfg = get_encoder_cfg(name)
    assert (cfg.arch, cfg.input_size, cfg.embed_dim, cfg.pooling, cfg.hf_id) == (
        arch,
        input_size,
        embed_dim,
        pooling,
        hf_id,
    )
    assert cfg.native_mpp == 0.5 and cfg.license and cfg.description
    expected_mean = (0.707223, 0.578729, 0.703617) if name.startswith("h-optimus") else (0.485, 0.456, 0.406)
    assert cfg.mean == expected_mean


def test_preset_architecture_details():
    uni2 = get_encoder_cfg("uni2-h").timm_kwargs
    assert (uni2["reg_tokens"], uni2["depth"], uni2["num_heads"], uni2["mlp_layer"]) == (
        8,
        24,
        24,
        "SwiGLUPacked",
    )
    assert uni2["mlp_ratio"] == pytest.approx(5.33334) and uni2["no_embed_class"]
    virchow = get_encoder_cfg("virchow2").timm_kwargs
    assert (virchow["reg_tokens"], virchow["mlp_ratio"], virchow["act_layer"]) == (4, 5.3375, "SiLU")
    assert get_encoder_cfg("conch_v1_5").tile_size_px == 512
    assert get_encoder_cfg("h-optimus-1").std == (0.211883, 0.230117, 0.177517)
    assert get_encoder_cfg("prov-gigapath").timm_kwargs["patch_size"] == 16


@pytest.mark.parametrize(
    ("name", "embed_dim", "interpolation"),
    [("timm:test_vit", 64, "bicubic"), ("timm:test_resnet", 96, "bilinear")],
)
def test_generic_timm_model_reads_its_data_config(name, embed_dim, interpolation):
    pytest.importorskip("timm")
    encoder = create_encoder(name, weights="random", device="cpu")
    features = encoder.encode(np.full((2, 100, 100, 3), 128, np.uint8))
    assert features.shape == (2, embed_dim) and features.dtype == np.float32
    assert (encoder.embed_dim, encoder.cfg.input_size, encoder.cfg.interpolation) == (
        embed_dim,
        160,
        interpolation,
    )
    assert encoder.cfg.mean == (0.5, 0.5, 0.5) and encoder.cfg.crop_pct == pytest.approx(0.95)
    assert encoder.device.type == "cpu" and tuple(
        encoder.preprocess(np.zeros((1, 9, 9, 3), np.uint8)).shape
    ) == (1, 3, 160, 160)


# --- torch encoders: tiny random-weight variants of the presets -----------------------------

TINY = {"depth": 2, "embed_dim": 96, "num_heads": 2}


def tiny_kwargs(name: str) -> dict:
    """Small variant of a preset: same recipe, registers and MLP type, 4x4 patch tokens."""
    cfg = get_encoder_cfg(name)
    patch = cfg.timm_kwargs.get("patch_size", 14 if "patch14" in cfg.arch else 16)
    return {**TINY, "img_size": 4 * patch}


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny():
    """``tiny(name)``: a cached tiny random-weight variant of a preset (do not mutate it)."""
    pytest.importorskip("torch")
    built = {}

    def get(name: str):
        if name not in built:
            built[name] = create_encoder(name, weights="random", device="cpu", model_kwargs=tiny_kwargs(name))
        return built[name]

    return get


def state_of(encoder) -> dict:
    """What an official checkpoint of this preset holds: the timm trunk, or all (CONCH)."""
    state = (
        encoder.model.state_dict() if encoder.cfg.pooling == "attn_pool" else encoder.model.trunk.state_dict()
    )
    return {key: value.detach().clone().contiguous() for key, value in state.items()}


@pytest.mark.parametrize(
    ("name", "expected_dim", "prefix_tokens"),
    [
        ("uni2-h", 96, 9),
        ("virchow2", 192, 5),
        ("virchow2-cls", 96, 5),
        ("conch_v1_5", 768, 1),
        ("h-optimus-0", 96, 5),
        ("prov-gigapath", 96, 1),
    ],
)
def test_tiny_preset_follows_the_recipe(name, expected_dim, prefix_tokens, tiles, tiny):
    encoder = tiny(name)
    assert encoder.embed_dim == encoder.cfg.embed_dim == expected_dim
    assert encoder.model.trunk.num_prefix_tokens == prefix_tokens
    features = encoder.encode(tiles)
    assert features.shape == (3, expected_dim) and features.dtype == np.float32
    np.testing.assert_allclose(encoder.encode(tiles[::-1])[::-1], features, atol=1e-5)  # no batch effects


@pytest.mark.parametrize("name", ["uni2-h", "virchow2", "conch_v1_5"])
def test_tiny_preset_roundtrip_through_checkpoint_files(name, tiles, tiny, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    encoder = tiny(name)
    reference = encoder.encode(tiles)
    state = state_of(encoder)
    save_file(state, tmp_path / "model.safetensors")
    torch.save(
        {"epoch": 3, "model": {f"module.{key}": value for key, value in state.items()}},
        tmp_path / "model.pth",
    )
    for path in (tmp_path / "model.safetensors", tmp_path / "model.pth"):
        loaded = create_encoder(name, weights=path, device="cpu", model_kwargs=tiny_kwargs(name))
        np.testing.assert_array_equal(loaded.encode(tiles), reference)
        assert loaded.weights_source == str(path)


def test_cls_plus_mean_skips_register_tokens(tiles, tiny):
    torch = pytest.importorskip("torch")
    encoder = tiny("virchow2")
    x = encoder.preprocess(tiles)
    with torch.inference_mode():
        tokens = encoder.model.trunk.forward_features(x)
    assert tokens.shape[1] == 1 + 4 + 16  # class, 4 registers, 4x4 patches
    expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(dim=1)], dim=-1).numpy()
    with_registers = torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1).numpy()
    features = encoder.encode(tiles)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(features, with_registers, atol=1e-4)
    np.testing.assert_array_equal(encoder.forward_tensor(x).numpy(), features)


def test_preprocessing_follows_the_cfg(tiny):
    torch = pytest.importorskip("torch")
    encoder = tiny("h-optimus-0")
    value = np.array([200, 100, 50], np.uint8)
    x = encoder.preprocess(np.broadcast_to(value, (2, 112, 112, 3)).copy())
    assert tuple(x.shape) == (2, 3, 56, 56) and x.is_contiguous(memory_format=torch.channels_last)
    expected = (value / 255.0 - np.array(encoder.cfg.mean)) / np.array(encoder.cfg.std)
    np.testing.assert_allclose(x[0, :, 10, 10].numpy(), expected, rtol=1e-5)

    gigapath = tiny("prov-gigapath")
    ramp = np.broadcast_to(np.arange(73, dtype=np.uint8)[None, :, None], (1, 73, 73, 3)).copy()
    cropped = gigapath.preprocess(ramp)  # resized to 64 / 0.875 = 73 (no-op), centre 64 kept
    assert tuple(cropped.shape) == (1, 3, 64, 64)
    first_column = (4 / 255.0 - gigapath.cfg.mean[0]) / gigapath.cfg.std[0]
    assert float(cropped[0, 0, 0, 0]) == pytest.approx(first_column, rel=1e-5)


def test_wrong_architecture_lists_missing_and_unexpected_keys(tmp_path):
    torch = pytest.importorskip("torch")
    uni = create_encoder(
        "uni", weights="random", device="cpu", model_kwargs={**TINY, "img_size": 56, "patch_size": 14}
    )
    torch.save(state_of(uni), tmp_path / "uni.pth")
    with pytest.raises(ValueError, match="do not fit this architecture") as info:
        create_encoder("virchow2", weights=tmp_path / "uni.pth", model_kwargs=tiny_kwargs("virchow2"))
    message = str(info.value)
    assert "missing keys: reg_token" in message and "blocks.0.mlp.fc1.weight" in message
    assert str(tmp_path / "uni.pth") in message


def test_weights_file_errors(tmp_path):
    pytest.importorskip("torch")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        create_encoder("uni", weights=tmp_path / "nowhere.pth")
    (tmp_path / "weights.onnx").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unsupported type '\.onnx'"):
        create_encoder("uni", weights=tmp_path / "weights.onnx")
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        create_encoder("uni", weights=tmp_path / "broken.safetensors")


def test_dino_teacher_checkpoint_with_backbone_prefix_and_heads(tmp_path, tiles, tiny):
    torch = pytest.importorskip("torch")
    kwargs = tiny_kwargs("uni")
    encoder = tiny("uni")
    state = {f"backbone.{key}": value for key, value in state_of(encoder).items()}
    state["backbone.mask_token"] = torch.zeros(1, 96)  # original DINOv2 layout, converted by timm
    state["dino_head.last_layer.weight"] = torch.zeros(8, 96)
    torch.save({"student": {}, "teacher": state}, tmp_path / "teacher_checkpoint.pth")
    loaded = create_encoder(
        "uni", weights=tmp_path / "teacher_checkpoint.pth", device="cpu", model_kwargs=kwargs
    )
    np.testing.assert_array_equal(loaded.encode(tiles), encoder.encode(tiles))


def test_transformers_dinov2_layout_is_converted(tmp_path, tiles, tiny):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    kwargs = tiny_kwargs("phikon-v2")
    encoder = tiny("phikon-v2")
    timm_state = state_of(encoder)
    hf_state = {"embeddings.mask_token": torch.zeros(1, 96)}
    for key, value in timm_state.items():
        if ".attn.qkv." in key:
            block, kind = key.split(".")[1], key.rsplit(".", 1)[1]
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                hf_state[f"encoder.layer.{block}.attention.attention.{name}.{kind}"] = part.contiguous()
            continue
        hf_key = (
            key.replace("cls_token", "embeddings.cls_token")
            .replace("pos_embed", "embeddings.position_embeddings")
            .replace("patch_embed.proj.", "embeddings.patch_embeddings.projection.")
            .replace("blocks.", "encoder.layer.")
            .replace(".attn.proj.", ".attention.output.dense.")
            .replace(".ls1.gamma", ".layer_scale1.lambda1")
            .replace(".ls2.gamma", ".layer_scale2.lambda1")
        )
        hf_state["layernorm." + key[len("norm.") :] if key.startswith("norm.") else hf_key] = value
    save_file(hf_state, tmp_path / "model.safetensors")
    loaded = create_encoder(
        "phikon-v2", weights=tmp_path / "model.safetensors", device="cpu", model_kwargs=kwargs
    )
    np.testing.assert_array_equal(loaded.encode(tiles), encoder.encode(tiles))


def test_nan_embeddings_raise(tiles):
    torch = pytest.importorskip("torch")
    encoder = create_encoder("uni", weights="random", device="cpu", model_kwargs=tiny_kwargs("uni"))
    with torch.no_grad():
        encoder.model.trunk.norm.weight[3] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN/inf embeddings for 3 of 3 tiles"):
        encoder.encode(tiles)


def test_torch_encoder_rejects_bad_tiles(tiny):
    encoder = tiny("uni")
    with pytest.raises(TypeError, match="uint8"):
        encoder.encode(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="square"):
        encoder.encode(np.zeros((1, 64, 32, 3), np.uint8))
    assert encoder.encode(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0, 96)


@pytest.mark.parametrize(("name", "hub_id"), [("uni", "MahmoodLab/UNI"), ("timm:test_vit", "timm/test_vit")])
def test_offline_missing_weights_name_the_id_files_and_cache(name, hub_id, monkeypatch, tmp_path):
    pytest.importorskip("torch")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError) as info:  # WeightsNotFoundError: the CLI's exit 2
        create_encoder(name, device="cpu")
    message = str(info.value)
    assert hub_id in message and "\n" not in message
    assert str(tmp_path / "hf" / "hub") in message and "HF_HUB_OFFLINE" in message
    assert "pass weights='path/to/checkpoint'" in message
    if name == "uni":
        assert "model.safetensors or pytorch_model.bin" in message
