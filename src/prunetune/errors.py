"""Named exceptions.

User mistakes raise a subclass of :class:`PrunetuneError`; the CLI maps those to a one-line
message and exit code 2. Anything else is a bug and surfaces with its traceback.
"""

from __future__ import annotations

__all__ = [
    "PrunetuneError",
    "ConfigError",
    "UnsupportedModelError",
    "CheckpointError",
    "DataError",
    "InfeasibleConfigError",
]


class PrunetuneError(Exception):
    """Base class for errors caused by the user's input."""


class ConfigError(PrunetuneError, ValueError):
    """A pruning configuration is malformed or does not fit its model."""


class UnsupportedModelError(PrunetuneError):
    """The model is not one that the supported model families (timm, Hugging Face) can prune."""


class CheckpointError(PrunetuneError):
    """A weights file is missing, unreadable or does not match the model."""


class DataError(PrunetuneError):
    """A data set is missing, empty or malformed."""


class InfeasibleConfigError(PrunetuneError):
    """A configuration cannot be built (the search maps this to a pruned trial)."""
