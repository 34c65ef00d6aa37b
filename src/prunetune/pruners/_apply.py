"""Apply a PruningConfig to a model: the one entry point for surgery."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable

from torch import nn

from ..config import BlockConfig, PruningConfig
from ..errors import ConfigError
from ..models import ViTArch, check_supported
from ._registry import get_pruner, list_pruners
from ._saliency import SaliencyScores, get_saliency

__all__ = ["prune", "rebuild_structure"]


def _check(model: nn.Module, config: PruningConfig) -> None:
    check_supported(model)
    config.check_fits(ViTArch.from_model(model))
    if any(b.token_keep < 1.0 for b in config.blocks) and not any(
        get_pruner(n).applies(config) for n in list_pruners() if n.startswith("tokens")
    ):
        raise ConfigError(
            "token_keep < 1 needs a token pruner that applies to "
            f"token_mode={config.token_mode!r}, but none in the pruner registry does"
        )


def prune(
    model: nn.Module,
    config: PruningConfig,
    batches: Iterable | None = None,
    scores: SaliencyScores | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Returns ``model`` pruned by ``config``: an ordinary nn.Module.

    Args:
        model: A dense model of a supported family (left untouched unless ``inplace``).
        config: The configuration (threshold configs are resolved with the scores).
        batches: Calibration batches of (x, y) for data-driven criteria.
        scores: Precomputed saliency scores (computed from ``config.criterion`` if None).
        inplace: Edit ``model`` itself instead of a deep copy.

    The returned model carries the resolved (count-mode) config as ``model.pruning_config``.
    """
    _check(model, config)
    if scores is None and _needs_scores(config, ViTArch.from_model(model)):
        scores = get_saliency(config.criterion).scores(model, list(batches or []))
    if config.width_mode == "count":
        resolved = config
    elif scores is None:  # an identity threshold config: every threshold 0 keeps every unit
        resolved = _resolve_identity(config)
    else:
        resolved = config.resolve(scores)
    if scores is not None and scores.elements:
        # structured pruners slice element scores as they slice weights: work on a copy
        scores = dataclasses.replace(scores, elements=dict(scores.elements))
    out = model if inplace else copy.deepcopy(model)
    for name in list_pruners():
        pruner = get_pruner(name)
        if pruner.applies(resolved):
            pruner.apply(out, resolved, scores)
    out.pruning_config = resolved
    return out


def _needs_scores(config: PruningConfig, arch: ViTArch) -> bool:
    """Whether any pruner must choose units (depth and token-only configs choose none)."""
    if config.width_mode == "threshold":
        return any(b.keep and (b.head_threshold or b.mlp_threshold) for b in config.blocks)
    return any(
        b.keep
        and (
            (b.heads is not None and b.heads < arch.num_heads)
            or (b.mlp is not None and b.mlp < arch.mlp_hidden)
            or b.sparsity > 0
        )
        for b in config.blocks
    )


def _resolve_identity(config: PruningConfig) -> PruningConfig:
    blocks = tuple(
        BlockConfig(keep=b.keep, sparsity=b.sparsity, token_keep=b.token_keep)
        for b in config.blocks
    )
    meta = {**config._meta, "resolved_from": config.to_dict()}
    return PruningConfig(
        config.model, blocks, config.criterion, "count", token_mode=config.token_mode, _meta=meta
    )


def rebuild_structure(model: nn.Module, config: PruningConfig) -> nn.Module:
    """Applies only the shapes of a count-mode ``config`` (weights are loaded afterwards)."""
    if config.width_mode != "count":
        raise ConfigError("a saved model's config must be in count mode")
    _check(model, config)
    for name in list_pruners():
        pruner = get_pruner(name)
        if pruner.applies(config):
            pruner.apply(model, config, None)
    model.pruning_config = config
    return model
