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


# --- the contract suites run over one tiny model of every model family ------------------------


def _hf_folder(model_type: str, **extra) -> str:
    """A Hugging Face model folder holding only a config.json (prunetune builds random init)."""
    import json
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix=f"prunetune-hf-{model_type}-"))
    config = {
        "model_type": model_type,
        "image_size": 16,
        "patch_size": 4,
        "num_channels": 3,
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "num_labels": 5,
        **extra,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return f"hf:{folder}"


def _contract_families() -> dict[str, ModelSpec]:
    from prunetune.testing.saliency import TINY_SPEC

    return {
        "timm": TINY_SPEC,
        "hf_vit": ModelSpec(_hf_folder("vit", architectures=["ViTForImageClassification"])),
        "hf_deit": ModelSpec(
            _hf_folder("deit", architectures=["DeiTForImageClassificationWithTeacher"])
        ),  # class + distillation tokens, two classifier heads
    }


#: family -> a tiny model of it; adding a model family adds its entry here
CONTRACT_FAMILIES = _contract_families()


def needs_library(family: str) -> None:
    """Skips a test of a family whose optional library is not installed."""
    import pytest

    if family.startswith("hf"):
        pytest.importorskip("transformers")
