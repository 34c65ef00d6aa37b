"""The search: budgeted multi-objective study, tiered proxies, Pareto-stage fine-tuning."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from tqdm import tqdm

from .. import _session
from .._faults import fault_point
from ..config import BlockConfig, PruningConfig
from ..errors import ConfigError, InfeasibleConfigError, PrunetuneError
from ..evaluators import ShortKDProxy, ZeroShotProxy, estimate_cost, evaluate_accuracy, finetune
from ..models import resolve_model_spec
from ..pruners import compute_scores, prune
from ..spaces import SearchSpace, load_space
from ._budget import Budget, cost_of, minimum_config, parse_budget, repair
from ._study import (
    DEFAULT_STORAGE,
    StudyLock,
    _sqlite_path,
    _storage_error,
    check_writable,
    default_study_name,
    find_study,
    make_sampler,
    open_study,
    trial_counts,
)

__all__ = ["SearchSettings", "SearchResult", "search", "pareto_front", "Evaluator"]

log = logging.getLogger("prunetune")


@dataclass
class SearchSettings:
    """Everything that defines a search (stored with the study as ``settings``)."""

    budget: str = "flops=50%"
    model: str | None = None
    checkpoint: str | None = None
    data: str | None = None
    download: bool = False
    data_root: str | None = None
    space: str | None = "hybrid"
    n_trials: int = 24
    sampler: str = "nsga2"
    seed: int = 0
    storage: str = DEFAULT_STORAGE
    study: str | None = None
    device: str | None = None
    calib_samples: int = 256
    batch_size: int = 64
    tier_a_warmup: int = 4
    tier_b_fraction: float = 0.5
    tier_b_steps: int = 100
    lr: float = 5e-4
    final_epochs: float = 8.0
    front_max: int = 4
    run_final: bool = True
    artifacts: str | None = None
    latency_batch: int = 64
    measure_latency: bool = False
    grace_period: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    check_dense: bool = True

    def validate(self) -> None:
        """Raises a one-line :class:`PrunetuneError` for a value no search can use."""
        def bad(rule: str, name: str) -> PrunetuneError:
            return PrunetuneError(f"`{rule}` must hold, but got {name}={getattr(self, name)!r}")

        ints = {"n_trials": 1, "seed": 0, "calib_samples": 1, "batch_size": 1, "tier_a_warmup": 0,
                "tier_b_steps": 0, "front_max": 1, "latency_batch": 1}
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise bad(f"{name} >= {low} (an integer)", name)
        for name, rule, ok in (("lr", "lr > 0", lambda v: v > 0), ("final_epochs", "final_epochs >= 0", lambda v: v >= 0),
                               ("tier_b_fraction", "0 < tier_b_fraction <= 1", lambda v: 0 < v <= 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise bad(rule, name)
        if self.grace_period is not None and (not isinstance(self.grace_period, int) or self.grace_period < 1):
            raise bad("grace_period >= 1 (seconds)", "grace_period")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (list, tuple)) or not v or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                    and (name == "mean" or x > 0) for x in v)):
                raise bad(f"{name} is a list of finite numbers" + (" > 0" if name == "std" else ""), name)
        from ..models import INTERPOLATIONS

        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise bad(f"interpolation in {INTERPOLATIONS}", "interpolation")
        if self.crop_pct is not None and (isinstance(self.crop_pct, bool) or not isinstance(self.crop_pct, (int, float))
                                          or not 0 < self.crop_pct <= 1):
            raise bad("0 < crop_pct <= 1", "crop_pct")
        if self.study is not None and (not isinstance(self.study, str) or not self.study.strip()):
            raise bad("study is a non-empty name", "study")
        for name in ("model", "checkpoint", "data", "data_root", "space", "artifacts", "device"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise bad(f"{name} is a string", name)

    def identity(self) -> dict[str, Any]:
        """The fields that must match when a search resumes an existing study."""
        return {k: getattr(self, k) for k in ("budget", "model", "checkpoint", "data", "space", "calib_samples",
                                               "batch_size", "tier_b_steps", "lr", "seed", "mean", "std",
                                               "interpolation", "crop_pct")}

    def artifacts_dir(self) -> Path:
        if self.artifacts:
            return Path(self.artifacts)
        if self.storage.startswith("sqlite:///"):
            return Path(self.storage.removeprefix("sqlite:///")).parent / "prunetune-artifacts" / self.study
        return Path("prunetune-artifacts") / self.study

    def resolved(self) -> SearchSettings:
        """The same settings with the study named and every location absolute.

        Stored with the study, so ``export``, ``report``, ``dashboard`` and the ``reproduce``
        command work from any folder; a relative path that names nothing stays as given (a
        timm model name, a torchvision data set name).
        """
        def absolute(v: str | None) -> str | None:
            if v is None or not str(v).strip() or not Path(v).expanduser().exists():
                return v
            return str(Path(v).expanduser().resolve())

        storage = self.storage
        path = _sqlite_path(storage)
        if path is not None and not path.is_absolute() and not storage.startswith("sqlite:///file:"):
            storage = "sqlite:///" + str(path.resolve()) + ("?" + storage.partition("?")[2] if "?" in storage else "")
        out = replace(self, storage=storage, study=self.study or default_study_name(self.budget),
                      model=absolute(self.model), checkpoint=absolute(self.checkpoint), data=absolute(self.data),
                      data_root=absolute(self.data_root), space=absolute(self.space))
        return replace(out, artifacts=str(out.artifacts_dir().expanduser().resolve()))


@dataclass
class SearchResult:
    """What a search returns: the study, its Pareto front and the best under-budget config."""

    study: optuna.Study
    front: list[optuna.trial.FrozenTrial]
    best_config: PruningConfig | None
    best_trial: optuna.trial.FrozenTrial | None
    finals: dict[int, dict] = field(default_factory=dict)
    budget: Budget | None = None
    settings: SearchSettings | None = None
    #: numbers of the trials this process ran (None with the Ray backend)
    ran: list[int] | None = None


class Evaluator:
    """Scores candidates for one search: cached saliency, budget repair, tier a and tier b."""

    def __init__(self, settings: SearchSettings, space: SearchSpace | None = None, base=None,
                 announce: Callable[[str], None] | None = None):
        self.s = settings
        spec = resolve_model_spec(settings.model)
        self.base = base or _session.load_base(
            spec, settings.checkpoint, settings.data, settings.download, settings.data_root, settings.device,
            mean=settings.mean, std=settings.std, interpolation=settings.interpolation, crop_pct=settings.crop_pct,
            announce=announce, check_dense=settings.check_dense)
        self.space = space or load_space(spec, settings.space)
        self.arch = self.base.arch
        self.dense_cost = estimate_cost(PruningConfig.dense(spec), self.arch)
        self.latency_model = None
        budget = parse_budget(settings.budget)
        if budget.metric == "latency":
            from ..evaluators._latency_table import LatencyTable

            self.latency_model = LatencyTable.for_model(self.base, settings.latency_batch)
        dense_value = cost_of(PruningConfig.dense(spec), self.arch, budget.metric, self.latency_model)
        self.budget = budget.resolve(dense_value)
        self.dense_value = dense_value
        self._check_reachable()
        self.calib = self.base.calibration(settings.calib_samples, settings.batch_size, settings.seed)
        self.val = self.base.val_batches()
        self.tier_a = ZeroShotProxy(self.base.model, self.calib)
        self.tier_b = ShortKDProxy(self.base.model, self.base.data.train, settings.tier_b_steps, settings.lr,
                                   settings.batch_size, settings.seed)
        self._scores: dict = {}
        self.dense_accuracy = (self.base.dense_accuracy if self.base.dense_accuracy is not None
                               else evaluate_accuracy(self.base.model, self.val).accuracy)

    def _check_reachable(self) -> None:
        params = {d.name: (d.low if d.kind != "categorical" else d.choices[-1]) for d in self.space.dims}
        params = {k: v for k, v in params.items() if not k.startswith(("criterion", "token_mode"))}
        shape = self.space.to_config(params)  # every droppable block dropped, lowest token keep rates
        blocks = tuple(BlockConfig(keep=b.keep, token_keep=b.token_keep) for b in shape.blocks)
        cheapest = minimum_config(shape.replace(width_mode="count", blocks=blocks), self.arch)
        low = cost_of(cheapest, self.arch, self.budget.metric, self.latency_model)
        if low > self.budget.limit:
            cheapest = (f"{low:.3f} ms" if self.budget.metric == "latency" else
                        f"{low:,.0f} {'MACs' if self.budget.metric == 'macs' else 'params'}")
            raise PrunetuneError(
                f"budget {self.budget.describe()} is below what any configuration in this search space "
                f"can reach (the cheapest costs {cheapest}); raise the budget or widen the space"
            )

    def scores(self, criterion: str):
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
        return repair(config, self.arch, self.budget, self.latency_model)

    def evaluate(self, params: dict, study: optuna.Study) -> tuple[dict, tuple[float, float] | None]:
        """Scores one sample: ``(user_attrs, (accuracy, cost))``, or values None when stopped early.

        A candidate is stopped early (a pruned trial) when it cannot be made to fit the budget
        or its tier-a score is below the kept fraction of the study's earlier tier-a scores.
        """
        attrs: dict[str, Any] = {}
        try:
            config, repaired = self.candidate(params)
        except InfeasibleConfigError as e:
            attrs["infeasible"] = str(e)
            return attrs, None
        cost = estimate_cost(config, self.arch)
        value = cost_of(config, self.arch, self.budget.metric, self.latency_model)
        attrs.update({"config": config.to_dict(), "macs": cost.macs, "flops": 2 * cost.macs, "params": cost.params,
                      "repaired": repaired, "constraint": [value - self.budget.limit],
                      "budget_metric": self.budget.metric, "budget_value": value})
        model = prune(self.base.model, config, scores=self.scores(config.criterion))
        if self.s.measure_latency:
            from ..evaluators import measure_latency

            attrs["latency_ms"] = measure_latency(model, self.base.input_shape, self.s.latency_batch).median_ms
            if self.latency_model is not None:
                attrs["latency_predicted_ms"] = value
        a = self.tier_a.score(model)
        fault_point("tier-a")
        attrs.update({"tier_a_score": a, "tier_a_kl": self.tier_a.last["kl"],
                      "tier_a_accuracy": self.tier_a.last["accuracy"]})
        if not self._passes_tier_a(study, a):
            attrs["tier_b"] = "skipped: tier a below the kept fraction"
            return attrs, None
        b = self.tier_b.score(model, self.val)
        fault_point("tier-b")
        attrs["tier_b_accuracy"] = b
        return attrs, (b, float(cost.macs if self.budget.metric != "latency" else value))

    def objective(self, trial: optuna.Trial) -> tuple[float, float]:
        """Optuna objective: suggest, evaluate, record; early-stopped candidates raise TrialPruned."""
        attrs, values = self.evaluate(self.space.suggest(trial), trial.study)
        record(trial, attrs)
        if values is None:
            raise optuna.TrialPruned(attrs.get("infeasible") or attrs.get("tier_b"))
        return values

    def _passes_tier_a(self, study: optuna.Study, score: float) -> bool:
        prev = [t.user_attrs["tier_a_score"] for t in study.get_trials(deepcopy=False)
                if "tier_a_score" in t.user_attrs and t.state.is_finished()]
        if not prev or len(prev) < self.s.tier_a_warmup:
            return True
        prev.sort()
        cut = prev[min(len(prev) - 1, int(math.floor((1 - self.s.tier_b_fraction) * len(prev))))]
        return score >= cut

    def final_model(self, config: PruningConfig, progress: bool = True, desc: str = "fine-tune"):
        """Prune and fine-tune with the Pareto-stage recipe (what ``prunetune prune`` reproduces)."""
        model = prune(self.base.model, config, scores=self.scores(config.criterion))
        finetune(model, self.base.data.train, teacher=self.base.model, epochs=self.s.final_epochs, lr=self.s.lr,
                 batch_size=self.s.batch_size, seed=self.s.seed, progress=progress, desc=desc)
        return model


def record(trial, attrs: dict) -> None:
    """Stores a candidate's attributes on its (running) Optuna trial, with the budget constraint."""
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if "constraint" in attrs:
        trial.set_constraint("budget", attrs["constraint"][0])  # <= 0: feasible


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed, under-budget, non-dominated trials (max accuracy, min cost), cheapest first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.values is not None and t.user_attrs.get("constraint", [0.0])[0] <= 0]
    front = [t for t in done if not any(
        (o.values[0] >= t.values[0] and o.values[1] <= t.values[1]) and
        (o.values[0] > t.values[0] or o.values[1] < t.values[1]) for o in done)]
    return sorted(front, key=lambda t: (t.values[1], -t.values[0]))


