"""MLP width pruning: remove hidden neurons (fc1 rows, fc2 columns)."""

from __future__ import annotations

from ..families import family_of
from ._registry import register_pruner
from ._surgery import keep_index
from ._units import cut_units


@register_pruner("mlp", order=20)
class MlpPruner:
    """Keeps the ``mlp`` highest-scoring hidden neurons of each block's MLP."""

    def applies(self, config) -> bool:
        return any(b.mlp is not None for b in config.blocks)

    def apply(self, model, config, scores) -> None:
        family = family_of(model)
        path = family.blocks_path(model)
        for i, (blk, bc) in enumerate(zip(family.blocks(model), config.blocks)):
            M = family.mlp_width(blk)
            if bc.mlp is None or bc.mlp == M:
                continue
            keep = keep_index(None if scores is None else scores.mlp[i], M, bc.mlp)
            cut_units(blk, family.mlp_parts(blk), keep, 1, M, scores, f"{path}.{i}.")
