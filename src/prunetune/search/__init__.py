"""The study: sampling, budgets, proxy tiers, the Pareto stage, backends, export."""

from __future__ import annotations

from ._budget import Budget, parse_budget, repair
from ._search import (
    Evaluator,
    SearchResult,
    SearchSettings,
    best_trial,
    pareto_front,
    run_pareto_stage,
    search,
)
from ._study import DEFAULT_STORAGE, DEFAULT_STUDY, load_study, open_study

__all__ = [
    "Budget",
    "DEFAULT_STORAGE",
    "DEFAULT_STUDY",
    "Evaluator",
    "SearchResult",
    "SearchSettings",
    "best_trial",
    "load_study",
    "open_study",
    "pareto_front",
    "parse_budget",
    "repair",
    "run_pareto_stage",
    "search",
]


class _CallableModule(__import__("types").ModuleType):
    """Lets ``prunetune.search(...)`` run a search while ``prunetune.search.X`` stays a module."""

    def __call__(self, *args, **kwargs) -> SearchResult:
        return search(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
