"""Scoring one candidate: budget repair, the proxy tiers, and the trial record."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import optuna

from .. import _session
from ..config import BlockConfig, PruningConfig
from ..errors import ConfigError, InfeasibleConfigError, PrunetuneError
from ..evaluators import (
    ProxyContext,
    TeacherCache,
    Tiers,
    estimate_cost,
    finetune,
    measure_latency,
)
from ..models import resolve_model_spec
from ..pruners import compute_scores, prune
from ..registry import BUDGET_METRICS
from ..spaces import Dim, SearchSpace, load_space
from ._budget import Budget, cost_of, fit_to_target, minimum_config, parse_budget, repair
from ._record import TrialRecord
from ._settings import SearchSettings

__all__ = ["TARGET_PARAM", "Evaluator", "load_base_for"]

#: The sampled fraction of the budget a candidate is scaled onto (``budget_target_low``).
TARGET_PARAM = "budget_target"


class Evaluator:
    """Scores candidates for one search: cached saliency, budget repair, the proxy tiers.

    Args:
        settings: The search's (resolved) settings.
        space: The search space (loaded from ``settings.space`` when None).
        announce: Receives the preprocessing / dense-accuracy line before other work.
        progress: Lets the proxies show progress bars.
    """

    def __init__(
        self,
        settings: SearchSettings,
        space: SearchSpace | None = None,
        announce: Callable[[str], None] | None = None,
        progress: bool = False,
    ):
        self.settings = s = settings
        spec = resolve_model_spec(s.model)
        self.base = load_base_for(s, announce=announce)
        self.space = space or load_space(spec, s.space)
        if s.budget_target_low is not None:  # the cost each candidate is scaled onto
            target = Dim(TARGET_PARAM, "float", s.budget_target_low, 1.0)
            self.space = replace(self.space, dims=(*self.space.dims, target))
        self.arch = self.base.arch
        dense = PruningConfig.dense(spec)
        self.dense_cost = estimate_cost(dense, self.arch)
        self.latency_model = None
        budget = parse_budget(s.budget)
        if BUDGET_METRICS.get(budget.metric).time:
            from ..evaluators import LatencyTable

            self.latency_model = LatencyTable.for_model(
                self.base, s.latency_batch, rebuild=s.refresh_latency_table
            )
        self.dense_value = cost_of(dense, self.arch, budget.metric, self.latency_model)
        self.budget: Budget = budget.resolve(self.dense_value)
        self._check_reachable()
        self.calib = self.base.calibration(s.calib_samples, s.batch_size, s.seed)
        self.val = self.base.val_batches()
        #: the dense model's logits per distillation step, shared by tier b and the Pareto stage
        self.teacher_cache = TeacherCache(self.base.model)
        #: what the proxies were built from (the starting points build a cheaper one from it)
        self.proxy_context = ProxyContext(
            self.base.model,
            self.calib,
            self.base.data.train,
            self.val,
            s.lr,
            s.batch_size,
            s.seed,
            progress,
            self.teacher_cache,
        )
        self.tiers = Tiers(s.tiers, self.proxy_context)
        self._scores: dict = {}
        self.dense_accuracy = self.base.dense_accuracy

    def _check_reachable(self) -> None:
        params = {
            d.name: (d.low if d.kind != "categorical" else d.choices[-1]) for d in self.space.dims
        }
        params = {k: v for k, v in params.items() if not k.startswith(("criterion", "token_mode"))}
        shape = self.space.to_config(
            params
        )  # every droppable block dropped, lowest token keep rates
        blocks = tuple(BlockConfig(keep=b.keep, token_keep=b.token_keep) for b in shape.blocks)
        cheapest = minimum_config(shape.replace(width_mode="count", blocks=blocks), self.arch)
        low = cost_of(cheapest, self.arch, self.budget.metric, self.latency_model)
        if low > self.budget.limit:
            raise PrunetuneError(
                f"budget {self.budget.describe()} is below what any configuration in this search "
                f"space can reach (the cheapest costs "
                f"{BUDGET_METRICS.get(self.budget.metric).format(low)}); raise the budget or widen "
                f"the space"
            )

    def scores(self, criterion: str):
        """Saliency scores of the dense model by ``criterion`` (computed once per search)."""
        if criterion not in self._scores:
            self._scores[criterion] = compute_scores(self.base.model, criterion, self.calib)
        return self._scores[criterion]

    def candidate(self, params: dict) -> tuple[PruningConfig, bool]:
        """The repaired, count-mode config of a sample (raises InfeasibleConfigError)."""
        try:
            config = self.space.to_config(params)
            if config.width_mode == "threshold":
                config = config.resolve(self.scores(config.criterion))
        except ConfigError as e:
            raise InfeasibleConfigError(str(e)) from None
        if TARGET_PARAM in params:
            return fit_to_target(
                config, self.arch, self.budget, float(params[TARGET_PARAM]), self.latency_model
            )
        return repair(config, self.arch, self.budget, self.latency_model)

    def evaluate(
        self, params: dict, study: optuna.Study
    ) -> tuple[TrialRecord, tuple[float, float] | None]:
        """Scores one sample: ``(record, (accuracy, cost))``, or values None when stopped early.

        A candidate is stopped early (a PRUNED trial) when it cannot be made to fit the budget
        or a tier's gate stops it.
        """
        try:
            config, repaired = self.candidate(params)
        except InfeasibleConfigError as e:
            return TrialRecord(stopped=f"infeasible: {e}"), None
        cost = estimate_cost(config, self.arch)
        value = cost_of(config, self.arch, self.budget.metric, self.latency_model)
        rec = dict(
            config=config.to_dict(),
            macs=cost.macs,
            params=cost.params,
            repaired=repaired,
            constraint=value - self.budget.limit,
            budget_metric=self.budget.metric,
            budget_value=value,
        )
        model = prune(self.base.model, config, scores=self.scores(config.criterion))
        if self.settings.measure_latency:
            rec["latency_ms"] = measure_latency(
                model, self.base.input_shape, self.settings.latency_batch
            ).median_ms
            if self.latency_model is not None:
                rec["latency_predicted_ms"] = value
        results, reached = self.tiers.run(model, lambda label: _earlier_scores(study, label))
        if not reached:
            stopped = f"stopped after tier {results[-1].tier}: below the kept fraction"
            return TrialRecord(**rec, tiers=tuple(results), stopped=stopped), None
        objective = float(cost.macs if not BUDGET_METRICS.get(self.budget.metric).time else value)
        return TrialRecord(**rec, tiers=tuple(results)), (results[-1].score, objective)

    def objective(self, trial: optuna.Trial) -> tuple[float, float]:
        """Optuna objective: suggest, evaluate, record; early-stopped candidates raise
        TrialPruned."""
        rec, values = self.evaluate(self.space.suggest(trial), trial.study)
        rec.write(trial)
        trial.set_user_attr("cpu_seconds", round(time.process_time(), 3))  # this process's so far
        if values is None:
            raise optuna.TrialPruned(rec.stopped)
        return values

    def final_model(self, config: PruningConfig, progress: bool = True, desc: str = "fine-tune"):
        """Prune and fine-tune with the Pareto-stage recipe (what ``prunetune prune``
        reproduces)."""
        s = self.settings
        model = prune(self.base.model, config, scores=self.scores(config.criterion))
        finetune(
            model,
            self.base.data.train,
            teacher=self.base.model,
            epochs=s.final_epochs,
            lr=s.lr,
            batch_size=s.batch_size,
            seed=s.seed,
            progress=progress,
            desc=desc,
            teacher_cache=self.teacher_cache,
        )
        return model


def _earlier_scores(study: optuna.Study, label: str) -> list[float]:
    """Scores of tier ``label`` in the study's finished trials (the gate's reference)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished():
            r = TrialRecord.of(t).tier(label)
            if r is not None:
                out.append(r.score)
    return out


def load_base_for(
    s: SearchSettings,
    announce: Callable[[str], None] | None = None,
    check_dense: bool | None = None,
) -> _session.Loaded:
    """The dense model and data a search with settings ``s`` works on."""
    return _session.load_base(
        resolve_model_spec(s.model),
        s.checkpoint,
        s.data,
        s.download,
        s.data_root,
        s.device,
        mean=s.mean,
        std=s.std,
        interpolation=s.interpolation,
        crop_pct=s.crop_pct,
        announce=announce,
        check_dense=s.check_dense if check_dense is None else check_dense,
    )
