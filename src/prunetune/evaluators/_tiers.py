"""Proxy tiers: an ordered list of registered proxies, each followed by a gate.

A candidate is scored by the first tier's proxy; it goes on to the next tier only when its
score reaches the ``1 - keep`` quantile of that tier's earlier scores (every candidate passes
during the tier's warm-up, and the last tier has no gate). The last tier's score is the
candidate's accuracy objective. A third tier is one more entry in the settings, not code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .._faults import fault_point
from ..errors import PrunetuneError
from ..registry import PROXIES
from ._proxies import ProxyContext

__all__ = ["TierResult", "Tiers", "tier_label"]


def tier_label(i: int) -> str:
    """``a``, ``b``, ... ``z``, then ``t26``, ...: the name a tier's results are stored under."""
    return chr(ord("a") + i) if i < 26 else f"t{i}"


@dataclass(frozen=True)
class TierResult:
    """One proxy tier's verdict on a candidate.

    Attributes:
        tier: The tier's label (``a``, ``b``, ... in the order the tiers run).
        proxy: The registered proxy that scored it.
        score: Higher is better; the last tier's score is the trial's accuracy objective.
        details: What the proxy reported beside the score (``kl``, ``accuracy``, ``steps``...).
        passed: Whether the candidate went on past this tier's gate.
    """

    tier: str
    proxy: str
    score: float
    details: dict[str, Any] = field(default_factory=dict)
    passed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"proxy": self.proxy, "score": self.score, "passed": self.passed, **self.details}

    @classmethod
    def from_dict(cls, tier: str, d: dict[str, Any]) -> TierResult:
        details = {k: v for k, v in d.items() if k not in ("proxy", "score", "passed")}
        return cls(tier, d["proxy"], float(d["score"]), details, bool(d.get("passed", True)))

    @property
    def accuracy(self) -> float | None:
        """The proxy's accuracy reading (zero-shot or after its short fine-tune), if it has one."""
        v = self.details.get("accuracy")
        return None if v is None else float(v)


def gate_passes(score: float, earlier: Sequence[float], keep: float, warmup: int) -> bool:
    """Whether ``score`` is in the best ``keep`` fraction of ``earlier`` scores (or warm-up)."""
    if keep >= 1.0 or not earlier or len(earlier) < warmup:
        return True
    prev = sorted(earlier)
    cut = prev[min(len(prev) - 1, int(math.floor((1 - keep) * len(prev))))]
    return score >= cut


class Tiers:
    """The proxies of one search, built once, run in order on each candidate.

    Args:
        specs: Tier specifications with ``proxy``, ``options``, ``keep`` and ``warmup``
            (:class:`prunetune.search.TierSpec`).
        ctx: What the proxies may use (dense model, data, fine-tuning settings).
    """

    def __init__(self, specs: Sequence, ctx: ProxyContext):
        self.specs = tuple(specs)
        self.labels = [tier_label(i) for i in range(len(self.specs))]
        self.proxies = []
        for label, spec in zip(self.labels, self.specs):
            try:
                self.proxies.append(PROXIES.get(spec.proxy).from_context(ctx, **spec.options))
            except (TypeError, ValueError) as e:
                raise PrunetuneError(f"tier {label} ({spec.proxy}): {e}") from None

    def run(
        self, model: nn.Module, earlier: Callable[[str], Sequence[float]]
    ) -> tuple[list[TierResult], bool]:
        """Scores ``model`` tier by tier: ``(results, reached_last)``.

        ``earlier(label)`` returns the study's earlier scores of that tier (for the gate).
        """
        results: list[TierResult] = []
        last = len(self.specs) - 1
        for i, (label, spec, proxy) in enumerate(zip(self.labels, self.specs, self.proxies)):
            score = float(proxy.score(model))
            fault_point(f"tier-{label}")
            passed = i == last or gate_passes(score, earlier(label), spec.keep, spec.warmup)
            results.append(
                TierResult(label, spec.proxy, score, dict(getattr(proxy, "last", {})), passed)
            )
            if not passed:
                return results, False
        return results, True
