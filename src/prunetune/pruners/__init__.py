"""Model surgery (pruners) and the saliency criteria that decide which units go.

Each pruning kind is a small registered module; :func:`prune` runs every pruner that a
configuration needs, in order (heads, MLP, unstructured, depth, tokens). Token reduction is
one generic pruner plus a :class:`TokenMode` per mode (``token_modes/``, registered in
:data:`prunetune.registry.TOKEN_MODES`).
"""

from __future__ import annotations

from . import (  # noqa: F401  (registers the pruners and criteria)
    _cap,
    _depth,
    _heads,
    _mlp,
    _slim,
    _tokens,
    _unstructured,
    token_modes,
)
from ._apply import prune, rebuild_structure
from ._registry import Pruner, get_pruner, list_pruners, register_pruner
from ._saliency import (
    Saliency,
    SaliencyScores,
    compute_scores,
    empirical_fisher_diag,
    get_saliency,
    group_scores,
    hutchinson_hessian_diag,
    list_saliencies,
    register_saliency,
)
from ._tokens import kept_tokens
from .token_modes import TokenMode

__all__ = [
    "Pruner",
    "Saliency",
    "SaliencyScores",
    "TokenMode",
    "compute_scores",
    "empirical_fisher_diag",
    "get_pruner",
    "get_saliency",
    "group_scores",
    "hutchinson_hessian_diag",
    "kept_tokens",
    "list_pruners",
    "list_saliencies",
    "prune",
    "rebuild_structure",
    "register_pruner",
    "register_saliency",
]
