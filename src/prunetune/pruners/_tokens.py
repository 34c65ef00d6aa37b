"""Token reduction: the generic machinery every token mode plugs into.

A block with ``token_keep`` ρ < 1 reduces the patch tokens *entering* it to ⌈ρ·P⌉ (P: patch
tokens at that point, a package token included), so the block and every later block run on
fewer tokens; prefix tokens (class, distillation, registers) are always kept. Rates compound.

*How* tokens are reduced is a :class:`~prunetune.pruners.token_modes.TokenMode` registered in
:data:`prunetune.registry.TOKEN_MODES` (one file per mode under ``token_modes/``); this module
holds nothing mode-specific:

- :func:`token_schedule`: tokens per block and the reduction's extra MACs, from the mode's
  ``tokens_out``/``extra_macs`` (the analytic cost in ``evaluators._cost`` builds on it);
- :class:`TokenBlock`: each block from the first reducing one on has its class swapped to this
  subclass of timm's ``Block``, whose ``forward`` lets the mode reduce ``x`` and then calls
  ``super().forward`` (with the mode's additive ``attn_mask``, if any). No timm forward is
  copied, so LayerScale, QK-norm and future Block changes keep working;
- :class:`TokenContext`: per-forward state shared by a model's token blocks; the q and k a
  mode reads come from forward hooks on the previous kept block's ``attn.q_norm``/``k_norm``
  (timm calls them on q and k even when they are Identity);
- :class:`TokenPruner`: the one token pruner, registered as ``tokens_<mode>`` for every mode
  (registering a mode registers its pruner), which swaps the blocks and lets the mode
  ``install`` what it needs.

``TOKEN_MODES`` here is the tuple of registered mode names (read from the registry when
accessed). The modes import this module, never the reverse: ``prunetune.pruners`` imports
``token_modes`` after it, which registers the built-in modes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from timm.models.vision_transformer import Block
from torch import nn

from ..errors import UnsupportedModelError
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
    "TokenBlock",
    "TokenContext",
    "TokenPruner",
    "check_timm_support",
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


# --- timm support ----------------------------------------------------------------------------


def check_timm_support() -> None:
    """Raises UnsupportedModelError unless this timm does what the token surgery relies on.

    Checked by behaviour on a tiny ``Block`` (built once per process): an ``Attention`` whose
    ``num_heads``/``attn_dim`` were cut (as head pruning does) still runs; ``attn.q_norm`` and
    ``attn.k_norm`` see q and k; ``Block.forward(x, attn_mask=...)`` takes an additive mask
    and honours it on both attention paths.
    """
    problem = _timm_problem()
    if problem is not None:
        import timm

        raise UnsupportedModelError(
            f"timm {timm.__version__} does not support the token surgery: {problem}; "
            "install the tested range: pip install 'timm>=1.0.15,<1.1'"
        )


@functools.cache
def _timm_problem() -> str | None:
    """What the token surgery needs and this timm lacks, or None (the global RNG is untouched)."""
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


# --- runtime ---------------------------------------------------------------------------------


class TokenContext:
    """Per-forward state shared by a model's token blocks (reset at patch embedding).

    ``q``/``k`` (B, h, N, d) and ``scale`` come from the previous kept block when the mode
    captures them (see :meth:`capture`); a mode keeps its own per-forward state as attributes
    it sets in ``TokenMode.reset``.
    """

    def __init__(self, mode: TokenMode, prefix: int):
        self.mode, self.prefix = mode, prefix
        self.reset()

    def reset(self) -> None:
        self.q: torch.Tensor | None = None
        self.k: torch.Tensor | None = None
        self.scale = 1.0
        self.mode.reset(self)

    def capture(self, block: nn.Module, which: tuple[str, ...]) -> None:
        """Stores ``block``'s q and/or k (``which`` ⊆ {"q", "k"}) here on every forward."""
        for w in which:
            norm = getattr(block.attn, f"{w}_norm")
            norm.register_forward_hook(_Capture(self, w, block.attn.scale))


class _Reset:
    def __init__(self, ctx: TokenContext):
        self.ctx = ctx

    def __call__(self, module, args):
        self.ctx.reset()


class _Capture:
    """Forward hook on ``attn.q_norm``/``attn.k_norm``: stores q or k (B, h, N, d)."""

    def __init__(self, ctx: TokenContext, which: str, scale: float):
        self.ctx, self.which, self.scale = ctx, which, scale

    def __call__(self, module, args, out):
        setattr(self.ctx, self.which, out)
        self.ctx.scale = self.scale


class TokenBlock(Block):
    """timm Block that lets the token mode reduce its input first, then runs timm's forward.

    Set by :class:`TokenPruner`: ``token_ctx`` (shared state), ``token_keep`` (rate at this
    block) and, on reducing blocks, ``token_kept`` (patch tokens kept at the model's input
    size: the count the analytic cost uses).
    """

    token_ctx: TokenContext
    token_keep: float
    token_kept: int

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        ctx = self.token_ctx
        if self.token_keep < 1.0:
            x = ctx.mode.reduce(self, ctx, x)
        if attn_mask is None:
            attn_mask = ctx.mode.attn_bias(ctx, x)
        if is_causal:  # passed only when set: check_timm_support checks the attn_mask call
            return super().forward(x, attn_mask=attn_mask, is_causal=True)
        return super().forward(x, attn_mask=attn_mask)


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
        check_timm_support()
        mode = _MODE_REGISTRY.get(self.mode)
        ctx = TokenContext(mode, model.num_prefix_tokens)
        kept = [i for i, b in enumerate(config.blocks) if b.keep]
        first = next(i for i in kept if config.blocks[i].token_keep < 1.0)
        p = model.patch_embed.num_patches
        prev = None
        for i in kept:
            blk, rate = model.blocks[i], config.blocks[i].token_keep
            if i >= first:
                blk.token_ctx, blk.token_keep = ctx, rate
                if rate < 1.0:
                    blk.token_kept = kept_tokens(p, rate)
                    mode.install(model, blk, prev, ctx)  # may refuse the model: before any swap
                    p = mode.tokens_out(p, blk.token_kept)
                blk.__class__ = TokenBlock
            prev = blk
        model._token_ctx = ctx
        model.patch_embed.register_forward_pre_hook(_Reset(ctx))


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
