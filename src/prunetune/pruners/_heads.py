"""Attention-head pruning: slice every projection that reads or writes heads."""

from __future__ import annotations

from ..families import family_of
from ._registry import register_pruner
from ._surgery import keep_index
from ._units import cut_units


@register_pruner("heads", order=10)
class HeadPruner:
    """Physically removes attention heads.

    The model's family names the modules whose channels follow the heads (timm: the fused
    ``qkv`` rows, ``proj`` columns, and ``norm``/``gate`` when present; Hugging Face: ``q_proj``,
    ``k_proj``, ``v_proj`` rows and ``o_proj`` columns); slicing them and updating the
    attention's head count is the whole job, and both attention paths keep working.
    """

    def applies(self, config) -> bool:
        return any(b.heads is not None for b in config.blocks)

    def apply(self, model, config, scores) -> None:
        family = family_of(model)
        path = family.blocks_path(model)
        for i, (blk, bc) in enumerate(zip(family.blocks(model), config.blocks)):
            H, d = family.heads(blk)
            if bc.heads is None or bc.heads == H:
                continue
            keep = keep_index(None if scores is None else scores.heads[i], H, bc.heads)
            cut_units(blk, family.head_parts(blk), keep, d, H * d, scores, f"{path}.{i}.")
            family.set_heads(blk, len(keep))
