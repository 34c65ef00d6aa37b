"""Contract suites for the search-side registries: proxies, samplers, budget metrics, backends.

::

    from prunetune.testing import check_proxy, check_sampler, check_budget_metric

    def test_my_proxy():
        check_proxy("my_proxy", options={"steps": 2})

Each raises AssertionError naming the plug-in and the broken rule.
"""

from __future__ import annotations

import json
import math
from typing import Any

import optuna
import torch

from ..config import BlockConfig, PruningConfig
from ..evaluators import ProxyContext
from ..models import ViTArch
from ..registry import BUDGET_METRICS, PROXIES, SAMPLERS
from .saliency import TINY_SPEC, calibration_batches, tiny_model

__all__ = ["check_backend", "check_budget_metric", "check_proxy", "check_sampler"]


def _fail(kind: str, name: str, rule: str) -> AssertionError:
    return AssertionError(f"{kind} {name!r}: {rule}")


def check_proxy(name: str, options: dict[str, Any] | None = None) -> None:
    """A proxy builds from a :class:`ProxyContext`, scores a model with a finite float,
    reports JSON details in ``last``, leaves the candidate untouched, scores the same model
    the same way twice, and ranks the dense model at least as high as a crippled copy."""
    cls = PROXIES.get(name)
    dense = tiny_model(TINY_SPEC).eval()
    with torch.no_grad():  # labels = the dense model's own predictions: it scores perfectly
        batches = [(x, dense(x).argmax(-1)) for x, _ in calibration_batches(dense, 2, 8)]
    train = torch.utils.data.TensorDataset(
        torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    )
    ctx = ProxyContext(dense, batches, train, batches, lr=1e-3, batch_size=8, seed=0)
    proxy = cls.from_context(ctx, **(options or {}))
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    s1 = proxy.score(dense)
    if not isinstance(s1, (int, float)) or not math.isfinite(s1):
        raise _fail("proxy", name, f"score(model) must be a finite number, but got {s1!r}")
    if any(not torch.equal(before[k], v) for k, v in dense.state_dict().items()):
        raise _fail("proxy", name, "score(model) must leave the candidate's weights unchanged")
    last = getattr(proxy, "last", None)
    if not isinstance(last, dict):
        raise _fail("proxy", name, f"last must be a dict of details, but got {last!r}")
    try:
        json.dumps(last)
    except TypeError as e:
        rule = f"last must be JSON (it is stored with the trial): {e}"
        raise _fail("proxy", name, rule) from None
    s2 = proxy.score(dense)
    if s1 != s2:
        raise _fail("proxy", name, f"scoring one model twice must agree, but got {s1} and {s2}")
    crippled = tiny_model(TINY_SPEC, seed=7).eval()  # other random weights: knows nothing
    if proxy.score(crippled) > s1 + 1e-9 and name != "random":
        raise _fail(
            "proxy",
            name,
            "the dense model itself must score at least as high as an unrelated random model",
        )


