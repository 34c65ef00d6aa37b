"""Helpers shared by the search and reliability tests: tiny settings, CLI runs, processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from prunetune.cli import main
from prunetune.search import default_tiers

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"

#: Settings of every in-process search: a few trials, a few tier-b steps, a short Pareto stage.
TINY = {
    "n_trials": 3,
    "tiers": default_tiers(steps=5),
    "calib_samples": 64,
    "batch_size": 16,
    "final_epochs": 0.1,
    "front_max": 2,
    "device": "cpu",
    "start": (),  # the starting points have their own tests (test_start.py); this keeps it fast
}
#: The same for ``prunetune search`` (its identity settings match TINY, so studies can be shared).
TINY_CLI = [
    "--tier-b-steps",
    "5",
    "--calib-samples",
    "64",
    "--batch-size",
    "16",
    "--final-epochs",
    "0.1",
    "--front-max",
    "2",
    "--device",
    "cpu",
    "--start",
    "none",
    "--quiet",
]


def search_args(
    storage: str, study: str, n_trials: int, *extra: str, budget: str = "flops=50%"
) -> list[str]:
    """`prunetune search` arguments for a tiny search (TINY_CLI) on ``storage``/``study``;
    ``extra`` flags follow."""
    return [
        "search",
        "--budget",
        budget,
        "--storage",
        storage,
        "--study",
        study,
        "--n-trials",
        str(n_trials),
        *TINY_CLI,
        *extra,
    ]


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_usage_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunetune: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def cli(*args: str) -> list[str]:
    """The installed ``prunetune`` script beside this interpreter (else ``python -m``)."""
    exe = Path(sys.executable).with_name("prunetune")
    return [str(exe), *args] if exe.is_file() else [sys.executable, "-m", "prunetune.cli", *args]


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def subprocess_env() -> dict[str, str]:
    """One torch thread per child: the children share two cores with each other and with pytest."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def count_done(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=DONE))


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(
                f"process exited ({proc.returncode}) while waiting for {what}: {err[-2000:]}"
            )
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def retried_from(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the stale trial that ``trial`` retries (optuna's heartbeat callback)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def _postgres_reachable() -> str | None:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as e:  # driver missing, server down, auth refused, ...
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None
