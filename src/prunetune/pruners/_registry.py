"""The pruner protocol; pruners are registered in :data:`prunetune.registry.PRUNERS`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import nn

from ..registry import PRUNERS

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

    def apply(
        self, model: nn.Module, config: PruningConfig, scores: SaliencyScores | None
    ) -> None: ...


def register_pruner(name: str, order: int):
    """Class decorator: registers an instance of the class under ``name`` (duplicates warn)."""
    return PRUNERS.register(name, order=order)


def get_pruner(name: str) -> Pruner:
    return PRUNERS.get(name)


def list_pruners() -> list[str]:
    """Registered pruners in the order they run."""
    return PRUNERS.names()
