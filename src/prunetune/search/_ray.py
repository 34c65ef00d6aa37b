"""Ray Tune backend: the same evaluation, scheduled by Ray, asked and told on our Optuna study.

:class:`_Search` is a Ray Tune ``Searcher`` that asks the very Optuna study (same storage,
same name, same registered sampler) that the in-process backend uses, samples it with
:meth:`SearchSpace.suggest` exactly as the in-process objective does, and tells it each
trial's outcome with the :class:`TrialRecord` the trainable returned; both backends write one
study format and propose the same candidates.

Each concurrent trial asks Ray for the same CPU share (:func:`cpus_per_trial`) and runs that many
torch threads on whichever node it lands. Tune reuses one worker process per concurrent trial
for the whole search, which keeps the evaluator, the study and the teacher cache between trials
(:func:`_worker_state`); each trial records the node it ran on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch
from tqdm import tqdm

from ..errors import PrunetuneError
from ..spaces import SearchSpace
from ._record import TrialRecord
from ._samplers import make_sampler
from ._study import HEARTBEAT_INTERVAL, make_storage, trial_counts

__all__ = ["cpus_per_trial", "run_ray"]


def _absolute_sqlite(url: str) -> str:
    """Ray workers may run elsewhere in the file system: pin SQLite paths."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    return url


try:
    from ray.tune.search import Searcher

    _RAY_MISSING = None
except ImportError as e:  # the error is raised when the Ray backend is used
    Searcher, _RAY_MISSING = object, e


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
        self.thread = threading.Thread(
            target=self._run, daemon=True, name="prunetune-ray-heartbeat"
        )

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


@dataclass
class _Run:
    """What a search keeps in the process that runs its searcher (never pickled)."""

    study: optuna.Study
    beats: _Heartbeats
    #: Ray trial id -> the Optuna trial asked for it, until it is told
    trials: dict[str, optuna.Trial] = field(default_factory=dict)


#: Searches run from this process: (storage, study) -> their study, heartbeats, open trials.
_RUNS: dict[tuple[str, str], _Run] = {}


class _Search(Searcher):
    """Asks and tells the study of a search for Ray Tune, through Optuna's public API.

    Tune pickles the searcher (and with Ray Client runs it on the cluster), so it holds plain
    values only; the study, its sampler, the heartbeats and the open Optuna trials live in
    :data:`_RUNS` of the process that runs it. Its state is the study itself: :meth:`save`
    writes these values, nothing more. No metric or mode is given to Tune: the outcome is
    told to Optuna directly, and the Tuner gets no ``param_space`` (the space is ours), so
    Tune never calls ``set_search_properties``.

    Args:
        space: The search space (sampled define-by-run, like the in-process objective).
        storage: The study's storage URL.
        study_name: The study's name.
        sampler: A registered sampler name.
        seed: The search's seed (None: unseeded).
        n_trials: The study total shared with other workers.
        grace_period: Seconds after which a silent trial counts as dead.
    """

    def __init__(
        self,
        space: SearchSpace,
        storage: str,
        study_name: str,
        sampler: str,
        seed: int | None,
        n_trials: int,
        grace_period: int | None = None,
    ):
        super().__init__()
        self.space, self.storage, self.study_name = space, storage, study_name
        self.sampler, self.seed, self.n_trials = sampler, seed, n_trials
        self.grace_period = grace_period

    def _run(self) -> _Run:
        """This process's state of the search, made on first use."""
        key = (self.storage, self.study_name)
        if key not in _RUNS:
            st = make_storage(self.storage, grace_period=self.grace_period)
            sampler = make_sampler(self.sampler, self.seed, self.n_trials)
            study = optuna.load_study(study_name=self.study_name, storage=st, sampler=sampler)
            beats = _Heartbeats(st, self.study_name)
            beats.start()
            _RUNS[key] = _Run(study, beats)
        return _RUNS[key]

    def suggest(self, trial_id: str) -> dict | str | None:
        # --n-trials is a study total shared with other workers (see run_trials)
        run = self._run()
        done, running = trial_counts(run.study)
        if done >= self.n_trials:
            return Searcher.FINISHED
        if done + running >= self.n_trials:
            return None  # ask again once a running trial has ended
        with warnings.catch_warnings():  # the driver beats for its trials itself (_Heartbeats)
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = run.study.ask()
        try:
            params = self.space.suggest(trial)
        except Exception:
            run.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        run.trials[trial_id] = trial
        run.beats.add(trial_id, trial.number)
        return params

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        run = self._run()
        run.beats.discard(trial_id)
        trial = run.trials.pop(trial_id, None)
        if trial is None:  # not asked by this process (a restored experiment's)
            return
        if error or not result or "record" not in result:
            run.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        TrialRecord.from_attrs(json.loads(result["record"])).write(trial)
        # where it ran: the Ray node's id, its host name and the torch threads it used
        for k, v in json.loads(result.get("worker") or "{}").items():
            trial.set_user_attr(k, v)
        if result.get("pruned"):  # stopped early: no values
            run.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            run.study.tell(trial, [result["accuracy"], result["cost"]])

    def save(self, checkpoint_path: str) -> None:
        """Tune's checkpoint: which study this searcher serves (the study holds the rest)."""
        Path(checkpoint_path).write_text(
            json.dumps(
                {
                    "storage": self.storage,
                    "study_name": self.study_name,
                    "sampler": self.sampler,
                    "seed": self.seed,
                    "n_trials": self.n_trials,
                    "grace_period": self.grace_period,
                }
            )
        )

    def restore(self, checkpoint_path: str) -> None:
        for k, v in json.loads(Path(checkpoint_path).read_text()).items():
            setattr(self, k, v)


