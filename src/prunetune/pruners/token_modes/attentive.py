"""Attentive token keeping (EViT / SPViT): rank patch tokens by class-token attention.

- ``attentive``: keep the patch tokens with the highest class-token attention (mean over
  heads) of the previous kept block; drop the rest (EViT without fusion).
- ``attentive_fuse``: as above, and fuse the dropped tokens into one package token, weighted
  by their attention (EViT / SPViT). The package token is a patch token from then on.
"""

from __future__ import annotations

import torch

from ...registry import TOKEN_MODES
from .._tokens import ReductionStep, TokenContext, gather_tokens, kept_tokens
from ._base import TokenMode

__all__ = ["AttentiveFuseMode", "AttentiveMode"]


@TOKEN_MODES.register("attentive")
class AttentiveMode(TokenMode):
    """Keeps the patch tokens the class token attends to most in the previous kept block."""

    captures = ("q", "k")
    needs_class_token = True

    def extra_macs(self, arch, step: ReductionStep) -> int:
        return step.prev_heads * arch.head_dim * step.prev_tokens  # q_cls · kᵀ

    def reduce(self, block, ctx: TokenContext, x: torch.Tensor) -> torch.Tensor:
        pre = ctx.prefix
        patches = x[:, pre:]
        k_keep = kept_tokens(patches.shape[1], block.token_keep)
        attn = (ctx.q[:, :, :1] * ctx.scale) @ ctx.k.transpose(-2, -1)  # (B, h, 1, N) class row
        cls_attn = attn.softmax(-1).mean(1).squeeze(1)[:, pre:]  # (B, P)
        order = cls_attn.argsort(dim=1, descending=True, stable=True)
        keep_idx = order[:, :k_keep].sort(dim=1).values
        kept = torch.cat([x[:, :pre], gather_tokens(patches, keep_idx)], dim=1)
        return self.add_dropped(kept, patches, cls_attn, order[:, k_keep:])

    def add_dropped(
        self, x: torch.Tensor, patches: torch.Tensor, cls_attn: torch.Tensor, drop_idx: torch.Tensor
    ) -> torch.Tensor:
        """What becomes of the dropped patch tokens ``drop_idx`` (here: nothing)."""
        return x


@TOKEN_MODES.register("attentive_fuse")
class AttentiveFuseMode(AttentiveMode):
    """As ``attentive``, plus one package token: the attention-weighted mean of the dropped."""

    def tokens_out(self, p_in: int, kept: int) -> int:
        return kept + 1 if kept < p_in else kept

    def extra_macs(self, arch, step: ReductionStep) -> int:
        return super().extra_macs(arch, step) + (step.p_in - step.kept) * arch.embed_dim

    def add_dropped(
        self, x: torch.Tensor, patches: torch.Tensor, cls_attn: torch.Tensor, drop_idx: torch.Tensor
    ) -> torch.Tensor:
        if drop_idx.shape[1] == 0:
            return x
        w = cls_attn.gather(1, drop_idx)
        w = (w / w.sum(1, keepdim=True).clamp_min(1e-12)).unsqueeze(1)  # (B, 1, P_drop)
        return torch.cat([x, w @ gather_tokens(patches, drop_idx)], dim=1)  # + package token
