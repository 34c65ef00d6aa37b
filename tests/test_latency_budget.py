from __future__ import annotations

import math

import pytest

from prunetune import PruningConfig
from prunetune.evaluators import _latency_table
from prunetune.evaluators._latency_table import LatencyTable
from prunetune.search import default_tiers, load_study, search

TINY = {
    "n_trials": 3,
    "tiers": default_tiers(steps=5),
    "calib_samples": 64,
    "batch_size": 16,
    "final_epochs": 0.1,
    "front_max": 2,
}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(_latency_table, "CACHE", tmp_path / "latency")
    return tmp_path / "latency"


def test_latency_table_is_measured_once_and_predicts(digits_base, cache, monkeypatch):
    table = LatencyTable.for_model(digits_base, batch_size=16, samples=8)
    assert len(table.rows) == 8 and all(r["ms"] > 0 for r in table.rows)
    assert table.error_pct is not None and math.isfinite(table.error_pct)
    assert len(list(cache.glob("*.json"))) == 1
    # cached: a second call measures nothing
    monkeypatch.setattr(
        LatencyTable, "_measure", classmethod(lambda *a, **k: pytest.fail("re-measured"))
    )
    again = LatencyTable.for_model(digits_base, batch_size=16, samples=8)
    assert again.coef == table.coef and again.error_pct == table.error_pct
    dense = PruningConfig.dense("digits_vit")
    small = PruningConfig.uniform("digits_vit", 0.34, 0.25).with_block(5, keep=False)
    assert 0 < table.predict(small) < table.predict(dense)


def test_latency_budget_search_respects_the_predicted_budget(digits_base, cache, tmp_path):
    table = LatencyTable.for_model(digits_base, batch_size=64)
    limit = 0.6 * table.predict(PruningConfig.dense("digits_vit"))
    url = f"sqlite:///{tmp_path / 's.db'}"
    search(
        f"latency={limit:.3f}ms",
        progress=False,
        storage=url,
        study="lat",
        artifacts=str(tmp_path / "art"),
        measure_latency=True,
        **TINY,
    )
    study = load_study(url, "lat")
    assert study.user_attrs["budget"]["metric"] == "latency"
    assert study.user_attrs["latency_table"]["prediction_error_pct"] >= 0
    built = [t for t in study.trials if "config" in t.user_attrs]
    assert built
    for t in built:
        assert t.user_attrs["budget_value"] <= limit + 1e-6
        assert t.user_attrs["latency_ms"] > 0  # measured, as asked
        if t.values:
            assert t.values[1] == pytest.approx(t.user_attrs["budget_value"])