#: What a Ray worker process keeps between the trials of one search (Tune reuses its actor):
#: the search's key -> its evaluator and study. Loaded at the worker's first trial, so later
#: trials neither transfer the evaluator again, nor reload the study, nor start with an empty
#: teacher cache; a worker serves one search at a time.
_WORKER: dict[str, tuple[object, optuna.Study]] = {}


def _worker_state(shared: dict) -> tuple[object, optuna.Study]:
    """This worker's evaluator and study of the search ``shared`` describes (loaded once)."""
    key = shared["key"]
    if key not in _WORKER:
        import ray

        from ._study import load_study

        _WORKER.clear()
        _WORKER[key] = (
            ray.get(shared["evaluator"]),
            load_study(shared["storage"], shared["study_name"]),
        )
    return _WORKER[key]


def _assigned_cpus(requested: int) -> int:
    """The CPUs Ray gave the running trial (what it asked for, when Ray does not say)."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return max(1, int(cpus)) if cpus else requested


def _trainable(params: dict, shared: dict) -> None:
    import ray
    from ray import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    evaluator, study = _worker_state(shared)
    threads = _assigned_cpus(shared["cpus"])
    torch.set_num_threads(threads)  # this trial's CPU share, on whichever node it runs
    rec, values = evaluator.evaluate(params, study)
    attrs = rec.to_attrs() if hasattr(rec, "to_attrs") else rec
    result = {
        "record": json.dumps(attrs, default=str),
        "worker": json.dumps(
            {
                "ray_node": ray.get_runtime_context().get_node_id(),
                "ray_host": socket.gethostname(),
                "torch_threads": torch.get_num_threads(),
            }
        ),
    }
    if values is None:  # stopped early; Ray insists on the metrics, the searcher tells PRUNED
        result.update({"accuracy": float("nan"), "cost": float("nan"), "pruned": 1})
    else:
        result.update({"accuracy": values[0], "cost": values[1], "pruned": 0})
    tune.report(result)


def cpus_per_trial(node_cpus: list[float], workers: int) -> int:
    """The most CPUs each of ``workers`` concurrent trials can get, every trial within one node.

    The largest ``c`` with ``sum(floor(n / c)) >= workers`` over the nodes' CPU counts: 2 workers
    on one 2-core machine get 1 each, 1 worker gets 2, 2 workers on nodes of 8 and 2 cores get 4
    (both on the 8-core node, the 2-core one idle). When the cluster has fewer CPUs than
    workers, 1 (and only as many trials as CPUs run at a time).
    """
    cpus = [int(n) for n in node_cpus if n >= 1]
    for c in range(max(cpus, default=1), 1, -1):
        if sum(n // c for n in cpus) >= workers:
            return c
    return 1


_CHECK_HEAD = (
    "check that `ray start --head` runs there (host:port is its GCS port, ray:// its "
    "client server port, 10001 by default)"
)


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fails in one line unless something accepts connections at ``address``.

    (``ray.init`` would wait.)
    """
    if not isinstance(address, str) or not address.strip() or address.strip() == "local":
        raise PrunetuneError(
            f"--address {address!r} is not a cluster address; use host:port or ray://host:port"
        )
    address = address.strip()
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PrunetuneError(f"--address {address!r} is not host:port or ray://host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise PrunetuneError(
            f"cannot connect to the Ray cluster at {address}: {e.strerror or e}; {_CHECK_HEAD}"
        ) from None


