"""Ray backends on real clusters: nothing listens beyond loopback, both address forms work, and a
two-node cluster runs a whole search.

The test's own clusters are started with the real ``ray start`` (``--block``, each node with its
own temp dir and free ports; 6379 is Redis's on the dev machines) and stopped by ending that
``ray start`` process, which takes its node's servers and workers with it (``ray stop`` would
stop every Ray process on the machine).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from _helpers import (
    DONE,
    PG_URL,
    _postgres_reachable,
    cli,
    search_args,
    sqlite_url,
    stop,
    subprocess_env,
)
from prunetune.search import finals, load_study
from prunetune.search._ray import cpus_per_trial

RAY = Path(sys.executable).with_name("ray")


def _listening() -> set[tuple[str, int]]:
    """Every TCP socket listening in this network namespace, as (address, port)."""
    found = set()
    for name, fam in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":  # LISTEN
                continue
            hexaddr, hexport = local.split(":")
            raw = bytes.fromhex(hexaddr)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((socket.inet_ntop(fam, raw), int(hexport, 16)))
    return found


def _is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net")


def test_a_local_ray_search_listens_only_on_loopback(tmp_path):
    before = _listening()
    args = search_args(sqlite_url(tmp_path / "s.db"), "lo", 2, "--backend", "ray", "--no-final")
    proc = subprocess.Popen(
        cli(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
    )
    seen: set[tuple[str, int]] = set()
    try:
        while proc.poll() is None:
            seen |= _listening() - before
            time.sleep(0.3)
        out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 0, err[-3000:]
    assert len(seen) >= 3, seen  # GCS, raylet, workers: the check saw the cluster
    exposed = sorted((a, p) for a, p in seen if not _is_loopback(a))
    assert exposed == [], f"listening beyond loopback: {exposed}"
    # one worker gets every core the search may use (the children's OMP_NUM_THREADS=1 aside)
    trials = load_study(sqlite_url(tmp_path / "s.db"), "lo").get_trials(deepcopy=False)
    assert {t.user_attrs["torch_threads"] for t in trials} == {len(os.sched_getaffinity(0))}
    assert all(t.user_attrs["ray_node"] for t in trials)
    # one worker process ran both trials (Tune reused its actor, with the evaluator it loaded)
    results = [
        json.loads(ln) for f in tmp_path.rglob("result.json") for ln in f.open() if ln.strip()
    ]
    assert len(results) == 2 and len({r["pid"] for r in results}) == 1, results


def _node_ports() -> list[str]:
    """Free ports for one node's servers (their defaults collide between nodes on one host)."""
    names = (
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
    )
    return [f"--{n}={_free_port()}" for n in names] + ["--min-worker-port=0", "--max-worker-port=0"]


