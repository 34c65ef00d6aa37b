"""Model families shared by the pruner contract and cost tests."""

from __future__ import annotations

from prunetune import ModelSpec

SMALL = {"img_size": 32, "patch_size": 4, "num_classes": 10}
FAMILIES = {
    "digits_vit": ModelSpec("digits_vit"),
    "vit_tiny": ModelSpec("vit_tiny_patch16_224", SMALL),
    "deit_tiny_distilled": ModelSpec(
        "deit_tiny_distilled_patch16_224", SMALL
    ),  # 2 prefix tokens, 2 heads
    "deit3_small": ModelSpec("deit3_small_patch16_224", SMALL),  # LayerScale
    "vit_custom": ModelSpec(
        "vit_custom",
        {
            **SMALL,
            "embed_dim": 64,
            "depth": 4,
            "num_heads": 4,
            "qk_norm": True,
            "scale_attn_norm": True,
            "scale_mlp_norm": True,
            "qkv_bias": False,
            "class_token": False,
            "global_pool": "avg",
            "fc_norm": True,
        },
    ),
}
