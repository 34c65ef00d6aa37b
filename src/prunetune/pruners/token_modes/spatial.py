"""Spatial token merging in the style of CAIT: adjacent tokens merge, the 2-D grid stays.

CAIT (Wang et al., "CAIT: Triple-Win Compression towards High Accuracy, Fast Inference, and
Favorable Transferability For ViTs", 2023) reduces tokens by asymmetric token merging (ATME):
neighbouring tokens are merged, horizontally and then vertically, so that the tokens still form
a 2-D grid (which is what lets a compressed model transfer to dense tasks such as
segmentation); it pairs this with consistent dynamic channel pruning (CDCP). This mode is a
merging rule with those properties, written from that description (the paper's exact ATME
weighting was not available to us):

- the patch tokens are a grid of ``h`` rows and ``w`` columns, square at the start (the mode
  refuses a model with a non-square patch grid) and near-square after every reduction:
  ``k x k`` or ``(k+1) x k``. A reducing block keeping ⌈ρ·P⌉ tokens gets the smallest
  near-square grid holding at least that many (``tokens_out``), so the cost is exact;
- horizontal first: whole adjacent columns merge, pair by pair, until the grid has the target
  width; then vertical: adjacent rows, until it has the target height. Each round merges the
  most similar non-overlapping adjacent pairs (greedily; each image chooses its own pairs, all
  images merge as many), similarity being the mean cosine of the tokens facing each other
  across the pair;
- merged tokens are size-weighted averages and later blocks use proportional attention (log
  sizes added to the attention logits), as in ``merge`` (ToMe).

All of it is elementwise work and scatters (no matrix multiply), which the MAC convention does
not count, so the mode adds no MACs. CDCP, CAIT's channel part, is dynamic (per input) channel
pruning kept consistent across heads; prunetune's width pruning is static, so it is not part of
this mode (the search's head and MLP widths are the static counterpart).
"""

from __future__ import annotations

import math

import torch

from ...errors import ConfigError
from ...registry import TOKEN_MODES
from .._tokens import TokenContext, kept_tokens
from ._base import TokenMode
from .merge import proportional_attention

__all__ = ["SpatialMergeMode", "near_square", "grid_of"]


def grid_of(n: int) -> tuple[int, int]:
    """(rows, columns) of a near-square grid of ``n`` tokens: ``k x k`` or ``(k+1) x k``."""
    k = math.isqrt(n)
    if k * k == n:
        return k, k
    if k * (k + 1) == n:
        return k + 1, k
    raise ValueError(f"{n} tokens are not a near-square grid")


def near_square(kept: int) -> int:
    """The smallest near-square grid size (``k²`` or ``k(k+1)``) holding ``kept`` tokens."""
    k = max(1, math.isqrt(max(kept - 1, 0)))
    while True:
        for n in (k * k, k * (k + 1)):
            if n >= kept:
                return n
        k += 1


def _merge_axis(x: torch.Tensor, s: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merges adjacent columns of ``x`` (B, h, w, C) (sizes ``s`` (B, h, w, 1)) down to
    ``target`` columns."""
    b = x.shape[0]
    while x.shape[2] > target:
        w = x.shape[2]
        m = min(w - target, (w + 1) // 3)  # greedy picks never run out of disjoint pairs
        unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        sim = (unit[:, :, :-1] * unit[:, :, 1:]).sum(-1).mean(1)  # (B, w - 1)
        chosen = torch.zeros_like(sim, dtype=torch.bool)
        avail = sim.detach().clone()
        rows = torch.arange(b, device=x.device)
        for _ in range(m):
            j = avail.argmax(dim=1)
            chosen[rows, j] = True
            for d in (-1, 0, 1):  # the pair and the two overlapping ones are taken
                avail[rows, (j + d).clamp(0, w - 2)] = -math.inf
        right = torch.cat([chosen.new_zeros(b, 1), chosen], dim=1)  # column j+1 joins j
        col = (torch.cumsum((~right).long(), dim=1) - 1)[:, None, :, None]  # (B, 1, w, 1)
        new_w = w - m
        idx = col.expand(-1, x.shape[1], -1, x.shape[3])
        num = x.new_zeros(b, x.shape[1], new_w, x.shape[3]).scatter_add(2, idx, x * s)
        den = s.new_zeros(b, x.shape[1], new_w, 1).scatter_add(
            2, col.expand(-1, x.shape[1], -1, 1), s
        )
        x, s = num / den, den
    return x, s


@TOKEN_MODES.register("spatial_merge")
class SpatialMergeMode(TokenMode):
    """Merges adjacent columns, then rows, of the patch-token grid (CAIT-style; see module).

    Per-forward state: ``ctx.sizes`` (B, N, 1), how many original tokens each token holds.
    """

    def tokens_out(self, p_in: int, kept: int) -> int:
        return min(p_in, near_square(kept))

    def install(self, model, block, prev_block, ctx: TokenContext) -> None:
        super().install(model, block, prev_block, ctx)
        k = math.isqrt(ctx.num_patches)
        if k * k != ctx.num_patches:
            raise ConfigError(
                f"token_mode='spatial_merge' needs a square patch grid, but the model has "
                f"{ctx.num_patches} patches; use token_mode='merge'"
            )

    def reset(self, ctx: TokenContext) -> None:
        ctx.sizes = None

    def reduce(self, block, ctx: TokenContext, x: torch.Tensor) -> torch.Tensor:
        pre = ctx.prefix
        b, n, c = x.shape
        sizes = ctx.sizes if ctx.sizes is not None else x.new_ones(b, n, 1)
        p = n - pre
        h, w = grid_of(p)
        th, tw = grid_of(self.tokens_out(p, kept_tokens(p, block.token_keep)))
        grid = x[:, pre:].reshape(b, h, w, c)
        s = sizes[:, pre:].reshape(b, h, w, 1)
        grid, s = _merge_axis(grid, s, tw)  # horizontal: columns
        grid, s = _merge_axis(grid.transpose(1, 2), s.transpose(1, 2), th)  # vertical: rows
        grid, s = grid.transpose(1, 2), s.transpose(1, 2)
        ctx.sizes = torch.cat([sizes[:, :pre], s.reshape(b, -1, 1)], dim=1)
        return torch.cat([x[:, :pre], grid.reshape(b, -1, c)], dim=1)

    def attn_bias(self, ctx: TokenContext, x: torch.Tensor) -> torch.Tensor | None:
        return proportional_attention(ctx, x)
