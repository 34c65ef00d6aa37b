"""Reliability under concurrency and failure: shared PostgreSQL studies, study totals, kills.

The PostgreSQL tests make a database of their own (dropped afterwards), so they also run on
a server whose databases already hold Optuna's tables.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from prunetune.search import load_study

from _helpers import PG_URL, TINY_CLI, _postgres_reachable, cli, stop, subprocess_env


@contextmanager
def fresh_postgres_database():
    """A new, empty PostgreSQL database on the local server; dropped on exit."""
    why = _postgres_reachable()
    if why:
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable ({why})")
    name = f"prunetune_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


_OPEN_TOGETHER = """
import sys
from prunetune.search._study import open_study
print("ready", flush=True)
sys.stdin.readline()  # the go signal: every process opens the study at the same instant
study = open_study(sys.argv[1], sys.argv[2], None)
print("opened", study.study_name, flush=True)
"""


def test_processes_starting_together_on_a_new_postgres_database():
    """Four processes create Optuna's tables and one study on an empty database at once."""
    with fresh_postgres_database() as url:
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_TOGETHER, url, "shared"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
                 for _ in range(4)]
        try:
            for p in procs:  # imports done everywhere before anyone touches the database
                assert p.stdout.readline().strip() == "ready", p.stderr.read()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            for p in procs:
                out, err = p.communicate(timeout=120)
                assert p.returncode == 0, err[-2000:]
                assert "opened shared" in out
        finally:
            for p in procs:
                stop(p)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from studies")).scalar() == 1
        engine.dispose()


def test_three_workers_run_exactly_the_study_total(tmp_path):
    """``--n-trials`` is a study total: three workers on one new database run it exactly."""
    n_trials = 6
    with fresh_postgres_database() as url:
        args = ["search", "--budget", "flops=50%", "--storage", url, "--study", "total", "--n-trials", str(n_trials),
                *TINY_CLI, "--front-max", "1", "--artifacts", str(tmp_path / "art")]
        procs = [subprocess.Popen(cli(*args, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=subprocess_env())
                 for extra in ([], ["--no-final"], ["--no-final"])]
        try:
            for p in procs:
                out, err = p.communicate(timeout=600)
                assert p.returncode == 0, err[-3000:]
        finally:
            for p in procs:
                stop(p)
        study = load_study(url, "total")
        states = Counter(t.state for t in study.trials)
        assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == n_trials, states
        assert states[TrialState.RUNNING] == states[TrialState.WAITING] == states[TrialState.FAIL] == 0, states
        assert sorted(t.number for t in study.trials) == list(range(n_trials))
        # the worker with the Pareto stage waited for the others' trials before starting it
        finals = [k for k in study.user_attrs if k.startswith("final_")]
        assert len(finals) == 1
        study.trials  # noqa: B018  (readable after every worker has gone)
        load_study(url, "total").get_trials(deepcopy=False)
