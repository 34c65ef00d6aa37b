"""Ray Tune backend: the same evaluation, scheduled by Ray, sampled by OptunaSearch on our study.

Ray's ``OptunaSearch`` asks and tells the very Optuna study (same storage, same name) that the
in-process backend uses, so both write one study format; a subclass adds our per-trial
attributes (config, MACs, tier scores, budget constraint) before each result is told.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import warnings
from pathlib import Path

import optuna
import torch
from tqdm import tqdm

from ..errors import PrunetuneError
from ._study import HEARTBEAT_INTERVAL, make_sampler, make_storage, trial_counts

__all__ = ["run_ray"]


def _absolute_sqlite(url: str) -> str:
    """Ray workers may run elsewhere in the file system: pin SQLite paths."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    return url


try:
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    _RAY_MISSING = None
except ImportError as e:  # the error is raised when the Ray backend is used
    OptunaSearch, _RAY_MISSING = object, e

#: Studies searched from this process: (storage, study) -> (study, heartbeats).
_RUNS: dict[tuple[str, str], tuple] = {}


def _run_state(storage: str, study_name: str, grace_period: int | None) -> tuple:
    """The study and the heartbeat thread of a search, made on first use in this process."""
    key = (storage, study_name)
    if key not in _RUNS:
        st = make_storage(storage, grace_period=grace_period)
        beats = _Heartbeats(st, study_name)
        beats.start()
        _RUNS[key] = (optuna.load_study(study_name=study_name, storage=st), beats)
    return _RUNS[key]


class _Heartbeats:
    """Beats for the trials the driver has handed to Ray, as Optuna's own loop does for its trials.

    If the driver dies, its trials stop beating; the next search on the study fails them
    after the grace period and retries their parameters, exactly as for the in-process loop.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, study_name: str):
        self.storage, self.study_id = storage, storage.get_study_id_from_name(study_name)
        self.ids: dict[str, int] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="prunetune-ray-heartbeat")

    def add(self, ray_trial_id: str, number: int) -> None:
        tid = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        self.storage.record_heartbeat(tid)
        with self.lock:
            self.ids[ray_trial_id] = tid

    def discard(self, ray_trial_id: str) -> None:
        with self.lock:
            self.ids.pop(ray_trial_id, None)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.done.wait(HEARTBEAT_INTERVAL):
            with self.lock:
                ids = list(self.ids.values())
            for tid in ids:
                try:
                    self.storage.record_heartbeat(tid)
                except Exception:  # noqa: BLE001  (a missed beat is retried at the next interval)
                    pass


class _Search(OptunaSearch):
    # plain values only: Tune pickles the searcher, and with Ray Client runs it on the cluster
    prunetune_storage: str = ""
    prunetune_study: str = ""
    prunetune_total: int = 0
    prunetune_grace: int | None = None

    def suggest(self, trial_id):
        # --n-trials is a study total shared with other workers (see run_trials)
        own_study, beats = _run_state(self.prunetune_storage, self.prunetune_study, self.prunetune_grace)
        done, running = trial_counts(own_study)
        if done >= self.prunetune_total:
            return Searcher.FINISHED
        if done + running >= self.prunetune_total:
            return None  # ask again once a running trial has ended
        with warnings.catch_warnings():  # the driver beats for its trials itself (_Heartbeats)
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            beats.add(trial_id, ot_trial.number)
        return config

    def on_trial_complete(self, trial_id, result=None, error=False):
        _run_state(self.prunetune_storage, self.prunetune_study, self.prunetune_grace)[1].discard(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and result and "attrs" in result:
            from ._search import record

            record(ot_trial, json.loads(result["attrs"]))
        if (ot_trial is not None and result and result.get("pruned") and not error
                and trial_id not in self._completed_trials):
            # OptunaSearch would tell [nan, nan] as COMPLETE values (and fail, leaving it RUNNING)
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)



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


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fails in one line unless something accepts connections at ``address`` (ray.init would wait)."""
    if not isinstance(address, str) or not address.strip() or address.strip() == "local":
        raise PrunetuneError(f"--address {address!r} is not a cluster address; use host:port or ray://host:port")
    address = address.strip()
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PrunetuneError(f"--address {address!r} is not host:port or ray://host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise PrunetuneError(f"cannot connect to the Ray cluster at {address}: {e.strerror or e}; check that "
                             f"`ray start --head` runs there (host:port is its GCS port, ray:// its client "
                             f"server port, 10001 by default)") from None


def _connect(address: str | None, workers: int, progress: bool) -> None:
    """Starts a private local Ray cluster on loopback, or joins ``address`` (host:port or ray://).

    Without an address a new cluster is always started (``address="local"``), even when
    another one runs on this machine, with every server bound to 127.0.0.1 and no dashboard:
    nothing of it is reachable from the network. With ``host:port`` the driver joins that
    cluster's GCS; with ``ray://host:port`` it connects through Ray Client.
    """
    import ray

    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    quiet = {"log_to_driver": False, "logging_level": "ERROR", "configure_logging": False}
    if address is None:
        ray.init(address="local", num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, **quiet)
        ip = ray.util.get_node_ip_address()
        if ip not in ("127.0.0.1", "::1", "localhost"):
            ray.shutdown()
            raise PrunetuneError(
                f"a local Ray cluster would listen on {ip} (ray was imported before prunetune could bind it "
                f"to 127.0.0.1); set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before importing ray, or start a "
                f"cluster yourself and pass --address")
        return
    check_address(address)
    address = address.strip()
    try:
        if address.startswith("ray://"):
            ray.init(address=address, **quiet)
        else:
            ray.init(address=address, include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrunetuneError(f"cannot connect to the Ray cluster at {address}: {msg[:200]}; check that "
                             f"`ray start --head` runs there (host:port is its GCS port, ray:// its client "
                             f"server port, 10001 by default)") from None


def run_ray(study: optuna.Study, ev, settings, workers: int = 1, address: str | None = None,
            progress: bool = True) -> None:
    """Runs the remaining trials of ``study`` with Ray Tune (``workers`` at a time)."""
    if _RAY_MISSING is not None:
        raise PrunetuneError(f"--backend ray needs ray[tune] ({_RAY_MISSING})")
    import ray
    from ray import tune

    if not progress:  # --quiet: no experiment banner or status tables, no Ray warnings
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        logging.getLogger("ray").setLevel(logging.ERROR)

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
        started = True
        _connect(address, workers, progress)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = max(1, cpus // workers)
    searcher = _Search(space=ev.space.to_optuna(), metric=["accuracy", "cost"], mode=["max", "min"],
                       sampler=make_sampler(settings.sampler, settings.seed, settings.n_trials),
                       study_name=study.study_name,
                       storage=make_storage(storage, grace_period=settings.grace_period))
    searcher.prunetune_storage, searcher.prunetune_study = storage, study.study_name
    searcher.prunetune_total, searcher.prunetune_grace = settings.n_trials, settings.grace_period
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a killed driver's trials: failed, then retried
        tuner.fit()
    finally:
        state = _RUNS.pop((storage, study.study_name), None)
        if state is not None:
            state[1].stop()
        bar.bar.close()
        if started:
            ray.shutdown()
