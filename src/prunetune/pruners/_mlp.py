"""MLP width pruning: remove hidden neurons (fc1 rows, fc2 columns)."""

from __future__ import annotations

from ._registry import register_pruner
from ._surgery import keep_index, slice_element_scores, slice_linear, slice_norm


@register_pruner("mlp", order=20)
class MlpPruner:
    """Keeps the ``mlp`` highest-scoring hidden neurons of each block's Mlp."""

    def applies(self, config) -> bool:
        return any(b.mlp is not None for b in config.blocks)

    def apply(self, model, config, scores) -> None:
        for i, (blk, bc) in enumerate(zip(model.blocks, config.blocks)):
            mlp = blk.mlp
            M = mlp.fc1.out_features
            if bc.mlp is None or bc.mlp == M:
                continue
            keep = keep_index(None if scores is None else scores.mlp[i], M, bc.mlp)
            mlp.fc1 = slice_linear(mlp.fc1, out_idx=keep)
            mlp.norm = slice_norm(mlp.norm, keep)
            mlp.fc2 = slice_linear(mlp.fc2, in_idx=keep)
            p = f"blocks.{i}.mlp"
            for pname in ("weight", "bias"):
                slice_element_scores(scores, f"{p}.fc1.{pname}", out_idx=keep)
                slice_element_scores(scores, f"{p}.norm.{pname}", out_idx=keep)
            slice_element_scores(scores, f"{p}.fc2.weight", in_idx=keep)
