"""Backends: who runs the trials. ``optuna`` runs them in this process; ``ray`` on Ray Tune.

A backend is a class registered in :data:`prunetune.registry.BACKENDS` with
``run(study, evaluator, settings, progress) -> list[int] | None`` (the numbers of the trials
this process ran, None when it cannot tell). Every backend shares the same study total:
``n_trials`` counts the finished trials of all workers.
"""

from __future__ import annotations

import time
import warnings

import optuna
from tqdm import tqdm

from ..registry import BACKENDS
from ._study import StudyLock, trial_counts

__all__ = ["InProcessBackend", "RayBackend", "run_trials"]


class _Progress:
    def __init__(self, study: optuna.Study, total: int, enabled: bool):
        done = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
        self.bar = tqdm(
            total=total, initial=min(done, total), desc="search", unit="trial", disable=not enabled
        )

    def __call__(self, study, trial) -> None:
        self.bar.update(1)
        if trial.values:
            mmacs = (trial.user_attrs.get("macs") or 0) / 1e6
            self.bar.set_postfix(acc=f"{trial.values[0]:.3f}", mmacs=f"{mmacs:.2f}")

    def waiting(self, running: int) -> None:
        self.bar.set_description(
            f"search (waiting for {running} running trial{'s' * (running != 1)})"
        )

    def close(self) -> None:
        self.bar.close()


def run_trials(
    study: optuna.Study, objective, settings, progress: bool = True, poll: float = 2.0
) -> list[int]:
    """Runs trials in this process until the study holds ``settings.n_trials`` finished ones.

    ``n_trials`` is a study total shared by every worker: under the study's lock a worker
    fails stale trials (dead workers'), counts finished and running trials, and starts one
    only below the total; the lock is released as soon as Optuna has created the trial. A
    worker that runs the Pareto stage then waits for the other workers' running trials.
    """
    lock = StudyLock(settings.storage, settings.study)
    bar = _Progress(study, settings.n_trials, progress)
    ran: list[int] = []

    def locked_objective(trial: optuna.Trial):
        lock.release()  # the trial exists now: others may count it as running
        ran.append(trial.number)
        return objective(trial)

    try:
        while True:
            lock.acquire()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                done, running = trial_counts(study)
                spent = settings.cpu_budget is not None and (
                    time.process_time() >= settings.cpu_budget
                )
                if (
                    spent
                    or done >= settings.n_trials
                    or (done + running >= settings.n_trials and not settings.run_final)
                ):
                    return ran
                if done + running >= settings.n_trials:
                    bar.waiting(running)
                    lock.release()
                    time.sleep(poll)
                    continue
                study.optimize(
                    locked_objective, n_trials=1, callbacks=[bar], catch=(FloatingPointError,)
                )
            finally:
                lock.release()
    finally:
        bar.close()


@BACKENDS.register("optuna")
class InProcessBackend:
    """Trials run one at a time in this process (several processes may share the study)."""

    @staticmethod
    def check(settings) -> None:
        """Cheap checks before anything loads (nothing to check in-process)."""

    @staticmethod
    def run(study: optuna.Study, evaluator, settings, progress: bool = True) -> list[int] | None:
        return run_trials(study, evaluator.objective, settings, progress)


@BACKENDS.register("ray")
class RayBackend:
    """Ray Tune schedules the trials (``workers`` at a time, on a cluster with ``address``)."""

    @staticmethod
    def check(settings) -> None:
        if settings.address is not None:
            from ._ray import check_address

            check_address(settings.address)  # an unreachable cluster fails before anything loads

    @staticmethod
    def run(study: optuna.Study, evaluator, settings, progress: bool = True) -> list[int] | None:
        from ._ray import run_ray

        run_ray(
            study,
            evaluator,
            settings,
            workers=settings.workers,
            address=settings.address,
            progress=progress,
        )
        return None
