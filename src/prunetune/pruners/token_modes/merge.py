"""Token merging (ToMe): bipartite soft matching on the previous kept block's keys.

Keys are averaged over heads and compared by cosine similarity; the number of tokens the rate
implies is merged (in several rounds when that exceeds what one matching can merge), into
size-weighted averages, and later blocks use proportional attention (log sizes added to the
attention logits).
"""

from __future__ import annotations

import torch

from ...registry import TOKEN_MODES
from .._tokens import ReductionStep, TokenContext, gather_tokens, kept_tokens
from ._base import TokenMode

__all__ = ["MergeMode", "merge_rounds", "proportional_attention"]


def merge_rounds(p: int, r: int) -> list[tuple[int, int]]:
    """(|A|, |B|) of each bipartite matching round needed to merge ``r`` of ``p`` tokens."""
    rounds = []
    while r > 0:
        a, b = (p + 1) // 2, p // 2
        step = min(r, b)  # each A token merges into a B token; at most |B| A tokens can go
        rounds.append((a, b))
        p, r = p - step, r - step
    return rounds


def _bipartite_merge(t: torch.Tensor, w: torch.Tensor, match) -> torch.Tensor:
    """Sums ``t·w`` of each merged A token into its B token; keeps unmerged A, then all B."""
    src_idx, dst_idx, unm_idx = match
    ta, tb = (t * w)[:, ::2], (t * w)[:, 1::2]
    dst = dst_idx.unsqueeze(-1).expand(-1, -1, t.shape[-1])
    tb = tb.scatter_add(1, dst, gather_tokens(ta, src_idx))
    return torch.cat([gather_tokens(ta, unm_idx), tb], dim=1)


@TOKEN_MODES.register("merge")
class MergeMode(TokenMode):
    """Merges the most similar patch tokens (ToMe) instead of dropping any.

    Per-forward state: ``ctx.sizes`` (B, N, 1), how many original tokens each token holds.
    """

    captures = ("k",)

    def extra_macs(self, arch, step: ReductionStep) -> int:
        rounds = merge_rounds(step.p_in, step.p_in - step.kept)
        return sum(a * b * arch.head_dim for a, b in rounds)  # cosine scores per round

    def reset(self, ctx: TokenContext) -> None:
        ctx.sizes = None

    def reduce(self, block, ctx: TokenContext, x: torch.Tensor) -> torch.Tensor:
        pre = ctx.prefix
        b, n, c = x.shape
        sizes = ctx.sizes if ctx.sizes is not None else x.new_ones(b, n, 1)
        metric = ctx.k.mean(1)[:, pre:]  # (B, P, d): keys averaged over heads
        xs, ss = x[:, pre:], sizes[:, pre:]
        r = xs.shape[1] - kept_tokens(xs.shape[1], block.token_keep)
        for _, b_n in merge_rounds(xs.shape[1], r):
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

    def attn_bias(self, ctx: TokenContext, x: torch.Tensor) -> torch.Tensor | None:
        return proportional_attention(ctx, x)


def proportional_attention(ctx: TokenContext, x: torch.Tensor) -> torch.Tensor | None:
    """ToMe's proportional attention: log token sizes added to the attention logits."""
    if ctx.sizes is None:
        return None
    return ctx.sizes.log().transpose(1, 2).unsqueeze(1).to(x.dtype)  # (B, 1, 1, N)
