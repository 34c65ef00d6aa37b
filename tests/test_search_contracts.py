"""The search-side contract suites, run over every registered proxy, sampler and budget metric."""

from __future__ import annotations

import pytest

from prunetune.registry import BUDGET_METRICS, PROXIES, SAMPLERS
from prunetune.testing import check_budget_metric, check_proxy, check_sampler

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
