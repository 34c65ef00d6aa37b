"""Contract suites every plug-in of a registry must pass (as ``optuna.testing`` for samplers).

A plug-in's own tests call them; prunetune's tests run them over every registered name.
"""

from .pruners import check_pruner
from .saliency import check_saliency
from .token_modes import check_token_mode

__all__ = ["check_pruner", "check_saliency", "check_token_mode"]
