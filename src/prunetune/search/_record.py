"""The schema of what a trial stores, read and written in one place.

Every candidate's outcome is one :class:`TrialRecord`. It is stored as Optuna user attributes
(plain JSON, so the dashboard shows it and any machine can read it) by :meth:`TrialRecord.write`
and read back by :meth:`TrialRecord.of`; nothing else reads or writes trial attributes by key.
The study-level entries (settings, dense model, budget, Pareto-stage results) have their
readers and writers here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from ..evaluators import TierResult

__all__ = ["TierResult", "TrialRecord", "final_of", "set_final", "study_entry"]


_TIER_PREFIX = "tier_"


@dataclass(frozen=True)
class TrialRecord:
    """What one trial stores.

    Attributes:
        config: The repaired, count-mode :class:`PruningConfig` as a dict (None if infeasible).
        macs, params: Analytic cost of ``config`` (MACs per image, parameters).
        repaired: Whether the sample was moved onto the budget by the repair step.
        budget_metric, budget_value: The budgeted quantity and its value for ``config``.
        constraint: ``budget_value - limit``; <= 0 is feasible (Optuna's constraint convention).
        latency_ms, latency_predicted_ms: Measured / predicted latency when asked for.
        tiers: The proxy tiers that ran, in order.
        stopped: Why the candidate was stopped early (an Optuna PRUNED trial), else None.
    """

    config: dict[str, Any] | None = None
    macs: int | None = None
    params: int | None = None
    repaired: bool = False
    budget_metric: str | None = None
    budget_value: float | None = None
    constraint: float | None = None
    latency_ms: float | None = None
    latency_predicted_ms: float | None = None
    tiers: tuple[TierResult, ...] = ()
    stopped: str | None = None

    @property
    def flops(self) -> int | None:
        return None if self.macs is None else 2 * self.macs

    @property
    def feasible(self) -> bool:
        return self.constraint is not None and self.constraint <= 0

    def tier(self, label: str) -> TierResult | None:
        return next((t for t in self.tiers if t.tier == label), None)

    def to_attrs(self) -> dict[str, Any]:
        """Flat JSON attributes (what the dashboard shows); None fields are left out."""
        out: dict[str, Any] = {}
        for k in (
            "config",
            "macs",
            "params",
            "repaired",
            "budget_metric",
            "budget_value",
            "latency_ms",
            "latency_predicted_ms",
            "stopped",
        ):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        if self.macs is not None:
            out["flops"] = self.flops
        if self.constraint is not None:
            out["constraint"] = [self.constraint]
        for t in self.tiers:
            out[_TIER_PREFIX + t.tier] = t.to_dict()
        return out

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TrialRecord:
        tiers = tuple(
            sorted(
                (
                    TierResult.from_dict(k.removeprefix(_TIER_PREFIX), v)
                    for k, v in attrs.items()
                    if k.startswith(_TIER_PREFIX) and isinstance(v, dict)
                ),
                key=lambda t: t.tier,
            )
        )
        constraint = attrs.get("constraint")
        return cls(
            config=attrs.get("config"),
            macs=attrs.get("macs"),
            params=attrs.get("params"),
            repaired=bool(attrs.get("repaired", False)),
            budget_metric=attrs.get("budget_metric"),
            budget_value=attrs.get("budget_value"),
            constraint=None if constraint is None else float(constraint[0]),
            latency_ms=attrs.get("latency_ms"),
            latency_predicted_ms=attrs.get("latency_predicted_ms"),
            tiers=tiers,
            stopped=attrs.get("stopped"),
        )

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial | optuna.Trial) -> TrialRecord:
        """The record a trial holds (empty for a trial that stored none)."""
        return cls.from_attrs(trial.user_attrs)

    def write(self, trial: optuna.Trial) -> None:
        """Stores the record on a running trial, with the budget as Optuna's constraint."""
        for k, v in self.to_attrs().items():
            trial.set_user_attr(k, v)
        if self.constraint is not None:
            trial.set_constraint("budget", self.constraint)  # <= 0: feasible
            # optuna-dashboard (0.21) reads only the list under "constraints", Optuna's older
            # format, which Optuna still reads too: the same value there makes the dashboard
            # show the budget on every trial (Optuna then sees two equal constraints)
            storage = trial.storage
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(trial.study.study_name), trial.number
            )
            storage.set_trial_system_attr(trial_id, "constraints", [self.constraint])


# --- study-level entries ---------------------------------------------------------------------


def study_entry(study: optuna.Study, key: str, default: Any = None) -> Any:
    """One study-level entry: ``settings``, ``dense``, ``budget``, ``latency_table``,
    ``pareto_stage``, ``proxy_kendall_tau``."""
    return study.user_attrs.get(key, default)


def final_of(study: optuna.Study, number: int) -> dict[str, Any] | None:
    """The Pareto-stage result (fine-tuned accuracy, ...) of trial ``number``, if it has one."""
    return study.user_attrs.get(f"final_{number}")


def set_final(study: optuna.Study, number: int, result: dict[str, Any]) -> None:
    study.set_user_attr(f"final_{number}", result)


def finals(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """Every stored Pareto-stage result, by trial number."""
    return {
        int(k.removeprefix("final_")): v
        for k, v in study.user_attrs.items()
        if k.startswith("final_") and k.removeprefix("final_").isdigit()
    }
