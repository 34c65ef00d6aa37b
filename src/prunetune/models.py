"""Base models: what we support, how we build them, and their dimensions.

A base model is named by a :class:`ModelSpec` (a timm model name plus keyword arguments,
``vit_custom`` for a bare timm ``VisionTransformer``, or ``hf:DIR`` for a Hugging Face ViT/DeiT
folder); the model family that builds it (:mod:`prunetune.families`) is found from the name.
A pruned model is always *spec + config + weights*: we never pickle modules.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import read_mapping
from .errors import CheckpointError, UnsupportedModelError
from .families import Part, family_for, family_of
from .families.hf_vit import PREFIX as HF_PREFIX
from .families.timm_vit import (
    BUILTIN_MODELS,
    CUSTOM,
    DEFAULT_MODEL,
    DIGITS_VIT_KWARGS,
    PHOTOS_VIT_KWARGS,
    SUPPORTED_PREFIXES,
)

__all__ = [
    "ModelSpec",
    "ViTArch",
    "SUPPORTED_FAMILIES",
    "DEFAULT_MODEL",
    "BUILTIN_MODELS",
    "build_model",
    "check_supported",
    "input_shape",
    "load_weights",
    "read_state_dict",
    "resolve_model_spec",
]

#: Name prefixes of timm models we prune (all build timm's VisionTransformer).
SUPPORTED_FAMILIES = SUPPORTED_PREFIXES
__all__ += ["CUSTOM", "DIGITS_VIT_KWARGS", "PHOTOS_VIT_KWARGS"]


@dataclass(frozen=True)
class ModelSpec:
    """Names a base model: a timm model name and the keyword arguments to build it.

    Attributes:
        name: A timm model name (``vit_*``, ``deit_*``, ``deit3_*``), ``vit_custom`` for a
            bare VisionTransformer built from ``kwargs``, ``hf:DIR`` (a local Hugging Face
            ViT/DeiT folder; ``kwargs`` override its config), or a built-in: ``digits_vit`` (the
            embedded default) or ``photos_vit``.
        kwargs: Keyword arguments passed to the constructor (e.g. ``num_classes``).
        pretrained_cfg: The model's preprocessing, timm's way (``mean``, ``std``,
            ``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``); merged over timm's
            own ``pretrained_cfg`` of the named model. Needed for a ``vit_custom`` model trained
            on images.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_pretrained_cfg(self.pretrained_cfg)
        if not isinstance(self.name, str) or not self.name:
            raise UnsupportedModelError(
                f"model name must be a non-empty string, but got {self.name!r}"
            )
        if self.name.startswith(HF_PREFIX) and len(self.name) > len(HF_PREFIX):
            # a folder: recorded absolute, so a config written here is read the same elsewhere
            folder = Path(self.name[len(HF_PREFIX) :]).expanduser().resolve()
            object.__setattr__(self, "name", HF_PREFIX + str(folder))
        if not isinstance(self.kwargs, dict):
            raise UnsupportedModelError(f"model kwargs must be a mapping, but got {self.kwargs!r}")
        bad = [k for k in self.kwargs if not isinstance(k, str)]
        if bad:
            raise UnsupportedModelError(
                f"model kwargs must have text keys, but got the key {bad[0]!r}"
            )
        family = family_for(self.name)
        if family is None:
            raise UnsupportedModelError(
                f"model {self.name!r} is not supported; supported: timm names starting with "
                f"{', '.join(SUPPORTED_FAMILIES)}, '{CUSTOM}', a built-in "
                f"({', '.join(BUILTIN_MODELS)}) or hf:DIR (a Hugging Face ViT/DeiT folder)"
            )
        family.check_name(self.name, self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "kwargs": dict(self.kwargs)}
        if self.pretrained_cfg:
            d["pretrained_cfg"] = dict(self.pretrained_cfg)
        return d

    @classmethod
    def from_obj(cls, obj: Any) -> ModelSpec:
        """Accepts a ModelSpec, a name string, or a ``{"name", "kwargs"}`` mapping."""
        if isinstance(obj, ModelSpec):
            return obj
        if isinstance(obj, str):
            return cls(obj)
        if isinstance(obj, dict):
            unknown = set(obj) - {"name", "kwargs", "pretrained_cfg"}
            if unknown or "name" not in obj:
                raise UnsupportedModelError(
                    f"model must be a name or {{'name', 'kwargs', 'pretrained_cfg'}}, "
                    f"but got keys {sorted(obj, key=str)}"
                )
            kwargs = obj.get("kwargs") or {}
            if not isinstance(kwargs, dict):
                raise UnsupportedModelError(f"model kwargs must be a mapping, but got {kwargs!r}")
            cfg = obj.get("pretrained_cfg") or {}
            if not isinstance(cfg, dict):
                raise UnsupportedModelError(
                    f"model pretrained_cfg must be a mapping, but got {cfg!r}"
                )
            return cls(obj["name"], dict(kwargs), dict(cfg))
        raise UnsupportedModelError(f"model must be a name or a mapping, but got {obj!r}")

    def __hash__(self) -> int:
        return hash(
            (
                self.name,
                json.dumps(self.kwargs, sort_keys=True, default=str),
                json.dumps(self.pretrained_cfg, sort_keys=True, default=str),
            )
        )


