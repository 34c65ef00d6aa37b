"""Informed starting points (uniform, sensitivity, fastnas) and the CPU budget of a search."""

from __future__ import annotations

import time

import pytest

from _helpers import TINY, sqlite_url
from prunetune import PrunetuneError
from prunetune.cli import main
from prunetune.search import (
    Evaluator,
    SearchSettings,
    TrialRecord,
    search,
    sensitivity_params,
    slim_params,
    starting_points,
    uniform_params,
)
from prunetune.search._budget import cost_of
from prunetune.search._start import sensitivity_table


@pytest.fixture(scope="module")
def ev10():
    return Evaluator(SearchSettings(budget="flops=10%", **{**TINY, "start": ()}))


@pytest.fixture(scope="module")
def ev30():
    return Evaluator(SearchSettings(budget="flops=30%", **{**TINY, "start": ()}))


def _cost(ev, params):
    config, _ = ev.candidate(params)
    return config, cost_of(config, ev.arch, ev.budget.metric)


def test_uniform_start_is_the_same_shape_in_every_block_at_the_budget(ev30):
    params = uniform_params(ev30.space)
    config, cost = _cost(ev30, params)
    assert cost <= ev30.budget.limit and cost > 0.97 * ev30.budget.limit
    shapes = {(b.heads, b.mlp, b.keep, b.token_keep) for b in config.blocks}
    assert len(shapes) == 1, shapes  # uniform: every block alike, none dropped, all tokens
    assert params["criterion"] == "magnitude_l2"


def test_sensitivity_table_scores_one_dimension_at_a_time(ev30):
    base, table = sensitivity_table(ev30)
    dense_score = table["heads_0"][-1][1]
    for name, row in table.items():
        assert row[-1][0] == base[name]  # dense value last, scored like the dense model
        assert row[-1][1] == dense_score
        assert len(row) >= 2
    # the dense model agrees with itself: no choice scores above it by more than noise
    assert all(s <= dense_score + 1e-6 for row in table.values() for _, s in row)
    assert {n.split("_")[0] for n in table} >= {"heads", "mlp", "drop", "token"}
    widths = sensitivity_table(ev30, widths_only=True)[1]
    assert set(widths) == {n for n in table if n.startswith(("heads_", "mlp_"))}


def test_sensitivity_start_fits_the_budget_and_beats_uniform_zero_shot(ev10):
    params = sensitivity_params(ev10)
    assert params is not None
    config, cost = _cost(ev10, params)
    assert cost <= ev10.budget.limit
    proxy = ev10.tiers.proxies[0]
    from prunetune.pruners import prune

    def zero_shot(p):
        c, _ = ev10.candidate(p)
        return proxy.score(prune(ev10.base.model, c, scores=ev10.scores(c.criterion)))

    assert zero_shot(params) > zero_shot(uniform_params(ev10.space))


def test_fastnas_start_prunes_widths_only_and_cannot_reach_10_percent(ev10, ev30):
    assert sensitivity_params(ev10, widths_only=True) is None  # widths alone stop near 13 %
    params = sensitivity_params(ev30, widths_only=True)
    config, cost = _cost(ev30, params)
    assert cost <= ev30.budget.limit
    assert all(b.keep and b.token_keep == 1.0 for b in config.blocks)
    assert any(b.heads < ev30.arch.num_heads or b.mlp < ev30.arch.mlp_hidden for b in config.blocks)


