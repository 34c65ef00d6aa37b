"""Learned token keeping (DynamicViT): a small prediction module per reducing block.

Each module scores tokens from local and global token features. In training, Gumbel-softmax
keep decisions mask attention (every token stays, so the count varies freely) and a ratio loss
pulls the kept fraction toward the rate; in eval, a hard top-k makes the count exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import TOKEN_MODES
from .._tokens import ReductionStep, TokenContext, gather_tokens, kept_tokens
from ._base import TokenMode

__all__ = [
    "RATIO_LOSS_WEIGHT",
    "KeepPredictor",
    "LearnedMode",
    "predictor_macs",
    "predictor_params",
]

#: Weight of DynamicViT's keep-ratio loss in fine-tuning (the paper uses 2.0).
RATIO_LOSS_WEIGHT = 2.0
_EPS = 1e-6


def predictor_macs(dim: int) -> int:
    """MACs per token of :class:`KeepPredictor`."""
    return dim * dim + dim * (dim // 2) + (dim // 2) * (dim // 4) + (dim // 4) * 2


def predictor_params(dim: int) -> int:
    """Parameters of :class:`KeepPredictor`."""
    h, q = dim // 2, dim // 4
    return 2 * dim + (dim * dim + dim) + (dim * h + h) + (h * q + q) + (q * 2 + 2)


class KeepPredictor(nn.Module):
    """DynamicViT-style prediction module: per-token keep/drop log-probabilities.

    Each token's feature is its own (local) half concatenated with the policy-weighted mean of
    the other (global) half over the tokens still kept, then a small MLP with two outputs.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, dim // 4),
            nn.GELU(),
            nn.Linear(dim // 4, 2),
            nn.LogSoftmax(dim=-1),
        )

    def forward(self, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)
        half = x.shape[-1] // 2
        local, glob = x[..., :half], x[..., half:]
        glob = (glob * policy).sum(1, keepdim=True) / policy.sum(1, keepdim=True).clamp_min(_EPS)
        return self.out_conv(torch.cat([local, glob.expand(-1, x.shape[1], -1)], dim=-1))


@TOKEN_MODES.register("learned")
class LearnedMode(TokenMode):
    """Keeps the tokens a trained :class:`KeepPredictor` (``block.keep_predictor``) picks.

    Per-forward state: ``ctx.policy`` (B, P, 1), the training-time keep decisions, and
    ``ctx.ratio_losses``, one keep-ratio loss per reducing block.
    """

    def extra_macs(self, arch, step: ReductionStep) -> int:
        return step.p_in * predictor_macs(arch.embed_dim)

    def extra_params(self, arch) -> int:
        return predictor_params(arch.embed_dim)

    def install(self, model, block, prev_block, ctx: TokenContext) -> None:
        super().install(model, block, prev_block, ctx)
        block.token_target = block.token_kept / ctx.num_patches
        dev = next(block.parameters()).device
        block.keep_predictor = KeepPredictor(ctx.embed_dim).to(device=dev)

    def reset(self, ctx: TokenContext) -> None:
        ctx.policy = None
        ctx.ratio_losses = []

    def reduce(self, block, ctx: TokenContext, x: torch.Tensor) -> torch.Tensor:
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
        return torch.cat([x[:, :pre], gather_tokens(patches, keep_idx)], dim=1)

    def attn_bias(self, ctx: TokenContext, x: torch.Tensor) -> torch.Tensor | None:
        if ctx.policy is None:
            return None
        b, n = x.shape[:2]
        keep = torch.cat([x.new_ones(b, ctx.prefix, 1), ctx.policy], dim=1).transpose(1, 2)
        eye = torch.eye(n, device=x.device, dtype=x.dtype)
        allowed = keep.unsqueeze(1) + (1 - keep.unsqueeze(1)) * eye  # tokens always see themselves
        return (allowed + _EPS).log()  # (B, 1, N, N)

    def aux_loss(self, ctx: TokenContext) -> torch.Tensor | None:
        if not ctx.ratio_losses:
            return None
        return RATIO_LOSS_WEIGHT * torch.stack(ctx.ratio_losses).mean()
