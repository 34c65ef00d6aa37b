"""Budgets: parse ``--budget``, check reachability, and repair candidates onto the boundary."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..config import PruningConfig
from ..errors import InfeasibleConfigError, PrunetuneError
from ..evaluators import estimate_cost
from ..models import ViTArch
from ..registry import BUDGET_METRICS

__all__ = [
    "Budget",
    "BudgetMetric",
    "cost_of",
    "fit_to_target",
    "minimum_config",
    "parse_budget",
    "repair",
]

_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_RE = re.compile(r"^\s*([a-z_]+)\s*=\s*([0-9]*\.?[0-9]+)\s*(%|[kKmMgGtT]|ms)?\s*$")


class BudgetMetric:
    """A budgeted quantity, registered in :data:`prunetune.registry.BUDGET_METRICS`.

    ``keywords`` maps what a user types before ``=`` to the factor that turns it into the
    stored unit (``flops`` is stored as MACs: 0.5). ``time`` metrics take ``ms`` and need a
    latency model; the others take k/M/G/T suffixes.
    """

    name: str
    keywords: dict[str, float] = {}
    unit: str = ""
    time: bool = False

    def cost(self, config: PruningConfig, arch: ViTArch, latency_model=None) -> float:
        raise NotImplementedError

    def format(self, value: float) -> str:
        return f"{value:,.0f} {self.unit}"


@BUDGET_METRICS.register("macs", keywords={"flops": 0.5, "macs": 1.0}, unit="MACs")
class MACsMetric(BudgetMetric):
    """Multiply-accumulates per image (analytic, exact); ``flops=`` budgets are stored as MACs."""

    def cost(self, config, arch, latency_model=None) -> float:
        return float(estimate_cost(config, arch).macs)

    def format(self, value: float) -> str:
        return f"{value:,.0f} MACs ({2 * value:,.0f} FLOPs)"


@BUDGET_METRICS.register("params", keywords={"params": 1.0}, unit="params")
class ParamsMetric(BudgetMetric):
    """Parameters of the pruned model (analytic, exact)."""

    def cost(self, config, arch, latency_model=None) -> float:
        return float(estimate_cost(config, arch).params)


@BUDGET_METRICS.register("latency", keywords={"latency": 1.0}, unit="ms", time=True)
class LatencyMetric(BudgetMetric):
    """Milliseconds per batch, predicted by the measured per-block latency table."""

    def cost(self, config, arch, latency_model=None) -> float:
        return float(latency_model.predict(config))

    def format(self, value: float) -> str:
        return f"{value:.3f} ms"


def _metric_for(word: str) -> tuple[str, float] | None:
    for name, metric in BUDGET_METRICS.items():
        if word in metric.keywords:
            return name, metric.keywords[word]
    return None


class BudgetError(PrunetuneError):
    """A malformed or unreachable budget."""


@dataclass(frozen=True)
class Budget:
    """An upper bound on one cost metric.

    Attributes:
        metric: ``macs``, ``params`` or ``latency`` (FLOPs budgets are stored as MACs).
        limit: Absolute limit (MACs, parameters or milliseconds), or None while relative.
        fraction: Fraction of the dense model's cost, when given as a percentage.
        text: What the user typed.
    """

    metric: str
    limit: float | None
    fraction: float | None
    text: str

    def resolve(self, dense_value: float) -> Budget:
        if self.limit is not None:
            return self
        return replace(self, limit=self.fraction * dense_value)

    def describe(self) -> str:
        return f"{self.text} -> {BUDGET_METRICS.get(self.metric).format(self.limit)}"


def parse_budget(text: str) -> Budget:
    """``flops=50%``, ``flops=0.2G``, ``macs=100M``, ``params=3M``, ``latency=4ms``."""
    m = _RE.match(text) if isinstance(text, str) else None
    found = _metric_for(m.group(1)) if m else None
    if found is None:
        words = ", ".join(w for _, mt in BUDGET_METRICS.items() for w in mt.keywords)
        raise BudgetError(
            f"malformed budget {text!r}; use e.g. flops=50%, flops=0.2G, macs=100M, params=3M or "
            f"latency=4ms (metrics: {words})"
        )
    (metric, factor), num, unit = found, float(m.group(2)), (m.group(3) or "")
    if num <= 0:
        raise BudgetError(f"budget {text!r} must be positive")
    if unit == "%":
        if num > 100:
            raise BudgetError(f"budget {text!r} is above 100 % of the dense model")
        return Budget(metric, None, num / 100, text)
    if BUDGET_METRICS.get(metric).time:
        if unit not in ("ms", ""):
            raise BudgetError(
                f"{m.group(1)} budgets are in ms (e.g. {m.group(1)}=4ms), got {text!r}"
            )
        return Budget(metric, num * factor, None, text)
    if unit == "ms":
        raise BudgetError(f"'ms' is a latency unit; got {text!r}")
    return Budget(metric, num * _UNITS[unit.lower()] * factor, None, text)


def cost_of(config: PruningConfig, arch: ViTArch, metric: str, latency_model=None) -> float:
    """The budgeted quantity of a count-mode ``config`` (see :class:`BudgetMetric`)."""
    return BUDGET_METRICS.get(metric).cost(config, arch, latency_model)


def _scaled(config: PruningConfig, arch: ViTArch, s: float) -> PruningConfig:
    """Widths (heads, MLP) and token keep rates scaled by ``s``: at least one unit, at most the
    dense width and all tokens (``s > 1`` widens)."""
    blocks = []
    for b in config.blocks:
        if not b.keep:
            blocks.append(b)
            continue
        h = b.heads or arch.num_heads
        m = b.mlp or arch.mlp_hidden
        kw = {
            "heads": min(arch.num_heads, max(1, round(h * s))),
            "mlp": min(arch.mlp_hidden, max(1, round(m * s))),
        }
        if b.token_keep < 1.0:
            kw["token_keep"] = round(min(1.0, max(1.0 / arch.num_patches, b.token_keep * s)), 6)
        blocks.append(replace(b, **kw))
    return config.replace(blocks=tuple(blocks))


def repair(
    config: PruningConfig, arch: ViTArch, budget: Budget, latency_model=None, iters: int = 30
) -> tuple[PruningConfig, bool]:
    """Returns ``(config, repaired)`` with cost <= budget, shrinking widths onto the boundary.

    A count-mode config over budget has its heads, MLP widths and token keep rates scaled by
    the largest factor that fits (bisection on the analytic cost; each step is microseconds).
    Raises :class:`InfeasibleConfigError` if even the smallest scaling is over budget.
    """
    if cost_of(config, arch, budget.metric, latency_model) <= budget.limit:
        return config, False
    lo, hi = 0.0, 1.0
    if cost_of(_scaled(config, arch, lo), arch, budget.metric, latency_model) > budget.limit:
        raise InfeasibleConfigError(
            f"no scaling of this candidate fits the budget {budget.describe()}"
        )
    for _ in range(iters):
        mid = (lo + hi) / 2
        if cost_of(_scaled(config, arch, mid), arch, budget.metric, latency_model) <= budget.limit:
            lo = mid
        else:
            hi = mid
    return _scaled(config, arch, lo), True


def fit_to_target(
    config: PruningConfig,
    arch: ViTArch,
    budget: Budget,
    target: float,
    latency_model=None,
    iters: int = 30,
) -> tuple[PruningConfig, bool]:
    """Scales a count-mode config so its cost lands just under ``target`` x the budget limit.

    Over the target, widths and token keep rates shrink (:func:`repair` onto the target);
    under it, they grow by the largest factor that still fits (never past the dense widths or
    all tokens; dropped blocks stay dropped). So the sampled ``target`` in ``[low, 1]``, not
    wherever the sampled shape happens to land, decides the candidate's cost: the region near
    the budget is searched and a lower budget tries other candidates.
    Returns ``(config, changed)``; raises :class:`InfeasibleConfigError` as :func:`repair`.
    """
    if not 0 < target <= 1:
        raise ValueError(f"`0 < target <= 1` must hold, but got target={target!r}")
    goal = replace(budget, limit=budget.limit * target)
    if cost_of(config, arch, goal.metric, latency_model) > goal.limit:
        return repair(config, arch, goal, latency_model, iters)
    top = 1.0
    for b in config.blocks:
        if b.keep:
            top = max(
                top,
                arch.num_heads / (b.heads or arch.num_heads),
                arch.mlp_hidden / (b.mlp or arch.mlp_hidden),
                1.0 / b.token_keep,
            )
    if top <= 1.0:
        return config, False
    if cost_of(_scaled(config, arch, top), arch, goal.metric, latency_model) <= goal.limit:
        return _scaled(config, arch, top), True
    lo, hi = 1.0, top
    for _ in range(iters):
        mid = (lo + hi) / 2
        if cost_of(_scaled(config, arch, mid), arch, goal.metric, latency_model) <= goal.limit:
            lo = mid
        else:
            hi = mid
    grown = _scaled(config, arch, lo)
    return grown, grown != config


def minimum_config(config: PruningConfig, arch: ViTArch) -> PruningConfig:
    """The cheapest shape reachable from ``config``'s depth choices: one head, one neuron."""
    return _scaled(config, arch, 0.0)
