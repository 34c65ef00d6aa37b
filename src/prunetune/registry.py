"""Plug-in registries: one style for every kind of plug-in.

Saliency criteria, pruners, token modes, proxies, samplers, backends, budget metrics and model
families are each a :class:`Registry` of small classes, filled with a class decorator::

    from prunetune.registry import SALIENCIES

    @SALIENCIES.register("my_criterion")
    class MyCriterion:
        def scores(self, model, batches): ...

Adding one is one file plus that decorator; ``prunetune.testing`` holds the contract suite
every entry of a registry must pass. This module imports nothing else from prunetune but its
errors, so any layer (even ``config``) can look names up without an import cycle.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import ConfigError

__all__ = [
    "BACKENDS",
    "BUDGET_METRICS",
    "FAMILIES",
    "PROXIES",
    "PRUNERS",
    "Registry",
    "SALIENCIES",
    "SAMPLERS",
    "TOKEN_MODES",
]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named plug-ins of one kind.

    Args:
        kind: What an entry is, for messages ("saliency criterion", "token mode", ...).
        instantiate: Store one instance of each registered class instead of the class.
        order: Key attribute that sorts :meth:`names` (else alphabetical).
    """

    def __init__(self, kind: str, instantiate: bool = False, order: str | None = None):
        self.kind, self.instantiate, self.order = kind, instantiate, order
        self._entries: dict[str, Any] = {}

    def register(self, name: str, **attrs: Any) -> Callable[[type], type]:
        """Class decorator: sets ``cls.name = name`` and ``attrs`` on the class, then stores it.

        A second registration under the same name warns and the later one wins.
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"a {self.kind} name must be an identifier, but got {name!r}")

        def deco(cls: type) -> type:
            if name in self._entries:
                warnings.warn(
                    f"{self.kind} {name!r} registered twice; the later one wins", stacklevel=2
                )
            cls.name = name
            for k, v in attrs.items():
                setattr(cls, k, v)
            self._entries[name] = cls() if self.instantiate else cls
            return cls

        return deco

    def unregister(self, name: str) -> None:
        """Removes ``name`` (tests that register a temporary plug-in clean up with this)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; a one-line :class:`ConfigError` names the choices."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, by ``order`` when the registry has one, else alphabetically."""
        if self.order is None:
            return sorted(self._entries)
        return sorted(self._entries, key=lambda n: (getattr(self._entries[n], self.order), n))

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


#: ``name -> class`` with ``scores(model, batches) -> SaliencyScores``
SALIENCIES: Registry[type] = Registry("saliency criterion")
#: ``name -> instance`` with ``order``, ``applies(config)``, ``apply(model, config, scores)``
PRUNERS: Registry[Any] = Registry("pruner", instantiate=True, order="order")
#: ``name -> instance`` of a :class:`prunetune.pruners.TokenMode` subclass
TOKEN_MODES: Registry[Any] = Registry("token mode", instantiate=True)
#: ``name -> class`` built by ``from_context(ctx, **options)`` with ``score(model) -> float``
PROXIES: Registry[type] = Registry("proxy")
#: ``name -> class`` with ``create(seed, n_trials) -> optuna.samplers.BaseSampler``
SAMPLERS: Registry[type] = Registry("sampler")
#: ``name -> class`` with ``run(study, evaluator, settings, ...)``
BACKENDS: Registry[type] = Registry("backend")
#: ``name -> instance`` with the budget metric's parsing and cost (see ``search.Budget``)
BUDGET_METRICS: Registry[Any] = Registry("budget metric", instantiate=True)
#: ``name -> instance`` of a :class:`prunetune.families.ModelFamily` subclass
FAMILIES: Registry[Any] = Registry("model family", instantiate=True)
