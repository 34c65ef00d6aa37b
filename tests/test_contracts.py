"""Every registered saliency criterion and pruner passes its shipped contract suite.

The suites live in :mod:`prunetune.testing` so that a plug-in's own tests can run them; here
they run over every registered name (a newly registered one is picked up automatically). Token
pruners (``tokens_<mode>``) are left to the token-mode contract when the package ships one.
They run on a tiny model of every model family (``tests/_families.py``). The last tests check
that the suites do fail on broken plug-ins.
"""

from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch
from torch import nn

from _families import CONTRACT_FAMILIES, needs_library
from prunetune.pruners import group_scores
from prunetune.registry import PRUNERS, SALIENCIES
from prunetune.testing import check_pruner, check_saliency

TOKEN_CONTRACT = importlib.util.find_spec("prunetune.testing.token_modes") is not None


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one thread is as fast, and does not fight the other jobs for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", SALIENCIES.names())
@pytest.mark.parametrize("family", list(CONTRACT_FAMILIES))
def test_saliency_contract(family, name):
    needs_library(family)
    check_saliency(name, CONTRACT_FAMILIES[family])


@pytest.mark.parametrize("name", PRUNERS.names())
@pytest.mark.parametrize("family", list(CONTRACT_FAMILIES))
def test_pruner_contract(family, name):
    if name.startswith("tokens_") and TOKEN_CONTRACT:
        pytest.skip("token pruners are covered by prunetune.testing.token_modes")
    needs_library(family)
    check_pruner(name, CONTRACT_FAMILIES[family])


# --- the suites catch broken plug-ins --------------------------------------------------------


def _block_weights(model):
    return {n: p.detach().abs() for n, p in model.named_parameters() if n.startswith("blocks.")}


class _LeavesEval:
    def scores(self, model, batches=()):
        model.eval()
        return group_scores(model, _block_weights(model), self.name)


class _WrongShape:
    def scores(self, model, batches=()):
        s = group_scores(model, _block_weights(model), self.name)
        s.heads[1] = s.heads[1][:-1]
        return s


class _EditsWeights:
    def scores(self, model, batches=()):
        with torch.no_grad():
            model.blocks[0].mlp.fc1.weight.mul_(2.0)
        return group_scores(model, _block_weights(model), self.name)


class _Drifts:
    calls = itertools.count()

    def scores(self, model, batches=()):
        s = group_scores(model, _block_weights(model), self.name)
        s.blocks = s.blocks + next(self.calls)
        return s


class _Backprops:
    def scores(self, model, batches):
        x, y = batches[0]
        nn.functional.cross_entropy(model(x), y).backward()
        return group_scores(model, _block_weights(model), self.name)


@pytest.mark.parametrize(
    ("cls", "rule"),
    [
        (_LeavesEval, "train/eval mode"),
        (_WrongShape, "heads[1]"),
        (_EditsWeights, "weights unchanged"),
        (_Drifts, "same scores"),
        (_Backprops, "no .grad"),
    ],
)
def test_saliency_contract_catches(cls, rule):
    name = f"broken_{cls.__name__.lower().strip('_')}"
    SALIENCIES.register(name)(cls)
    try:
        with pytest.raises(AssertionError) as info:
            check_saliency(name)
        assert str(info.value).startswith(f"saliency '{name}' breaks a rule: ")
        assert rule in str(info.value), str(info.value)
    finally:
        SALIENCIES.unregister(name)


class _AddsMacs:
    """Claims configurations with fewer heads and silently adds a layer before the classifier."""

    def applies(self, config):
        return any(b.heads is not None for b in config.blocks)

    def apply(self, model, config, scores):
        d = model.embed_dim
        model.head = nn.Sequential(nn.Linear(d, d), model.head)


class _AlwaysApplies:
    def applies(self, config):
        return True

    def apply(self, model, config, scores):
        pass


@pytest.mark.parametrize(
    ("cls", "rule"),
    [
        (_AddsMacs, "estimate_cost(config).macs equals measure_macs"),
        (_AlwaysApplies, "does not apply to the dense configuration"),
    ],
)
def test_pruner_contract_catches(cls, rule):
    name = f"broken_{cls.__name__.lower().strip('_')}"
    PRUNERS.register(name, order=99)(cls)
    try:
        with pytest.raises(AssertionError) as info:
            check_pruner(name)
        assert str(info.value).startswith(f"pruner '{name}' breaks a rule: ")
        assert rule in str(info.value), str(info.value)
    finally:
        PRUNERS.unregister(name)
