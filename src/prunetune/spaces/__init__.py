"""Search dimensions and their bounds, defined once and converted to Optuna and Ray Tune."""

from __future__ import annotations

from ._presets import DEFAULT_CRITERIA, PRESETS, build_space, load_space
from ._space import Dim, SearchSpace

__all__ = ["DEFAULT_CRITERIA", "PRESETS", "Dim", "SearchSpace", "build_space", "load_space"]
