"""Contract suites every plug-in of a registry must pass (as ``optuna.testing`` for samplers).

A plug-in's own tests call them; prunetune's tests run them over every registered name.
"""

from .pruners import check_pruner
from .saliency import check_saliency
from .search_plugins import check_backend, check_budget_metric, check_proxy, check_sampler
from .token_modes import check_token_mode

__all__ = [
    "check_backend",
    "check_budget_metric",
    "check_proxy",
    "check_pruner",
    "check_saliency",
    "check_sampler",
    "check_token_mode",
]
