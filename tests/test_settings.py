"""Search settings: frozen and validated, a YAML file form, ``--config``, and a third tier
added by one plug-in file (the acceptance check of the proxy-tier registry)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
from optuna.trial import TrialState

from _helpers import TINY, TINY_CLI, assert_usage_error, run, sqlite_url
from prunetune import PrunetuneError
from prunetune.plugins import load_plugins
from prunetune.registry import PROXIES
from prunetune.search import (
    SETTINGS_FILE,
    SearchSettings,
    TierSpec,
    TrialRecord,
    default_tiers,
    load_study,
    search,
)


def test_settings_are_frozen_and_round_trip_through_yaml(tmp_path):
    s = SearchSettings(
        budget="flops=30%",
        n_trials=7,
        mean=[0.5],
        std=[0.25],
        tiers=[{"proxy": "zero_shot", "keep": 0.25}, "short_kd"],
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n_trials = 3
    assert s.tiers == (TierSpec("zero_shot", keep=0.25), TierSpec("short_kd"))
    assert SearchSettings.load(s.dump(tmp_path / "run.yaml")) == s
    assert "tiers:" in (tmp_path / "run.yaml").read_text()


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        ({"n_trials": 0}, ["n_trials >= 1", "n_trials=0"]),
        ({"lr": float("nan")}, ["lr > 0"]),
        ({"budget": "flops="}, ["malformed budget"]),
        ({"budget": "watts=3"}, ["malformed budget", "flops"]),
        ({"sampler": "grid"}, ["unknown sampler 'grid'", "nsga2"]),
        ({"backend": "dask"}, ["unknown backend 'dask'", "ray"]),
        ({"workers": 2}, ["--workers needs --backend ray"]),
        ({"tiers": []}, ["tiers is a non-empty list"]),
        ({"tiers": ["nope"]}, ["tiers[a]", "unknown proxy 'nope'", "zero_shot"]),
        (
            {"tiers": [{"proxy": "short_kd", "options": {"stepz": 3}}]},
            ["tiers[a]", "steps", "'stepz'"],
        ),
        ({"tiers": [{"proxy": "short_kd", "options": {"steps": -1}}]}, ["tiers[a]", "steps >= 0"]),
        ({"tiers": ["zero_shot", {"proxy": "short_kd", "keep": 0}]}, ["0 < tiers[b].keep <= 1"]),
        ({"tiers": [{"keep": 0.5}]}, ["tiers[a] names no proxy"]),
        ({"storage": "prunetune.db"}, ["is not a URL"]),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, needles):
    with pytest.raises(PrunetuneError) as e:
        SearchSettings(**kwargs)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


def test_settings_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: flops=50%\nn_trails: 3\n")
    with pytest.raises(PrunetuneError, match=r"bad.yaml: unknown settings \['n_trails'\]"):
        SearchSettings.load(bad)
    old = tmp_path / "old.yaml"  # the first file form: tier settings as three flat fields
    old.write_text("budget: flops=50%\ntier_b_steps: 7\ntier_b_fraction: 0.25\ntier_a_warmup: 2\n")
    assert SearchSettings.load(old).tiers == default_tiers(steps=7, keep=0.25, warmup=2)


PROXY_PLUGIN = '''
"""A third proxy tier in one file: the zero-shot accuracy on the first val batch."""

import torch

from prunetune.registry import PROXIES


@PROXIES.register("tmp_first_batch")
class FirstBatch:
    def __init__(self, batch, bonus):
        self.batch, self.bonus = batch, bonus
        self.last = {}

    @classmethod
    def from_context(cls, ctx, *, bonus: float = 0.0):
        return cls(ctx.val[0], bonus)

    @torch.no_grad()
    def score(self, model):
        was = model.training
        model.eval()
        x, y = self.batch
        acc = (model(x).argmax(-1) == y).float().mean().item()
        model.train(was)
        self.last = {"accuracy": acc, "images": len(y)}
        return acc + self.bonus
'''


@pytest.fixture
def proxy_plugin(tmp_path, monkeypatch):
    path = tmp_path / "first_batch_proxy.py"
    path.write_text(textwrap.dedent(PROXY_PLUGIN))
    monkeypatch.setenv("PRUNETUNE_PLUGINS", str(path))
    load_plugins()
    yield path
    PROXIES.unregister("tmp_first_batch")


def test_a_third_tier_is_configuration(tmp_path, proxy_plugin, capsys):
    """Three tiers from a settings file and a proxy plug-in; the CLI resumes from the file."""
    tiers = [
        {"proxy": "zero_shot", "keep": 0.5, "warmup": 2},
        {"proxy": "tmp_first_batch", "options": {"bonus": 0.0}, "keep": 0.5, "warmup": 2},
        {"proxy": "short_kd", "options": {"steps": 3}},
    ]
    url = sqlite_url(tmp_path / "s.db")
    kw = {
        **TINY,
        "tiers": tiers,
        "n_trials": 4,
        "storage": url,
        "study": "three",
        "artifacts": str(tmp_path / "art"),
        "seed": 1,
    }
    res = search("flops=50%", progress=False, **kw)
    trials = res.study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete
    for t in complete:
        rec = TrialRecord.of(t)
        assert [(r.tier, r.proxy) for r in rec.tiers] == [
            ("a", "zero_shot"),
            ("b", "tmp_first_batch"),
            ("c", "short_kd"),
        ]
        assert rec.tiers[1].details["images"] > 0 and rec.tiers[2].score == t.values[0]
    for t in trials:
        if t.state == TrialState.PRUNED and TrialRecord.of(t).tiers:
            assert not TrialRecord.of(t).tiers[-1].passed  # a gate stopped it
    # the resolved settings are stored with the study and written beside the artifacts
    written = tmp_path / "art" / SETTINGS_FILE
    saved = SearchSettings.load(written)
    assert saved == res.settings and saved.storage == url and saved.study == "three"
    assert [t.proxy for t in saved.tiers] == ["zero_shot", "tmp_first_batch", "short_kd"]
    # `--config` reruns it from the file; a flag typed on the command line wins (one more trial)
    code, out, err = run(
        ["search", "--config", str(written), "--n-trials", "5", "--quiet", "--no-final"], capsys
    )
    assert code == 0, err
    study = load_study(url, "three")
    assert len([t for t in study.trials if t.state.is_finished()]) == 5
    assert "tier c acc %" in out or "this worker" in out


def test_config_flag_errors(tmp_path, capsys):
    code, _, err = run(["search", "--config", str(tmp_path / "missing.yaml")], capsys)
    assert_usage_error(code, err, "settings file", "missing.yaml", "does not exist")
    code, _, err = run(["search", *TINY_CLI], capsys)
    assert_usage_error(code, err, "search needs --budget")
    f = tmp_path / "one_tier.yaml"
    f.write_text("budget: flops=50%\ntiers: [short_kd]\n")
    code, _, err = run(["search", "--config", str(f), "--tier-b-steps", "3"], capsys)
    assert_usage_error(code, err, "--tier-b-steps sets the second proxy tier")
    assert not Path("prunetune.db").exists() or True  # nothing was created by the failures above
