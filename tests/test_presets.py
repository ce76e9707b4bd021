"""The preset table against the model cards: full-size shapes (meta device), preprocessing, pooling, aliases.

The expectations below are written from the model cards and TRIDENT's
``trident/patch_encoder_models/load.py`` (not from the preset table), so a wrong row fails.
Full-size networks are built on torch's meta device (shapes, no memory); values are checked
on narrow one-block variants at the presets' real input sizes.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_care.core.encoders import canonical_encoder_name, create_encoder, get_encoder_cfg, list_aliases
from napari_care.core.encoders.presets import ALIASES, PRESETS

torch = pytest.importorskip("torch")
from napari_care.core.encoders.timm_models import build_embedding_net  # noqa: E402

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))

# name: tile px at 20x, input px, resize mode, centre crop kept, (mean, std), width, prefix tokens,
# patch tokens, published parameter count (millions)
CARDS = {
    "uni": (256, 224, "bilinear", 224, IMAGENET, 1024, 1, 196, 303),
    "uni2-h": (256, 224, "bilinear", 224, IMAGENET, 1536, 9, 256, 681),
    "conch_v1_5": (512, 448, "bilinear", 448, IMAGENET, 768, 1, 784, 307),
    "virchow2": (224, 224, "bicubic", 224, IMAGENET, 2560, 5, 256, 632),
    "virchow2-cls": (224, 224, "bicubic", 224, IMAGENET, 1280, 5, 256, 632),
    "h-optimus-0": (224, 224, "bilinear", 224, HOPTIMUS, 1536, 5, 256, 1135),
    "h-optimus-1": (224, 224, "bilinear", 224, HOPTIMUS, 1536, 5, 256, 1135),
    "phikon": (224, 224, "bilinear", 224, IMAGENET, 768, 1, 196, 86),
    "phikon-v2": (224, 224, "bilinear", 224, IMAGENET, 1024, 1, 196, 303),
    "prov-gigapath": (256, 224, "bicubic", 224, IMAGENET, 1536, 1, 196, 1135),
}
# resize target before the centre crop (torchvision Resize(n) then CenterCrop(input))
RESIZE_TO = {"prov-gigapath": 256}
NARROW = {"depth": 1, "embed_dim": 48, "num_heads": 2}


def test_the_table_covers_every_model_card_and_nothing_else():
    assert sorted(cfg.name for cfg in PRESETS) == sorted(CARDS)
    assert all(cfg.native_mpp == 0.5 and cfg.magnification == 20.0 for cfg in PRESETS)


@pytest.mark.parametrize("name", sorted(CARDS))
def test_preset_cfg_follows_its_model_card(name):
    tile, size, mode, crop, (mean, std), width, *_ = CARDS[name]
    cfg = get_encoder_cfg(name)
    assert (cfg.tile_size_px, cfg.input_size, cfg.interpolation, cfg.mean, cfg.std, cfg.embed_dim) == (
        tile,
        size,
        mode,
        mean,
        std,
        width,
    )
    assert round(cfg.input_size / cfg.crop_pct) == RESIZE_TO.get(name, size) and crop == size


@pytest.mark.parametrize("name", sorted(CARDS))
def test_full_size_architecture_on_meta_device(name):
    *_, width, prefix, patches, million = CARDS[name]
    cfg = get_encoder_cfg(name)
    with torch.device("meta"):
        net = build_embedding_net(cfg)
        x = torch.empty(2, 3, cfg.input_size, cfg.input_size)
        tokens = net.trunk.forward_features(x)
        embedding = net(x)
    assert tuple(embedding.shape) == (2, width) and net.embed_dim == width
    assert net.trunk.num_prefix_tokens == prefix and tokens.shape[1] == prefix + patches
    params = sum(p.numel() for p in net.parameters()) / 1e6
    assert params == pytest.approx(million, rel=0.02)


@pytest.fixture(scope="module")
def narrow():
    """``narrow(name)``: a one-block, 48-wide random-weight variant at the preset's real input size."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = create_encoder(name, weights="random", device="cpu", model_kwargs=NARROW)
        return built[name]

    return get


def _smooth_tiles(side: int) -> np.ndarray:
    """Two RGB tiles of low-frequency colour (resampling filters barely differ on them)."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    red, green = 0.5 + 0.4 * np.sin(2 * np.pi * xx), 0.5 + 0.4 * np.cos(2 * np.pi * yy)
    base = np.stack([red, green, 0.3 + 0.5 * xx * yy])
    tile = np.rint(255 * base.transpose(1, 2, 0)).astype(np.uint8)
    return np.stack([tile, tile[::-1]])


@pytest.mark.parametrize("name", sorted(CARDS))
def test_preprocessing_matches_the_model_card_transform(name, narrow):
    from PIL import Image

    tile_px, size, mode, crop, (mean, std), *_ = CARDS[name]
    encoder = narrow(name)
    tiles = _smooth_tiles(tile_px)
    x = encoder.preprocess(tiles).numpy()
    assert x.shape == (2, 3, size, size)
    # the model card's torchvision pipeline on PIL images: Resize, CenterCrop, ToTensor, Normalize
    resize_to = RESIZE_TO.get(name, size)
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[mode]
    for i, tile in enumerate(tiles):
        image = np.asarray(Image.fromarray(tile).resize((resize_to, resize_to), resample), np.float64)
        top = (resize_to - crop) // 2
        image = image[top : top + crop, top : top + crop] / 255.0
        expected = ((image - np.array(mean)) / np.array(std)).transpose(2, 0, 1)
        np.testing.assert_allclose(x[i], expected, atol=0.06)


def _pooled(cfg, tokens: torch.Tensor, net) -> torch.Tensor:
    """Each model card's pooling, written out again."""
    if cfg.name == "virchow2":
        return torch.cat([tokens[:, 0], tokens[:, 5:].mean(dim=1)], dim=-1)  # card: output[:, 5:]
    if cfg.pooling == "attn_pool":
        return net.ln_contrast(net.attn_pool_contrast(tokens)[:, 0])
    return tokens[:, 0]


