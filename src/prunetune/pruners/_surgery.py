"""Small helpers to slice Linear and LayerNorm modules."""

from __future__ import annotations

import torch
from torch import nn


def keep_index(scores: torch.Tensor | None, n_total: int, n_keep: int) -> torch.Tensor:
    """Indices of the ``n_keep`` highest scores, in ascending index order (stable on ties).

    With ``scores`` None (shape-only rebuild) the first ``n_keep`` are kept.
    """
    if scores is None:
        return torch.arange(n_keep)
    if scores.numel() != n_total:
        raise ValueError(f"got {scores.numel()} scores for {n_total} units")
    order = torch.argsort(scores.detach().double().cpu(), descending=True, stable=True)
    return order[:n_keep].sort().values


@torch.no_grad()
def slice_linear(lin: nn.Linear, out_idx: torch.Tensor | None = None,
                 in_idx: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear keeping output rows ``out_idx`` and input columns ``in_idx``."""
    w = lin.weight
    if out_idx is not None:
        w = w[out_idx.to(w.device)]
    if in_idx is not None:
        w = w[:, in_idx.to(w.device)]
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.copy_(w)
    if lin.bias is not None:
        new.bias.copy_(lin.bias if out_idx is None else lin.bias[out_idx.to(w.device)])
    new.weight.requires_grad_(lin.weight.requires_grad)
    if lin.bias is not None:
        new.bias.requires_grad_(lin.bias.requires_grad)
    return new


@torch.no_grad()
def slice_norm(norm: nn.Module, idx: torch.Tensor) -> nn.Module:
    """A LayerNorm-like module restricted to channels ``idx`` (Identity passes through)."""
    if isinstance(norm, nn.Identity):
        return norm
    if not isinstance(norm, nn.LayerNorm):
        raise NotImplementedError(f"cannot slice {type(norm).__name__}")
    new = nn.LayerNorm(len(idx), eps=norm.eps, elementwise_affine=norm.elementwise_affine,
                       bias=norm.bias is not None, device=idx.device if norm.weight is None else norm.weight.device)
    if norm.weight is not None:
        new.weight.copy_(norm.weight[idx.to(norm.weight.device)])
    if norm.bias is not None:
        new.bias.copy_(norm.bias[idx.to(norm.bias.device)])
    return new