def _pids_naming(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (a node's own temp dir)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and d.name != str(os.getpid()):
            with contextlib.suppress(OSError):
                if text.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
    return pids


@contextlib.contextmanager
def _ray_node(temp_dir: Path, env: dict[str, str], *args: str):
    """One node started by ``ray start --block`` with its own temp dir, stopped on exit.

    Stopping ends this ``ray start`` only (SIGTERM: its node shuts its servers and workers down);
    anything of the node that outlives it, found by the node's temp dir, is killed by its pid.
    """
    if not RAY.is_file():
        pytest.skip("the ray command is not installed beside this interpreter")
    temp_dir.mkdir(parents=True)
    log = temp_dir / "ray-start.log"
    cmd = [str(RAY), "start", "--block", f"--temp-dir={temp_dir}", *_node_ports(), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*cmd, "--disable-usage-stats"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"`ray start {' '.join(args)}` did not start:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        for pid in _pids_naming(str(temp_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_head():
    """A one-node cluster started with `ray start --head` on free ports (loopback only)."""
    gcs, client = _free_port(), _free_port()
    # a loaded 2-core machine can take longer than Ray's default 30 s to start the per-client
    # server behind ray:// (the proxy then answers "Initialization failure from server")
    env = {
        **subprocess_env(),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "180",
    }
    root = Path(tempfile.mkdtemp(prefix="ptray", dir="/tmp"))  # short: Ray's socket paths
    try:
        with _ray_node(
            root / "head",
            env,
            "--head",
            f"--port={gcs}",
            f"--ray-client-server-port={client}",
            "--num-cpus=2",
            "--include-dashboard=false",
        ):
            yield {"gcs": f"127.0.0.1:{gcs}", "client": f"ray://127.0.0.1:{client}"}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _search(tmp_path, study: str, n_trials: int, *extra: str) -> subprocess.CompletedProcess:
    args = search_args(
        sqlite_url(tmp_path / "s.db"),
        study,
        n_trials,
        "--backend",
        "ray",
        "--front-max",
        "1",
        *extra,
    )
    return subprocess.run(
        cli(*args), capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=600
    )


@pytest.mark.parametrize("form", [pytest.param("gcs", marks=pytest.mark.slow), "client"])
def test_search_on_a_running_cluster_by_address(ray_head, tmp_path, form):
    res = _search(tmp_path, form, 2, "--address", ray_head[form])
    assert res.returncode == 0, res.stderr[-3000:]
    study = load_study(sqlite_url(tmp_path / "s.db"), form)
    assert len(study.get_trials(deepcopy=False, states=DONE)) == 2
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    assert any(k.startswith("final_") for k in study.user_attrs)


def test_no_address_starts_a_private_cluster_beside_a_running_one(ray_head, tmp_path):
    res = _search(tmp_path, "beside", 2, "--no-final")
    assert res.returncode == 0, res.stderr[-3000:]
    study = load_study(sqlite_url(tmp_path / "s.db"), "beside")
    assert len(study.get_trials(deepcopy=False, states=DONE)) == 2
    # the user's cluster is still up and still takes a search
    res = _search(tmp_path, "after", 1, "--no-final", "--address", ray_head["gcs"])
    assert res.returncode == 0, res.stderr[-3000:]


def test_unreachable_address_is_one_line(tmp_path):
    res = _search(tmp_path, "none", 1, "--address", f"127.0.0.1:{_free_port()}")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "prunetune: error: cannot connect to the Ray cluster"
    ), res.stderr
    assert not (tmp_path / "s.db").exists()


def test_ray_client_start_up_failure_is_retried_and_other_errors_are_not():
    from prunetune.search._ray import _client_init

    class FakeRay:
        def __init__(self, errors):
            self.errors, self.inits, self.shutdowns = list(errors), 0, 0

        def init(self, **kw):
            self.inits += 1
            if self.errors:
                raise self.errors.pop(0)

        def shutdown(self):
            self.shutdowns += 1

    flaky = FakeRay([ConnectionError("Starting Ray client server failed. See ...err")])
    _client_init(flaky, "ray://127.0.0.1:1", {}, pause=0)
    assert (flaky.inits, flaky.shutdowns) == (2, 1)
    down = FakeRay([ConnectionError("Starting Ray client server failed")] * 3)
    with pytest.raises(ConnectionError):
        _client_init(down, "ray://127.0.0.1:1", {}, attempts=3, pause=0)
    assert down.inits == 3
    wrong = FakeRay([ConnectionError("Connection refused")])
    with pytest.raises(ConnectionError, match="refused"):
        _client_init(wrong, "ray://127.0.0.1:1", {}, pause=0)
    assert wrong.inits == 1


@pytest.fixture
def two_nodes():
    """A real two-node cluster on this machine: `ray start --head` at 127.0.0.2 and a second
    `ray start --address` at 127.0.0.3, one CPU each, with a token of the test's own.

    ``ray start`` joins a second node only with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, and then
    its servers listen on every interface, as any multi-machine cluster's do; Ray's token
    authentication keeps them to holders of the token.
    """
    token = secrets.token_hex(32)
    env = {
        **subprocess_env(),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_worker_niceness": "0",  # what the README asks of a cluster's nodes
    }
    gcs = _free_port()
    root = Path(tempfile.mkdtemp(prefix="ptray", dir="/tmp"))
    try:
        head = ("--head", f"--port={gcs}", f"--ray-client-server-port={_free_port()}")
        with _ray_node(
            root / "head",
            env,
            *head,
            "--node-ip-address=127.0.0.2",
            "--num-cpus=1",
            "--include-dashboard=false",
        ):
            with _ray_node(
                root / "worker",
                env,
                f"--address=127.0.0.2:{gcs}",
                "--node-ip-address=127.0.0.3",
                "--num-cpus=1",
            ):
                # the driver: this machine's defaults plus the cluster's token
                driver_env = {**subprocess_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
                yield {"gcs": f"127.0.0.2:{gcs}", "env": driver_env}
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # about 2-3 minutes on the 2-core machine: two nodes start, a search, an export
def test_a_two_node_cluster_loses_no_trial_and_exports_from_a_third_folder(two_nodes, tmp_path):
    reason = _postgres_reachable()
    if reason is not None:
        pytest.skip(f"PostgreSQL at {PG_URL} is not reachable ({reason})")
    study = f"cluster_{uuid.uuid4().hex[:12]}"
    driver, store, third = tmp_path / "driver", tmp_path / "shared-store", tmp_path / "third"
    driver.mkdir()
    third.mkdir()

    def run(cwd: Path, timeout: int, *args: str) -> None:
        res = subprocess.run(
            cli(*args),
            capture_output=True,
            text=True,
            env=two_nodes["env"],
            cwd=cwd,
            timeout=timeout,
        )
        assert res.returncode == 0, res.stderr[-3000:]

    # the Pareto-stage weights go to a folder every machine shares
    args = search_args(
        PG_URL,
        study,
        4,
        "--backend",
        "ray",
        "--workers",
        "2",
        "--address",
        two_nodes["gcs"],
        "--front-max",
        "1",
        "--artifacts",
        str(driver / "artifacts"),
        "--artifact-store",
        str(store),
    )
    try:
        run(driver, 900, *args)
        trials = load_study(PG_URL, study).get_trials(deepcopy=False)
        # no trial lost, failed or run twice: exactly the requested total, all finished
        assert len(trials) == 4, [t.state for t in trials]
        assert all(t.state in DONE for t in trials), [t.state for t in trials]
        # the two concurrent trials cannot share a one-CPU node: both nodes ran trials, each
        # with the one torch thread its node's CPU allows
        assert len({t.user_attrs["ray_node"] for t in trials}) == 2, [t.user_attrs for t in trials]
        assert {t.user_attrs["torch_threads"] for t in trials} == {1}
        tuned = set(finals(load_study(PG_URL, study)))
        assert tuned, "the Pareto stage fine-tuned no member"
        shutil.rmtree(driver)  # the driver's machine is gone; the shared store remains

        out = third / "export"
        run(
            third,
            600,
            "export",
            "--storage",
            PG_URL,
            "--study",
            study,
            "--out",
            str(out),
            "--front",
        )
        best = json.loads((out / "export.json").read_text())
        assert best["tuned"] is True and (out / "model.safetensors").stat().st_size > 0
        members = [json.loads(p.read_text()) for p in (out / "front").glob("trial_*/export.json")]
        assert members, "no front member exported"
        assert {m["trial"] for m in members if m["tuned"]} == tuned  # every stored weight file
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=study, storage=PG_URL)


@pytest.mark.parametrize(
    "nodes, workers, cpus",
    [
        ([2], 1, 2),  # one worker on one 2-core machine: both cores
        ([2], 2, 1),  # two workers share it: one core each
        ([1, 1], 2, 1),  # one worker per one-core node
        ([1, 1], 1, 1),  # no node has two cores: a trial never spans nodes
        ([8, 2], 2, 4),  # both on the 8-core node (4 + 4) beats 5 + a trial that never starts
        ([8, 2], 3, 2),  # 3 CPUs each fit only twice (8 // 3 + 2 // 3): 2 each
        ([4, 4, 4], 3, 4),
        ([2], 4, 1),  # more workers than CPUs: one each, as many at a time as fit
        ([0, 2.5], 1, 2),  # a node without CPUs is ignored; fractional CPUs round down
    ],
)
def test_each_trial_gets_the_largest_equal_cpu_share_that_fits(nodes, workers, cpus):
    assert cpus_per_trial(nodes, workers) == cpus


def test_a_worker_loads_the_evaluator_and_study_once_per_search(monkeypatch):
    import ray

    from prunetune.search import _ray, _study

    got, loaded = [], []
    monkeypatch.setattr(ray, "get", lambda ref: got.append(ref) or f"evaluator of {ref}")
    monkeypatch.setattr(_study, "load_study", lambda url, name: loaded.append(name) or name)
    monkeypatch.setattr(_ray, "_WORKER", {})
    first = {"key": "a", "evaluator": "ref-a", "storage": "sqlite://", "study_name": "s"}
    assert _ray._worker_state(first) == ("evaluator of ref-a", "s")
    assert _ray._worker_state(dict(first)) == ("evaluator of ref-a", "s")
    assert (got, loaded) == (["ref-a"], ["s"])  # the second trial reused both
    other = {**first, "key": "b", "evaluator": "ref-b", "study_name": "t"}
    assert _ray._worker_state(other) == ("evaluator of ref-b", "t")
    assert list(_ray._WORKER) == ["b"]  # a worker keeps one search only


def test_a_private_cluster_runs_its_workers_at_this_process_priority(monkeypatch):
    ray = pytest.importorskip("ray")
    from prunetune.search._ray import _connect

    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    _connect(None, 1, False)
    try:

        @ray.remote
        def niceness() -> int:
            return os.nice(0)

        # Ray's default is nice 15, which leaves the trials little CPU beside other work
        assert ray.get(niceness.remote()) == os.nice(0)
    finally:
        ray.shutdown()
    assert "RAY_worker_niceness" not in os.environ  # this process's environment is left as it was
