"""Loading plug-ins: third-party modules that register saliencies, pruners, proxies, ...

A plug-in is an ordinary module whose import runs registration decorators (see
:mod:`prunetune.registry`). :func:`load_plugins` imports

- every entry point of the group ``prunetune.plugins`` of the installed distributions
  (``[project.entry-points."prunetune.plugins"] my_criterion = "my_package.criterion"``), and
- every item of the environment variable ``PRUNETUNE_PLUGINS``, comma-separated: a module
  name (``my_package.criterion``) or the path of a ``.py`` file (imported under a module name
  derived from its resolved path, so two files called ``plugin.py`` do not collide).

Each plug-in is imported once per process; calling :func:`load_plugins` again is cheap.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from types import ModuleType

from .errors import PrunetuneError

__all__ = ["ENTRY_POINT_GROUP", "ENV_VAR", "load_plugins"]

ENTRY_POINT_GROUP = "prunetune.plugins"
ENV_VAR = "PRUNETUNE_PLUGINS"

#: Plug-ins imported so far: ``entry point:<value>``, ``module:<name>`` or ``file:<path>``
_LOADED: set[str] = set()


def load_plugins() -> list[str]:
    """Imports every plug-in not imported yet: entry points first, then ``PRUNETUNE_PLUGINS``.

    Returns:
        The module names imported by this call (empty when every plug-in was loaded before).

    Raises:
        PrunetuneError: A plug-in failed to import; the one-line message names the plug-in and
            the first line of the cause (the original exception is chained).
    """
    loaded = []
    for ep in _entry_points():
        key = f"entry point:{ep.value}"
        if key not in _LOADED:
            _guarded(f"entry point {ep.name!r} ({ep.value})", ep.load)
            _LOADED.add(key)
            loaded.append(ep.module)
    for item in _env_items():
        if _is_path(item):
            path = Path(item).expanduser().resolve()
            key = f"file:{path}"
            if key not in _LOADED:
                module = _guarded(f"{item!r} from {ENV_VAR}", lambda p=path: _import_file(p))
                _LOADED.add(key)
                loaded.append(module.__name__)
        else:
            key = f"module:{item}"
            if key not in _LOADED:
                _guarded(f"{item!r} from {ENV_VAR}", lambda m=item: _import_module(m))
                _LOADED.add(key)
                loaded.append(item)
    return loaded


def _entry_points() -> list:
    from importlib.metadata import entry_points

    # one entry point may be seen twice when a distribution is on sys.path twice
    unique = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        unique.setdefault((ep.name, ep.value), ep)
    return sorted(unique.values(), key=lambda ep: (ep.name, ep.value))


def _env_items() -> list[str]:
    return [s.strip() for s in os.environ.get(ENV_VAR, "").split(",") if s.strip()]


def _is_path(item: str) -> bool:
    return item.endswith(".py") or os.sep in item or (os.altsep is not None and os.altsep in item)


def _guarded(label: str, load):
    try:
        return load()
    except Exception as e:
        raise PrunetuneError(f"plug-in {label} failed to import: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _import_module(name: str) -> ModuleType:
    import importlib

    return importlib.import_module(name)


def _import_file(path: Path) -> ModuleType:
    import importlib.util

    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    name = f"_prunetune_plugin_{_identifier(path.stem)}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as import does: dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _identifier(stem: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in stem)
