"""Pathology foundation-model presets: ONE table of architecture, input, normalisation, recipe, licence.

Each row reproduces its model card and the TRIDENT integration of the same model
(``mahmoodlab/TRIDENT``, ``trident/patch_encoder_models/load.py``): the timm architecture and
arguments the official weights load into strictly, the tile side at 20x (0.5 um/px) that
TRIDENT extracts for it (``tile_size_px``), the resize to the network's input (``input_size``,
``interpolation``, ``crop_pct``), the normalisation and how tokens become the embedding.
Weights are never bundled: pass ``weights=`` with a local checkpoint, or let the hub (or its
local cache) provide them (most repositories are gated: request access and log in first).
Licences are summarised for orientation only; the model card is authoritative.

:data:`ALIASES` maps TRIDENT's encoder names (``encoder_factory``) onto these presets;
:func:`~napari_care.core.encoders.registry.get_encoder_cfg` resolves them, and the
canonical name is the one recorded in outputs.

Points that could not be confirmed from a published source are said in the description
of the preset concerned.
"""

from __future__ import annotations

from types import MappingProxyType

from .config import IMAGENET_MEAN, IMAGENET_STD, EncoderCfg
from .registry import register_alias, register_timm_preset

NON_COMMERCIAL = "CC-BY-NC-ND-4.0: non-commercial academic research only; gated on Hugging Face"
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
MPP_20X = 0.5  # every preset here was trained on tiles at about 0.5 um/px

_VIRCHOW2_KWARGS = {
    "img_size": 224,
    "init_values": 1e-5,
    "num_classes": 0,
    "reg_tokens": 4,
    "mlp_ratio": 5.3375,
    "global_pool": "",
    "dynamic_img_size": True,
    "mlp_layer": "SwiGLUPacked",
    "act_layer": "SiLU",
}
_HOPTIMUS_KWARGS = {
    "img_size": 224,
    "init_values": 1e-5,
    "num_classes": 0,
    "global_pool": "token",
    "dynamic_img_size": False,
}

