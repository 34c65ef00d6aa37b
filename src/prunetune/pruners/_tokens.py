"""Token reduction: attentive keep (EViT/SPViT), merging (ToMe) and learned keep (DynamicViT).

A block with ``token_keep`` ρ < 1 reduces the patch tokens *entering* it to ⌈ρ·P⌉ (P: patch
tokens at that point, the package token included), so the block and every later block run on
fewer tokens; prefix tokens (class, distillation, registers) are always kept. Rates compound.

How it is wired into timm: each block from the first reducing one on has its class swapped to
a subclass of timm's ``Block`` whose ``forward`` reduces ``x`` and then calls ``super().forward``
(passing an additive ``attn_mask`` where a mode needs one: ToMe's proportional attention,
DynamicViT's training-time attention masking). The attention scores or keys the decision needs
come from forward hooks on the previous kept block's ``attn.q_norm``/``attn.k_norm`` (timm calls
them on q and k even when they are Identity). No timm forward is copied, so LayerScale, QK-norm
and future Block changes keep working.

Modes (``PruningConfig.token_mode``):

- ``attentive``: keep the patch tokens with the highest class-token attention (mean over heads)
  of the previous block; drop the rest (EViT without fusion).
- ``attentive_fuse``: as above, and fuse the dropped tokens into one package token, weighted by
  their attention (EViT / SPViT).
- ``merge``: bipartite soft matching on the previous block's keys (mean over heads, cosine);
  merges the number of tokens the rate implies (in several rounds when that exceeds what one
  matching can merge), with size-weighted averages and proportional attention (ToMe).
- ``learned``: a small prediction module per reducing block (local + global token features,
  as DynamicViT); in training, Gumbel-softmax keep decisions mask attention and a ratio loss
  pulls the kept fraction toward the rate; in eval, hard top-k so the count is exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from ..errors import ConfigError, UnsupportedModelError
from ..registry import TOKEN_MODES as _MODE_REGISTRY
from ._registry import register_pruner

__all__ = [
    "TOKEN_MODES",
    "KeepPredictor",
    "TokenBlock",
    "kept_tokens",
    "token_aux_loss",
    "token_schedule",
]

TOKEN_MODES = ("attentive", "attentive_fuse", "merge", "learned")
#: Weight of DynamicViT's keep-ratio loss in fine-tuning (the paper uses 2.0).
RATIO_LOSS_WEIGHT = 2.0
_EPS = 1e-6


def kept_tokens(p_in: int, rate: float) -> int:
    """Patch tokens kept out of ``p_in`` at keep rate ``rate``: ⌈rate·p_in⌉, at least 1."""
    return max(1, min(p_in, math.ceil(rate * p_in - 1e-9)))


def _merge_rounds(p: int, r: int) -> list[tuple[int, int]]:
    """(|A|, |B|) of each bipartite matching round needed to merge ``r`` of ``p`` tokens."""
    rounds = []
    while r > 0:
        a, b = (p + 1) // 2, p // 2
        step = min(r, b)  # each A token merges into a B token; at most |B| A tokens can go
        rounds.append((a, b))
        p, r = p - step, r - step
    return rounds


def predictor_macs(dim: int) -> int:
    """MACs per token of :class:`KeepPredictor`."""
    return dim * dim + dim * (dim // 2) + (dim // 2) * (dim // 4) + (dim // 4) * 2


def token_schedule(config, arch, heads: list[int]) -> tuple[list[int], list[int]]:
    """Tokens each base block runs on (0 when dropped) and the reduction's extra MACs.

    ``heads`` are the kept heads per base block (the attentive scorer's cost depends on them).
    """
    mode = config.token_mode
    prefix, p = arch.num_prefix_tokens, arch.num_patches
    tokens, extra = [], []
    prev_kept, prev_tokens = None, None
    for i, bc in enumerate(config.blocks):
        if not bc.keep:
            tokens.append(0)
            extra.append(0)
            continue
        macs = 0
        if bc.token_keep < 1.0:
            p_out = kept_tokens(p, bc.token_keep)
            if mode in ("attentive", "attentive_fuse"):
                macs += heads[prev_kept] * arch.head_dim * prev_tokens  # q_cls · kᵀ
                if mode == "attentive_fuse":
                    macs += (p - p_out) * arch.embed_dim  # attention-weighted package token
                    p_out += 1
            elif mode == "merge":
                macs += sum(a * b * arch.head_dim for a, b in _merge_rounds(p, p - p_out))
            elif mode == "learned":
                macs += p * predictor_macs(arch.embed_dim)
            p = p_out
        tokens.append(prefix + p)
        extra.append(macs)
        prev_kept, prev_tokens = i, prefix + p
    return tokens, extra


def check_token_config(config) -> None:
    """Mode-level rules that need no model (called by PruningConfig)."""
    if config.token_mode == "learned":
        return
    first = next(i for i, b in enumerate(config.blocks) if b.keep)
    if config.blocks[first].token_keep < 1.0:
        raise ConfigError(
            f"token_mode={config.token_mode!r} reduces tokens using the previous block's attention, "
            f"so the first kept block ({first}) must have token_keep=1, but got "
            f"token_keep={config.blocks[first].token_keep}"
        )


def check_timm_support() -> None:
    """The token blocks rely on ``Block.forward(x, attn_mask=...)`` and ``Attention.attn_dim``."""
    import inspect

    from timm.layers.attention import Attention

    if "attn_mask" not in inspect.signature(Block.forward).parameters or "attn_dim" not in inspect.getsource(Attention.__init__):
        import timm

        raise UnsupportedModelError(
            f"timm {timm.__version__} lacks Block.forward(attn_mask=...) / Attention.attn_dim; "
            "install the tested range: pip install 'timm>=1.0.15,<1.1'"
        )


# --- runtime ---------------------------------------------------------------------------------


class _Context:
    """Per-forward state shared by a model's token blocks (reset at patch embedding)."""

    def __init__(self, mode: str, prefix: int):
        self.mode, self.prefix = mode, prefix
        self.reset()

    def reset(self) -> None:
        self.q = self.k = None
        self.scale = 1.0
        self.sizes: torch.Tensor | None = None  # (B, N, 1) merged-token sizes
        self.policy: torch.Tensor | None = None  # (B, P, 1) training-time keep decisions
        self.ratio_losses: list[torch.Tensor] = []


class _Reset:
    def __init__(self, ctx: _Context):
        self.ctx = ctx

    def __call__(self, module, args):
        self.ctx.reset()


class _Capture:
    """Forward hook on ``attn.q_norm``/``attn.k_norm``: stores q or k (B, h, N, d)."""

    def __init__(self, ctx: _Context, which: str, scale: float):
        self.ctx, self.which, self.scale = ctx, which, scale

    def __call__(self, module, args, out):
        setattr(self.ctx, self.which, out)
        self.ctx.scale = self.scale


class KeepPredictor(nn.Module):
    """DynamicViT-style prediction module: per-token keep/drop log-probabilities.

    Each token's feature is its own (local) half concatenated with the policy-weighted mean of
    the other (global) half over the tokens still kept, then a small MLP with two outputs.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(),
            nn.Linear(dim // 4, 2), nn.LogSoftmax(dim=-1),
        )

    def forward(self, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)
        half = x.shape[-1] // 2
        local, glob = x[..., :half], x[..., half:]
        glob = (glob * policy).sum(1, keepdim=True) / policy.sum(1, keepdim=True).clamp_min(_EPS)
        return self.out_conv(torch.cat([local, glob.expand(-1, x.shape[1], -1)], dim=-1))


class TokenBlock(Block):
    """timm Block that reduces its input tokens first, then runs timm's own forward.

    Set by the token pruners: ``token_ctx`` (shared state), ``token_keep`` (rate at this block).
    """

    token_ctx: _Context
    token_keep: float

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        ctx = self.token_ctx
        if self.token_keep < 1.0:
            x = _REDUCE[ctx.mode](self, ctx, x)
        if attn_mask is None:
            attn_mask = _attn_bias(ctx, x)
        return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)


def _attn_bias(ctx: _Context, x: torch.Tensor) -> torch.Tensor | None:
    if ctx.mode == "merge" and ctx.sizes is not None:  # proportional attention
        return ctx.sizes.log().transpose(1, 2).unsqueeze(1).to(x.dtype)  # (B, 1, 1, N)
    if ctx.mode == "learned" and ctx.policy is not None:  # DynamicViT training-time masking
        b, n = x.shape[:2]
        keep = torch.cat([x.new_ones(b, ctx.prefix, 1), ctx.policy], dim=1).transpose(1, 2)  # (B, 1, N)
        eye = torch.eye(n, device=x.device, dtype=x.dtype)
        allowed = keep.unsqueeze(1) + (1 - keep.unsqueeze(1)) * eye  # tokens always see themselves
        return (allowed + _EPS).log()  # (B, 1, N, N)
    return None


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _reduce_attentive(block: TokenBlock, ctx: _Context, x: torch.Tensor) -> torch.Tensor:
    pre = ctx.prefix
    patches = x[:, pre:]
    p = patches.shape[1]
    k_keep = kept_tokens(p, block.token_keep)
    attn = (ctx.q[:, :, :1] * ctx.scale) @ ctx.k.transpose(-2, -1)  # (B, h, 1, N) class-token row
    cls_attn = attn.softmax(-1).mean(1).squeeze(1)[:, pre:]  # (B, P)
    order = cls_attn.argsort(dim=1, descending=True, stable=True)
    keep_idx = order[:, :k_keep].sort(dim=1).values
    out = [x[:, :pre], _gather(patches, keep_idx)]
    if ctx.mode == "attentive_fuse" and k_keep < p:
        drop_idx = order[:, k_keep:]
        w = cls_attn.gather(1, drop_idx)
        w = (w / w.sum(1, keepdim=True).clamp_min(1e-12)).unsqueeze(1)  # (B, 1, P_drop)
        out.append(w @ _gather(patches, drop_idx))  # (B, 1, D) package token
    return torch.cat(out, dim=1)


def _bipartite_merge(t: torch.Tensor, w: torch.Tensor, match) -> torch.Tensor:
    """Sums ``t·w`` of each merged A token into its B token; keeps unmerged A, then all B."""
    src_idx, dst_idx, unm_idx = match
    ta, tb = (t * w)[:, ::2], (t * w)[:, 1::2]
    tb = tb.scatter_add(1, dst_idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]), _gather(ta, src_idx))
    return torch.cat([_gather(ta, unm_idx), tb], dim=1)


def _reduce_merge(block: TokenBlock, ctx: _Context, x: torch.Tensor) -> torch.Tensor:
    pre = ctx.prefix
    b, n, c = x.shape
    sizes = ctx.sizes if ctx.sizes is not None else x.new_ones(b, n, 1)
    metric = ctx.k.mean(1)[:, pre:]  # (B, P, d): keys averaged over heads
    xs, ss = x[:, pre:], sizes[:, pre:]
    r = xs.shape[1] - kept_tokens(xs.shape[1], block.token_keep)
    for _, b_n in _merge_rounds(xs.shape[1], r):
        step = min(r, b_n)
        m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scores = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)  # (B, |A|, |B|) cosine similarity
        best, dst = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True, stable=True)
        src_idx, unm_idx = order[:, :step], order[:, step:]
        match = (src_idx, dst.gather(1, src_idx), unm_idx)
        new_s = _bipartite_merge(ss, torch.ones_like(ss), match)
        xs = _bipartite_merge(xs, ss, match) / new_s  # size-weighted averages
        metric = _bipartite_merge(metric, ss, match) / new_s
        ss, r = new_s, r - step
    ctx.sizes = torch.cat([sizes[:, :pre], ss], dim=1)
    return torch.cat([x[:, :pre], xs], dim=1)


def _reduce_learned(block: TokenBlock, ctx: _Context, x: torch.Tensor) -> torch.Tensor:
    pre = ctx.prefix
    patches = x[:, pre:]
    if block.training:
        if ctx.policy is None:
            ctx.policy = x.new_ones(x.shape[0], patches.shape[1], 1)
        logp = block.keep_predictor(patches, ctx.policy)
        hard = F.gumbel_softmax(logp, hard=True)[..., :1] * ctx.policy
        ctx.policy = hard
        ctx.ratio_losses.append((hard.mean(dim=(1, 2)) - block.token_target).pow(2).mean())
        return x  # training keeps every token; attention masking drops them
    logp = block.keep_predictor(patches, x.new_ones(x.shape[0], patches.shape[1], 1))
    k_keep = kept_tokens(patches.shape[1], block.token_keep)
    keep_idx = logp[..., 0].topk(k_keep, dim=1).indices.sort(dim=1).values
    return torch.cat([x[:, :pre], _gather(patches, keep_idx)], dim=1)


_REDUCE = {
    "attentive": _reduce_attentive,
    "attentive_fuse": _reduce_attentive,
    "merge": _reduce_merge,
    "learned": _reduce_learned,
}


def token_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """DynamicViT's weighted keep-ratio loss from the last training forward, or None."""
    ctx = getattr(model, "_token_ctx", None)
    if ctx is None or not ctx.ratio_losses:
        return None
    return RATIO_LOSS_WEIGHT * torch.stack(ctx.ratio_losses).mean()


class _TokenPruner:
    mode: str

    def applies(self, config) -> bool:
        return config.token_mode == self.mode and any(b.token_keep < 1.0 for b in config.blocks if b.keep)

    def apply(self, model, config, scores) -> None:
        check_timm_support()
        if self.mode.startswith("attentive") and getattr(model, "cls_token", None) is None:
            raise ConfigError(
                f"token_mode={self.mode!r} ranks tokens by class-token attention, but this model has no "
                "class token; use token_mode 'merge' or 'learned'"
            )
        ctx = _Context(self.mode, model.num_prefix_tokens)
        model._token_ctx = ctx
        model.patch_embed.register_forward_pre_hook(_Reset(ctx))
        kept = [i for i, b in enumerate(config.blocks) if b.keep]
        first = next(i for i in kept if config.blocks[i].token_keep < 1.0)
        p0 = p = model.patch_embed.num_patches
        for pos, i in enumerate(kept):
            blk, bc = model.blocks[i], config.blocks[i]
            if i < first:
                continue
            blk.__class__ = TokenBlock
            blk.token_ctx, blk.token_keep = ctx, bc.token_keep
            if bc.token_keep >= 1.0:
                continue
            if self.mode == "learned":
                p = kept_tokens(p, bc.token_keep)
                blk.token_target = p / p0
                dev = blk.norm1.weight.device if blk.norm1.weight is not None else None
                blk.keep_predictor = KeepPredictor(blk.norm1.normalized_shape[0]).to(device=dev)
                continue
            prev = model.blocks[kept[pos - 1]].attn
            if self.mode != "merge":
                prev.q_norm.register_forward_hook(_Capture(ctx, "q", prev.scale))
            prev.k_norm.register_forward_hook(_Capture(ctx, "k", prev.scale))


class _ModeShim:
    def validate(self, config) -> None:
        check_token_config(config)


for _mode in TOKEN_MODES:
    _MODE_REGISTRY.register(_mode)(type(f"Mode_{_mode}", (_ModeShim,), {}))
    register_pruner(f"tokens_{_mode}", order=80)(type(f"TokenPruner_{_mode}", (_TokenPruner,), {"mode": _mode}))
