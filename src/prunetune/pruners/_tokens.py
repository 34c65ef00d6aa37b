"""Token reduction: the generic machinery every token mode plugs into.

A block with ``token_keep`` ρ < 1 reduces the patch tokens *entering* it to ⌈ρ·P⌉ (P: patch
tokens at that point, a package token included), so the block and every later block run on
fewer tokens; prefix tokens (class, distillation, registers) are always kept. Rates compound.

*How* tokens are reduced is a :class:`~prunetune.pruners.token_modes.TokenMode` registered in
:data:`prunetune.registry.TOKEN_MODES` (one file per mode under ``token_modes/``); this module
holds nothing mode-specific:

- :func:`token_schedule`: tokens per block and the reduction's extra MACs, from the mode's
  ``tokens_out``/``extra_macs`` (the analytic cost in ``evaluators._cost`` builds on it);
- :func:`prepare_tokens`: each block from the first reducing one on has its class swapped to
  the model family's token class (:meth:`~prunetune.families.ModelFamily.token_class`, a
  subclass of the block's own class), whose ``forward`` lets the mode reduce ``x`` here and
  then runs the block's own forward with the mode's additive attention mask, if any. No
  library forward is copied, so LayerScale, QK-norm and future block changes keep working;
- :class:`TokenContext`: per-forward state shared by a model's token blocks; the q and k a
  mode reads come from the family's hooks on the previous kept block (timm: ``attn.q_norm``/
  ``k_norm``; Hugging Face: ``attention.q_proj``/``k_proj``);
- :class:`TokenPruner`: the one token pruner, registered as ``tokens_<mode>`` for every mode
  (registering a mode registers its pruner), which swaps the blocks and lets the mode
  ``install`` what it needs.

``TOKEN_MODES`` here is the tuple of registered mode names (read from the registry when
accessed). The modes import this module, never the reverse: ``prunetune.pruners`` imports
``token_modes`` after it, which registers the built-in modes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import UnsupportedModelError
from ..families import ModelFamily, family_of
from ..registry import PRUNERS
from ..registry import TOKEN_MODES as _MODE_REGISTRY

if TYPE_CHECKING:
    from ..models import ViTArch
    from .token_modes import TokenMode

    #: Names of the registered token modes (see the module ``__getattr__``).
    TOKEN_MODES: tuple[str, ...]

__all__ = [
    "TOKEN_MODES",
    "ReductionStep",
    "TokenContext",
    "TokenPruner",
    "check_token_support",
    "gather_tokens",
    "kept_tokens",
    "register_token_pruner",
    "token_aux_loss",
    "token_schedule",
]

#: Order of the token pruners among the pruners (after heads, MLP, unstructured and depth).
TOKEN_PRUNER_ORDER = 80


def kept_tokens(p_in: int, rate: float) -> int:
    """Patch tokens kept out of ``p_in`` at keep rate ``rate``: ⌈rate·p_in⌉, at least 1."""
    return max(1, min(p_in, math.ceil(rate * p_in - 1e-9)))


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b]]`` for every image ``b``: (B, N, C) and (B, K) -> (B, K, C)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# --- analytic cost ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReductionStep:
    """One reducing block, as the analytic cost sees it.

    Attributes:
        p_in: Patch tokens entering the block (a package token included).
        kept: ⌈rate·p_in⌉, the patch tokens the rate keeps.
        prev_heads: Kept heads of the previous kept block (None at the first kept block).
        prev_tokens: Tokens, prefix included, the previous kept block ran on (None likewise).
    """

    p_in: int
    kept: int
    prev_heads: int | None
    prev_tokens: int | None


def token_schedule(config, arch: ViTArch, heads: list[int]) -> tuple[list[int], list[int]]:
    """Tokens each base block runs on (0 when dropped) and the reduction's extra MACs.

    ``heads`` are the kept heads per base block (a scorer's cost may depend on them).
    """
    mode = _MODE_REGISTRY.get(config.token_mode)
    prefix, p = arch.num_prefix_tokens, arch.num_patches
    tokens, extra = [], []
    prev_heads = prev_tokens = None
    for i, bc in enumerate(config.blocks):
        if not bc.keep:
            tokens.append(0)
            extra.append(0)
            continue
        macs = 0
        if bc.token_keep < 1.0:
            step = ReductionStep(p, kept_tokens(p, bc.token_keep), prev_heads, prev_tokens)
            macs = mode.extra_macs(arch, step)
            p = mode.tokens_out(p, step.kept)
        tokens.append(prefix + p)
        extra.append(macs)
        prev_heads, prev_tokens = heads[i], prefix + p
    return tokens, extra


# --- model support ---------------------------------------------------------------------------


def check_token_support(family: ModelFamily) -> None:
    """Raises UnsupportedModelError when the installed model library lacks what the token
    surgery relies on (see :meth:`ModelFamily.token_support_problem`)."""
    problem = family.token_support_problem()
    if problem is not None:
        raise UnsupportedModelError(problem)


# --- runtime ---------------------------------------------------------------------------------


class TokenContext:
    """Per-forward state shared by a model's token blocks (reset at patch embedding).

    ``q``/``k`` (B, h, N, d) and ``scale`` come from the previous kept block when the mode
    captures them (see :meth:`capture`); a mode keeps its own per-forward state as attributes
    it sets in ``TokenMode.reset``. ``num_patches``, ``embed_dim`` and ``has_class_token``
    describe the model, so modes need not look into it.
    """

    def __init__(
        self,
        mode: TokenMode,
        prefix: int,
        family: ModelFamily | None = None,
        num_patches: int = 0,
        embed_dim: int = 0,
        has_class_token: bool = True,
    ):
        self.mode, self.prefix, self.family = mode, prefix, family
        self.num_patches, self.embed_dim = num_patches, embed_dim
        self.has_class_token = has_class_token
        self.reset()

    def reset(self) -> None:
        self.q: torch.Tensor | None = None
        self.k: torch.Tensor | None = None
        self.scale = 1.0
        self.mode.reset(self)

    def capture(self, block: nn.Module, which: tuple[str, ...]) -> None:
        """Stores ``block``'s q and/or k (``which`` ⊆ {"q", "k"}) here on every forward."""
        for w in which:
            self.family.capture(block, w, _Store(self, w))


class _Reset:
    def __init__(self, ctx: TokenContext):
        self.ctx = ctx

    def __call__(self, module, args):
        self.ctx.reset()


class _Store:
    """Receives q or k (B, h, N, d) and the attention scale from the family's hook."""

    def __init__(self, ctx: TokenContext, which: str):
        self.ctx, self.which = ctx, which

    def __call__(self, t: torch.Tensor, scale: float) -> None:
        setattr(self.ctx, self.which, t)
        self.ctx.scale = scale


def prepare_tokens(block: nn.Module, x: torch.Tensor) -> tuple:
    """What a token block does before its own forward: the mode reduces ``x`` (on reducing
    blocks) and gives the additive attention mask, if any, for the tokens that remain.

    The family's token class (:meth:`ModelFamily.token_class`) calls this first and then the
    block's own forward, so no library forward is copied: LayerScale, QK-norm and future block
    changes keep working. Blocks swapped to it carry ``token_ctx`` (shared state),
    ``token_keep`` (rate at this block) and, on reducing blocks, ``token_kept`` (patch tokens
    kept at the model's input size: the count the analytic cost uses).
    """
    ctx = block.token_ctx
    if block.token_keep < 1.0:
        x = ctx.mode.reduce(block, ctx, x)
    return x, ctx.mode.attn_bias(ctx, x)


def token_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The token mode's auxiliary training loss from the last forward (e.g. DynamicViT's
    weighted keep-ratio loss), or None."""
    ctx = getattr(model, "_token_ctx", None)
    return None if ctx is None else ctx.mode.aux_loss(ctx)


class TokenPruner:
    """The token pruner, bound to one mode by its ``mode`` attribute.

    Registered as ``tokens_<mode>`` when the mode is registered (see
    :func:`register_token_pruner`); everything mode-specific is the mode's.
    """

    mode: str

    def applies(self, config) -> bool:
        return config.token_mode == self.mode and any(
            b.token_keep < 1.0 for b in config.blocks if b.keep
        )

    def apply(self, model, config, scores) -> None:
        family = family_of(model)
        check_token_support(family)
        mode = _MODE_REGISTRY.get(self.mode)
        stem = family.stem(model)
        ctx = TokenContext(
            mode,
            stem.num_prefix_tokens,
            family,
            stem.num_patches,
            stem.embed_dim,
            stem.has_class_token,
        )
        blocks = family.blocks(model)
        kept = [i for i, b in enumerate(config.blocks) if b.keep]
        first = next(i for i in kept if config.blocks[i].token_keep < 1.0)
        p = stem.num_patches
        prev = None
        for i in kept:
            blk, rate = blocks[i], config.blocks[i].token_keep
            if i >= first:
                blk.token_ctx, blk.token_keep = ctx, rate
                if rate < 1.0:
                    blk.token_kept = kept_tokens(p, rate)
                    mode.install(model, blk, prev, ctx)  # may refuse the model: before any swap
                    p = mode.tokens_out(p, blk.token_kept)
                blk.__class__ = family.token_class(type(blk), prepare_tokens)
            prev = blk
        model._token_ctx = ctx
        family.embedding(model).register_forward_pre_hook(_Reset(ctx))


def register_token_pruner(mode: str) -> None:
    """Registers the token pruner for ``mode`` as ``tokens_<mode>`` (once)."""
    name = f"tokens_{mode}"
    if name not in PRUNERS:
        cls = type(f"TokenPruner_{mode}", (TokenPruner,), {"mode": mode})
        PRUNERS.register(name, order=TOKEN_PRUNER_ORDER)(cls)


def __getattr__(name: str):
    if name == "TOKEN_MODES":  # the registered mode names, read when asked (plug-ins included)
        return tuple(_MODE_REGISTRY.names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
