"""Ray backends on real clusters: nothing listens beyond loopback, and both address forms work.

A cluster of the test's own is started with ``ray start --head`` on free ports (6379 is
Redis's on the dev machines) and stopped afterwards.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from _helpers import DONE, TINY_CLI, cli, sqlite_url, stop, subprocess_env
from prunetune.search import load_study


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
    args = [
        "search",
        "--budget",
        "flops=50%",
        "--backend",
        "ray",
        "--storage",
        sqlite_url(tmp_path / "s.db"),
        "--study",
        "lo",
        "--n-trials",
        "2",
        *TINY_CLI,
        "--no-final",
    ]
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


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A one-node cluster started with `ray start --head` on free ports (loopback only)."""
    ray_bin = Path(os.sys.executable).with_name("ray")
    if not ray_bin.is_file():
        pytest.skip("the ray command is not installed beside this interpreter")
    gcs, client = _free_port(), _free_port()
    # a loaded 2-core machine can take longer than Ray's default 30 s to start the per-client
    # server behind ray:// (the proxy then answers "Initialization failure from server")
    env = {
        **subprocess_env(),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "180",
    }
    start = subprocess.run(
        [
            str(ray_bin),
            "start",
            "--head",
            f"--port={gcs}",
            f"--ray-client-server-port={client}",
            "--min-worker-port=20000",
            "--max-worker-port=20100",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert start.returncode == 0, start.stderr[-3000:]
    try:
        yield {"gcs": f"127.0.0.1:{gcs}", "client": f"ray://127.0.0.1:{client}"}
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, env=env, timeout=120)


def _search(tmp_path, study: str, n_trials: int, *extra: str) -> subprocess.CompletedProcess:
    args = [
        "search",
        "--budget",
        "flops=50%",
        "--backend",
        "ray",
        "--storage",
        sqlite_url(tmp_path / "s.db"),
        "--study",
        study,
        "--n-trials",
        str(n_trials),
        *TINY_CLI,
        "--front-max",
        "1",
        *extra,
    ]
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