def test_slim_start_is_the_lowest_global_mask_threshold_that_fits(ev30):
    """Bisection against exhaustive search: of all thresholds (every mask value), the lowest
    whose per-block cut fits the budget gives the slim start."""
    import torch

    from prunetune.search._start import _at_least

    params = slim_params(ev30)
    scores = ev30.scores("learned_mask")
    dims = {d.name: d for d in ev30.space.dims}
    M = ev30.arch.mlp_hidden

    def pick(t):
        out = dict(params)
        for i in range(ev30.arch.depth):
            h = max(1, int((scores.heads[i] >= t).sum()))
            m = max(1, int((scores.mlp[i] >= t).sum()))
            out[f"heads_{i}"] = int(_at_least(dims[f"heads_{i}"], h))
            out[f"mlp_{i}"] = _at_least(dims[f"mlp_{i}"], m / M)
        return out

    def raw_cost(p):  # no budget repair
        return cost_of(ev30.space.to_config(p), ev30.arch, ev30.budget.metric)

    values = sorted(set(torch.cat([*scores.heads, *scores.mlp]).tolist()))
    fitting = [t for t in values if raw_cost(pick(t)) <= ev30.budget.limit]
    assert fitting and fitting[0] > values[0]  # the budget cuts something
    assert params == pick(fitting[0])
    config, cost = _cost(ev30, params)
    assert cost <= ev30.budget.limit
    assert all(b.keep and b.token_keep == 1.0 for b in config.blocks)  # widths only
    assert params["criterion"] == "magnitude_l2"  # the space does not offer learned_mask


def test_starting_points_skip_kinds_that_do_not_apply(ev10):
    kinds = [k for k, _ in starting_points(ev10, ("uniform", "fastnas", "sensitivity", "slim"))]
    assert kinds == ["uniform", "sensitivity"]  # widths alone cannot reach 10 %


def test_a_new_study_tries_the_starts_first_and_a_resume_does_not_repeat_them(tmp_path):
    kw = {
        **TINY,
        "start": SearchSettings().start,  # the default: uniform, sensitivity
        "n_trials": 3,
        "run_final": False,
        "storage": sqlite_url(tmp_path / "s.db"),
        "study": "t",
        "artifacts": str(tmp_path / "art"),
    }
    res = search("flops=30%", progress=False, **kw)
    trials = sorted(res.study.trials, key=lambda t: t.number)
    assert [t.user_attrs.get("start") for t in trials] == ["uniform", "sensitivity", None]
    assert res.study.user_attrs["starts"] == ["uniform", "sensitivity"]
    for t in trials[:2]:  # the queued params are what the trial evaluated
        assert TrialRecord.of(t).macs <= res.budget.limit
    more = search("flops=30%", progress=False, **{**kw, "n_trials": 5})
    starts = [t.user_attrs.get("start") for t in more.study.trials]
    assert starts.count("uniform") == 1 and starts.count("sensitivity") == 1
    assert len(more.study.trials) == 5


def test_cpu_budget_stops_starting_trials(tmp_path):
    def kw(name, **extra):
        return {
            **TINY,
            "start": (),
            "run_final": False,
            "storage": sqlite_url(tmp_path / "s.db"),
            "study": name,
            "artifacts": str(tmp_path / name),
            **extra,
        }

    before = time.process_time()
    search("flops=30%", progress=False, **kw("one", n_trials=1))
    one = time.process_time() - before  # loading plus one trial
    budget = time.process_time() + 3 * one
    res = search("flops=30%", progress=False, **kw("capped", n_trials=40, cpu_budget=budget))
    assert 1 <= len(res.ran) < 40
    ends = sorted(t.user_attrs["cpu_seconds"] for t in res.study.trials)
    assert all(c < budget for c in ends[:-1])  # each later trial started under the budget


def test_default_settings_try_uniform_and_sensitivity_first():
    assert SearchSettings().start == ("uniform", "sensitivity")


def test_settings_reject_bad_starts_and_cpu_budgets():
    with pytest.raises(PrunetuneError, match="start must list"):
        SearchSettings(start=("magic",))
    with pytest.raises(PrunetuneError, match="cpu_budget > 0"):
        SearchSettings(cpu_budget=0)
    with pytest.raises(PrunetuneError, match="only with --backend optuna"):
        SearchSettings(cpu_budget=10.0, backend="ray")
    s = SearchSettings(start=["fastnas"])
    assert s.start == ("fastnas",) and SearchSettings.from_dict(s.to_dict()) == s


def test_cli_start_flag(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["search", "--budget", "flops=30%", "--start", "magic"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "--start" in err and "magic" in err and "uniform" in err
    from prunetune.cli import _starts

    assert _starts("none") == () and _starts("fastnas, uniform") == ("fastnas", "uniform")
