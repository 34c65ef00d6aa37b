"""Reliability under concurrency and failure: shared PostgreSQL studies, study totals, kills.

The PostgreSQL tests make a database of their own (dropped afterwards), so they also run on
a server whose databases already hold Optuna's tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from _helpers import PG_URL, _postgres_reachable, cli, search_args, stop, subprocess_env
from prunetune._io import atomic_dir, prepare_out
from prunetune.errors import PrunetuneError
from prunetune.search import load_study


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
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_TOGETHER, url, "shared"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=subprocess_env(),
            )
            for _ in range(4)
        ]
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
        args = search_args(
            url, "total", n_trials, "--front-max", "1", "--artifacts", str(tmp_path / "art")
        )
        procs = [
            subprocess.Popen(
                cli(*args, *extra),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=subprocess_env(),
            )
            for extra in ([], ["--no-final"], ["--no-final"])
        ]
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
        assert (
            states[TrialState.RUNNING] == states[TrialState.WAITING] == states[TrialState.FAIL] == 0
        ), states
        assert sorted(t.number for t in study.trials) == list(range(n_trials))
        # the worker with the Pareto stage waited for the others' trials before starting it
        finals = [k for k in study.user_attrs if k.startswith("final_")]
        assert len(finals) == 1
        study.trials  # noqa: B018  (readable after every worker has gone)
        load_study(url, "total").get_trials(deepcopy=False)


# --- atomic outputs --------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _tree(d):
    return {str(p.relative_to(d)): p.read_text() for p in sorted(d.rglob("*")) if p.is_file()}


def test_failed_swap_restores_the_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with atomic_dir(out) as t:
        (t / "a.txt").write_text("old a")
        (t / "front").mkdir()
        (t / "front" / "m.txt").write_text("old m")
        (t / "z.txt").write_text("old z")
    before = _tree(out)
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # a.txt aside, a.txt in, front aside, then the new front fails
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="No space"):
        with atomic_dir(out) as t:
            (t / "a.txt").write_text("new a")
            (t / "front").mkdir()
            (t / "front" / "n.txt").write_text("new n")
            (t / "z.txt").write_text("new z")
    monkeypatch.setattr(os, "replace", real)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_killed_writer_leftovers_are_cleaned_and_rolled_back(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as t:
        (t / "config.json").write_text("old config")
        (t / "model.safetensors").write_text("old weights")
    pid = _dead_pid()
    # what a kill in the middle of a swap leaves: weights already new, config still old
    tmp, old = tmp_path / f".out.{pid}.deadbeef.tmp", tmp_path / f".out.{pid}.deadbeef.old"
    tmp.mkdir()
    (tmp / "config.json").write_text("new config")
    (tmp / "export.json").write_text("new export")
    old.mkdir()
    (old / ".swap-manifest").write_text("config.json\nexport.json\nfront\nmodel.safetensors\n")
    (out / "front").mkdir()  # new: it had no old version
    (out / "front" / "m.txt").write_text("new member")
    os.replace(out / "model.safetensors", old / "model.safetensors")
    (out / "model.safetensors").write_text("new weights")
    live = tmp_path / f".out.{os.getppid()}.cafecafe.tmp"  # a running writer's folder is left alone
    live.mkdir()
    prepare_out(out, overwrite=True)
    assert _tree(out) == {"config.json": "old config", "model.safetensors": "old weights"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name])


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda p: p.write_text("x"), "is a file"),
        (lambda p: (p.parent / "f").write_text("x"), "which is a file"),
    ],
)
def test_out_that_is_or_lies_under_a_file(tmp_path, make, needle):
    target = tmp_path / "o"
    make(target)
    out = target if target.exists() else tmp_path / "f" / "sub"
    with pytest.raises(PrunetuneError, match=needle):
        prepare_out(out)
