"""Informed starting points: candidates at the budget that the search tries first.

A sampler's first generation is random; at a tight budget most random shapes are poor and the
search spends its first tier-b runs learning what a hand-made rule already knows. So a new study
first tries (Optuna's ``enqueue_trial``; each is an ordinary trial the sampler then learns from):

- ``uniform``: every block keeps the same share of heads and MLP width, scaled onto the budget
  (what Torch-Pruning's uniform ViT pruning does), ranked by L2 magnitude.
- ``fastnas``: as NVIDIA ModelOpt's FastNAS (``mtn.prune(mode="fastnas")``) does it: each
  choice of a width dimension (a block's heads, its MLP width) is scored alone with the first
  tier's proxy, every other dimension dense; one global score threshold then takes, per
  dimension, the cheapest choice scoring at least the threshold, and the threshold is bisected
  onto the budget. Widths alone cannot reach every budget (on a 6-block ViT about 13 % of the
  dense MACs is the floor); then there is no such point.
- ``sensitivity``: the same over every dimension of the space: token keep rates and dropping a
  block are choices too, so budgets below what widths reach stay reachable.
- ``slim``: ViT-Slim's allocation: the ``learned_mask`` criterion's soft masks of every head and
  MLP neuron on one scale, one global threshold bisected onto the budget (widths only, so like
  ``fastnas`` it cannot reach the lowest budgets). Opt-in: training the masks costs a few
  seconds per search.

Both need a count-mode space (``heads_i``, ``mlp_i``). The sensitivity table costs one score
per choice (about a hundred on a 6-block model) with the first tier's proxy built on the first
:data:`TABLE_SAMPLES` calibration images: a few seconds on CPU.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..config import PruningConfig
from ..errors import ConfigError, InfeasibleConfigError
from ..pruners import prune
from ..registry import PROXIES
from ._budget import cost_of
from ._settings import DEFAULT_STARTS

__all__ = [
    "sensitivity_params",
    "sensitivity_table",
    "slim_params",
    "starting_points",
    "uniform_params",
]
#: at most this many values of a dimension are scored by the sensitivity table
MAX_CHOICES = 8
#: calibration images the sensitivity table scores on (the first ones of the search's)
TABLE_SAMPLES = 64
_PREFERRED = ("magnitude_l2", "magnitude_l1")
#: the criterion whose masks the ``slim`` start cuts
SLIM_CRITERION = "learned_mask"


def _criterion(space) -> Any:
    names = [d.name for d in space.dims]
    if "criterion" not in names:
        return None
    choices = space["criterion"].choices
    return next((c for c in _PREFERRED if c in choices), choices[0])


def _dense_params(space) -> dict[str, Any]:
    """Every dimension at its dense (largest) value; categoricals at their first choice."""
    out: dict[str, Any] = {}
    for d in space.dims:
        if d.kind == "categorical":
            out[d.name] = False if d.name.startswith("drop_") else d.choices[0]
        else:
            out[d.name] = d.high
    crit = _criterion(space)
    if crit is not None:
        out["criterion"] = crit
    return out


def _count_mode(space) -> bool:
    return space.width_mode == "count" and any(d.name.startswith("heads_") for d in space.dims)


def uniform_params(space) -> dict[str, Any] | None:
    """The dense shape (no tokens dropped, every block kept): the budget repair then scales
    every block's heads and MLP width by the same factor onto the budget. None without
    count-mode width dimensions."""
    return _dense_params(space) if _count_mode(space) else None


def _choices(d) -> list:
    """A dimension's values from cheapest to dense, at most :data:`MAX_CHOICES` (dense last)."""
    if d.kind == "categorical":
        return [True, False] if d.name.startswith("drop_") else []
    vals = (
        d.values() if d.step is not None else [d.low + (d.high - d.low) * i / 7 for i in range(8)]
    )
    if len(vals) > MAX_CHOICES:
        idx = [round(i * (len(vals) - 1) / (MAX_CHOICES - 1)) for i in range(MAX_CHOICES)]
        vals = [vals[i] for i in sorted(set(idx))]
    return vals


def _is_width(name: str) -> bool:
    return name.startswith(("heads_", "mlp_"))


def sensitivity_table(
    ev, widths_only: bool = False
) -> tuple[dict[str, Any], dict[str, list[tuple[Any, float]]]]:
    """``(dense params, {dimension: [(value, score), ...]})``, values cheapest first.

    Each value is scored with the first tier's proxy on the dense model with only that
    dimension changed (no budget repair); ``widths_only`` scores heads and MLP widths only.
    """
    base = _dense_params(ev.space)
    proxy = _table_proxy(ev)
    crit = base.get("criterion")
    scores = ev.scores(crit) if crit is not None else None
    table: dict[str, list[tuple[Any, float]]] = {}
    dense_score = None
    for d in ev.space.dims:
        if d.name in ("criterion", "token_mode") or d.name.startswith("budget"):
            continue
        if widths_only and not _is_width(d.name):
            continue
        vals = _choices(d)
        if len(vals) < 2:
            continue
        row = []
        for v in vals:
            if v == base[d.name]:
                if dense_score is None:
                    dense_score = _score(ev, proxy, base, scores)
                row.append((v, dense_score))
            else:
                row.append((v, _score(ev, proxy, {**base, d.name: v}, scores)))
        table[d.name] = row
    return base, table


