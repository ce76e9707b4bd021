"""Pathology foundation-model presets: architecture, input, normalisation, recipe, licence.

Each preset reproduces its model card (and the TRIDENT integration of the same model):
the timm architecture and arguments the official weights load into strictly, the input
size and resize mode, the normalisation and how tokens become the embedding. All were
trained at about 0.5 um/px (20x). Weights are never bundled: pass ``weights=`` with a
local checkpoint, or let the hub download them (most repositories are gated: request
access and log in first). Licences are summarised for orientation only; the model card
is authoritative.

Points that could not be confirmed from a published source are said in the description
of the preset concerned.
"""

from __future__ import annotations

from .config import IMAGENET_MEAN, IMAGENET_STD, EncoderCfg
from .registry import register_timm_preset

NON_COMMERCIAL = "CC-BY-NC-ND-4.0: non-commercial academic research only; gated on Hugging Face"
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

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

register_timm_preset(
    EncoderCfg(
        name="uni",
        arch="vit_large_patch16_224",
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=0.5,
        embed_dim=1024,
        pooling="cls",
        interpolation="bilinear",
        license=NON_COMMERCIAL,
        hf_id="MahmoodLab/UNI",
        timm_kwargs={
            "img_size": 224,
            "patch_size": 16,
            "init_values": 1e-5,
            "num_classes": 0,
            "dynamic_img_size": True,
        },
        description="UNI (Mahmood Lab): ViT-L/16, class token, 1024-d",
    )
)

register_timm_preset(
    EncoderCfg(
        name="uni2-h",
        arch="vit_giant_patch14_224",
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=0.5,
        embed_dim=1536,
        pooling="cls",
        interpolation="bilinear",
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
        description="UNI2-h (Mahmood Lab): ViT-H/14 with 8 registers, SwiGLU, class token, 1536-d",
    )
)

register_timm_preset(
    EncoderCfg(
        name="conch_v1_5",
        arch="vit_large_patch16_224",
        input_size=448,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=0.5,
        embed_dim=768,
        pooling="attn_pool",
        tile_size_px=512,
        interpolation="bilinear",
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
            "(attn_pool_contrast.*, ln_contrast.*). If the checkpoint's position embedding is stored "
            "for 224 px it is resampled once at load (bicubic), where TRIDENT resamples at every call"
        ),
    )
)

register_timm_preset(
    EncoderCfg(
        name="virchow2",
        arch="vit_huge_patch14_224",
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=0.5,
        embed_dim=2560,
        pooling="cls+mean",
        interpolation="bicubic",
        license=NON_COMMERCIAL,
        hf_id="paige-ai/Virchow2",
        timm_kwargs=_VIRCHOW2_KWARGS,
        description="Virchow2 (Paige): ViT-H/14 with 4 registers; class token + mean of patch tokens, 2560-d",
    )
)

register_timm_preset(
    EncoderCfg(
        name="virchow2-cls",
        arch="vit_huge_patch14_224",
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=0.5,
        embed_dim=1280,
        pooling="cls",
        interpolation="bicubic",
        license=NON_COMMERCIAL,
        hf_id="paige-ai/Virchow2",
        timm_kwargs=_VIRCHOW2_KWARGS,
        description="Virchow2 (Paige), class token only, 1280-d",
    )
)

register_timm_preset(
    EncoderCfg(
        name="h-optimus-0",
        arch="vit_giant_patch14_reg4_dinov2",
        input_size=224,
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        native_mpp=0.5,
        embed_dim=1536,
        pooling="cls",
        interpolation="bilinear",
        license="Apache-2.0 (Bioptimus); check the model card",
        hf_id="bioptimus/H-optimus-0",
        timm_kwargs=_HOPTIMUS_KWARGS,
        description="H-optimus-0 (Bioptimus): ViT-g/14 with 4 registers, class token, 1536-d",
    )
)

register_timm_preset(
    EncoderCfg(
        name="h-optimus-1",
        arch="vit_giant_patch14_reg4_dinov2",
        input_size=224,
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        native_mpp=0.5,
        embed_dim=1536,
        pooling="cls",
        interpolation="bilinear",
        license="gated; non-commercial terms (Bioptimus licence; not confirmed here: check the model card)",
        hf_id="bioptimus/H-optimus-1",
        timm_kwargs=_HOPTIMUS_KWARGS,
        description="H-optimus-1 (Bioptimus): ViT-g/14 with 4 registers, class token, 1536-d",
    )
)

register_timm_preset(
    EncoderCfg(
        name="phikon-v2",
        arch="vit_large_patch16_224",
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=0.5,
        embed_dim=1024,
        pooling="cls",
        interpolation="bilinear",
        license="non-commercial (Owkin licence; not confirmed here: check the model card)",
        hf_id="owkin/phikon-v2",
        hf_filename="model.safetensors",
        timm_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0},
        description=(
            "Phikon-v2 (Owkin): ViT-L/16 DINOv2-style, class token, 1024-d. Shipped in the transformers "
            "Dinov2Model layout, converted to timm names at load; the processor's resize mode "
            "(bilinear here) was not confirmed"
        ),
    )
)

register_timm_preset(
    EncoderCfg(
        name="prov-gigapath",
        arch="vit_giant_patch14_dinov2",
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        native_mpp=0.5,
        embed_dim=1536,
        pooling="cls",
        tile_size_px=256,
        crop_pct=224 / 256,
        interpolation="bicubic",
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
    )
)
