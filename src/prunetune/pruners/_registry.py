"""The pruner registry: one small module per pruning kind."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import nn

if TYPE_CHECKING:
    from ..config import PruningConfig
    from ._saliency import SaliencyScores

__all__ = ["Pruner", "register_pruner", "get_pruner", "list_pruners"]


@runtime_checkable
class Pruner(Protocol):
    """Model surgery for one pruning kind.

    ``order`` sets when it runs (lower first); ``apply`` edits ``model`` in place. ``scores``
    is None when only the shapes matter (rebuilding a saved model before loading its weights).
    """

    name: str
    order: int

    def applies(self, config: PruningConfig) -> bool: ...

    def apply(self, model: nn.Module, config: PruningConfig, scores: SaliencyScores | None) -> None: ...


_REGISTRY: dict[str, Pruner] = {}


def register_pruner(name: str, order: int) -> Callable[[type], type]:
    """Class decorator: registers an instance of the class under ``name`` (duplicates warn)."""

    def deco(cls: type) -> type:
        if name in _REGISTRY:
            warnings.warn(f"pruner {name!r} registered twice; the later one wins", stacklevel=2)
        cls.name, cls.order = name, order
        _REGISTRY[name] = cls()
        return cls

    return deco


def get_pruner(name: str) -> Pruner:
    return _REGISTRY[name]


def list_pruners() -> list[str]:
    return sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].order, n))
