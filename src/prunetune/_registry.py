"""The one registration helper behind every plug-in registry (saliency, proxies, pruners)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

__all__ = ["registrar"]


def registrar(store: dict, kind: str, name: str, instantiate: bool = False, **attrs) -> Callable[[type], type]:
    """A class decorator that registers the class (or an instance of it) in ``store`` under ``name``.

    Sets ``cls.name = name`` and any ``attrs`` on the class; a duplicate name warns and the
    later registration wins.
    """

    def deco(cls: type) -> type:
        if name in store:
            warnings.warn(f"{kind} {name!r} registered twice; the later one wins", stacklevel=2)
        cls.name = name
        for k, v in attrs.items():
            setattr(cls, k, v)
        store[name] = cls() if instantiate else cls
        return cls

    return deco
