"""The study: settings, sampling, budgets, proxy tiers, the Pareto stage, backends, export."""

from __future__ import annotations

from . import _backends, _samplers  # noqa: F401  (register the backends and samplers)
from ._artifacts import open_store
from ._budget import Budget, BudgetMetric, parse_budget, repair
from ._evaluate import Evaluator
from ._export import export, study_status, study_store
from ._pareto import run_pareto_stage
from ._record import TrialRecord, final_of, finals, study_entry
from ._report import report_rows, write_report
from ._search import SETTINGS_FILE, SearchResult, search
from ._select import best_trial, pareto_front, pick_members
from ._settings import STARTS, SearchSettings, TierSpec, default_tiers, settings_of
from ._start import sensitivity_params, slim_params, starting_points, uniform_params
from ._study import (
    DEFAULT_STORAGE,
    DEFAULT_STUDY,
    load_study,
    make_storage,
    open_study,
    trial_counts,
)

__all__ = [
    "Budget",
    "BudgetMetric",
    "DEFAULT_STORAGE",
    "DEFAULT_STUDY",
    "Evaluator",
    "SETTINGS_FILE",
    "STARTS",
    "SearchResult",
    "SearchSettings",
    "TierSpec",
    "TrialRecord",
    "best_trial",
    "default_tiers",
    "export",
    "open_store",
    "study_store",
    "final_of",
    "finals",
    "load_study",
    "make_storage",
    "open_study",
    "pareto_front",
    "parse_budget",
    "pick_members",
    "repair",
    "report_rows",
    "run_pareto_stage",
    "search",
    "sensitivity_params",
    "settings_of",
    "slim_params",
    "starting_points",
    "study_entry",
    "study_status",
    "trial_counts",
    "uniform_params",
    "write_report",
]


class _CallableModule(__import__("types").ModuleType):
    """Lets ``prunetune.search(...)`` run a search while ``prunetune.search.X`` stays a module."""

    def __call__(self, *args, **kwargs) -> SearchResult:
        return search(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
