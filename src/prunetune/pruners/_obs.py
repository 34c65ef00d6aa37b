"""Optimal Brain Surgeon steps on blocks of weights with a known inverse Hessian (Fisher).

The arithmetic behind the ``cap`` criterion (:mod:`prunetune.pruners._cap`), kept apart so the
pruners can use it without importing the criteria.
"""

from __future__ import annotations

import math

import torch

__all__ = ["EXTRA_KEY", "compensate_columns", "obs_remove", "obs_remove_set", "obs_saliency"]

#: key of the inverse Fishers in ``SaliencyScores.extra``
EXTRA_KEY = "cap_inverse_fisher"


def obs_saliency(w: torch.Tensor, finv: torch.Tensor) -> torch.Tensor:
    """``w_q² / (2 Finv_qq)`` per weight; ``w`` is (blocks, B), ``finv`` (blocks, B, B)."""
    return w.double().pow(2) / (2 * finv.diagonal(dim1=1, dim2=2).clamp_min(1e-30))


def obs_remove(
    w: torch.Tensor, finv: torch.Tensor, k: int, steps: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Removes ``k`` weights of ``w`` (blocks, B) by gradual OBS with ``finv`` (blocks, B, B).

    Each of ``steps`` rounds removes the lowest-saliency share of what is left to remove, moves
    the remaining weights of each touched block to compensate and updates its inverse Fisher.
    Returns the updated weights (removed ones exactly 0) and the keep mask, both (blocks, B).
    """
    w = w.double().clone()
    finv = finv.double().clone()
    keep = torch.ones_like(w, dtype=torch.bool)
    done = 0
    for step in range(steps):
        n = round(k * (step + 1) / steps) - done
        if n <= 0:
            continue
        sal = obs_saliency(w, finv).masked_fill(~keep, math.inf)
        idx = torch.argsort(sal.reshape(-1), stable=True)[:n]
        chosen = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
        chosen[idx] = True
        chosen = chosen.reshape(w.shape)
        for b in chosen.any(dim=1).nonzero().flatten().tolist():
            q = chosen[b].nonzero().flatten()
            fq = finv[b][:, q]  # (B, |Q|)
            rhs = torch.cat([w[b, q].unsqueeze(1), fq.T], dim=1)  # [w_Q | Finv[Q, :]]
            sol = torch.linalg.solve(fq[q], rhs)
            w[b] -= fq @ sol[:, 0]
            finv[b] -= fq @ sol[:, 1:]
            w[b, q] = 0.0
            # removed weights stay 0: their rows/columns of the constrained inverse vanish
            finv[b][q, :] = 0.0
            finv[b][:, q] = 0.0
        keep &= ~chosen
        done += n
    return w, keep


def obs_remove_set(w: torch.Tensor, finv: torch.Tensor, remove: torch.Tensor) -> torch.Tensor:
    """Removes the weights ``remove`` (bool, like ``w``: (blocks, B)) at once, moving the rest of
    each block to the constrained optimum: the group OBS step for a structure chosen elsewhere
    (a head's or an MLP neuron's input columns of the layer that reads them)."""
    w = w.double().clone()
    for b in remove.any(dim=1).nonzero().flatten().tolist():
        q = remove[b].nonzero().flatten()
        fq = finv[b].double()[:, q]
        w[b] -= fq @ torch.linalg.solve(fq[q], w[b, q])
        w[b, q] = 0.0
    return w


def compensate_columns(
    weight: torch.Tensor, finv: torch.Tensor | None, removed: torch.Tensor
) -> None:
    """Before a layer's input columns ``removed`` are cut, moves its other weights (in place) to
    make up for them, when ``finv`` holds the layer's inverse Fisher blocks of this shape."""
    if finv is None or finv.shape[0] * finv.shape[-1] != weight.numel():
        return
    B = finv.shape[-1]
    mask = torch.zeros(weight.shape[1], dtype=torch.bool, device=weight.device)
    mask[removed.to(weight.device)] = True
    rows = mask.expand(weight.shape[0], -1).reshape(-1, B)
    new = obs_remove_set(weight.detach().reshape(-1, B), finv.to(weight.device), rows)
    with torch.no_grad():
        weight.copy_(new.reshape(weight.shape).to(weight.dtype))