def _toy(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", 0.0, 1.0)
    k = trial.suggest_int("k", 1, 6)
    c = trial.suggest_categorical("c", ["a", "b"])
    return x * k + (c == "a"), (1 - x) * k


def check_sampler(name: str, n_trials: int = 8) -> None:
    """A sampler factory makes an Optuna sampler for our two objectives; the same seed
    proposes the same candidates, another seed other ones."""

    def run(seed: int) -> list[dict]:
        sampler = SAMPLERS.get(name).create(seed, n_trials)
        if not isinstance(sampler, optuna.samplers.BaseSampler):
            raise _fail("sampler", name, f"create() must return an Optuna sampler, got {sampler!r}")
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        study.optimize(_toy, n_trials=n_trials)
        return [t.params for t in study.trials]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    a, b, c = run(0), run(0), run(1)
    if len(a) != n_trials:
        raise _fail("sampler", name, f"{n_trials} trials asked, {len(a)} ran")
    if a != b:
        raise _fail("sampler", name, "the same seed must propose the same candidates")
    if a == c:
        raise _fail("sampler", name, "another seed must propose other candidates")


def check_budget_metric(name: str) -> None:
    """A budget metric parses from each of its keywords, costs the dense model > 0 and a
    smaller configuration no more than the dense one (analytic metrics)."""
    from ..search import parse_budget

    metric = BUDGET_METRICS.get(name)
    if not metric.keywords:
        raise _fail("budget metric", name, "keywords must name what a user types before '='")
    for word in metric.keywords:
        b = parse_budget(f"{word}=50%")
        if b.metric != name or b.fraction != 0.5:
            raise _fail("budget metric", name, f"'{word}=50%' must parse to it, got {b}")
    if metric.time:
        return  # needs a measured latency table: covered by the latency-budget tests
    arch = ViTArch.from_spec(TINY_SPEC)
    dense = PruningConfig.dense(TINY_SPEC)
    small = dense.replace(blocks=tuple(BlockConfig(heads=1, mlp=8) for _ in dense.blocks))
    d, s = metric.cost(dense, arch), metric.cost(small, arch)
    if not (d > 0 and math.isfinite(d)):
        raise _fail("budget metric", name, f"the dense cost must be finite and > 0, got {d}")
    if s > d:
        rule = f"a smaller configuration must not cost more ({s} > {d})"
        raise _fail("budget metric", name, rule)
    if not isinstance(metric.format(d), str):
        raise _fail("budget metric", name, "format(value) must return text")


class _ToyEvaluator:
    """Scores candidates of a real search space instantly: the backend contract is about
    scheduling and recording, not pruning. Accuracy grows with the kept heads, cost too."""

    def __init__(self):
        from ..spaces import build_space

        self.space = build_space(TINY_SPEC, "structured")

    def scores(self, criterion: str):
        return None

    def evaluate(self, params: dict, study):
        from ..search import TrialRecord

        heads = sum(v for k, v in params.items() if k.startswith("heads_"))
        macs = 1000 * heads + 7
        rec = TrialRecord(
            config={"toy": True},
            macs=macs,
            params=heads,
            constraint=-1.0,
            budget_metric="macs",
            budget_value=float(macs),
        )
        return rec, (heads / 100.0, float(macs))

    def objective(self, trial):
        rec, values = self.evaluate(self.space.suggest(trial), trial.study)
        rec.write(trial)
        return values


def check_backend(name: str, folder, n_trials: int = 3, **settings: Any) -> None:
    """A backend runs exactly the study's remaining trials, records each trial's values and
    record, leaves nothing running, and runs no more once the total is reached.

    ``folder`` holds the contract's SQLite study; ``settings`` are extra
    :class:`prunetune.search.SearchSettings` fields (e.g. ``workers``).
    """
    from pathlib import Path

    from ..registry import BACKENDS
    from ..search import SearchSettings, TrialRecord, open_study, trial_counts
    from ..search._samplers import make_sampler

    folder = Path(folder)
    s = SearchSettings(
        storage=f"sqlite:///{folder / 'contract.db'}",
        study="contract",
        n_trials=n_trials,
        backend=name,
        artifacts=str(folder / "art"),
        **settings,
    ).resolved()
    backend = BACKENDS.get(name)
    backend.check(s)
    ev = _ToyEvaluator()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(s.storage, s.study, make_sampler(s.sampler, s.seed, n_trials))
    for _ in range(2):  # the second run finds the total reached
        backend.run(study, ev, s, progress=False)
        done, running = trial_counts(study)
        if (done, running) != (n_trials, 0):
            raise _fail(
                "backend",
                name,
                f"the study must end with {n_trials} finished trials and "
                f"none running, but has {done} and {running}",
            )
    for t in study.get_trials(deepcopy=False):
        rec, values = ev.evaluate(t.params, study)
        if t.values is None or list(t.values) != list(values):
            raise _fail(
                "backend",
                name,
                f"trial {t.number} must hold the evaluator's values {values}, but holds {t.values}",
            )
        if TrialRecord.of(t).macs != rec.macs:
            raise _fail("backend", name, f"trial {t.number} must hold the evaluator's record")
