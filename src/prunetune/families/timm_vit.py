"""timm's VisionTransformer (ViT, DeiT, DeiT III and the built-in models) as a model family.

The only module that touches timm's ``Block``/``Attention``/``Mlp``: fused ``qkv`` (rows
``[q heads | k heads | v heads]``), ``proj``, optional gate and head norm, ``mlp.fc1``/``fc2``
with an optional hidden norm, ``norm1`` first in every block, and timm's own ``attn_mask``
argument for the token blocks' additive masks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import timm
import torch
from timm.layers import Mlp
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ..errors import UnsupportedModelError
from ..registry import FAMILIES
from ._base import ModelFamily, Part, Stem

__all__ = [
    "BUILTIN_MODELS",
    "CUSTOM",
    "DEFAULT_MODEL",
    "DIGITS_VIT_KWARGS",
    "PHOTOS_VIT_KWARGS",
    "SUPPORTED_PREFIXES",
    "TimmViT",
]

#: Name prefixes of timm models we prune (all build timm's VisionTransformer).
SUPPORTED_PREFIXES = ("vit_", "deit_", "deit3_")
#: Name of the embedded default (a VisionTransformer trained on scikit-learn's digits).
DEFAULT_MODEL = "digits_vit"
CUSTOM = "vit_custom"

DIGITS_VIT_KWARGS: dict[str, Any] = {
    "img_size": 16,
    "patch_size": 2,
    "in_chans": 1,
    "num_classes": 10,
    "embed_dim": 96,
    "depth": 6,
    "num_heads": 6,
    "mlp_ratio": 4.0,
}
#: The second built-in: the same shape on 32x32 RGB patches of scikit-image's photographs
PHOTOS_VIT_KWARGS: dict[str, Any] = {
    **DIGITS_VIT_KWARGS,
    "img_size": 32,
    "patch_size": 4,
    "in_chans": 3,
    "num_classes": 8,
}
#: Built-in models (weights shipped in ``prunetune/default``): name -> (kwargs, data set)
BUILTIN_MODELS: dict[str, tuple[dict[str, Any], str]] = {
    DEFAULT_MODEL: (DIGITS_VIT_KWARGS, "digits"),
    "photos_vit": (PHOTOS_VIT_KWARGS, "photos"),
}


@FAMILIES.register("timm")
class TimmViT(ModelFamily):
    """timm ``VisionTransformer`` with timm's ``Block``, ``Attention`` and ``Mlp``."""

    # --- naming and building -------------------------------------------------------------

    def owns_name(self, name: str) -> bool:
        return name in BUILTIN_MODELS or name == CUSTOM or name.startswith(SUPPORTED_PREFIXES)

    def check_name(self, name: str, kwargs: dict[str, Any]) -> None:
        if name in BUILTIN_MODELS or name == CUSTOM:
            return
        if name not in timm.list_models():
            raise UnsupportedModelError(
                f"unknown timm model {name!r}; see timm.list_models('vit_*') for names"
            )

    def build(self, name: str, kwargs: dict[str, Any]) -> nn.Module:
        if name in BUILTIN_MODELS:
            return VisionTransformer(**{**BUILTIN_MODELS[name][0], **kwargs})
        if name == CUSTOM:
            return VisionTransformer(**kwargs)
        return timm.create_model(name, pretrained=False, **kwargs)

    def preprocessing(self, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if name in BUILTIN_MODELS:  # how the built-ins were trained (prunetune.default.train)
            chans = BUILTIN_MODELS[name][0]["in_chans"]
            return {
                "mean": (0.5,) * chans,
                "std": (0.5,) * chans,
                "crop_pct": 1.0,
                "interpolation": "bilinear",
            }
        return {}

    # --- the model -------------------------------------------------------------------------

    def owns(self, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    def check(self, model: nn.Module) -> None:
        if getattr(model, "attn_pool", None) is not None:
            raise UnsupportedModelError(
                "attention-pool heads (global_pool='map') are not supported"
            )
        for i, blk in enumerate(model.blocks):
            if not isinstance(blk, Block):
                raise UnsupportedModelError(
                    f"block {i} is a {type(blk).__name__}; only timm's Block is supported"
                )
            if type(blk.attn) is not Attention:
                raise UnsupportedModelError(
                    f"block {i} uses {type(blk.attn).__name__}; only timm's Attention is supported"
                )
            if not isinstance(blk.mlp, Mlp) or not isinstance(blk.mlp.fc1, nn.Linear):
                raise UnsupportedModelError(
                    f"block {i} uses {type(blk.mlp).__name__}; only timm's Mlp (Linear) is "
                    "supported"
                )

    def stem(self, model: nn.Module) -> Stem:
        pe = model.patch_embed
        heads_out = [
            m
            for m in (getattr(model, "head", None), getattr(model, "head_dist", None))
            if isinstance(m, nn.Linear)
        ]
        h, w = pe.img_size
        return Stem(
            embed_dim=model.embed_dim,
            img_size=(h, w),
            in_chans=pe.proj.in_channels,
            patch_area=pe.proj.kernel_size[0] * pe.proj.kernel_size[1],
            num_patches=pe.num_patches,
            num_prefix_tokens=model.num_prefix_tokens,
            has_class_token=getattr(model, "cls_token", None) is not None,
            num_classes=model.num_classes,
            num_heads_out=len(heads_out),
        )

    def blocks_path(self, model: nn.Module) -> str:
        return "blocks"

    def set_blocks(self, model: nn.Module, blocks: list[nn.Module]) -> None:
        model.blocks = nn.Sequential(*blocks)

    def embedding(self, model: nn.Module) -> nn.Module:
        return model.patch_embed

    # --- one block -------------------------------------------------------------------------

    def heads(self, block: nn.Module) -> tuple[int, int]:
        return block.attn.num_heads, block.attn.head_dim

    def set_heads(self, block: nn.Module, num_heads: int) -> None:
        block.attn.num_heads = num_heads
        block.attn.attn_dim = num_heads * block.attn.head_dim

    def head_parts(self, block: nn.Module) -> list[Part]:
        attn = block.attn
        parts = [Part("attn.qkv", 0, 3)]
        if attn.gate is not None:
            parts.append(Part("attn.gate", 0))
        if not isinstance(attn.norm, nn.Identity):
            parts.append(Part("attn.norm", 0))
        return parts + [Part("attn.proj", 1)]

    def mlp_width(self, block: nn.Module) -> int:
        return block.mlp.fc1.out_features

    def mlp_parts(self, block: nn.Module) -> list[Part]:
        parts = [Part("mlp.fc1", 0)]
        if not isinstance(block.mlp.norm, nn.Identity):
            parts.append(Part("mlp.norm", 0))
        return parts + [Part("mlp.fc2", 1)]

    def attn_out_path(self, block: nn.Module) -> str:
        return "attn.proj"

    def mlp_out_path(self, block: nn.Module) -> str:
        return "mlp.fc2"

    def input_norm(self, block: nn.Module) -> nn.Module:
        return block.norm1

    # --- attention paths and token surgery ------------------------------------------------

    def attention_state(self, model: nn.Module) -> Any:
        return [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]

    def restore_attention(self, model: nn.Module, state: Any) -> None:
        for m, fused in state:
            m.fused_attn = fused

    def set_explicit_attention(self, model: nn.Module, explicit: bool) -> None:
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = not explicit

    def capture(
        self, block: nn.Module, which: str, store: Callable[[torch.Tensor, float], None]
    ) -> None:
        # timm calls attn.q_norm / k_norm on q and k (B, h, N, d) even when they are Identity
        scale = block.attn.scale
        getattr(block.attn, f"{which}_norm").register_forward_hook(_Capture(store, scale))

    def token_class(self, cls: type, prepare: Callable) -> type:
        return _token_class(cls, prepare)

    def token_support_problem(self) -> str | None:
        problem = _timm_problem()
        if problem is None:
            return None
        return (
            f"timm {timm.__version__} does not support the token surgery: {problem}; "
            "install the tested range: pip install 'timm>=1.0.15,<1.1'"
        )


class _Capture:
    """Forward hook on ``attn.q_norm``/``attn.k_norm``: hands q or k (B, h, N, d) on."""

    def __init__(self, store: Callable[[torch.Tensor, float], None], scale: float):
        self.store, self.scale = store, scale

    def __call__(self, module, args, out):
        self.store(out, self.scale)


@functools.cache
def _token_class(cls: type, prepare: Callable) -> type:
    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        x, bias = prepare(self, x)
        if attn_mask is None:
            attn_mask = bias
        if is_causal:  # passed only when set: _timm_problem checks the attn_mask call
            return cls.forward(self, x, attn_mask=attn_mask, is_causal=True)
        return cls.forward(self, x, attn_mask=attn_mask)

    return type(f"Token{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})


@functools.cache
def _timm_problem() -> str | None:
    """What the token surgery needs and this timm lacks, or None (the global RNG is untouched).

    Checked by behaviour on a tiny ``Block`` (built once per process): an ``Attention`` whose
    ``num_heads``/``attn_dim`` were cut (as head pruning does) still runs; ``attn.q_norm`` and
    ``attn.k_norm`` see q and k; ``Block.forward(x, attn_mask=...)`` takes an additive mask
    and honours it on both attention paths.
    """
    dim, heads, head_dim, n = 8, 2, 4, 3
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        blk = Block(dim, heads).eval()
        x = torch.randn(1, n, dim)
        attn = blk.attn
        attn.qkv, attn.proj = nn.Linear(dim, 3 * head_dim), nn.Linear(head_dim, dim)
        attn.num_heads, attn.attn_dim = 1, head_dim
        seen = {}
        hooks = [
            getattr(attn, f"{w}_norm").register_forward_hook(
                lambda mod, args, out, w=w: seen.__setitem__(w, tuple(out.shape))
            )
            for w in "qk"
        ]
        try:
            plain = blk(x)
        except RuntimeError as e:
            return f"Attention does not honour a cut attn_dim ({type(e).__name__})"
        finally:
            for h in hooks:
                h.remove()
        if seen != {"q": (1, 1, n, head_dim), "k": (1, 1, n, head_dim)}:
            return f"attn.q_norm/k_norm are not called on q and k (saw {seen})"
        mask = torch.zeros(1, 1, n, n)
        mask[..., 1:] = float("-inf")  # every token attends to token 0 only
        for fused in (True, False):
            attn.fused_attn = fused
            try:
                masked, zero = blk(x, attn_mask=mask), blk(x, attn_mask=torch.zeros_like(mask))
            except TypeError:
                return "Block.forward takes no attn_mask"
            if not torch.allclose(zero, plain, atol=1e-6) or torch.allclose(masked, plain):
                return f"Block.forward ignores attn_mask (fused_attn={fused})"
    return None