#: The presets, one row each. Columns: name, timm arch, tile side at 0.5 um/px, network input
#: side, resize mode, centre-crop share, mean, std, embedding width, pooling.
PRESETS: tuple[EncoderCfg, ...] = (
    EncoderCfg(
        name="uni",
        arch="vit_large_patch16_224",
        tile_size_px=256,
        input_size=224,
        interpolation="bilinear",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=MPP_20X,
        embed_dim=1024,
        pooling="cls",
        license=NON_COMMERCIAL,
        hf_id="MahmoodLab/UNI",
        timm_kwargs={
            "img_size": 224,
            "patch_size": 16,
            "init_values": 1e-5,
            "num_classes": 0,
            "dynamic_img_size": True,
        },
        description="UNI (Mahmood Lab): ViT-L/16, class token, 1024-d; 256-px tiles at 20x resized to 224",
    ),
    EncoderCfg(
        name="uni2-h",
        arch="vit_giant_patch14_224",
        tile_size_px=256,
        input_size=224,
        interpolation="bilinear",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=MPP_20X,
        embed_dim=1536,
        pooling="cls",
        license=NON_COMMERCIAL,
        hf_id="MahmoodLab/UNI2-h",
        timm_kwargs={
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "num_classes": 0,
            "no_embed_class": True,
            "mlp_layer": "SwiGLUPacked",
            "act_layer": "SiLU",
            "reg_tokens": 8,
            "dynamic_img_size": True,
        },
        description=(
            "UNI2-h (Mahmood Lab): ViT-H/14 with 8 registers, SwiGLU, class token, 1536-d; "
            "256-px tiles at 20x resized to 224"
        ),
    ),
    EncoderCfg(
        name="conch_v1_5",
        arch="vit_large_patch16_224",
        tile_size_px=512,
        input_size=448,
        interpolation="bilinear",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=MPP_20X,
        embed_dim=768,
        pooling="attn_pool",
        license=NON_COMMERCIAL,
        hf_id="MahmoodLab/conchv1_5",
        hf_filename="pytorch_model_vision.bin",
        timm_kwargs={
            "img_size": 448,
            "patch_size": 16,
            "init_values": 1.0,
            "num_classes": 0,
            "dynamic_img_size": True,
        },
        description=(
            "CONCH v1.5 (TITAN's patch encoder): ViT-L/16 at 448 px (512-px tiles at 20x resized), "
            "attentional pooler + LayerNorm to 768-d; the pooler weights come with the checkpoint "
            "(attn_pool_contrast.*, ln_contrast.*). The checkpoint's 224-px position embedding is "
            "resampled once at load (timm, bicubic), where TRIDENT resamples it at every call "
            "(bicubic, scale factor +0.1): features agree closely, not bit for bit"
        ),
    ),
    EncoderCfg(
        name="virchow2",
        arch="vit_huge_patch14_224",
        tile_size_px=224,
        input_size=224,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=MPP_20X,
        embed_dim=2560,
        pooling="cls+mean",
        license=NON_COMMERCIAL,
        hf_id="paige-ai/Virchow2",
        timm_kwargs=_VIRCHOW2_KWARGS,
        description=(
            "Virchow2 (Paige): ViT-H/14 with 4 registers, SwiGLU; class token ++ mean of the 256 "
            "patch tokens (registers skipped), 2560-d"
        ),
    ),
    EncoderCfg(
        name="virchow2-cls",
        arch="vit_huge_patch14_224",
        tile_size_px=224,
        input_size=224,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=MPP_20X,
        embed_dim=1280,
        pooling="cls",
        license=NON_COMMERCIAL,
        hf_id="paige-ai/Virchow2",
        timm_kwargs=_VIRCHOW2_KWARGS,
        description="Virchow2 (Paige), class token only, 1280-d (TRIDENT's return_cls=True)",
    ),
    EncoderCfg(
        name="h-optimus-0",
        arch="vit_giant_patch14_reg4_dinov2",
        tile_size_px=224,
        input_size=224,
        interpolation="bilinear",
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        native_mpp=MPP_20X,
        embed_dim=1536,
        pooling="cls",
        license="Apache-2.0 (Bioptimus); check the model card",
        hf_id="bioptimus/H-optimus-0",
        timm_kwargs=_HOPTIMUS_KWARGS,
        description="H-optimus-0 (Bioptimus): ViT-g/14 with 4 registers, class token, 1536-d",
    ),
    EncoderCfg(
        name="h-optimus-1",
        arch="vit_giant_patch14_reg4_dinov2",
        tile_size_px=224,
        input_size=224,
        interpolation="bilinear",
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        native_mpp=MPP_20X,
        embed_dim=1536,
        pooling="cls",
        license="gated; non-commercial terms (Bioptimus licence; not confirmed here: check the model card)",
        hf_id="bioptimus/H-optimus-1",
        timm_kwargs=_HOPTIMUS_KWARGS,
        description="H-optimus-1 (Bioptimus): ViT-g/14 with 4 registers, class token, 1536-d",
    ),
    EncoderCfg(
        name="phikon",
        arch="vit_base_patch16_224",
        tile_size_px=224,
        input_size=224,
        interpolation="bilinear",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=MPP_20X,
        embed_dim=768,
        pooling="cls",
        license="non-commercial (Owkin licence; not confirmed here: check the model card)",
        hf_id="owkin/phikon",
        timm_kwargs={"img_size": 224, "patch_size": 16, "num_classes": 0},
        description=(
            "Phikon (Owkin): iBOT ViT-B/16, class token of the last hidden state, 768-d. Shipped as a "
            "transformers ViTModel, converted to timm names at load (no transformers needed); LayerNorm "
            "eps is timm's 1e-6 as in iBOT training, where the hub config says 1e-12"
        ),
    ),
    EncoderCfg(
        name="phikon-v2",
        arch="vit_large_patch16_224",
        tile_size_px=224,
        input_size=224,
        interpolation="bilinear",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=MPP_20X,
        embed_dim=1024,
        pooling="cls",
        license="non-commercial (Owkin licence; not confirmed here: check the model card)",
        hf_id="owkin/phikon-v2",
        hf_filename="model.safetensors",
        timm_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0},
        description=(
            "Phikon-v2 (Owkin): ViT-L/16 DINOv2-style, class token, 1024-d. Shipped in the transformers "
            "Dinov2Model layout, converted to timm names at load; resize as TRIDENT (bilinear)"
        ),
    ),
    EncoderCfg(
        name="prov-gigapath",
        arch="vit_giant_patch14_dinov2",
        tile_size_px=256,
        input_size=224,
        crop_pct=224 / 256,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=MPP_20X,
        embed_dim=1536,
        pooling="cls",
        license="Apache-2.0 with research-use terms; gated (check the model card)",
        hf_id="prov-gigapath/prov-gigapath",
        timm_kwargs={
            "img_size": 224,
            "in_chans": 3,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-5,
            "mlp_ratio": 5.33334,
            "num_classes": 0,
        },
        description=(
            "Prov-GigaPath tile encoder: ViT-g with 16-px patches (the hub config overrides the "
            "architecture's 14), SwiGLU, class token, 1536-d; 256-px tiles resized and centre-cropped to 224"
        ),
    ),
)

#: TRIDENT's encoder names (``trident.patch_encoder_models.encoder_factory``) -> canonical preset.
#: TRIDENT names without a preset here (conch_v1, virchow, musk, ...) stay unknown.
ALIASES: MappingProxyType[str, str] = MappingProxyType(
    {
        "uni_v1": "uni",
        "uni_v2": "uni2-h",
        "conch_v15": "conch_v1_5",
        "virchow2": "virchow2",  # same spelling: listed so that the table covers TRIDENT's names
        "hoptimus0": "h-optimus-0",
        "hoptimus1": "h-optimus-1",
        "phikon": "phikon",
        "phikon_v2": "phikon-v2",
        "gigapath": "prov-gigapath",
    }
)

for _cfg in PRESETS:
    register_timm_preset(_cfg)
for _alias, _canonical in ALIASES.items():
    if _alias != _canonical:
        register_alias(_alias, _canonical)
