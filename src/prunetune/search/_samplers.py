"""Samplers: registered plug-ins that build an Optuna sampler, reseeded for every trial.

A sampler plug-in is one small class with ``create(seed, n_trials) -> BaseSampler``::

    from prunetune.registry import SAMPLERS

    @SAMPLERS.register("qmc")
    class QMC:
        @staticmethod
        def create(seed, n_trials):
            return optuna.samplers.QMCSampler(seed=seed)

``create`` must return a sampler whose draws are fixed by ``seed`` and that keeps no state
across trials beyond what it stores in the study: with a seed, :func:`make_sampler` builds
a fresh one for every trial (see :class:`PerTrialSeeded`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from ..registry import SAMPLERS

__all__ = ["NSGA2", "PerTrialSeeded", "Random", "TPE", "list_samplers", "make_sampler"]


@SAMPLERS.register("nsga2")
class NSGA2:
    """NSGA-II; the population is a third of the trials, between 4 and 8.

    The cap keeps generations turning over when a CPU budget, not the trial count, ends the
    search: a search given a large ``n_trials`` cap and ``cpu_budget`` (as the search-quality
    benchmark runs it) gets more generations, not one larger first generation it never
    finishes breeding from. The default 24 trials give three generations of 8.
    """

    @staticmethod
    def create(seed: int | None, n_trials: int) -> BaseSampler:
        return optuna.samplers.NSGAIISampler(
            seed=seed, population_size=max(4, min(8, n_trials // 3))
        )


@SAMPLERS.register("tpe")
class TPE:
    """Multivariate TPE after a random start of a quarter of the trials (at least 4)."""

    @staticmethod
    def create(seed: int | None, n_trials: int) -> BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, n_startup_trials=max(4, n_trials // 4)
            )


@SAMPLERS.register("random")
class Random:
    """Independent uniform draws."""

    @staticmethod
    def create(seed: int | None, n_trials: int) -> BaseSampler:
        return optuna.samplers.RandomSampler(seed=seed)


class PerTrialSeeded(BaseSampler):
    """The draws of trial ``n`` come from a fresh sampler seeded by ``(seed, n)``.

    ``n`` counts the trials before this one that did not fail.

    A seeded Optuna sampler draws from one stream per process, so workers that share a study
    (with the same ``--seed``, as resuming requires) would propose the same candidates in the
    same order. Trial numbers are unique across workers: seeding by them keeps the workers'
    draws apart and a single-worker search exactly reproducible. Failed trials (a killed
    worker's) do not count, so a resumed search draws the candidates of an uninterrupted one.

    Only Optuna's public sampler interface is used: :meth:`before_trial` builds the trial's
    own sampler with ``factory(trial_seed)`` and every call about that trial goes to it until
    :meth:`after_trial`. This is exact for samplers that keep their cross-trial state in the
    study (NSGA-II's generations and parent populations are study system attributes; TPE and
    NSGA-II otherwise cache only what they recompute from the study's trials).

    Args:
        factory: Builds a sampler whose draws are fixed by the seed it is given.
        seed: The search's seed.
    """

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int):
        self.factory, self.seed = factory, seed
        self.trials: dict[int, BaseSampler] = {}  # trial number -> its sampler, while it runs

    def trial_seed(self, study: optuna.Study, number: int) -> int:
        """The seed of trial ``number``'s draws."""
        fails = sum(
            1
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if t.number < number
        )
        return int(np.random.SeedSequence([self.seed, number - fails]).generate_state(1)[0])

    def _of(self, study: optuna.Study, trial: FrozenTrial) -> BaseSampler:
        sampler = self.trials.get(trial.number)
        if sampler is None:
            sampler = self.trials[trial.number] = self.factory(self.trial_seed(study, trial.number))
        return sampler

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.trials.pop(trial.number, None)
        self._of(study, trial).before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._of(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._of(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._of(study, trial).sample_independent(
            study, trial, param_name, param_distribution
        )

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        sampler = self._of(study, trial)
        self.trials.pop(trial.number, None)
        sampler.after_trial(study, trial, state, values)


def list_samplers() -> list[str]:
    return SAMPLERS.names()


def make_sampler(name: str, seed: int | None, n_trials: int) -> BaseSampler:
    """The registered sampler ``name``; the objective records the budget with ``set_constraint``.

    With a ``seed``, each trial's draws are seeded by ``(seed, trial number)`` (see
    :class:`PerTrialSeeded`), so several workers on one study do not repeat each other;
    without one, the plain unseeded sampler.
    """
    plugin = SAMPLERS.get(name)
    if seed is None:
        return plugin.create(None, n_trials)
    return PerTrialSeeded(partial(plugin.create, n_trials=n_trials), seed)
