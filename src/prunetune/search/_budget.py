"""Budgets: parse ``--budget``, check reachability, and repair candidates onto the boundary."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..config import PruningConfig
from ..errors import InfeasibleConfigError, PrunetuneError
from ..evaluators import estimate_cost
from ..models import ViTArch

__all__ = ["Budget", "parse_budget", "repair", "cost_of", "minimum_config"]

_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_RE = re.compile(r"^\s*(flops|macs|params|latency)\s*=\s*([0-9]*\.?[0-9]+)\s*(%|[kKmMgGtT]|ms)?\s*$")


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
        unit = {"macs": " MACs", "params": " params", "latency": " ms"}[self.metric]
        lim = f"{self.limit:,.0f}{unit}" if self.metric != "latency" else f"{self.limit:.3f}{unit}"
        if self.metric == "macs":
            lim += f" ({2 * self.limit:,.0f} FLOPs)"
        return f"{self.text} -> {lim}"


def parse_budget(text: str) -> Budget:
    """``flops=50%``, ``flops=0.2G``, ``macs=100M``, ``params=3M``, ``latency=4ms``."""
    m = _RE.match(text or "")
    if not m:
        raise BudgetError(
            f"malformed budget {text!r}; use e.g. flops=50%, flops=0.2G, macs=100M, params=3M or latency=4ms"
        )
    metric, num, unit = m.group(1), float(m.group(2)), (m.group(3) or "")
    if num <= 0:
        raise BudgetError(f"budget {text!r} must be positive")
    if unit == "%":
        if num > 100:
            raise BudgetError(f"budget {text!r} is above 100 % of the dense model")
        return Budget("macs" if metric in ("flops", "macs") else metric, None, num / 100, text)
    if metric == "latency":
        if unit not in ("ms", ""):
            raise BudgetError(f"latency budgets are in ms (e.g. latency=4ms), got {text!r}")
        return Budget("latency", num, None, text)
    if unit == "ms":
        raise BudgetError(f"'ms' is a latency unit; got {text!r}")
    value = num * _UNITS[unit.lower()]
    if metric == "flops":
        return Budget("macs", value / 2, None, text)  # we store MACs; 1 MAC = 2 FLOPs
    return Budget(metric, value, None, text)


def cost_of(config: PruningConfig, arch: ViTArch, metric: str, latency_model=None) -> float:
    if metric == "latency":
        return latency_model.predict(config)
    c = estimate_cost(config, arch)
    return float(c.macs if metric == "macs" else c.params)


def _scaled(config: PruningConfig, arch: ViTArch, s: float) -> PruningConfig:
    """Widths (heads, MLP) and token keep rates shrunk by the factor ``s`` (at least one unit)."""
    blocks = []
    for b in config.blocks:
        if not b.keep:
            blocks.append(b)
            continue
        h = b.heads or arch.num_heads
        m = b.mlp or arch.mlp_hidden
        kw = {"heads": max(1, round(h * s)), "mlp": max(1, round(m * s))}
        if b.token_keep < 1.0:
            kw["token_keep"] = round(max(1.0 / arch.num_patches, b.token_keep * s), 6)
        blocks.append(replace(b, **kw))
    return config.replace(blocks=tuple(blocks))


def repair(config: PruningConfig, arch: ViTArch, budget: Budget, latency_model=None,
           iters: int = 30) -> tuple[PruningConfig, bool]:
    """Returns ``(config, repaired)`` with cost <= budget, shrinking widths onto the boundary.

    A count-mode config over budget has its heads, MLP widths and token keep rates scaled by
    the largest factor that fits (bisection on the analytic cost; each step is microseconds).
    Raises :class:`InfeasibleConfigError` if even the smallest scaling is over budget.
    """
    if cost_of(config, arch, budget.metric, latency_model) <= budget.limit:
        return config, False
    lo, hi = 0.0, 1.0
    if cost_of(_scaled(config, arch, lo), arch, budget.metric, latency_model) > budget.limit:
        raise InfeasibleConfigError(f"no scaling of this candidate fits the budget {budget.describe()}")
    for _ in range(iters):
        mid = (lo + hi) / 2
        if cost_of(_scaled(config, arch, mid), arch, budget.metric, latency_model) <= budget.limit:
            lo = mid
        else:
            hi = mid
    return _scaled(config, arch, lo), True


def minimum_config(config: PruningConfig, arch: ViTArch) -> PruningConfig:
    """The cheapest shape reachable from ``config``'s depth choices: one head, one neuron."""
    return _scaled(config, arch, 0.0)


