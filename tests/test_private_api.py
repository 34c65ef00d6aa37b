"""prunetune uses only the public API of Optuna, Ray and timm.

Private attributes change without notice between releases (``sampler._rng``, Ray's
``OptunaSearch._ot_trials``, ``trial._suggest`` all did or could). The check reads our source
with :mod:`ast` and fails on

- ``obj._x`` (or ``getattr(obj, "_x")``) where ``_x`` is a private name those libraries define
  (``self._x =``, ``def _x``, ``class _X``, a class- or module-level ``_x =``, a ``_module``)
  and our own code does not,
- an import of a private module or name of those libraries (``from optuna.samplers._base
  import X``, ``import ray._private``, ``importlib.import_module("timm._x")``),
- ``inspect.getsource`` (code that reads a library's source to patch it is a fork).

The libraries' sources are scanned, never imported.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import cache
from pathlib import Path

import pytest

LIBRARIES = ("optuna", "ray", "timm")
SRC = Path(__file__).resolve().parents[1] / "src" / "prunetune"

#: Definitions of private names: ``self._x =`` / ``cls._x: T =``, ``def _x`` / ``class _X``,
#: a class- or module-level ``_x =``, ``setattr(obj, "_x", ...)``.
_DEFINITIONS = (
    re.compile(r"\b(?:self|cls)\.(_\w+)\s*(?::[^=\n]*)?=(?!=)"),
    re.compile(r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+(_\w+)", re.M),
    re.compile(r"^[ \t]*(_\w+)[ \t]*(?::[^=\n]*)?=(?!=)", re.M),
    re.compile(r"\bsetattr\([^,()]+,\s*[\"'](_\w+)[\"']"),
)
_PRIVATE_MODULE = re.compile(rf"^(?:{'|'.join(LIBRARIES)})(?:\.\w+)*\._(?!_)")
_GETSOURCE = {"getsource", "getsourcelines"}
_ATTR_FUNCS = {"getattr", "setattr", "hasattr", "delattr"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _names_defined_in(root: Path) -> set[str]:
    """Private names defined in the ``.py`` files under ``root`` (modules and packages too)."""
    names: set[str] = set()
    for path in root.rglob("*.py"):
        text = path.read_text(errors="replace")
        for pattern in _DEFINITIONS:
            names.update(pattern.findall(text))
        names.update(path.relative_to(root).with_suffix("").parts)
    return {n for n in names if _is_private(n)}


@cache
def library_private_names() -> frozenset[str]:
    names: set[str] = set()
    for lib in LIBRARIES:
        spec = importlib.util.find_spec(lib)  # finds the package without importing it
        if spec is not None and spec.origin:
            names |= _names_defined_in(Path(spec.origin).parent)
    return frozenset(names)


@cache
def own_private_names() -> frozenset[str]:
    return frozenset(_names_defined_in(SRC))


def _library(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in LIBRARIES


def violations(
    source: str,
    where: str,
    private: frozenset[str] | None = None,
    own: frozenset[str] | None = None,
) -> list[str]:
    """Every use of a private Optuna / Ray / timm name in ``source``, one line each."""
    private = library_private_names() if private is None else private
    own = own_private_names() if own is None else own
    foreign = private - own
    found: list[str] = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{where}:{node.lineno}: {what}")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            if node.attr in foreign:
                flag(node, f".{node.attr} is private in {'/'.join(LIBRARIES)}")
            elif node.attr in _GETSOURCE:
                flag(node, f"inspect.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = node.args
            if (
                node.func.id in _ATTR_FUNCS
                and len(args) >= 2
                and isinstance(args[1], ast.Constant)
                and args[1].value in foreign
            ):
                flag(
                    node,
                    f"{node.func.id}(..., {args[1].value!r}) is private in {'/'.join(LIBRARIES)}",
                )
            elif node.func.id in _GETSOURCE:
                flag(node, node.func.id)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            if node.module == "inspect" and any(a.name in _GETSOURCE for a in node.names):
                flag(node, "from inspect import getsource")
            elif _library(node.module):
                parts = node.module.split(".") + [a.name for a in node.names]
                if any(_is_private(p) for p in parts):
                    flag(
                        node,
                        f"from {node.module} import "
                        f"{', '.join(a.name for a in node.names)} (private)",
                    )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _library(alias.name) and any(_is_private(p) for p in alias.name.split(".")):
                    flag(node, f"import {alias.name} (private)")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _PRIVATE_MODULE.match(node.value)
        ):
            flag(node, f"{node.value!r} names a private module")
    return found


def test_the_libraries_sources_are_scanned():
    names = library_private_names()
    if importlib.util.find_spec("optuna") is None:
        pytest.skip("optuna is not installed")
    assert {"_rng", "_suggest", "_storage"} <= names, "the scan of optuna's source found nothing"


def test_prunetune_uses_no_private_api_of_optuna_ray_or_timm():
    found = [
        v
        for path in sorted(SRC.rglob("*.py"))
        for v in violations(path.read_text(), str(path.relative_to(SRC.parent)))
    ]
    assert not found, "private API of optuna/ray/timm used:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "snippet",
    [
        "sampler._rng.rng.seed(1)",
        "rng = getattr(sampler, '_random_sampler', None)",
        "ot_trial = self._ot_trials.get(trial_id)",
        "self._ot_study.tell(ot_trial, state=PRUNED)",
        "done = trial_id in self._completed_trials",
        "value = trial._suggest(name, dist)",
        "study._storage.set_trial_system_attr(trial._trial_id, 'k', 1)",
        "from optuna.samplers._base import BaseSampler",
        "from optuna.samplers import _tpe",
        "import ray._private.services",
        "from timm.layers import _fx",
        "importlib.import_module('ray._private.worker')",
        "import inspect\nsrc = inspect.getsource(Attention.forward)",
        "from inspect import getsource\nsrc = getsource(f)",
    ],
)
def test_the_check_catches_private_access(snippet):
    if importlib.util.find_spec("optuna") is None or importlib.util.find_spec("ray") is None:
        pytest.skip("needs optuna and ray installed (their sources define the private names)")
    assert violations(snippet, "<fixture>"), f"not flagged: {snippet!r}"


def test_the_check_passes_public_api():
    snippet = (
        "import optuna\n"
        "from ray.tune.search import Searcher\n"
        "from . import _study\n"
        "from ._record import TrialRecord\n"
        "trial = study.ask()\n"
        "x = trial.suggest_int('x', 0, 3, step=1)\n"
        "study.tell(trial, state=optuna.trial.TrialState.PRUNED)\n"
        "sampler = optuna.samplers.TPESampler(seed=0)\n"
        "n = self.__class__.__name__\n"
    )
    assert violations(snippet, "<fixture>") == []
