"""Ray Tune backend: the same evaluation, scheduled by Ray, sampled by OptunaSearch on our study.

Ray's ``OptunaSearch`` asks and tells the very Optuna study (same storage, same name) that the
in-process backend uses, so both write one study format; a subclass adds our per-trial
attributes (config, MACs, tier scores, budget constraint) before each result is told.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import torch
from tqdm import tqdm

from ..errors import PrunetuneError
from ._study import make_sampler, make_storage

__all__ = ["run_ray"]


def _absolute_sqlite(url: str) -> str:
    """Ray workers may run elsewhere in the file system: pin SQLite paths."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    return url


def _trainable(params: dict, evaluator=None, storage: str = "", study_name: str = "", threads: int = 1) -> None:
    from ray import tune

    from ._study import load_study

    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    attrs, values = evaluator.evaluate(params, load_study(storage, study_name))
    result = {"attrs": json.dumps(attrs, default=str)}
    if values is None:  # stopped early; Ray insists on the metrics, the searcher tells Optuna PRUNED
        result.update({"accuracy": float("nan"), "cost": float("nan"), "pruned": 1})
    else:
        result.update({"accuracy": values[0], "cost": values[1], "pruned": 0})
    tune.report(result)


def run_ray(study: optuna.Study, ev, settings, workers: int = 1, address: str | None = None,
            progress: bool = True) -> None:
    """Runs the remaining trials of ``study`` with Ray Tune (``workers`` at a time)."""
    try:
        import ray
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as e:
        raise PrunetuneError(f"--backend ray needs ray[tune] ({e})") from None
    from ._search import record

    class _Search(OptunaSearch):
        def on_trial_complete(self, trial_id, result=None, error=False):
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and result and "attrs" in result:
                record(ot_trial, json.loads(result["attrs"]))
            if (ot_trial is not None and result and result.get("pruned") and not error
                    and trial_id not in self._completed_trials):
                # OptunaSearch would tell [nan, nan] as COMPLETE values (and fail, leaving it RUNNING)
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
                self._completed_trials.add(trial_id)
                return
            super().on_trial_complete(trial_id, result, error)

    class _Bar(tune.Callback):
        def __init__(self, total: int):
            self.bar = tqdm(total=total, desc="search (ray)", unit="trial", disable=not progress)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.bar.update(1)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.bar.update(1)

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=states))
    remaining = settings.n_trials - done
    if remaining <= 0:
        return
    for c in ev.space["criterion"].choices:  # computed once here, shipped to every worker
        ev.scores(c)
    storage = _absolute_sqlite(settings.storage)
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
        ray.init(address=address, num_cpus=None if address else max(workers, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR", configure_logging=False)
        started = True
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = max(1, cpus // workers)
    searcher = _Search(space=ev.space.to_optuna(), metric=["accuracy", "cost"], mode=["max", "min"],
                       sampler=make_sampler(settings.sampler, settings.seed, settings.n_trials),
                       study_name=study.study_name, storage=make_storage(storage, heartbeat=False))
    bar = _Bar(remaining)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, evaluator=ev, storage=storage, study_name=study.study_name, threads=threads),
        {"cpu": 1},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining, max_concurrent_trials=workers),
        run_config=tune.RunConfig(name=f"prunetune-{study.study_name}", verbose=0, callbacks=[bar],
                                  storage_path=str((settings.artifacts_dir() / "ray").resolve())),
    )
    try:
        tuner.fit()
    finally:
        bar.bar.close()
        if started:
            ray.shutdown()
