"""CAP: correlation-aware pruning with a block-wise inverse empirical Fisher (criterion ``cap``).

CAP (Kuznedelev et al., "CAP: Correlation-Aware Pruning for Highly-Accurate Sparse Vision
Models", NeurIPS 2023), like WoodFisher and M-FAC before it, prunes by Optimal Brain Surgeon
with the empirical Fisher as the Hessian, restricted to blocks of consecutive weights so the
inverse is tractable. For a block with inverse Fisher ``Finv`` and weights ``w``:

- the saliency of weight ``q`` is ``w_q² / (2 Finv_qq)``: the loss increase of removing it when
  the other weights of its block move to compensate (a diagonal criterion uses ``F_qq`` and
  ignores the correlations);
- removing a set ``Q`` at once moves the rest by ``δw = -Finv[:, Q] Finv[Q, Q]⁻¹ w_Q`` (which sets
  ``w_Q`` to exactly 0) and leaves the remaining weights' inverse Fisher
  ``Finv - Finv[:, Q] Finv[Q, Q]⁻¹ Finv[Q, :]``;
- sparsity is reached gradually: ``steps`` rounds, each removing the lowest-saliency share of
  what is still to remove and recomputing the saliency from the updated weights and inverse.

Here the blocks are ``block_size`` consecutive input weights of one output row of each block
linear, the Fisher is the mean over calibration images of per-sample gradient outer products
(``torch.func.vmap``) plus ``damp`` times its mean diagonal. The criterion's element scores are
the OBS saliencies (so heads and MLP neurons get the sums of their weights' saliencies, as for
the other element-wise criteria), and the pruners use the inverse Fishers the scores carry
(``SaliencyScores.extra``):

- heads and MLP neurons: before the input columns of the removed units are cut from the layer
  that reads them (the attention output projection, the MLP output linear), the group OBS step
  moves that layer's other weights to compensate (rows and bias of the removed units' own
  output layers go with the units, so there is nothing to compensate there). Compensation stays
  inside a Fisher block, so a head is made up for only when ``block_size`` exceeds the head
  dim (16 on the built-in models; 64 on DeiT-S, where the default 32 gives none);
- unstructured sparsity: the gradual OBS removal with the compensating updates, for a layer
  that still has the shape its Fisher was computed for; a layer narrowed by head or MLP pruning
  first falls back to ranking by the saliencies without compensation.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..families import family_of
from ._obs import EXTRA_KEY, obs_saliency
from ._saliency import (
    _block_params,
    _need_batches,
    group_scores,
    per_sample_grads,
    register_saliency,
)

__all__ = ["CAP", "fisher_blocks"]


def _block_len(in_features: int, block_size: int) -> int:
    """The largest divisor of ``in_features`` not above ``block_size``."""
    b = min(block_size, in_features)
    while in_features % b:
        b -= 1
    return b


def fisher_blocks(
    model: nn.Module, batches: list, block_size: int = 32, damp: float = 1e-2, chunk: int = 32
) -> dict[str, torch.Tensor]:
    """Inverse empirical Fisher blocks of every block linear's weight.

    Returns ``{parameter name: (rows * in/B, B, B)}``: block ``k`` holds weights
    ``[k·B, (k+1)·B)`` of the flattened (row-major) weight.
    """
    params = {
        n: p.detach()
        for n, p in _block_params(model).items()
        if n.endswith(".weight")
        and isinstance(model.get_submodule(n[: -len(".weight")]), nn.Linear)
    }
    sizes = {n: _block_len(p.shape[1], block_size) for n, p in params.items()}
    acc = {
        n: torch.zeros(
            p.numel() // sizes[n], sizes[n], sizes[n], dtype=torch.float64, device=p.device
        )
        for n, p in params.items()
    }
    count = 0
    for g in per_sample_grads(model, params, batches, chunk):
        for n in acc:
            gb = g[n].reshape(g[n].shape[0], -1, sizes[n]).double()
            acc[n] += torch.einsum("nkb,nkc->kbc", gb, gb)
        count += next(iter(g.values())).shape[0]
    out = {}
    for n, a in acc.items():
        a /= count
        mean_diag = a.diagonal(dim1=1, dim2=2).mean().clamp_min(1e-12)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        out[n] = torch.linalg.inv(a + damp * mean_diag * eye)
    return out


@register_saliency("cap")
class CAP:
    """Correlation-aware OBS saliency with block-wise inverse empirical Fisher (see module).

    Args:
        block_size: Consecutive input weights per Fisher block (the largest divisor of the
            layer's input width not above it).
        damp: Dampening, relative to the Fisher's mean diagonal.
        steps: Rounds of the gradual removal in the unstructured pruner.
    """

    def __init__(self, block_size: int = 32, damp: float = 1e-2, steps: int = 4):
        if block_size < 1 or steps < 1 or damp <= 0:
            raise ConfigError(
                f"`block_size >= 1`, `steps >= 1` and `damp > 0` must hold, but got "
                f"block_size={block_size}, steps={steps}, damp={damp}"
            )
        self.block_size, self.damp, self.steps = block_size, damp, steps

    def scores(self, model, batches):
        _need_batches(batches, self.name)
        family_of(model)  # refuses an unsupported model before any work
        finv = fisher_blocks(model, list(batches), self.block_size, self.damp)
        params = _block_params(model)
        el = {}
        for n, p in params.items():
            if n in finv:
                B = finv[n].shape[-1]
                sal = obs_saliency(p.detach().reshape(-1, B), finv[n])
                el[n] = sal.reshape(p.shape).to(p.dtype)
        s = group_scores(model, el, self.name)
        s.extra = {EXTRA_KEY: finv, "steps": self.steps}
        return s
