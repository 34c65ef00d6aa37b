"""Optuna storage, study and sampler set-up shared by search, report, dashboard and export."""

from __future__ import annotations

import warnings

import numpy as np
import optuna

from ..errors import PrunetuneError

__all__ = ["DEFAULT_STORAGE", "DEFAULT_STUDY", "make_storage", "open_study", "load_study", "make_sampler", "SAMPLERS"]

DEFAULT_STORAGE = "sqlite:///prunetune.db"
DEFAULT_STUDY = "prunetune"
SAMPLERS = ("nsga2", "tpe", "random")
#: Seconds between heartbeats of a running trial, and after which a silent one counts as dead.
HEARTBEAT_INTERVAL, GRACE_PERIOD = 5, 20


def make_storage(url: str, heartbeat: bool = True, grace_period: int | None = None) -> optuna.storages.RDBStorage:
    """An RDB storage (SQLite, PostgreSQL, ... any SQLAlchemy URL) with trial heartbeats.

    A trial whose process dies stops beating; after the grace period the next search on the
    study marks it failed and re-enqueues its parameters once (RetryHeartbeatStaleTrialCallback).
    """
    if "://" not in url:
        raise PrunetuneError(f"storage {url!r} is not a URL; use e.g. sqlite:///prunetune.db or postgresql://host/db")
    if grace_period is not None and grace_period <= HEARTBEAT_INTERVAL:
        raise PrunetuneError(f"grace_period={grace_period} s would mark running trials dead between their "
                             f"heartbeats (every {HEARTBEAT_INTERVAL} s); use more than {HEARTBEAT_INTERVAL} s")
    kw = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat:
                kw = {"heartbeat_interval": HEARTBEAT_INTERVAL, "grace_period": grace_period or GRACE_PERIOD,
                      "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kw)
    except ImportError as e:
        raise PrunetuneError(f"storage {url!r} needs a database driver that is not installed ({e})") from None
    except Exception as e:  # sqlalchemy raises many types for bad URLs / unreachable servers
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrunetuneError(f"cannot open storage {url!r}: {msg[:200]}") from None


def _engine_kwargs(url: str) -> dict:
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 5}, "pool_pre_ping": True}
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {}


class _SeededPerTrial:
    """Sampler mixin: the random draws of trial ``n`` come from a generator seeded by ``(seed, n)``.

    A seeded Optuna sampler draws from one stream per process, so workers that share a study
    (with the same ``--seed``, as resuming requires) would propose the same candidates in the
    same order. Trial numbers are unique across workers: seeding by them keeps the workers'
    draws apart and a single-worker search exactly as reproducible as before.
    """

    _trial_seed: int | None = None

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self._trial_seed is not None:
            states = np.random.SeedSequence([self._trial_seed, trial.number]).generate_state(2)
            for obj, s in zip((self, getattr(self, "_random_sampler", None)), states):
                rng = getattr(obj, "_rng", None)  # optuna's LazyRandomState
                if rng is not None:
                    rng.rng.seed(int(s))
        super().before_trial(study, trial)


class _NSGAIISampler(_SeededPerTrial, optuna.samplers.NSGAIISampler):
    pass


class _TPESampler(_SeededPerTrial, optuna.samplers.TPESampler):
    pass


class _RandomSampler(_SeededPerTrial, optuna.samplers.RandomSampler):
    pass


def make_sampler(name: str, seed: int | None, n_trials: int) -> optuna.samplers.BaseSampler:
    """NSGA-II, TPE or random; the objective records the budget constraint with ``trial.set_constraint``.

    With a ``seed``, each trial's draws are seeded by ``(seed, trial number)`` (see
    :class:`_SeededPerTrial`), so several workers on one study do not repeat each other.
    """
    if name == "nsga2":
        sampler = _NSGAIISampler(seed=seed, population_size=max(4, min(50, n_trials // 3)))
    elif name == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = _TPESampler(seed=seed, multivariate=True, n_startup_trials=max(4, n_trials // 4))
    elif name == "random":
        sampler = _RandomSampler(seed=seed)
    else:
        raise PrunetuneError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    sampler._trial_seed = seed
    return sampler


def open_study(storage: str, study_name: str, sampler: optuna.samplers.BaseSampler | None,
               heartbeat: bool = True, grace_period: int | None = None) -> optuna.Study:
    st = make_storage(storage, heartbeat, grace_period)
    return optuna.create_study(study_name=study_name, storage=st, sampler=sampler,
                               directions=["maximize", "minimize"], load_if_exists=True)


def load_study(storage: str, study_name: str) -> optuna.Study:
    st = make_storage(storage, heartbeat=False)
    try:
        return optuna.load_study(study_name=study_name, storage=st)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(st)]
        raise PrunetuneError(f"no study named {study_name!r} in {storage}; studies there: {names or 'none'}") from None
