"""prunetune: find, apply and export pruning configurations for timm Vision Transformers."""

from __future__ import annotations

from . import search  # callable: prunetune.search(budget=...) runs a search
from ._pruned import load_pruned, save_pruned
from ._session import resolve_device
from .config import BlockConfig, PruningConfig
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InfeasibleConfigError,
    PrunetuneError,
    UnsupportedModelError,
)
from .evaluators import estimate_cost, evaluate_accuracy, measure_latency, measure_macs
from .models import ModelSpec, ViTArch, build_model
from .pruners import (
    compute_scores,
    get_saliency,
    list_pruners,
    list_saliencies,
    prune,
    register_pruner,
    register_saliency,
)
from .search import SearchResult, SearchSettings

__version__ = "0.1.0"

__all__ = [
    "BlockConfig",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "InfeasibleConfigError",
    "ModelSpec",
    "PruningConfig",
    "PrunetuneError",
    "UnsupportedModelError",
    "ViTArch",
    "build_model",
    "compute_scores",
    "estimate_cost",
    "evaluate_accuracy",
    "get_saliency",
    "list_pruners",
    "list_saliencies",
    "load_pruned",
    "measure_latency",
    "measure_macs",
    "prune",
    "register_pruner",
    "register_saliency",
    "resolve_device",
    "save_pruned",
    "search",
    "SearchResult",
    "SearchSettings",
]