def _table_proxy(ev):
    """The first tier's proxy on the first :data:`TABLE_SAMPLES` calibration images."""
    ctx = ev.proxy_context
    calib, n = [], 0
    for x, y in ctx.calib:
        if n >= TABLE_SAMPLES:
            break
        calib.append((x[: TABLE_SAMPLES - n], y[: TABLE_SAMPLES - n]))
        n += len(calib[-1][1])
    spec = ev.settings.tiers[0]
    return PROXIES.get(spec.proxy).from_context(replace(ctx, calib=calib), **spec.options)


def _score(ev, proxy, params: dict, scores) -> float:
    config = ev.space.to_config(params)
    return float(proxy.score(prune(ev.base.model, config, scores=scores)))


def _cost(ev, params: dict) -> float | None:
    """The budget metric's cost of ``params`` as sampled (no repair), or None if they do not
    make a valid configuration."""
    try:
        config: PruningConfig = ev.space.to_config(params)
    except (ConfigError, InfeasibleConfigError):
        return None
    return cost_of(config, ev.arch, ev.budget.metric, ev.latency_model)


def _fits(ev, params: dict) -> bool:
    c = _cost(ev, params)
    return c is not None and c <= ev.budget.limit


def _bisect(ev, pick, feasible: float, infeasible: float) -> dict[str, Any]:
    """``pick(t)`` at the threshold nearest ``infeasible`` whose picks fit the budget, by 40
    bisection steps from a fitting ``feasible``."""
    for _ in range(40):
        mid = (feasible + infeasible) / 2
        if _fits(ev, pick(mid)):
            feasible = mid
        else:
            infeasible = mid
    return pick(feasible)


def sensitivity_params(ev, widths_only: bool = False) -> dict[str, Any] | None:
    """The sensitivity configuration at the budget (``fastnas`` with ``widths_only``; see the
    module docstring), or None when the space has no count-mode widths or no threshold fits
    the budget."""
    if not _count_mode(ev.space):
        return None
    base, table = sensitivity_table(ev, widths_only)

    def pick(threshold: float) -> dict[str, Any]:
        out = dict(base)
        for name, row in table.items():
            out[name] = next((v for v, s in row if s >= threshold), row[-1][0])
        return out

    all_scores = sorted({s for row in table.values() for _, s in row})
    if not all_scores:
        return None
    lo, hi = all_scores[0] - 1.0, all_scores[-1]  # pick(lo) is the cheapest, pick(hi) dense
    if not _fits(ev, pick(lo)):
        return None
    return _bisect(ev, pick, lo, hi)  # the highest threshold whose picks fit the budget


def _at_least(d, want: float) -> float:
    """The smallest allowed value of dimension ``d`` at or above ``want`` (its high at most)."""
    vals = d.values() if d.step is not None else [d.low, d.high]
    above = [v for v in vals if v >= want - 1e-9]
    if d.step is None:
        return min(max(want, d.low), d.high)
    return min(above) if above else vals[-1]


def slim_params(ev) -> dict[str, Any] | None:
    """ViT-Slim's allocation at the budget: the ``learned_mask`` scores of every head and MLP
    neuron on one scale, one global threshold (bisected onto the budget) keeps, per block, the
    heads and neurons whose masks reach it; every other dimension dense. The criterion is
    ``learned_mask`` when the space offers it (the units the masks ranked are the ones kept),
    else the space's usual one. None without count-mode widths or when widths cannot reach the
    budget."""
    if not _count_mode(ev.space):
        return None
    scores = ev.scores(SLIM_CRITERION)
    base = _dense_params(ev.space)
    if SLIM_CRITERION in (base.get("criterion"), *_criterion_choices(ev.space)):
        base["criterion"] = SLIM_CRITERION
    arch = ev.arch
    dims = {d.name: d for d in ev.space.dims}

    def pick(threshold: float) -> dict[str, Any]:
        out = dict(base)
        for i in range(arch.depth):
            h, m = f"heads_{i}", f"mlp_{i}"
            if h in dims:
                kept = max(1, int((scores.heads[i] >= threshold).sum()))
                out[h] = int(_at_least(dims[h], kept))
            if m in dims:
                kept = max(1, int((scores.mlp[i] >= threshold).sum()))
                out[m] = _at_least(dims[m], kept / arch.mlp_hidden)
        return out

    values = torch.cat([*scores.heads, *scores.mlp]).double()
    lo, hi = float(values.min()) - 1.0, float(values.max()) + 1.0  # pick(hi): 1 unit each
    if not _fits(ev, pick(float("inf"))):
        return None
    return _bisect(ev, pick, hi, lo)  # the lowest threshold (most units kept) that fits


def _criterion_choices(space) -> tuple:
    names = [d.name for d in space.dims]
    return tuple(space["criterion"].choices) if "criterion" in names else ()


def starting_points(ev, kinds=DEFAULT_STARTS) -> list[tuple[str, dict[str, Any]]]:
    """``[(kind, params), ...]`` for the space of ``ev`` (kinds that do not apply are left
    out). The budget-target dimension, when searched, is set to 1 (onto the budget)."""
    makers = {
        "uniform": lambda: uniform_params(ev.space),
        "sensitivity": lambda: sensitivity_params(ev),
        "fastnas": lambda: sensitivity_params(ev, widths_only=True),
        "slim": lambda: slim_params(ev),
    }
    out = []
    for kind in kinds:
        params = makers[kind]()
        if params is None:
            continue
        params = {k: v for k, v in params.items() if k in ev.space.names}
        for d in ev.space.dims:
            if d.name.startswith("budget"):
                params[d.name] = d.high
        out.append((kind, params))
    return out