#: Preprocessing keys a model file's ``pretrained_cfg`` may set (timm's data config).
PREPROCESSING_KEYS = ("mean", "std", "input_size", "interpolation", "crop_pct", "crop_mode")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


def _check_pretrained_cfg(cfg: Any) -> None:
    if not isinstance(cfg, dict):
        raise UnsupportedModelError(f"model pretrained_cfg must be a mapping, but got {cfg!r}")
    unknown = sorted(set(cfg) - set(PREPROCESSING_KEYS), key=str)
    if unknown:
        raise UnsupportedModelError(
            f"model pretrained_cfg keys must be among {', '.join(PREPROCESSING_KEYS)}, but got "
            f"{unknown}"
        )
    for key in ("mean", "std"):
        v = cfg.get(key)
        if v is None:
            continue
        if (
            not isinstance(v, (list, tuple))
            or not v
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        ):
            raise UnsupportedModelError(
                f"model pretrained_cfg {key} must be a list of numbers, but got {v!r}"
            )
        if key == "std" and any(x <= 0 for x in v):
            raise UnsupportedModelError(f"model pretrained_cfg std must be positive, but got {v!r}")
    if "interpolation" in cfg and cfg["interpolation"] not in INTERPOLATIONS:
        raise UnsupportedModelError(
            f"model pretrained_cfg interpolation must be one of {', '.join(INTERPOLATIONS)}, "
            f"but got {cfg['interpolation']!r}"
        )
    c = cfg.get("crop_pct")
    if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1):
        raise UnsupportedModelError(
            f"model pretrained_cfg crop_pct must be in (0, 1], but got {c!r}"
        )


def resolve_model_spec(model: str | None) -> ModelSpec:
    """Turns a ``--model`` value (None, a name, or a JSON/YAML file) into a spec."""
    if model is None:
        return ModelSpec(DEFAULT_MODEL)
    path = Path(model)
    if model.strip() and (path.suffix.lower() in (".json", ".yaml", ".yml") or path.is_dir()):
        if not path.exists():
            raise UnsupportedModelError(f"model file {model} does not exist")
        try:
            return ModelSpec.from_obj(read_mapping(path, what="model"))
        except UnsupportedModelError as e:
            raise UnsupportedModelError(f"model file {model}: {e}") from None
    return ModelSpec(model)


def build_model(spec: ModelSpec | str, device: str | torch.device | None = None) -> nn.Module:
    """Builds the base model with random init (never downloads weights) and checks support."""
    spec = ModelSpec.from_obj(spec)
    family = family_for(spec.name)
    try:
        model = family.build(spec.name, dict(spec.kwargs))
    except UnsupportedModelError:
        raise
    except Exception as e:  # bad kwargs fail deep inside the model library with many types
        msg = " ".join(str(e).split()) or type(e).__name__
        raise UnsupportedModelError(
            f"cannot build {spec.name} with kwargs {spec.kwargs}: {msg[:200]}; "
            "fix the model's kwargs"
        ) from None
    check_supported(model)
    own = family.preprocessing(spec.name, spec.kwargs)
    if own or spec.pretrained_cfg:
        model.pretrained_cfg = {
            **(getattr(model, "pretrained_cfg", None) or {}),
            **own,
            **spec.pretrained_cfg,
        }
    if device is not None:
        model = model.to(device)
    return model


def check_supported(model: nn.Module) -> None:
    """Raises :class:`UnsupportedModelError` unless prunetune can prune ``model``."""
    family = family_of(model)
    if len(family.blocks(model)) == 0:
        raise UnsupportedModelError(
            "the model has no transformer blocks (depth=0); nothing to prune"
        )
    family.check(model)


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) of the images ``model`` takes."""
    stem = family_of(model).stem(model)
    return (stem.in_chans, *stem.img_size)


def _n(module: nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters())


def _head_linear_outputs(block: nn.Module, parts: list[Part]) -> int:
    """Copies of the head channels the block's linears write: 3 for q, k, v; 4 with a gate."""
    return sum(
        p.repeat
        for p in parts
        if p.axis == 0 and isinstance(block.get_submodule(p.path), nn.Linear)
    )


def _unit_params(block: nn.Module, parts: list[Part]) -> int:
    """Parameters that go with the units of ``parts``: a Linear's weight (and, for its
    outputs, its bias), a norm's weight and bias."""
    total = 0
    for part in parts:
        mod = block.get_submodule(part.path)
        if isinstance(mod, nn.Linear):
            total += mod.weight.numel()
            if part.axis == 0 and mod.bias is not None:
                total += mod.bias.numel()
        else:
            total += _n(mod)
    return total