#: what Ray Client's proxy answers when the per-driver server it spawns did not come up in time
#: (seen on a loaded 2-core machine); the next attempt usually gets one
_CLIENT_START_FAILED = ("Starting Ray client server failed", "Initialization failure from server")


def _client_init(ray, address: str, quiet: dict, attempts: int = 3, pause: float = 5.0) -> None:
    """``ray.init`` through Ray Client, retried when only the server's start-up failed."""
    for attempt in range(attempts):
        try:
            ray.init(address=address, **quiet)
            return
        except (ConnectionError, RuntimeError) as e:
            if attempt == attempts - 1 or not any(m in str(e) for m in _CLIENT_START_FAILED):
                raise
            ray.shutdown()  # nothing half-connected is left for the next attempt
            time.sleep(pause)


def _usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. under ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
        # trial workers at the priority of the in-process loop, not Ray's nice 15 (which leaves a
        # search little CPU on a machine that does anything else); the node's raylet reads its
        # RAY_ settings from the environment it starts in, and a value the user set is kept
        niceness = "RAY_worker_niceness" not in os.environ
        if niceness:
            os.environ["RAY_worker_niceness"] = "0"
        try:
            ray.init(
                address="local",
                num_cpus=max(workers, _usable_cores()),
                include_dashboard=False,
                **quiet,
            )
        finally:
            if niceness:
                del os.environ["RAY_worker_niceness"]
        ip = ray.util.get_node_ip_address()
        if ip not in ("127.0.0.1", "::1", "localhost"):
            ray.shutdown()
            raise PrunetuneError(
                f"a local Ray cluster would listen on {ip} (ray was imported before prunetune "
                f"could bind it to 127.0.0.1); set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before "
                f"importing ray, or start a cluster yourself and pass --address"
            )
        return
    check_address(address)
    address = address.strip()
    try:
        if address.startswith("ray://"):
            _client_init(ray, address, quiet)
        else:
            ray.init(address=address, include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        # Ray Client sends the server's traceback: its last line says what went wrong
        msg = lines[-1] if lines[0].endswith(":") else lines[0]
        raise PrunetuneError(
            f"cannot connect to the Ray cluster at {address}: {msg[:200]}; {_CHECK_HEAD}"
        ) from None


def run_ray(
    study: optuna.Study,
    ev,
    settings,
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
) -> None:
    """Runs the remaining trials of ``study`` with Ray Tune (``workers`` at a time, each on an
    equal CPU share of one node)."""
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
    started = not ray.is_initialized()
    if started:
        _connect(address, workers, progress)
    bar = _Bar(remaining)
    try:
        nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
        cpus = cpus_per_trial(nodes, workers)
        searcher = _Search(
            ev.space,
            storage,
            study.study_name,
            settings.sampler,
            settings.seed,
            settings.n_trials,
            settings.grace_period,
        )
        # the evaluator goes to the object store once; each worker process fetches it at its
        # first trial and keeps it (_worker_state): the reference inside is not resolved per trial
        shared = {
            "key": uuid.uuid4().hex,
            "evaluator": ray.put(ev),
            "storage": storage,
            "study_name": study.study_name,
            "cpus": cpus,
        }
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trainable, shared=shared), {"cpu": cpus}),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=remaining,
                max_concurrent_trials=workers,
                reuse_actors=True,  # one worker process per concurrent trial, for all trials
            ),
            run_config=tune.RunConfig(
                name=f"prunetune-{study.study_name}",
                verbose=0,
                callbacks=[bar],
                storage_path=str((settings.artifacts_dir() / "ray").resolve()),
            ),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # a killed driver's trials: failed, then retried
            optuna.storages.fail_stale_trials(study)
        tuner.fit()
    finally:
        run = _RUNS.pop((storage, study.study_name), None)
        if run is not None:
            run.beats.stop()
        bar.bar.close()
        if started:
            ray.shutdown()