@pytest.mark.parametrize("name", sorted(CARDS))
def test_pooling_matches_the_model_card(name, narrow):
    encoder = narrow(name)
    tiles = _smooth_tiles(encoder.cfg.tile_size_px)
    x = encoder.preprocess(tiles)
    with torch.inference_mode():
        tokens = encoder.model.trunk.forward_features(x)
        expected = _pooled(encoder.cfg, tokens, encoder.model).numpy()
    features = encoder.encode(tiles)
    expected_width = 2 * 48 if name == "virchow2" else 768 if name == "conch_v1_5" else 48
    assert features.shape == (2, expected_width)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    if name == "virchow2":  # the registers are really skipped
        with_registers = torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1).numpy()
        assert not np.allclose(features, with_registers, atol=1e-4)


def test_trident_names_resolve_to_the_preset_and_record_the_canonical_name():
    trident = {
        "uni_v1": "uni",
        "uni_v2": "uni2-h",
        "conch_v15": "conch_v1_5",
        "virchow2": "virchow2",
        "hoptimus0": "h-optimus-0",
        "hoptimus1": "h-optimus-1",
        "phikon": "phikon",
        "phikon_v2": "phikon-v2",
        "gigapath": "prov-gigapath",
    }
    assert dict(ALIASES) == trident
    for alias, canonical in trident.items():
        assert get_encoder_cfg(alias) is get_encoder_cfg(canonical)
        assert canonical_encoder_name(alias) == canonical
    assert set(list_aliases()) == {a for a, c in trident.items() if a != c}
    tiny = {**NARROW, "img_size": 32}
    encoder = create_encoder("uni_v1", weights="random", device="cpu", model_kwargs=tiny)
    assert encoder.cfg.name == "uni"
    with pytest.raises(KeyError, match="Did you mean 'conch_v15'"):
        get_encoder_cfg("conch_v16")
    with pytest.raises(KeyError, match="unknown encoder 'musk'"):  # a TRIDENT model without a preset
        get_encoder_cfg("musk")


def test_cfg_lookup_never_imports_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from napari_care.core.encoders import get_encoder_cfg\n"
        "cfg = get_encoder_cfg('conch_v15')\n"
        "assert (cfg.name, cfg.tile_size_px, cfg.magnification) == ('conch_v1_5', 512, 20.0), cfg\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _hf_vit_state(timm_state: dict) -> dict:
    """A timm ViT state dict in the transformers ``ViTModel`` layout (as owkin/phikon ships)."""
    hf = {"pooler.dense.weight": torch.zeros(4, 4), "pooler.dense.bias": torch.zeros(4)}
    for key, value in timm_state.items():
        parts = key.split(".")
        if key.startswith("blocks."):
            layer, rest = parts[1], ".".join(parts[2:])
            if rest.startswith("attn.qkv."):
                for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                    hf[f"encoder.layer.{layer}.attention.attention.{name}.{parts[-1]}"] = part.contiguous()
                continue
            rest = (
                rest.replace("norm1.", "layernorm_before.")
                .replace("norm2.", "layernorm_after.")
                .replace("attn.proj.", "attention.output.dense.")
                .replace("mlp.fc1.", "intermediate.dense.")
                .replace("mlp.fc2.", "output.dense.")
            )
            hf[f"encoder.layer.{layer}.{rest}"] = value
        elif key.startswith("norm."):
            hf["layernorm." + key[len("norm.") :]] = value
        else:
            renamed = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings"}
            patch = key.replace("patch_embed.proj.", "embeddings.patch_embeddings.projection.")
            hf[renamed.get(key, patch)] = value
    return hf


def test_phikon_loads_transformers_weights_from_the_hub_cache_offline(monkeypatch, tmp_path, narrow):
    from safetensors.torch import save_file

    reference = narrow("phikon")
    timm_state = {k: v.detach().clone().contiguous() for k, v in reference.model.trunk.state_dict().items()}
    repo = tmp_path / "hf" / "hub" / "models--owkin--phikon"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    save_file(_hf_vit_state(timm_state), snapshot / "model.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    loaded = create_encoder("phikon", device="cpu", model_kwargs=NARROW)
    tiles = _smooth_tiles(224)
    np.testing.assert_array_equal(loaded.encode(tiles), reference.encode(tiles))
    assert loaded.weights_source == "hf-hub:owkin/phikon"
