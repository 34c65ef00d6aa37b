"""The search-side contract suites, run over every registered proxy, sampler and budget metric."""

from __future__ import annotations

import pytest

from prunetune.registry import BACKENDS, BUDGET_METRICS, PROXIES, SAMPLERS
from prunetune.testing import check_backend, check_budget_metric, check_proxy, check_sampler

#: Cheap options per proxy (the contract only needs it to run, not to be accurate).
FAST = {"short_kd": {"steps": 2}}


@pytest.mark.parametrize("name", PROXIES.names())
def test_proxy_contract(name):
    check_proxy(name, FAST.get(name))


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_contract(name):
    check_sampler(name)


@pytest.mark.parametrize("name", BUDGET_METRICS.names())
def test_budget_metric_contract(name):
    check_budget_metric(name)


#: Ray starts a private cluster (about half a minute here): nightly only, as its search tests
#: in test_search.py and test_ray_cluster.py run in the default suite.
SLOW_BACKENDS = {"ray": {"workers": 2}}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in SLOW_BACKENDS else n
        for n in BACKENDS.names()
    ],
)
def test_backend_contract(name, tmp_path):
    check_backend(name, tmp_path, **SLOW_BACKENDS.get(name, {}))


def test_contracts_catch_a_broken_proxy():
    @PROXIES.register("tmp_broken_proxy")
    class Broken:
        last: dict = {}

        @classmethod
        def from_context(cls, ctx):
            return cls()

        def score(self, model):
            return float("nan")

    try:
        with pytest.raises(AssertionError, match="tmp_broken_proxy.*finite"):
            check_proxy("tmp_broken_proxy")
    finally:
        PROXIES.unregister("tmp_broken_proxy")


def test_contracts_catch_a_backend_that_runs_nothing(tmp_path):
    @BACKENDS.register("tmp_lazy_backend")
    class Lazy:
        @staticmethod
        def check(settings):
            pass

        @staticmethod
        def run(study, evaluator, settings, progress=True):
            return []

    try:
        with pytest.raises(AssertionError, match="tmp_lazy_backend.*3 finished trials"):
            check_backend("tmp_lazy_backend", tmp_path)
    finally:
        BACKENDS.unregister("tmp_lazy_backend")
