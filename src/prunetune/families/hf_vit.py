"""Hugging Face ``transformers`` ViT and DeiT image classifiers as a model family.

A model is named ``hf:DIR``: a local folder with ``config.json`` (``model_type`` ``vit`` or
``deit``), its weights (``model.safetensors``, as ``save_pretrained`` writes it) and, for the
preprocessing, ``preprocessor_config.json``. prunetune never downloads.

The layout is transformers 5's: ``<base>.layers[i]`` with ``attention.q_proj``/``k_proj``/
``v_proj`` (separate linears, one row block per head) and ``o_proj``, ``mlp.fc1``/``fc2``,
``layernorm_before`` first; ``ViTLayer.forward(hidden_states, attention_mask)`` takes an
additive mask, which the token blocks use. transformers is imported only when an ``hf:`` model
is built (``pip install -e '.[hf]'``).

A built model's class is a same-named subclass of the transformers class whose ``forward``
returns the logits tensor (as every other part of prunetune expects); its parameters keep
transformers' names, and ``save_pretrained`` still works on an unpruned one.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedModelError
from ..registry import FAMILIES
from ._base import ModelFamily, Part, Stem

__all__ = ["PREFIX", "HuggingFaceViT", "as_logits_model"]

PREFIX = "hf:"
MODEL_TYPES = ("vit", "deit")
#: transformers' PIL resample codes -> timm's interpolation names
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_INSTALL = "install the Hugging Face extra: pip install 'prunetune[hf]' (transformers>=5.24,<6)"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UnsupportedModelError(f"hf: models need transformers; {_INSTALL}") from None
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _folder(name: str) -> Path:
    if not name[len(PREFIX) :].strip():
        raise UnsupportedModelError(
            "hf: needs a folder: pass hf:DIR with the folder that holds the model's config.json"
        )
    return Path(name[len(PREFIX) :])


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not folder.is_dir():
        raise UnsupportedModelError(
            f"hf model folder {folder} does not exist; pass hf:DIR with the folder that holds "
            "config.json"
        )
    if not path.is_file():
        raise UnsupportedModelError(
            f"hf model folder {folder} has no config.json; save the model with "
            "model.save_pretrained(DIR)"
        )
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UnsupportedModelError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("model_type") not in MODEL_TYPES:
        got = cfg.get("model_type") if isinstance(cfg, dict) else None
        raise UnsupportedModelError(
            f"{path} has model_type {got!r}; supported Hugging Face models: "
            f"{', '.join(MODEL_TYPES)} image classifiers"
        )
    return cfg


def _classes(transformers) -> dict[str, type]:
    return {
        "ViTForImageClassification": transformers.ViTForImageClassification,
        "DeiTForImageClassification": transformers.DeiTForImageClassification,
        "DeiTForImageClassificationWithTeacher": (
            transformers.DeiTForImageClassificationWithTeacher
        ),
    }


@functools.cache
def _logits_class(cls: type) -> type:
    def forward(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        return cls.forward(self, pixel_values=pixel_values, **kwargs).logits

    attrs = {"forward": forward, "__module__": __name__, "prunetune_logits": True}
    return type(cls.__name__, (cls,), attrs)


def as_logits_model(model: nn.Module) -> nn.Module:
    """Makes a transformers ViT/DeiT image classifier's forward return the logits tensor.

    In place (the class is swapped for a same-named subclass; parameters are untouched) and
    returns ``model``. Needed once for a model built outside prunetune before it is passed to
    :func:`prunetune.prune` or a saliency criterion.
    """
    if not getattr(type(model), "prunetune_logits", False):
        model.__class__ = _logits_class(type(model))
    return model


@FAMILIES.register("hf")
class HuggingFaceViT(ModelFamily):
    """transformers ``ViTForImageClassification`` / ``DeiTForImageClassification``."""

    # --- naming and building -------------------------------------------------------------

    def owns_name(self, name: str) -> bool:
        return name.startswith(PREFIX)

    def check_name(self, name: str, kwargs: dict[str, Any]) -> None:
        _read_config(_folder(name))

    def build(self, name: str, kwargs: dict[str, Any]) -> nn.Module:
        folder = _folder(name)
        raw = _read_config(folder)
        tf = _transformers()
        config = tf.AutoConfig.from_pretrained(str(folder), **kwargs)
        classes = _classes(tf)
        arch = next((a for a in raw.get("architectures") or [] if a in classes), None)
        if arch is None:
            arch = (
                "ViTForImageClassification"
                if raw["model_type"] == "vit"
                else "DeiTForImageClassification"
            )
        model = classes[arch](config)
        model.set_attn_implementation("sdpa")
        return as_logits_model(model)

    def preprocessing(self, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        path = _folder(name) / "preprocessor_config.json"
        if not path.is_file():
            return {}
        try:
            p = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UnsupportedModelError(f"{path} is not valid JSON ({e})") from None
        out: dict[str, Any] = {"crop_pct": 1.0}
        if p.get("do_normalize", True) and "image_mean" in p and "image_std" in p:
            out["mean"], out["std"] = tuple(p["image_mean"]), tuple(p["image_std"])
        elif not p.get("do_normalize", True):
            out["mean"], out["std"] = (0.0,), (1.0,)
        if p.get("resample") in _RESAMPLE:
            out["interpolation"] = _RESAMPLE[p["resample"]]
        return out

    def default_checkpoint(self, name: str) -> str | None:
        folder = _folder(name)
        for f in ("model.safetensors", "pytorch_model.bin"):
            if (folder / f).is_file():
                return str(folder / f)
        return None

    def load_pretrained(self, model: nn.Module, name: str) -> None:
        """Loads the folder's own weights with transformers (which maps the names
        ``save_pretrained`` writes onto the modules)."""
        _transformers()
        loaded = type(model).from_pretrained(str(_folder(name)), attn_implementation="sdpa")
        model.load_state_dict(loaded.state_dict(), strict=True)

    # --- the model -------------------------------------------------------------------------

    def owns(self, model: nn.Module) -> bool:
        config = getattr(model, "config", None)
        return getattr(config, "model_type", None) in MODEL_TYPES and any(
            c.__module__.startswith("transformers.models.") for c in type(model).__mro__
        )

    def check(self, model: nn.Module) -> None:
        if not getattr(type(model), "prunetune_logits", False):
            raise UnsupportedModelError(
                f"this {type(model).__name__} returns an output object; call "
                "prunetune.families.hf_vit.as_logits_model(model) first"
            )
        base = model.base_model
        layers = getattr(base, "layers", None)
        if layers is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} has no .{model.base_model_prefix}.layers: this "
                f"transformers layout is not supported; {_INSTALL}"
            )
        for i, blk in enumerate(layers):
            attn = getattr(blk, "attention", None)
            if not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")) or (
                not hasattr(blk, "mlp") or not isinstance(blk.mlp.fc1, nn.Linear)
            ):
                raise UnsupportedModelError(
                    f"layer {i} ({type(blk).__name__}) lacks attention.q_proj/k_proj/v_proj/o_proj "
                    f"or mlp.fc1/fc2; {_INSTALL}"
                )

    def stem(self, model: nn.Module) -> Stem:
        c = model.config
        pe = model.base_model.embeddings.patch_embeddings
        side = c.image_size if isinstance(c.image_size, (list, tuple)) else (c.image_size,) * 2
        distilled = c.model_type == "deit"
        heads_out = sum(
            isinstance(getattr(model, n, None), nn.Linear)
            for n in ("classifier", "cls_classifier", "distillation_classifier")
        )
        return Stem(
            embed_dim=c.hidden_size,
            img_size=(int(side[0]), int(side[1])),
            in_chans=pe.projection.in_channels,
            patch_area=pe.projection.kernel_size[0] * pe.projection.kernel_size[1],
            num_patches=pe.num_patches,
            num_prefix_tokens=2 if distilled else 1,
            has_class_token=True,
            num_classes=c.num_labels,
            num_heads_out=heads_out,
        )

    def blocks_path(self, model: nn.Module) -> str:
        return f"{model.base_model_prefix}.layers"

    def set_blocks(self, model: nn.Module, blocks: list[nn.Module]) -> None:
        model.base_model.layers = nn.ModuleList(blocks)
        model.config.num_hidden_layers = len(blocks)

    def embedding(self, model: nn.Module) -> nn.Module:
        return model.base_model.embeddings

    # --- one block -------------------------------------------------------------------------

    def heads(self, block: nn.Module) -> tuple[int, int]:
        return block.attention.num_attention_heads, block.attention.head_dim

    def set_heads(self, block: nn.Module, num_heads: int) -> None:
        block.attention.num_attention_heads = num_heads

    def head_parts(self, block: nn.Module) -> list[Part]:
        return [
            Part("attention.q_proj", 0),
            Part("attention.k_proj", 0),
            Part("attention.v_proj", 0),
            Part("attention.o_proj", 1),
        ]

    def mlp_width(self, block: nn.Module) -> int:
        return block.mlp.fc1.out_features

    def mlp_parts(self, block: nn.Module) -> list[Part]:
        return [Part("mlp.fc1", 0), Part("mlp.fc2", 1)]

    def attn_out_path(self, block: nn.Module) -> str:
        return "attention.o_proj"

    def mlp_out_path(self, block: nn.Module) -> str:
        return "mlp.fc2"

    def input_norm(self, block: nn.Module) -> nn.Module:
        return block.layernorm_before

    # --- attention paths and token surgery ------------------------------------------------

    def attention_state(self, model: nn.Module) -> Any:
        return getattr(model, "prunetune_explicit_attention", False)

    def restore_attention(self, model: nn.Module, state: Any) -> None:
        self.set_explicit_attention(model, bool(state))

    def set_explicit_attention(self, model: nn.Module, explicit: bool) -> None:
        model.set_attn_implementation("eager" if explicit else "sdpa")
        model.prunetune_explicit_attention = explicit

    def capture(
        self, block: nn.Module, which: str, store: Callable[[torch.Tensor, float], None]
    ) -> None:
        attn = block.attention
        proj = getattr(attn, f"{which}_proj")
        proj.register_forward_hook(_Capture(store, attn.head_dim, attn.scaling))

    def token_class(self, cls: type, prepare: Callable) -> type:
        return _token_class(cls, prepare)


class _Capture:
    """Forward hook on ``attention.q_proj``/``k_proj``: hands q or k on as (B, h, N, d)."""

    def __init__(self, store: Callable[[torch.Tensor, float], None], head_dim: int, scale):
        self.store, self.head_dim, self.scale = store, head_dim, scale

    def __call__(self, module, args, out):
        b, n, _ = out.shape
        self.store(out.view(b, n, -1, self.head_dim).transpose(1, 2), self.scale)


@functools.cache
def _token_class(cls: type, prepare: Callable) -> type:
    def forward(self, hidden_states, attention_mask=None, **kwargs):
        x, bias = prepare(self, hidden_states)
        if attention_mask is None:
            attention_mask = bias
        return cls.forward(self, x, attention_mask, **kwargs)

    return type(f"Token{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
