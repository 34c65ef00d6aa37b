"""Selection: the Pareto front of a study, the members to fine-tune, and the best trial."""

from __future__ import annotations

import optuna

from ._record import TrialRecord, final_of

__all__ = ["best_trial", "pareto_front", "pick_members"]


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed, under-budget, non-dominated trials (max accuracy, min cost), cheapest first."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.values is not None and TrialRecord.of(t).feasible
    ]
    front = [
        t
        for t in done
        if not any(
            (o.values[0] >= t.values[0] and o.values[1] <= t.values[1])
            and (o.values[0] > t.values[0] or o.values[1] < t.values[1])
            for o in done
        )
    ]
    return sorted(front, key=lambda t: (t.values[1], -t.values[0]))


def pick_members(front: list, k: int) -> list:
    """At most ``k`` front members spread over cost, always keeping the most accurate."""
    if len(front) <= k:
        return list(front)
    best = max(front, key=lambda t: t.values[0])
    idx = sorted({round(i * (len(front) - 1) / (k - 1)) for i in range(k)}) if k > 1 else []
    chosen = {front[i].number: front[i] for i in idx}
    chosen[best.number] = best
    out = sorted(chosen.values(), key=lambda t: t.values[1])
    while len(out) > k:
        out.remove(next(t for t in out if t.number != best.number))
    return out


def best_trial(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial | None, dict | None]:
    """The under-budget front member with the best final (else last-tier) accuracy."""
    front = pareto_front(study)
    if not front:
        return None, None
    finals = {t.number: final_of(study, t.number) for t in front}
    tuned = [t for t in front if finals[t.number]]
    if tuned:
        t = max(tuned, key=lambda t: (finals[t.number]["val_accuracy"], -t.values[1]))
        return t, finals[t.number]
    t = max(front, key=lambda t: (t.values[0], -t.values[1]))
    return t, None
