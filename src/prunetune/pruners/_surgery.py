"""Small helpers to slice Linear and LayerNorm modules."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ._saliency import SaliencyScores


def keep_index(scores: torch.Tensor | None, n_total: int, n_keep: int) -> torch.Tensor:
    """Indices of the ``n_keep`` highest scores, in ascending index order (stable on ties).

    With ``scores`` None (shape-only rebuild) the first ``n_keep`` are kept.
    """
    if scores is None:
        return torch.arange(n_keep)
    if scores.numel() != n_total:
        raise ValueError(f"got {scores.numel()} scores for {n_total} units")
    check_finite(scores, "unit")
    order = torch.argsort(scores.detach().double().cpu(), descending=True, stable=True)
    return order[:n_keep].sort().values


def check_finite(scores: torch.Tensor, what: str) -> None:
    """Raises FloatingPointError on NaN/inf scores (a sort would rank them silently)."""
    if not torch.isfinite(scores).all():
        bad = int((~torch.isfinite(scores)).sum())
        raise FloatingPointError(
            f"{bad} of {scores.numel()} {what} saliency scores are NaN or infinite"
        )


@torch.no_grad()
def slice_linear(
    lin: nn.Linear, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None
) -> nn.Linear:
    """A new Linear keeping output rows ``out_idx`` and input columns ``in_idx``."""
    w = lin.weight
    if out_idx is not None:
        w = w[out_idx.to(w.device)]
    if in_idx is not None:
        w = w[:, in_idx.to(w.device)]
    new = nn.Linear(
        w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype
    )
    new.weight.copy_(w)
    if lin.bias is not None:
        new.bias.copy_(lin.bias if out_idx is None else lin.bias[out_idx.to(w.device)])
    new.weight.requires_grad_(lin.weight.requires_grad)
    if lin.bias is not None:
        new.bias.requires_grad_(lin.bias.requires_grad)
    return new


@torch.no_grad()
def slice_norm(norm: nn.Module, idx: torch.Tensor) -> nn.Module:
    """A LayerNorm-like module restricted to channels ``idx`` (Identity passes through).

    The copy keeps the module's class (timm's ``LayerNorm`` subclass), ``eps``, dtype, device
    and each parameter's ``requires_grad``; only the normalised shape and the affine
    parameters change.
    """
    if isinstance(norm, nn.Identity):
        return norm
    if not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1:
        raise NotImplementedError(f"cannot slice {type(norm).__name__}")
    new = copy.deepcopy(norm)
    new.normalized_shape = (len(idx),)
    for name in ("weight", "bias"):
        p = getattr(norm, name)
        if p is not None:
            setattr(
                new, name, nn.Parameter(p[idx.to(p.device)].clone(), requires_grad=p.requires_grad)
            )
    return new


def slice_element_scores(
    scores: SaliencyScores | None,
    key: str,
    out_idx: torch.Tensor | None = None,
    in_idx: torch.Tensor | None = None,
) -> None:
    """Slices the element scores of parameter ``key`` like the parameter itself.

    Structured pruners run before unstructured sparsity, which looks element scores up by the
    base model's parameter names; slicing them here keeps them aligned with the smaller weights.
    Replaces the entry in ``scores.elements``: :func:`prune` hands the pruners a copy of that
    dict, so the caller's scores are left as they were.
    """
    if scores is None or not scores.elements or key not in scores.elements:
        return
    t = scores.elements[key]
    if out_idx is not None:
        t = t[out_idx.to(t.device)]
    if in_idx is not None and t.dim() > 1:
        t = t[:, in_idx.to(t.device)]
    scores.elements[key] = t
