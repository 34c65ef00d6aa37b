"""The search API: one budgeted multi-objective study, then the Pareto stage.

The parts live beside it: settings (``_settings``), candidate scoring (``_evaluate``), the
trial record (``_record``), backends (``_backends``), selection (``_select``) and the Pareto
stage (``_pareto``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import optuna

from .._faults import fault_point
from ..config import PruningConfig
from ..errors import PrunetuneError
from ..models import resolve_model_spec
from ..registry import BACKENDS, BUDGET_METRICS
from ..spaces import load_space
from ._artifacts import check_store
from ._budget import Budget
from ._evaluate import Evaluator
from ._pareto import run_pareto_stage
from ._record import TrialRecord
from ._samplers import make_sampler
from ._select import best_trial, pareto_front
from ._settings import SearchSettings
from ._start import starting_points
from ._study import StudyLock, _storage_error, check_writable, find_study, open_study

__all__ = ["SearchResult", "search"]

#: Name of the resolved settings file written beside the artifacts.
SETTINGS_FILE = "settings.yaml"


@dataclass
class SearchResult:
    """What a search returns: the study, its Pareto front and the best under-budget config."""

    study: optuna.Study
    front: list[optuna.trial.FrozenTrial]
    best_config: PruningConfig | None
    best_trial: optuna.trial.FrozenTrial | None
    finals: dict[int, dict] = field(default_factory=dict)
    budget: Budget | None = None
    settings: SearchSettings | None = None
    #: numbers of the trials this process ran (None with the Ray backend)
    ran: list[int] | None = None


def _check_resume(study: optuna.Study, settings: SearchSettings) -> None:
    """Fails when ``study`` was started with other identity settings (a new study passes)."""
    raw = study.user_attrs.get("settings")
    if raw is None:
        return
    try:
        old = SearchSettings.from_dict(raw).identity()
    except PrunetuneError:
        old = raw
    mine = settings.identity()
    diff = {k: (old.get(k), mine[k]) for k in mine if old.get(k) != mine[k]}
    if diff:
        k, (a, b) = next(iter(diff.items()))
        raise PrunetuneError(
            f"study {settings.study!r} was started with {k}={a!r}, but this search has {k}={b!r}; "
            f"use the same settings to resume it, or another --study"
        )


def _record_study(study: optuna.Study, settings: SearchSettings, ev: Evaluator) -> None:
    """Stores the settings, the dense model and the budget with the study (once)."""
    if study.user_attrs.get("settings") is None:
        study.set_user_attr("settings", settings.to_dict())
    study.set_user_attr(
        "dense",
        {
            "macs": ev.dense_cost.macs,
            "params": ev.dense_cost.params,
            "val_accuracy": ev.dense_accuracy,
            "budget_value": ev.dense_value,
        },
    )
    study.set_user_attr(
        "budget", {"metric": ev.budget.metric, "limit": ev.budget.limit, "text": ev.budget.text}
    )
    lt = ev.latency_model
    if lt is not None:
        study.set_user_attr(
            "latency_table",
            {
                "device": lt.device,
                "batch_size": lt.batch_size,
                "prediction_error_pct": lt.error_pct,
                "rows": len(lt.rows),
            },
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        time_metric = BUDGET_METRICS.get(ev.budget.metric).time
        study.set_metric_names(["accuracy", "latency_ms" if time_metric else "macs"])


def _enqueue_starts(study: optuna.Study, ev: Evaluator, settings: SearchSettings) -> None:
    """Queues the informed starting points once per study (the first worker to get here)."""
    lock = StudyLock(settings.storage, settings.study)
    lock.acquire()
    try:
        if study.user_attrs.get("starts") is not None:
            return
        points = starting_points(ev, settings.start)
        for kind, params in points:
            study.enqueue_trial(params, user_attrs={"start": kind}, skip_if_exists=True)
        study.set_user_attr("starts", [kind for kind, _ in points])
    finally:
        lock.release()


def search(
    budget: str | None = None,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
    settings: SearchSettings | None = None,
    **kwargs,
) -> SearchResult:
    """Runs the whole search; the Python API of ``prunetune search``.

    Args:
        budget: ``flops=50%``, ``flops=0.2G``, ``params=3M``, ``latency=4ms``, ...
        progress: Show progress bars.
        announce: Receives one line with the preprocessing and the dense model's val accuracy
            before the search starts (the CLI prints it).
        settings: Start from these settings (e.g. ``SearchSettings.load("run.yaml")``);
            ``budget`` and ``kwargs`` override their fields.
        **kwargs: Any :class:`SearchSettings` field (``n_trials``, ``sampler``, ``storage``,
            ``study``, ``space``, ``model``, ``checkpoint``, ``data``, ``tiers``, ``backend``,
            ``workers``, ``address``, ``final_epochs``, ...).

    Returns:
        A :class:`SearchResult` with the study, the Pareto front and the best configuration.
    """
    unknown = set(kwargs) - {f.name for f in fields(SearchSettings)}
    if unknown:
        raise TypeError(f"unknown search settings {sorted(unknown)}")
    if budget is not None:
        kwargs["budget"] = budget
    settings = replace(settings, **kwargs) if settings is not None else SearchSettings(**kwargs)
    settings = settings.resolved()
    backend = BACKENDS.get(settings.backend)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(settings.sampler, settings.seed, settings.n_trials)
    space = load_space(resolve_model_spec(settings.model), settings.space)  # fails before the study
    check_writable(settings.storage)
    backend.check(settings)
    check_store(settings.store_spec(), writes=settings.run_final)
    existing = find_study(settings.storage, settings.study)  # creates nothing
    if existing is not None:
        _check_resume(existing, settings)  # before the expensive loading below
    ev = Evaluator(
        settings, space=space, announce=announce, progress=progress and settings.backend == "optuna"
    )  # Ray workers' bars interleave
    # the study is created only once model, data, space and budget are known to work, so a
    # failed start (an unreachable budget, a missing checkpoint) leaves no study and no file
    study = open_study(
        settings.storage, settings.study, sampler, grace_period=settings.grace_period
    )
    _check_resume(study, settings)  # another worker may have started it meanwhile
    fault_point("study-created")
    try:
        _record_study(study, settings, ev)
    except optuna.exceptions.StorageInternalError as e:
        raise _storage_error(settings.storage, e, "write to") from None
    settings.dump(settings.artifacts_dir() / SETTINGS_FILE)
    if settings.start:
        _enqueue_starts(study, ev, settings)
    ran = backend.run(study, ev, settings, progress)
    finals = run_pareto_stage(study, ev, progress) if settings.run_final else {}
    best, _ = best_trial(study)
    front = pareto_front(study)
    config = PruningConfig.from_dict(TrialRecord.of(best).config) if best else None
    return SearchResult(study, front, config, best, finals, ev.budget, settings, ran)