def _pick(front: list, k: int) -> list:
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


def _kendall(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3:
        return None
    from scipy.stats import kendalltau

    tau = kendalltau(xs, ys).statistic
    return None if tau != tau else float(tau)


def run_pareto_stage(study: optuna.Study, ev: Evaluator, progress: bool = True) -> dict[int, dict]:
    """Fine-tunes the chosen front members with KD, evaluates them, stores results with the study."""
    from .._pruned import save_pruned

    front = _pick(pareto_front(study), ev.s.front_max)
    finals: dict[int, dict] = {}
    art = ev.s.artifacts_dir()
    members = [t.number for t in front]
    study.set_user_attr("pareto_stage", {"state": "running", "members": members})
    for t in tqdm(front, desc="Pareto stage (fine-tune)", unit="model", disable=not progress):
        key = f"final_{t.number}"
        if key in study.user_attrs and (art / f"trial_{t.number}" / "model.safetensors").is_file():
            finals[t.number] = study.user_attrs[key]
            continue
        config = PruningConfig.from_dict(t.user_attrs["config"])
        model = ev.final_model(config, progress, desc=f"fine-tune trial {t.number} ({ev.s.final_epochs:g} epochs)")
        res = {"trial": t.number, "val_accuracy": evaluate_accuracy(model, ev.val).accuracy,
               "macs": t.user_attrs["macs"], "params": t.user_attrs["params"],
               "tier_a_score": t.user_attrs.get("tier_a_score"), "tier_b_accuracy": t.values[0],
               "epochs": ev.s.final_epochs}
        if ev.base.data.test is not None:
            from ..data import make_loader

            res["test_accuracy"] = evaluate_accuracy(model, make_loader(ev.base.data.test, 256)).accuracy
        save_pruned(model, art / f"trial_{t.number}", config, res)
        fault_point("pareto")
        study.set_user_attr(key, res)
        finals[t.number] = res
    study.set_user_attr("pareto_stage", {"state": "done", "members": members})
    if finals:
        rows = list(finals.values())
        final = [r["val_accuracy"] for r in rows]
        study.set_user_attr("proxy_kendall_tau", {
            "tier_a": _kendall([r["tier_a_score"] for r in rows], final),
            "tier_b": _kendall([r["tier_b_accuracy"] for r in rows], final),
            "n": len(rows),
        })
    return finals


def best_trial(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial | None, dict | None]:
    """The under-budget front member with the best final (else tier-b) accuracy."""
    front = pareto_front(study)
    if not front:
        return None, None
    finals = {t.number: study.user_attrs.get(f"final_{t.number}") for t in front}
    tuned = [t for t in front if finals[t.number]]
    if tuned:
        t = max(tuned, key=lambda t: (finals[t.number]["val_accuracy"], -t.values[1]))
        return t, finals[t.number]
    t = max(front, key=lambda t: (t.values[0], -t.values[1]))
    return t, None


class _Progress:
    def __init__(self, study: optuna.Study, total: int, enabled: bool):
        done = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
        self.bar = tqdm(total=total, initial=min(done, total), desc="search", unit="trial", disable=not enabled)

    def __call__(self, study, trial) -> None:
        self.bar.update(1)
        if trial.values:
            self.bar.set_postfix(acc=f"{trial.values[0]:.3f}", mmacs=f"{trial.user_attrs.get('macs', 0) / 1e6:.2f}")

    def waiting(self, running: int) -> None:
        self.bar.set_description(f"search (waiting for {running} running trial{'s' * (running != 1)})")

    def close(self) -> None:
        self.bar.close()


def run_trials(study: optuna.Study, objective, settings: SearchSettings, progress: bool = True,
               poll: float = 2.0) -> list[int]:
    """Runs trials in this process until the study holds ``settings.n_trials`` finished ones.

    ``n_trials`` is a study total shared by every worker: under the study's lock a worker
    fails stale trials (dead workers'), counts finished and running trials, and starts one
    only below the total; the lock is released as soon as Optuna has created the trial. A
    worker that runs the Pareto stage then waits for the other workers' running trials.
    """
    lock = StudyLock(settings.storage, settings.study)
    bar = _Progress(study, settings.n_trials, progress)
    ran: list[int] = []

    def locked_objective(trial: optuna.Trial):
        lock.release()  # the trial exists now: others may count it as running
        ran.append(trial.number)
        return objective(trial)

    try:
        while True:
            lock.acquire()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                done, running = trial_counts(study)
                if done >= settings.n_trials or (done + running >= settings.n_trials and not settings.run_final):
                    return ran
                if done + running >= settings.n_trials:
                    bar.waiting(running)
                    lock.release()
                    time.sleep(poll)
                    continue
                study.optimize(locked_objective, n_trials=1, callbacks=[bar], catch=(FloatingPointError,))
            finally:
                lock.release()
    finally:
        bar.close()


def _check_resume(study: optuna.Study, settings: SearchSettings) -> None:
    """Fails when ``study`` was started with other identity settings (a new study passes)."""
    old = study.user_attrs.get("settings")
    if old is None:
        return
    mine = settings.identity()
    theirs = {k: old.get(k) for k in mine}
    diff = {k: (theirs[k], mine[k]) for k in mine if theirs[k] != mine[k]}
    if diff:
        k, (a, b) = next(iter(diff.items()))
        raise PrunetuneError(
            f"study {settings.study!r} was started with {k}={a!r}, but this search has {k}={b!r}; "
            f"use the same settings to resume it, or another --study"
        )


def search(budget: str = "flops=50%", progress: bool = True, backend: str = "optuna", workers: int = 1,
           address: str | None = None, announce: Callable[[str], None] | None = None, **kwargs) -> SearchResult:
    """Runs the whole search; the Python API of ``prunetune search``.

    Args:
        budget: ``flops=50%``, ``flops=0.2G``, ``params=3M``, ``latency=4ms``, ...
        progress: Show progress bars.
        backend: ``optuna`` (in-process) or ``ray`` (Ray Tune with OptunaSearch on the same study).
        workers: Concurrent Ray Tune trials (``backend="ray"``).
        address: An existing Ray cluster's address (``backend="ray"``).
        announce: Receives one line with the preprocessing and the dense model's val accuracy
            before the search starts (the CLI prints it).
        **kwargs: Any :class:`SearchSettings` field (``n_trials``, ``sampler``, ``storage``,
            ``study``, ``space``, ``model``, ``checkpoint``, ``data``, ``final_epochs``, ...).

    Returns:
        A :class:`SearchResult` with the study, the Pareto front and the best configuration.
    """
    unknown = set(kwargs) - set(SearchSettings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown search settings {sorted(unknown)}")
    settings = SearchSettings(budget=budget, **kwargs)
    settings.validate()
    settings = settings.resolved()
    parse_budget(settings.budget)  # malformed budgets fail before anything loads
    if backend not in ("optuna", "ray"):
        raise PrunetuneError(f"unknown backend {backend!r}; choose optuna or ray")
    if not isinstance(workers, int) or workers < 1:
        raise PrunetuneError(f"`workers >= 1` must hold, but got workers={workers!r}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(settings.sampler, settings.seed, settings.n_trials)
    space = load_space(resolve_model_spec(settings.model), settings.space)  # a bad --space fails before the study
    check_writable(settings.storage)
    if backend == "ray" and address is not None:
        from ._ray import check_address

        check_address(address)  # an unreachable cluster fails before anything loads
    existing = find_study(settings.storage, settings.study)  # creates nothing
    if existing is not None:
        _check_resume(existing, settings)  # before the expensive loading below
    ev = Evaluator(settings, space=space, announce=announce)
    ev.tier_b.progress = progress and backend != "ray"  # Ray workers' bars would interleave
    # the study is created only once model, data, space and budget are known to work, so a
    # failed start (an unreachable budget, a missing checkpoint) leaves no study and no file
    study = open_study(settings.storage, settings.study, sampler, grace_period=settings.grace_period)
    _check_resume(study, settings)  # another worker may have started it meanwhile
    fault_point("study-created")
    try:
        if study.user_attrs.get("settings") is None:
            study.set_user_attr("settings", asdict(settings))
        study.set_user_attr("dense", {"macs": ev.dense_cost.macs, "params": ev.dense_cost.params,
                                      "val_accuracy": ev.dense_accuracy, "budget_value": ev.dense_value})
        study.set_user_attr("budget", {"metric": ev.budget.metric, "limit": ev.budget.limit, "text": ev.budget.text})
        if ev.latency_model is not None:
            study.set_user_attr("latency_table", {
                "device": ev.latency_model.device, "batch_size": ev.latency_model.batch_size,
                "prediction_error_pct": ev.latency_model.error_pct, "rows": len(ev.latency_model.rows)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["accuracy", "latency_ms" if ev.budget.metric == "latency" else "macs"])
    except optuna.exceptions.StorageInternalError as e:
        raise _storage_error(settings.storage, e, "write to") from None
    ran = None
    if backend == "ray":
        from ._ray import run_ray

        run_ray(study, ev, settings, workers=workers, address=address, progress=progress)
    else:
        ran = run_trials(study, ev.objective, settings, progress)
    finals = run_pareto_stage(study, ev, progress) if settings.run_final else {}
    best, _ = best_trial(study)
    front = pareto_front(study)
    return SearchResult(study, front, PruningConfig.from_dict(best.user_attrs["config"]) if best else None,
                        best, finals, ev.budget, settings, ran)


def settings_of(study: optuna.Study) -> SearchSettings:
    raw = study.user_attrs.get("settings")
    if raw is None:
        raise PrunetuneError(f"study {study.study_name!r} was not made by prunetune search")
    return SearchSettings(**{k: v for k, v in raw.items() if k in SearchSettings.__dataclass_fields__})


