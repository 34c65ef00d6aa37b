"""Token modes: one module per way of reducing tokens, registered in ``TOKEN_MODES``.

Each is a :class:`TokenMode` subclass registered with ``@TOKEN_MODES.register(name)`` from
:mod:`prunetune.registry`; the generic machinery (:mod:`prunetune.pruners._tokens`) looks the
mode up by ``PruningConfig.token_mode``. Adding a mode is one new module plus that decorator
(:func:`prunetune.testing.token_modes.check_token_mode` is its contract). Built in:

- ``attentive`` / ``attentive_fuse`` (:mod:`.attentive`): EViT / SPViT class-attention keep;
- ``merge`` (:mod:`.merge`): ToMe bipartite token merging;
- ``learned`` (:mod:`.learned`): DynamicViT keep predictors;
- ``spatial_merge`` (:mod:`.spatial`): CAIT-style merging of adjacent columns, then rows, of
  the patch grid.
"""

from __future__ import annotations

from .._tokens import ReductionStep, TokenContext, gather_tokens, kept_tokens
from ._base import TokenMode
from .attentive import AttentiveFuseMode, AttentiveMode
from .learned import KeepPredictor, LearnedMode
from .merge import MergeMode
from .spatial import SpatialMergeMode

__all__ = [
    "AttentiveFuseMode",
    "AttentiveMode",
    "KeepPredictor",
    "LearnedMode",
    "MergeMode",
    "SpatialMergeMode",
    "ReductionStep",
    "TokenContext",
    "TokenMode",
    "gather_tokens",
    "kept_tokens",
]
