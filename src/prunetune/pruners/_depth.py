"""Depth pruning: remove whole blocks."""

from __future__ import annotations

from ..families import family_of
from ._registry import register_pruner


@register_pruner("depth", order=90)
class DepthPruner:
    """Drops the blocks whose config says ``keep: false`` (runs last: indices shift)."""

    def applies(self, config) -> bool:
        return not all(b.keep for b in config.blocks)

    def apply(self, model, config, scores) -> None:
        family = family_of(model)
        kept = [blk for blk, bc in zip(family.blocks(model), config.blocks) if bc.keep]
        family.set_blocks(model, kept)
