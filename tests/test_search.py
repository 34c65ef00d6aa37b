"""The search: spaces, budgets, both backends, reproducibility, resume, shared studies, export.

Every search here is tiny (a few trials of a few distillation steps on the embedded digits_vit),
so the file runs in a few minutes on two CPU cores.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import optuna
import pytest
import sqlalchemy
import torch
from optuna.trial import TrialState

import prunetune.search._evaluate as search_mod
from _helpers import (  # noqa: E402
    DONE,
    PG_URL,
    TINY,
    _postgres_reachable,
    assert_usage_error,
    cli,
    count_done,
    retried_from,
    run,
    search_args,
    sqlite_url,
    stop,
    subprocess_env,
    wait_for,
)
from prunetune import load_pruned
from prunetune.cli import main
from prunetune.config import PruningConfig
from prunetune.errors import ConfigError, InfeasibleConfigError, PrunetuneError
from prunetune.evaluators import ShortKDProxy, estimate_cost, evaluate_accuracy
from prunetune.models import ModelSpec, ViTArch
from prunetune.search import SearchSettings, TrialRecord, load_study, parse_budget, repair, search
from prunetune.search._budget import cost_of, minimum_config
from prunetune.spaces import PRESETS, Dim, build_space, load_space

SPEC = ModelSpec("digits_vit")
ARCH = ViTArch.from_spec(SPEC)
DENSE_MACS = estimate_cost(PruningConfig.dense(SPEC), ARCH).macs


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The model is tiny: one thread is faster than two that wait on each other on a busy
    machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def check_readable(study: optuna.Study, n_trials: int, fraction: float = 0.5) -> None:
    """What `prunetune report` and `export` rely on, for a finished study of ``n_trials``."""
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert count_done(study) == n_trials
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert {"settings", "dense", "budget"} <= set(study.user_attrs)
    limit = study.user_attrs["budget"]["limit"]
    assert study.user_attrs["budget"]["metric"] == "macs"
    assert limit == pytest.approx(fraction * DENSE_MACS)
    names = set(load_space(SPEC, "hybrid").names)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete, [t.user_attrs for t in trials]
    for t in complete:
        assert set(t.params) == names
        assert len(t.values) == 2 and 0.0 <= t.values[0] <= 1.0
        a = t.user_attrs
        config = PruningConfig.from_dict(a["config"])
        assert config.width_mode == "count"
        assert estimate_cost(config, ARCH).macs == a["macs"] == t.values[1]
        assert a["macs"] <= limit and a["constraint"][0] <= 0
        # the budget as Optuna's constraint, also in the list optuna-dashboard reads
        assert t.system_attrs["constraints"] == [a["constraint"][0]]
        assert a["constraint"][0] == pytest.approx(a["macs"] - limit)
        assert a["flops"] == 2 * a["macs"]
        rec = TrialRecord.of(t)
        assert [r.tier for r in rec.tiers] == ["a", "b"] and rec.stopped is None
        assert rec.tiers[0].proxy == "zero_shot" and rec.tiers[0].details["kl"] >= -1e-6
        assert rec.tiers[1].proxy == "short_kd" and rec.tiers[1].score == t.values[0]
        assert rec.macs == a["macs"] and rec.feasible
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert t.values is None
            rec = TrialRecord.of(t)
            assert rec.stopped.startswith(("infeasible", "stopped after tier a")), rec
            assert rec.stopped.startswith("infeasible") or not rec.tiers[-1].passed


def check_report(storage: str, study: str, out: Path, capsys, budget: str = "flops=50%") -> None:
    code, stdout, err = run(
        ["report", "--storage", storage, "--study", study, "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "pareto.png" in stdout
    png = (out / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    page = (out / "pareto.html").read_text()
    assert "data:image/png;base64," in page and "Plotly.newPlot(" in page
    md = (out / "report.md").read_text()
    assert f"study `{study}`" in md and f"`{budget}`" in md
    table = md.split("## Configurations", 1)[0]  # the trials table (per-block tables follow)
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    with_attrs = [t for t in load_study(storage, study).trials if "macs" in t.user_attrs]
    assert len(rows) == len(with_attrs) > 0


# --- spaces --------------------------------------------------------------------------------

EDGE_DIMS = [
    Dim("int_unit", "int", 1, 6),
    Dim("int_step", "int", 0, 10, 2),
    Dim("int_offset", "int", 1, 7, 3),  # grid 1, 4, 7: not multiples of the step
    Dim("int_single", "int", 3, 3),
    Dim("float_step", "float", 0.1, 1.0, 0.05),
    Dim("float_offset", "float", 0.12, 0.97, 0.05),
    Dim("float_coarse", "float", 0.3, 1.0, 0.35),
    Dim("float_cont", "float", 0.25, 0.75),
    Dim("cat", "categorical", choices=("a", "b", "c")),
]


def _on_grid(d: Dim, v) -> bool:
    if d.kind == "categorical":
        return v in d.choices
    if not d.low - 1e-9 <= v <= d.high + 1e-9:
        return False
    if d.step is None:
        return d.kind == "float" or float(v).is_integer()
    k = (v - d.low) / d.step
    return abs(k - round(k)) < 1e-6


@pytest.mark.parametrize("dim", EDGE_DIMS, ids=lambda d: d.name)
def test_optuna_and_ray_domains_agree(dim):
    dist = dim.to_optuna()
    if dim.kind == "categorical":
        assert list(dist.choices) == list(dim.choices)
    else:
        assert (dist.low, dist.high) == (dim.low, dim.high)  # inclusive at both ends
        assert dist.step == ((dim.step or 1) if dim.kind == "int" else dim.step)
        assert isinstance(dist, optuna.distributions.IntDistribution) == (dim.kind == "int")

    # Ray: many samples, all inside [low, high] and on Optuna's grid
    ray_vals = dim.to_ray().sample(size=3000, random_state=np.random.RandomState(0))
    bad = [v for v in ray_vals if not _on_grid(dim, v)]
    assert not bad, f"{dim.name}: Ray sampled values off the Optuna grid: {sorted(set(bad))[:5]}"
    if dim.kind == "int":
        assert all(isinstance(v, int | np.integer) for v in ray_vals)

    # Optuna: the same domain, sampled through its public ask interface
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    opt_vals = [study.ask({dim.name: dist}).params[dim.name] for _ in range(400)]
    assert all(_on_grid(dim, v) for v in opt_vals)

    if dim.kind == "float" and dim.step is None:
        assert min(ray_vals) < dim.low + 0.01 and max(ray_vals) > dim.high - 0.01
        return
    grid = dim.values()
    if dim.kind != "categorical":
        assert (grid[0], grid[-1]) == (dim.low, dim.high)

    def snap(vals):
        return {round(float(v), 6) if dim.kind == "float" else v for v in vals}

    # small discrete ranges: every value, both ends included, is reachable from both samplers
    assert snap(ray_vals) == snap(grid), dim.name
    assert snap(opt_vals) == snap(grid), dim.name


def test_hybrid_space_ray_domains_stay_in_bounds():
    space = load_space(SPEC, "hybrid")
    ray_space = space.to_ray()
    assert list(ray_space) == space.names
    rng = np.random.RandomState(1)
    for d in space.dims:
        vals = ray_space[d.name].sample(size=500, random_state=rng)
        assert all(_on_grid(d, v) for v in vals), d.name
        if d.kind == "int":
            assert set(vals) == set(d.values()), d.name  # heads 1..num_heads, both ends


def test_presets_have_expected_dimensions():
    depth = ARCH.depth
    heads = {f"heads_{i}" for i in range(depth)}
    mlp = {f"mlp_{i}" for i in range(depth)}
    drops = {f"drop_{i}" for i in range(depth // 2, depth)}
    tokens = {f"token_keep_{i}" for i in (2, 3, 4)} | {
        "token_mode"
    }  # about 1/4, 1/2, 3/4 of depth 6
    assert depth == 6
    expected = {
        "structured": {"criterion"} | heads | mlp | drops,
        "tokens": {"criterion"} | tokens,
        "hybrid": {"criterion"} | heads | mlp | drops | tokens,
    }
    assert set(PRESETS) == set(expected)
    for preset, names in expected.items():
        space = load_space(SPEC, preset)
        assert set(space.names) == names, preset
        assert space.preset == preset
    s = load_space(SPEC, "structured")
    assert (s["heads_0"].low, s["heads_0"].high, s["heads_0"].step) == (1, ARCH.num_heads, 1)
    assert s["drop_3"].choices == (False, True)
    t = load_space(SPEC, "tokens")
    assert (t["token_keep_2"].low, t["token_keep_2"].high) == (0.3, 1.0)
    # a sample of the lowest values is a valid config of the model
    cheapest = {d.name: d.values()[0] for d in load_space(SPEC, "hybrid").dims}
    config = load_space(SPEC, "hybrid").to_config(cheapest)
    config.check_fits(ARCH)
    assert [b.heads for b in config.blocks] == [1] * depth


def test_yaml_file_overrides_bounds(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "preset: structured\n"
        "criteria: [taylor, fisher]\n"
        "heads: {low: 2, high: 4}\n"
        "mlp_ratio: {low: 0.5, high: 1.0, step: 0.25}\n"
        "drop_blocks: [5]\n"
    )
    space = load_space(SPEC, str(path))
    assert space.preset == "structured"
    assert space["criterion"].choices == ("taylor", "fisher")
    assert space["heads_3"].values() == [2, 3, 4]
    assert space["mlp_0"].values() == [0.5, 0.75, 1.0]
    assert "drop_5" in space.names and "drop_3" not in space.names
    assert not [n for n in space.names if n.startswith("token")]
    ray_heads = space["heads_3"].to_ray().sample(size=500, random_state=np.random.RandomState(0))
    assert set(ray_heads) == {2, 3, 4}
    # a token file keeps the preset's other defaults
    path2 = tmp_path / "tok.yml"
    path2.write_text(
        "preset: tokens\ntoken_keep: {low: 0.5, high: 0.9, step: 0.1}\ntoken_blocks: [1, 5]\n"
    )
    space2 = load_space(SPEC, str(path2))
    assert set(space2.names) == {"criterion", "token_keep_1", "token_keep_5", "token_mode"}
    assert space2["token_keep_5"].values() == [0.5, 0.6, 0.7, 0.8, 0.9]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("headz: {low: 1}\n", "unknown search-space keys"),
        ("heads: {lo: 1, high: 3}\n", "mapping of low/high/step"),
        ("heads: {low: 0, high: 3}\n", "heads.low"),
        ("heads: {low: 2, high: 99}\n", "heads.high"),
        ("mlp_ratio: {low: 0.1, high: 1.0, step: 0.07}\n", "multiple of step"),
        ("token_blocks: [0]\n", "token_blocks"),
        ("criteria: [nope]\n", "unknown criteria"),
        ("preset: nope\n", "unknown preset"),
        ("heads: [1, 2\n", "malformed YAML"),
        ("- just\n- a list\n", "must hold a mapping"),
    ],
)
def test_bad_space_files_raise_config_error(tmp_path, text, needle):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_space(SPEC, str(path))


def test_unknown_space_errors():
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_space(SPEC, "nope")
    with pytest.raises(ConfigError, match="unknown preset"):
        build_space(SPEC, "wide")
    with pytest.raises(ConfigError, match="does not exist"):
        load_space(SPEC, "missing.yaml")
    with pytest.raises(ConfigError, match="multiple of step"):
        Dim("x", "float", 0.0, 1.0, 0.3)
    with pytest.raises(ConfigError, match="low <= high"):
        Dim("x", "int", 3, 1)


def test_cli_unknown_space_is_one_line_and_touches_no_study(tmp_path, capsys):
    db = tmp_path / "s.db"
    code, _, err = run(
        [
            "search",
            "--budget",
            "flops=50%",
            "--space",
            "nope",
            "--storage",
            sqlite_url(db),
            "--study",
            "s",
            "--quiet",
        ],
        capsys,
    )
    assert_usage_error(code, err, "unknown preset 'nope'")
    assert not db.exists() or not optuna.get_all_study_summaries(sqlite_url(db))


# --- budgets -------------------------------------------------------------------------------


def test_parse_budget_forms():
    b = parse_budget("flops=50%")
    assert (b.metric, b.limit, b.fraction) == ("macs", None, 0.5)
    assert b.resolve(DENSE_MACS).limit == pytest.approx(0.5 * DENSE_MACS)
    b = parse_budget("flops=0.2G")
    assert (b.metric, b.fraction) == ("macs", None) and b.limit == pytest.approx(
        0.1e9
    )  # MACs = FLOPs / 2
    assert parse_budget("macs=100M").limit == pytest.approx(100e6)
    assert parse_budget("macs=30%").fraction == pytest.approx(0.3)
    b = parse_budget("params=3M")
    assert (b.metric, b.limit) == ("params", pytest.approx(3e6))
    assert parse_budget("params=250k").limit == pytest.approx(250e3)
    b = parse_budget("latency=4ms")
    assert (b.metric, b.limit) == ("latency", 4.0)
    assert parse_budget(" latency = 2.5 ").limit == 2.5
    assert parse_budget("flops=12.5%").resolve(1000).limit == pytest.approx(125)
    assert "FLOPs" in parse_budget("flops=0.2G").describe()


MALFORMED = [
    "flops",
    "flops=",
    "flops=abc",
    "flop=50%",
    "flops=150%",
    "flops=0%",
    "flops=0G",
    "flops=-1G",
    "params=3ms",
    "latency=4G",
    "flops=50 %%",
    "macs=1e9",
    "",
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_budget_raises(text):
    with pytest.raises(PrunetuneError, match="budget|unit"):
        parse_budget(text)


@pytest.mark.parametrize("text", ["flops=abc", "params=3ms", "flops=150%", "latency=4G"])
def test_cli_malformed_budget_is_one_line(tmp_path, capsys, text):
    code, out, err = run(
        ["search", "--budget", text, "--storage", sqlite_url(tmp_path / "s.db"), "--quiet"], capsys
    )
    assert_usage_error(code, err, text)
    assert out == "" and not (tmp_path / "s.db").exists()
    with pytest.raises(PrunetuneError, match="malformed|must be|above|unit|latency"):
        search(text, storage=sqlite_url(tmp_path / "api.db"))


def test_repair_never_exceeds_budget_and_lands_close():
    rng = random.Random(0)
    for preset in ("structured", "tokens", "hybrid"):
        space = load_space(SPEC, preset)
        for text in ("flops=20%", "flops=50%", "params=40%", "macs=8M"):
            budget = parse_budget(text)
            budget = budget.resolve(cost_of(PruningConfig.dense(SPEC), ARCH, budget.metric))
            ratios, kept = [], 0
            for _ in range(150):
                config = space.to_config({d.name: rng.choice(d.values()) for d in space.dims})
                before = cost_of(config, ARCH, budget.metric)
                try:
                    fixed, repaired = repair(config, ARCH, budget)
                except InfeasibleConfigError:
                    assert cost_of(minimum_config(config, ARCH), ARCH, budget.metric) > budget.limit
                    continue
                value = cost_of(fixed, ARCH, budget.metric)
                assert value <= budget.limit, (preset, text, config)
                assert repaired == (before > budget.limit)
                if repaired:
                    fixed.check_fits(ARCH)
                    ratios.append(value / budget.limit)
                else:
                    assert fixed == config
                    kept += 1
            assert ratios or kept, (preset, text)
            if ratios:  # shrunk onto the boundary, not far below it
                assert min(ratios) > 0.7, (preset, text, min(ratios))
                assert float(np.median(ratios)) > 0.9, (preset, text, float(np.median(ratios)))


def test_search_builds_no_config_over_budget(tmp_path, monkeypatch):
    built: list[int] = []
    real_prune = search_mod.prune

    def spy(model, config, *args, **kwargs):
        built.append(estimate_cost(config, ARCH).macs)
        return real_prune(model, config, *args, **kwargs)

    monkeypatch.setattr(search_mod, "prune", spy)
    # tier b (a short fine-tune) is not what this test is about; keep the search quick
    monkeypatch.setattr(ShortKDProxy, "score", lambda self, model: 0.5)
    res = search(
        "flops=30%",
        progress=False,
        **{**TINY, "n_trials": 6},
        sampler="random",
        run_final=False,
        storage=sqlite_url(tmp_path / "b.db"),
        study="b",
        artifacts=str(tmp_path / "art"),
    )
    limit = 0.3 * DENSE_MACS
    assert res.budget.limit == pytest.approx(limit)
    trials = res.study.get_trials()
    assert count_done(res.study) == 6
    with_config = [t for t in trials if "config" in t.user_attrs]
    assert len(built) == len(with_config) > 0  # one build per candidate, after the budget check
    assert max(built) <= limit
    assert all(t.user_attrs["macs"] <= limit for t in with_config)
    repaired = [t.user_attrs["macs"] / limit for t in with_config if t.user_attrs["repaired"]]
    assert repaired and min(repaired) > 0.7  # random samples at 30 % are mostly over: shrunk to fit


def test_unreachable_budget_fails_before_any_trial(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a model was built for an unreachable budget")

    monkeypatch.setattr(search_mod, "prune", never)
    url = sqlite_url(tmp_path / "low.db")
    code, _, err = run(search_args(url, "low", 3, budget="flops=0.01%"), capsys)
    assert_usage_error(code, err, "below what any configuration", "flops=0.01%")
    assert not (
        tmp_path / "low.db"
    ).exists()  # a failed start leaves no storage, no study, no settings


def test_tier_gate():
    from prunetune.evaluators import gate_passes

    assert gate_passes(-5.0, [], keep=0.5, warmup=0)  # nothing to compare with yet: passes
    earlier = [-4.0, -3.0, -2.0, -1.0]
    assert gate_passes(-2.0, earlier, 0.5, 0) and not gate_passes(
        -2.5, earlier, 0.5, 0
    )  # better half
    assert gate_passes(-9.0, earlier, 0.5, warmup=5)  # still warming up
    assert gate_passes(-9.0, earlier, 1.0, 0)  # keep=1: everything goes on


# --- backends, reproducibility, report -----------------------------------------------------


@pytest.fixture(scope="module")
def optuna_run(tmp_path_factory):
    """One tiny in-process search with a Pareto stage, shared by the tests that read a study."""
    d = tmp_path_factory.mktemp("optuna-study")
    kw = {
        **TINY,
        "seed": 0,
        "storage": sqlite_url(d / "s.db"),
        "study": "opt",
        "artifacts": str(d / "art"),
    }
    res = search("flops=50%", progress=False, backend="optuna", **kw)
    return {"dir": d, "kw": kw, "result": res}


def test_rerunning_a_finished_study_runs_no_more_trials(optuna_run):
    kw = optuna_run["kw"]
    before = [(t.number, t.state) for t in load_study(kw["storage"], kw["study"]).trials]
    search("flops=50%", progress=False, backend="optuna", **kw)
    assert [(t.number, t.state) for t in load_study(kw["storage"], kw["study"]).trials] == before


def test_optuna_backend_study_is_readable(optuna_run, tmp_path, capsys):
    kw, res = optuna_run["kw"], optuna_run["result"]
    study = load_study(kw["storage"], kw["study"])
    check_readable(study, TINY["n_trials"])
    assert study.user_attrs["settings"]["budget"] == "flops=50%"
    assert res.front and res.best_trial is not None and res.best_config is not None
    assert res.best_config == PruningConfig.from_dict(res.best_trial.user_attrs["config"])
    assert 0 < len(res.finals) <= TINY["front_max"]
    for n, final in res.finals.items():
        assert study.user_attrs[f"final_{n}"] == final
        assert 0.0 <= final["val_accuracy"] <= 1.0 and final["epochs"] == TINY["final_epochs"]
        # the weights are an artifact of the study in the default store, named for the trial
        artifact_id = final["artifact_id"]
        metas = {m.artifact_id: m for m in optuna.artifacts.get_all_artifact_meta(study)}
        assert metas[artifact_id].filename == f"trial_{n}-model.safetensors"
        store = optuna.artifacts.FileSystemArtifactStore(Path(kw["artifacts"]) / "optuna-artifacts")
        with store.open_reader(artifact_id) as f:
            assert f.read(8)  # the safetensors header length: the file is there
    check_report(kw["storage"], kw["study"], tmp_path / "report", capsys)


def test_ray_backend_study_is_readable(tmp_path, capsys):
    pytest.importorskip("ray.tune")
    url = sqlite_url(tmp_path / "ray.db")
    # The first two candidates are fixed: one that no shrinking fits into 5 % (no block dropped,
    # every token kept) and one that fits. The first must end PRUNED, without stopping the run.
    space = load_space(SPEC, "hybrid")
    too_big = {f"drop_{i}": False for i in (3, 4, 5)} | {f"token_keep_{i}": 1.0 for i in (2, 3, 4)}
    fits = {f"drop_{i}": True for i in (3, 4, 5)} | {f"token_keep_{i}": 0.3 for i in (2, 3, 4)}
    lowest = {
        n: cost_of(minimum_config(space.to_config(p), ARCH), ARCH, "macs") / DENSE_MACS
        for n, p in (("too_big", too_big), ("fits", fits))
    }
    assert lowest["fits"] < 0.05 < lowest["too_big"], lowest
    pre = optuna.create_study(storage=url, study_name="ray", directions=["maximize", "minimize"])
    pre.enqueue_trial(too_big)
    pre.enqueue_trial(fits)

    res = search(
        "flops=5%",
        progress=False,
        backend="ray",
        workers=2,
        **TINY,
        run_final=False,
        storage=url,
        study="ray",
        artifacts=str(tmp_path / "art"),
    )
    study = load_study(url, "ray")
    check_readable(study, TINY["n_trials"], fraction=0.05)
    first, second = study.trials[:2]
    assert first.params.items() >= too_big.items() and second.params.items() >= fits.items()
    assert first.state == TrialState.PRUNED and "no scaling" in TrialRecord.of(first).stopped
    assert second.state == TrialState.COMPLETE
    assert res.finals == {}
    check_report(url, "ray", tmp_path / "report", capsys, budget="flops=5%")


def test_seeded_searches_are_reproducible(optuna_run, tmp_path):
    kw = {
        **optuna_run["kw"],
        "storage": sqlite_url(tmp_path / "again.db"),
        "artifacts": str(tmp_path / "art"),
        "run_final": False,
    }
    again = search("flops=50%", progress=False, **kw).study
    first = load_study(optuna_run["kw"]["storage"], optuna_run["kw"]["study"])

    def summary(study):
        return [
            (t.number, t.state, t.params, t.values, t.user_attrs.get("config"))
            for t in study.trials
        ]

    assert summary(again) == summary(first)


# --- resume after a kill -------------------------------------------------------------------


def test_grace_period_must_outlast_the_heartbeat(tmp_path):
    with pytest.raises(
        PrunetuneError, match=r"grace_period=5 s would mark running trials dead.*more than 5 s"
    ):
        search(
            "flops=50%",
            progress=False,
            **TINY,
            storage=sqlite_url(tmp_path / "g.db"),
            grace_period=5,
        )


def test_resume_after_kill_retries_the_killed_trial(tmp_path, capsys):
    db = tmp_path / "resume.db"
    url = sqlite_url(db)
    n_trials = 3
    names = set(load_space(SPEC, "hybrid").names)
    args = search_args(url, "s", n_trials, "--no-final")
    proc = subprocess.Popen(
        cli(*args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )

    def running_trial():
        if not db.exists():
            return None
        try:
            study = load_study(url, "s")
        except (PrunetuneError, sqlalchemy.exc.SQLAlchemyError):  # not created yet
            return None
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        # once every parameter is suggested, the trial is evaluating
        return next((t.number for t in running if set(t.params) == names), None)

    try:
        killed = wait_for(running_trial, 180, "a RUNNING trial", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    before = {t.number: t for t in load_study(url, "s").trials}
    assert before[killed].state == TrialState.RUNNING  # nobody has noticed yet

    # restart in-process with a short grace period: the dead trial's heartbeat is stale by now
    time.sleep(6.5)
    search(
        "flops=50%",
        progress=False,
        **{**TINY, "n_trials": n_trials},
        run_final=False,
        storage=url,
        study="s",
        grace_period=6,
        artifacts=str(tmp_path / "art"),
    )
    trials = load_study(url, "s").trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) and numbers == sorted(numbers)
    by_number = {t.number: t for t in trials}
    assert by_number[killed].state == TrialState.FAIL
    retries = [t for t in trials if retried_from(t) == killed]
    assert len(retries) == 1
    assert retries[0].state in DONE and retries[0].params == before[killed].params
    assert count_done(load_study(url, "s")) == n_trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for n, t in before.items():  # finished trials are kept as they were
        if t.state in DONE:
            assert by_number[n].state == t.state and by_number[n].values == t.values

    code, _, err = run(search_args(url, "s", n_trials, budget="flops=40%"), capsys)
    assert_usage_error(code, err, "budget='flops=50%'", "budget='flops=40%'", "--study")
    assert len(load_study(url, "s").trials) == len(trials)


# --- shared PostgreSQL study ---------------------------------------------------------------


def test_two_workers_share_a_postgres_study(tmp_path):
    why = _postgres_reachable()
    if why:
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable ({why})")
    name = f"prunetune-test-{uuid.uuid4().hex[:12]}"
    n_trials = 4
    args = search_args(
        PG_URL, name, n_trials, "--front-max", "1", "--artifacts", str(tmp_path / "art")
    )
    procs = []
    try:
        for extra in ([], ["--no-final"]):
            procs.append(
                subprocess.Popen(
                    cli(*args, *extra),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=subprocess_env(),
                )
            )
        for p in procs:
            out, err = p.communicate(timeout=400)
            assert p.returncode == 0, err[-3000:]
            assert f"study {name}" in out
        study = load_study(PG_URL, name)
        trials = study.trials
        numbers = [t.number for t in trials]
        assert sorted(numbers) == list(range(len(trials)))  # every number once
        states = Counter(t.state for t in trials)
        assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == n_trials  # a study total
        assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0
        # two workers with the same --seed must not draw the same candidates
        keys = Counter(
            json.dumps(t.params, sort_keys=True) for t in trials if retried_from(t) is None
        )
        assert max(keys.values()) == 1, [k for k, v in keys.items() if v > 1]
        assert any(
            k.startswith("final_") for k in study.user_attrs
        )  # the worker without --no-final
    finally:
        for p in procs:
            stop(p)
        try:
            optuna.delete_study(study_name=name, storage=PG_URL)
        except KeyError:
            pass


# --- dashboard -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study(optuna_run, capsys):
    url, name = optuna_run["kw"]["storage"], optuna_run["kw"]["study"]
    port = _free_port()
    proc = subprocess.Popen(
        cli("dashboard", "--storage", url, "--study", name, "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({})
    )  # loopback, never via a proxy

    def studies():
        try:
            with opener.open(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                return json.load(r)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    try:
        data = wait_for(studies, 90, "the dashboard to answer", proc)
        assert name in [s["study_name"] for s in data["study_summaries"]]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            stop(proc)
    code, _, err = run(
        ["dashboard", "--storage", url, "--study", "nope", "--port", str(port)], capsys
    )
    assert_usage_error(code, err, "no study named 'nope'", "'opt'")


# --- export --------------------------------------------------------------------------------


def test_export_round_trip_reproduces_the_model(
    optuna_run, tmp_path, capsys, monkeypatch, digits_base
):
    url, name = optuna_run["kw"]["storage"], optuna_run["kw"]["study"]
    d, e = tmp_path / "best", tmp_path / "repro"
    code, out, err = run(["export", "--storage", url, "--study", name, "--out", str(d)], capsys)
    assert code == 0, err
    for f in ("config.json", "model.safetensors", "export.json"):
        assert (d / f).is_file(), f
    info = json.loads((d / "export.json").read_text())
    best = optuna_run["result"].best_trial
    assert info["trial"] == best.number and info["macs"] == best.user_attrs["macs"]
    assert info["final"] is not None and info["weights"].startswith("fine-tuned")
    assert info["macs"] <= info["budget"]["limit"]
    printed = [
        line.removeprefix("reproduce: ")
        for line in out.splitlines()
        if line.startswith("reproduce: ")
    ]
    assert printed == [info["reproduce"]]

    exported = load_pruned(d).eval()
    val = digits_base.val_batches()
    acc = evaluate_accuracy(exported, val).accuracy
    assert acc == pytest.approx(info["final"]["val_accuracy"])

    argv = shlex.split(info["reproduce"].replace("--out DIR", f"--out {shlex.quote(str(e))}"))
    assert argv[:2] == ["prunetune", "prune"]
    monkeypatch.chdir(d)  # the command names config.json beside export.json
    code, _, err = run(argv[1:], capsys)
    assert code == 0, err
    assert PruningConfig.load(e / "config.json") == PruningConfig.load(d / "config.json")
    reproduced = load_pruned(e).eval()
    x = torch.cat([xb for xb, _ in val])
    with torch.no_grad():
        torch.testing.assert_close(reproduced(x), exported(x), atol=1e-4, rtol=0)


def test_export_for_deployment_from_another_folder(
    optuna_run, tmp_path, capsys, monkeypatch, digits_base
):
    """--format onnx,pt2 beside the weights of every exported member, run here on real images."""
    pytest.importorskip("onnxruntime")
    from prunetune.deploy import onnx_session

    url, name = optuna_run["kw"]["storage"], optuna_run["kw"]["study"]
    monkeypatch.chdir(tmp_path)
    argv = ["export", "--storage", url, "--study", name, "--out", "dep", "--front"]
    code, out, err = run([*argv, "--format", "onnx,pt2"], capsys)
    assert code == 0, err
    assert "wrote dep/model.onnx: max abs diff vs PyTorch" in out
    members = [tmp_path / "dep", *sorted((tmp_path / "dep" / "front").iterdir())]
    x = torch.cat([xb for xb, _ in digits_base.val_batches()])
    for d in members:
        info = json.loads((d / "export.json").read_text())
        assert set(info["deploy"]) == {"onnx", "pt2"}
        assert all(v["max_abs_diff"] <= 1e-4 for v in info["deploy"].values())
        card = json.loads((d / "config.json").read_text())
        assert card["pretrained_cfg"]["input_size"] == [1, 16, 16]
        assert card["pretrained_cfg"]["mean"] == [0.5] and card["num_classes"] == 10
        assert len(card["block_shapes"]) == digits_base.arch.depth
        model = load_pruned(d).eval()  # the card does not stop the config loading
        sess = onnx_session(d / "model.onnx")
        logits = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
        with torch.no_grad():
            ref = model(x)
            torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)
            prog = torch.export.load(str(d / "model.pt2")).module()
            torch.testing.assert_close(prog(x), ref, atol=1e-4, rtol=0)
        if info["final"]:  # the deployed model scores what the Pareto stage measured
            y = torch.cat([yb for _, yb in digits_base.val_batches()])
            acc = (logits.argmax(1) == y).float().mean().item()
            assert acc == pytest.approx(info["final"]["val_accuracy"])


def test_export_format_errors_are_one_line_and_write_nothing(optuna_run, tmp_path, capsys):
    import sys

    url, name = optuna_run["kw"]["storage"], optuna_run["kw"]["study"]
    argv = ["export", "--storage", url, "--study", name, "--out", str(tmp_path / "x")]
    code, _, err = run([*argv, "--format", "tflite"], capsys)
    assert_usage_error(code, err, "unknown export format 'tflite'", "onnx")
    saved = sys.modules.get("onnxruntime")
    sys.modules["onnxruntime"] = None  # import fails as when it is not installed
    try:
        code, _, err = run([*argv, "--format", "onnx"], capsys)
    finally:
        if saved is None:
            del sys.modules["onnxruntime"]
        else:
            sys.modules["onnxruntime"] = saved
    assert_usage_error(code, err, "needs onnxruntime", "prunetune[deploy]")
    assert not (tmp_path / "x").exists()


def test_export_over_an_export_replaces_it_whole(optuna_run, tmp_path, capsys):
    url, name = optuna_run["kw"]["storage"], optuna_run["kw"]["study"]
    d = tmp_path / "best"
    argv = ["export", "--storage", url, "--study", name, "--out", str(d), "--front"]
    assert run(argv, capsys)[0] == 0
    first = {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    (d / "front" / "stale.txt").write_text("from an older export")
    (d / "notes.txt").write_text("the user's own file")
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, "not empty", "--overwrite")
    code, _, err = run([*argv, "--overwrite"], capsys)
    assert code == 0, err
    again = {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert (
        again.pop(Path("notes.txt")) == b"the user's own file"
    )  # entries we do not write are kept
    assert again == first  # front/ replaced as a whole: no stale member left
    modes = {p.name: p.stat().st_mode & 0o777 for p in d.rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o666 & ~_umask()}, modes
    assert not list(tmp_path.glob(".best.*"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_export_without_a_result_is_one_line(tmp_path, capsys):
    url = sqlite_url(tmp_path / "empty.db")
    study = optuna.create_study(
        storage=url, study_name="empty", directions=["maximize", "minimize"]
    )
    code, _, err = run(
        ["export", "--storage", url, "--study", "empty", "--out", str(tmp_path / "x")], capsys
    )
    assert_usage_error(code, err, "not made by prunetune search")
    study.set_user_attr("settings", asdict(SearchSettings(storage=url, study="empty")))
    code, _, err = run(
        ["export", "--storage", url, "--study", "empty", "--out", str(tmp_path / "x")], capsys
    )
    assert_usage_error(code, err, "is not finished", "0 of 24 trials finished", "--partial")
    code, _, err = run(
        ["export", "--storage", url, "--study", "empty", "--out", str(tmp_path / "x"), "--partial"],
        capsys,
    )
    assert_usage_error(code, err, "no completed under-budget trial")
    code, _, err = run(
        ["export", "--storage", url, "--study", "other", "--out", str(tmp_path / "x")], capsys
    )
    assert_usage_error(code, err, "no study named 'other'", "'empty'")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "url,needle",
    [
        ("postgresql://postgres@127.0.0.1:1/test", "cannot open storage"),
        ("not-a-url", "is not a URL"),
    ],
)
def test_unreachable_storage_is_a_usage_error(tmp_path, capsys, url, needle):

    code = main(["search", "--budget", "flops=50%", "--storage", url, "--quiet"])
    err = capsys.readouterr().err
    assert (
        code == 2
        and len(err.strip().splitlines()) == 1
        and needle in err
        and "Traceback" not in err
    )