@dataclass(frozen=True)
class ViTArch:
    """Dimensions of a dense base model, enough to cost any configuration analytically.

    Parameter counts are split into a part that scales with kept heads, a part that scales
    with kept MLP neurons, and fixed parts; all are exact for timm's Block/Attention/Mlp.
    """

    depth: int
    embed_dim: int
    num_heads: int
    head_dim: int
    mlp_hidden: int
    num_patches: int
    num_prefix_tokens: int
    in_chans: int
    patch_area: int
    num_classes: int
    num_heads_out: int  # classifier heads (2 for distilled DeiT)
    gated_attn: bool
    params_per_head: int
    params_per_neuron: int
    params_block_fixed: int
    params_outside_blocks: int

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix_tokens

    @classmethod
    def from_model(cls, model: nn.Module) -> ViTArch:
        check_supported(model)
        family = family_of(model)
        stem = family.stem(model)
        blocks = family.blocks(model)
        blk = blocks[0]
        H, d = family.heads(blk)
        M = family.mlp_width(blk)
        scales_with_heads = _unit_params(blk, family.head_parts(blk))
        scales_with_neurons = _unit_params(blk, family.mlp_parts(blk))
        block_total = _n(blk)
        for b in blocks:
            if (*family.heads(b), family.mlp_width(b)) != (H, d, M) or _n(b) != block_total:
                raise UnsupportedModelError("base model blocks must all have the same shape")
        return cls(
            depth=len(blocks),
            embed_dim=stem.embed_dim,
            num_heads=H,
            head_dim=d,
            mlp_hidden=M,
            num_patches=stem.num_patches,
            num_prefix_tokens=stem.num_prefix_tokens,
            in_chans=stem.in_chans,
            patch_area=stem.patch_area,
            num_classes=stem.num_classes,
            num_heads_out=stem.num_heads_out,
            gated_attn=_head_linear_outputs(blk, family.head_parts(blk)) > 3,
            params_per_head=scales_with_heads // H,
            params_per_neuron=scales_with_neurons // M,
            params_block_fixed=block_total - scales_with_heads - scales_with_neurons,
            params_outside_blocks=_n(model) - block_total * len(blocks),
        )

    @classmethod
    def from_spec(cls, spec: ModelSpec | str) -> ViTArch:
        """Arch of a spec without allocating weights (built on the meta device)."""
        spec = ModelSpec.from_obj(spec)
        cached = _ARCH_CACHE.get(spec)
        if cached is None:
            with torch.device("meta"):
                cached = cls.from_model(build_model(spec))
            _ARCH_CACHE[spec] = cached
        return cached


_ARCH_CACHE: dict[ModelSpec, ViTArch] = {}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RESAVE = (
    "re-save it with torch.save(model.state_dict(), path) or as .safetensors "
    "(safetensors.torch.save_file)"
)


def _one_line(e: BaseException, limit: int = 160) -> str:
    """A reader's error as one short line, without terminal colour codes."""
    if isinstance(e, (KeyError, EOFError, pickle.UnpicklingError)):
        return "unrecognised contents"  # torch's own messages here are a bare byte or opcode
    msg = " ".join(_ANSI.sub("", str(e)).split()) or type(e).__name__
    return msg if len(msg) <= limit else msg[: limit - 3].rsplit(" ", 1)[0] + "..."


def _torch_load_error(path: Path, e: BaseException) -> CheckpointError:
    """A one-line error for a file ``torch.load(weights_only=True)`` refused or could not read."""
    text = _ANSI.sub("", str(e))
    if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" (it holds {found.group(1)})" if found else ""
        return CheckpointError(
            f"checkpoint {path} could not be read without pickle{what}, which prunetune refuses "
            f"(torch.load weights_only=True); {_RESAVE}"
        )
    return CheckpointError(
        f"checkpoint {path} could not be read as a torch file ({_one_line(e)}); pass a "
        f".safetensors file or a .pth saved with torch.save(model.state_dict(), path)"
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a safetensors or torch (``weights_only``) file into a flat state dict.

    Raises:
        CheckpointError: The file is missing, a directory, empty, corrupt, needs pickle, or
            does not hold a mapping of names to tensors. The message is one line.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; pass a .safetensors or .pth file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty; pass a .safetensors or .pth file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # corrupt files raise many different types
            raise CheckpointError(
                f"checkpoint {path} could not be read as safetensors ({_one_line(e)}); it may be "
                "truncated or not safetensors: copy or save it again"
            ) from None
    else:
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
                warnings.simplefilter("ignore")
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt files raise many different types
            raise _torch_load_error(path, e) from None
    for key in ("model_ema", "model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if isinstance(state, dict):
        bad = [
            (k, v)
            for k, v in state.items()
            if not (isinstance(k, str) and isinstance(v, torch.Tensor))
        ]
        got = (
            f"the entry {bad[0][0]!r}: {type(bad[0][1]).__name__}"
            if bad
            else "an empty mapping"
            if not state
            else None
        )
    else:
        got = f"a {type(state).__name__}"
    if got is not None:
        raise CheckpointError(
            f"checkpoint {path} must hold a state dict (names to tensors), but holds {got}; "
            f"{_RESAVE}"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Loads a checkpoint into ``model`` strictly, with a one-line error on mismatch."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match the model: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise CheckpointError(
                f"checkpoint {path} does not match the model: {k} has shape {tuple(v.shape)}, "
                f"model expects {tuple(own[k].shape)}"
            )
    model.load_state_dict(state, strict=True)
    return model
