"""Crash suite: kill -9 at every stage of a search and of an export, then resume.

Each killed run is resumed by the same command; the study must end with the requested total,
no trial lost or duplicated, the Pareto stage complete, and the export byte-identical to the
one of an uninterrupted run. The kills come from ``PRUNETUNE_FAULT`` (prunetune/_faults.py):
SIGKILL sent by the process to itself at a named point, so each case hits its stage exactly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from _helpers import DONE, cli, retried_from, sqlite_url, subprocess_env
from prunetune.search import load_study

N_TRIALS = 4
GRACE = 6  # seconds before a silent trial counts as dead (the shortest the heartbeat allows)
SETTINGS = {
    "n_trials": N_TRIALS,
    "tiers": [
        {"proxy": "zero_shot", "keep": 0.5, "warmup": 4},
        {"proxy": "short_kd", "options": {"steps": 5}},
    ],
    "calib_samples": 64,
    "batch_size": 16,
    "final_epochs": 0.1,
    "front_max": 2,
    "device": "cpu",
    "seed": 0,
    "grace_period": GRACE,
    "study": "crash",
}
_SEARCH = "import json, sys, prunetune; prunetune.search(progress=False, **json.loads(sys.argv[1]))"


def _search(d: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    kw = {**SETTINGS, "storage": sqlite_url(d / "s.db"), "artifacts": str(d / "art")}
    env = subprocess_env()
    env.pop("PRUNETUNE_FAULT", None)
    if fault:
        env["PRUNETUNE_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-c", _SEARCH, json.dumps(kw)],
        capture_output=True,
        text=True,
        env=env,
        cwd=d,
        timeout=600,
    )


def _export(
    d: Path, out: Path, fault: str | None = None, *extra: str
) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.pop("PRUNETUNE_FAULT", None)
    if fault:
        env["PRUNETUNE_FAULT"] = fault
    return subprocess.run(
        cli(
            "export",
            "--storage",
            sqlite_url(d / "s.db"),
            "--study",
            "crash",
            "--out",
            str(out),
            "--front",
            *extra,
        ),
        capture_output=True,
        text=True,
        env=env,
        cwd=d,
        timeout=600,
    )


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _comparable(files: dict[str, bytes]) -> dict[str, object]:
    """An export in a form that compares across runs.

    Weights compare tensor by tensor, bit for bit, with their metadata as a mapping (the
    safetensors writer orders metadata keys differently from one process to the next).
    Trial numbers and paths are left out: a killed trial keeps its number as a failed trial
    and its retry gets the next one, so a resumed study numbers the same candidates
    differently. Front members are keyed by their configuration instead.
    """
    from safetensors.torch import load

    def norm(name: str, data: bytes):
        if name.endswith(".safetensors"):
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
            tensors = {
                k: (str(v.dtype), tuple(v.shape), v.numpy().tobytes())
                for k, v in load(data).items()
            }
            return header.get("__metadata__"), tensors
        if name.endswith("export.json"):
            info = json.loads(data)
            for key in ("reproduce", "trial", "artifact"):  # "artifact": a new id per upload
                info.pop(key, None)
            if info.get("final"):
                info["final"] = {k: v for k, v in info["final"].items() if k != "trial"}
            return info
        return data

    best: dict[str, object] = {}
    front: dict[bytes, dict[str, object]] = {}
    for name, data in files.items():
        parts = name.split("/")
        if parts[0] == "front":
            member = front.setdefault(files["/".join(parts[:2] + ["config.json"])], {})
            member[parts[-1]] = norm(name, data)
        else:
            best[name] = norm(name, data)
    return {"best": best, "front": [front[k] for k in sorted(front)]}


def _finals(study) -> list[tuple[str, float]]:
    """The Pareto-stage results by candidate: (params, final val accuracy)."""
    by_number = {t.number: t for t in study.trials}
    return sorted(
        (
            json.dumps(by_number[int(k.removeprefix("final_"))].params, sort_keys=True),
            v["val_accuracy"],
        )
        for k, v in study.user_attrs.items()
        if k.startswith("final_")
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run and its export."""
    d = tmp_path_factory.mktemp("reference")
    res = _search(d)
    assert res.returncode == 0, res.stderr[-3000:]
    exp = _export(d, d / "out")
    assert exp.returncode == 0, exp.stderr[-3000:]
    study = load_study(sqlite_url(d / "s.db"), "crash")
    return {
        "dir": d,
        "files": _comparable(_files(d / "out")),
        "params": _finished_params(study),
        "finals": _finals(study),
    }


def _finished_params(study) -> list[str]:
    return sorted(
        json.dumps(t.params, sort_keys=True) for t in study.get_trials(deepcopy=False, states=DONE)
    )


def _check_study(d: Path, reference: dict) -> None:
    study = load_study(sqlite_url(d / "s.db"), "crash")
    trials = study.trials
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == N_TRIALS, (
        states
    )  # the requested total
    assert states[TrialState.RUNNING] == states[TrialState.WAITING] == 0, states
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    retries = Counter(retried_from(t) for t in trials if retried_from(t) is not None)
    assert sorted(retries) == failed and set(retries.values()) <= {
        1
    }  # each killed trial retried once
    assert _finished_params(study) == reference["params"]  # none lost, none run twice
    assert (
        _finals(study) == reference["finals"]
    )  # the same front members, tuned to the same accuracy


SLOW = pytest.mark.slow  # the nightly run (`pytest -m slow`) adds these kill points


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("study-created", marks=SLOW),
        pytest.param("tier-a:2", marks=SLOW),
        "tier-b:3",
        "pareto:1",
        pytest.param("pareto:2", marks=SLOW),
    ],
)
def test_kill_during_search_then_resume(reference, tmp_path, fault):
    killed = _search(tmp_path, fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    study = load_study(sqlite_url(tmp_path / "s.db"), "crash")
    tuned = {k: v for k, v in study.user_attrs.items() if k.startswith("final_")}
    if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        time.sleep(GRACE + 0.5)  # until the dead trial's heartbeat is stale
    resumed = _search(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _check_study(tmp_path, reference)
    after = load_study(sqlite_url(tmp_path / "s.db"), "crash").user_attrs
    # members tuned before the kill keep their result and their uploaded weights (artifact_id)
    assert {k: after[k] for k in tuned} == tuned
    exp = _export(tmp_path, tmp_path / "out")
    assert exp.returncode == 0, exp.stderr[-3000:]
    assert _comparable(_files(tmp_path / "out")) == reference["files"]


@pytest.mark.parametrize("over_old", [False, True])
def test_kill_during_export_then_export_again(reference, tmp_path, over_old):
    d = reference["dir"]
    out = tmp_path / "out"
    extra = ()
    if over_old:
        out.mkdir()
        (out / "config.json").write_text("an older export's config")
        (out / "front").mkdir()
        (out / "front" / "old.txt").write_text("an older front member")
        extra = ("--overwrite",)
    killed = _export(d, out, "export:2", *extra)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert list(tmp_path.glob(".out.*"))  # what the kill left behind
    again = _export(d, out, None, *extra)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _comparable(_files(out)) == reference["files"]
    assert not list(tmp_path.glob(".out.*"))  # leftovers cleaned
