"""Unstructured sparsity: per-layer masks on each kept block's linear weights.

Masks use ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``), so they survive
fine-tuning and a save/load round trip. They zero weights but do not reduce dense MACs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..families import family_of
from ._obs import EXTRA_KEY as CAP_KEY
from ._obs import obs_remove
from ._registry import register_pruner
from ._surgery import check_finite


def sparse_linears(block: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linear layers of a block that unstructured sparsity applies to."""
    return [(n, m) for n, m in block.named_modules() if isinstance(m, nn.Linear)]


def num_zeroed(numel: int, sparsity: float) -> int:
    return int(round(sparsity * numel))


@register_pruner("unstructured", order=30)
class UnstructuredPruner:
    """Zeroes the ``round(sparsity·numel)`` lowest-scoring weights of every block linear.

    Element scores come from the config's criterion when it has them, else |w|. Heads and
    MLP pruners run first and slice the element scores with the weights, so the scores of a
    narrowed layer still line up with it.
    """

    def applies(self, config) -> bool:
        return any(b.sparsity > 0 for b in config.blocks)

    @torch.no_grad()
    def apply(self, model, config, scores) -> None:
        family = family_of(model)
        path = family.blocks_path(model)
        for i, (blk, bc) in enumerate(zip(family.blocks(model), config.blocks)):
            if bc.sparsity <= 0:
                continue
            for name, lin in sparse_linears(blk):
                w = lin.weight
                k = num_zeroed(w.numel(), bc.sparsity)
                mask = torch.ones_like(w)
                if scores is not None and k > 0:
                    key = f"{path}.{i}.{name}.weight"
                    el = (scores.elements or {}).get(key)
                    if el is not None and el.shape != w.shape:
                        raise ValueError(
                            f"element scores of {key} have shape {tuple(el.shape)}, "
                            f"but the weight has shape {tuple(w.shape)}"
                        )
                    s = w.abs() if el is None else el
                    check_finite(s, f"element ({key})")
                    finv = ((scores.extra or {}).get(CAP_KEY) or {}).get(key)
                    if finv is not None and finv.shape[0] * finv.shape[-1] == w.numel():
                        # CAP: gradual OBS removal, the rest of each block compensates
                        B = finv.shape[-1]
                        steps = scores.extra.get("steps", 1)
                        new, keep = obs_remove(w.reshape(-1, B), finv.to(w.device), k, steps)
                        w.copy_(new.reshape(w.shape).to(w.dtype))
                        mask = keep.reshape(w.shape).to(w.dtype)
                    else:
                        idx = torch.argsort(s.reshape(-1).double(), stable=True)[:k]
                        mask.view(-1)[idx.to(w.device)] = 0
                torch_prune.custom_from_mask(lin, "weight", mask)
