"""prunetune: find, apply and export pruning configurations for timm and Hugging Face ViTs."""

from __future__ import annotations

import os as _os

# A Ray node started from this process (``--backend ray`` without ``--address``) binds its
# servers to 127.0.0.1 only when this is set before ray is first imported; the default makes
# GCS, raylet and workers listen on every interface. A value set by the user is kept.
_os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray clusters authenticate with a token (~/.ray/auth_token, or RAY_AUTH_TOKEN[_PATH]). `ray start`
# uses one when it exists, but a driver joining with --address sends it only in token mode, and
# ray reads the mode once, on import. An explicit RAY_AUTH_MODE (e.g. disabled) is kept.
if "RAY_AUTH_MODE" not in _os.environ and (
    _os.environ.get("RAY_AUTH_TOKEN")
    or _os.environ.get("RAY_AUTH_TOKEN_PATH")
    or _os.path.isfile(_os.path.join(_os.path.expanduser("~"), ".ray", "auth_token"))
):
    _os.environ["RAY_AUTH_MODE"] = "token"

from . import search  # noqa: E402  (callable: prunetune.search(budget=...) runs a search)
from ._io import prepare_out
from ._prune_api import PruneRun, apply_config
from ._pruned import load_pruned, save_pruned
from ._session import Loaded, load_base, resolve_device
from .config import BlockConfig, PruningConfig
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InfeasibleConfigError,
    PrunetuneError,
    UnsupportedModelError,
)
from .evaluators import estimate_cost, evaluate_accuracy, format_macs, measure_latency, measure_macs
from .models import ModelSpec, ViTArch, build_model
from .plugins import load_plugins
from .pruners import (
    compute_scores,
    get_saliency,
    list_pruners,
    list_saliencies,
    prune,
    register_pruner,
    register_saliency,
)
from .registry import Registry
from .search import SearchResult, SearchSettings, TierSpec

__version__ = "0.1.0"

__all__ = [
    "BlockConfig",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "InfeasibleConfigError",
    "Loaded",
    "PruneRun",
    "Registry",
    "TierSpec",
    "apply_config",
    "format_macs",
    "load_base",
    "load_plugins",
    "prepare_out",
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
