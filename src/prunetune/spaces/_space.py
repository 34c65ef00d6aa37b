"""One canonical definition of the search dimensions, converted to Optuna and Ray Tune."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..config import BlockConfig, PruningConfig
from ..errors import ConfigError
from ..models import ModelSpec, ViTArch

__all__ = ["Dim", "SearchSpace"]


@dataclass(frozen=True)
class Dim:
    """One search dimension. Bounds are inclusive; ``step`` gives an integer or float grid.

    Attributes:
        name: Parameter name (as stored in the Optuna trial).
        kind: ``"int"``, ``"float"`` or ``"categorical"``.
        low: Lower bound (int/float).
        high: Upper bound, inclusive.
        step: Grid step (int/float) or None for a continuous float.
        choices: Values of a categorical dimension.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple = ()

    def __post_init__(self) -> None:
        if self.kind not in ("int", "float", "categorical"):
            raise ConfigError(
                f"dimension {self.name}: kind must be int, float or categorical, got {self.kind!r}"
            )
        if self.kind == "categorical":
            if not self.choices:
                raise ConfigError(f"dimension {self.name}: a categorical needs at least one choice")
            return
        if self.low is None or self.high is None or not self.low <= self.high:
            raise ConfigError(
                f"dimension {self.name}: `low <= high` must hold, but got "
                f"(low={self.low}, high={self.high})"
            )
        integral = float(self.low).is_integer() and float(self.high).is_integer()
        if self.kind == "int" and not integral:
            raise ConfigError(
                f"dimension {self.name}: int bounds must be integers, got {self.low}, {self.high}"
            )
        if self.step is not None:
            if self.step <= 0:
                raise ConfigError(
                    f"dimension {self.name}: `step > 0` must hold, but got step={self.step}"
                )
            n = (self.high - self.low) / self.step
            if abs(n - round(n)) > 1e-9:
                raise ConfigError(
                    f"dimension {self.name}: `(high - low)` must be a multiple of step, but got "
                    f"(low={self.low}, high={self.high}, step={self.step})"
                )

    def to_optuna(self):
        from optuna import distributions as d

        if self.kind == "categorical":
            return d.CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high), step=int(self.step or 1))
        return d.FloatDistribution(float(self.low), float(self.high), step=self.step)

    def suggest(self, trial) -> Any:
        """Samples this dimension on an Optuna trial, with the distribution of :meth:`to_optuna`."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1)
            )
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step)

    def to_ray(self):
        """A Ray Tune domain with the same values (Ray's ``randint`` excludes its upper bound).

        Ray quantizes onto multiples of ``step`` counted from zero, Optuna onto ``low + k * step``;
        a grid whose ``low`` is not a multiple of ``step`` becomes a ``choice`` of its values.
        """
        from ray import tune

        if self.kind == "categorical":
            return tune.choice(list(self.choices))
        if self.kind == "int":
            step = int(self.step or 1)
            if step == 1:
                return tune.randint(int(self.low), int(self.high) + 1)
            if int(self.low) % step == 0:
                # qrandint's upper bound is inclusive
                return tune.qrandint(int(self.low), int(self.high), step)
            return tune.choice(self.values())
        if self.step is None:
            return tune.uniform(float(self.low), float(self.high))
        k = self.low / self.step
        if math.isclose(k, round(k), rel_tol=0, abs_tol=1e-9):
            return tune.quniform(float(self.low), float(self.high), float(self.step))
        return tune.choice(self.values())

    def values(self) -> list:
        """Every value of a discrete dimension (for tests and small grids)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "float" and self.step is None:
            raise ValueError(f"{self.name} is continuous")
        n = round((self.high - self.low) / (self.step or 1))
        vals = [self.low + i * (self.step or 1) for i in range(n + 1)]
        return [int(v) for v in vals] if self.kind == "int" else [round(v, 10) for v in vals]


@dataclass(frozen=True)
class SearchSpace:
    """The search dimensions for one base model and how a sample becomes a PruningConfig.

    Parameter names: ``criterion``, ``token_mode``, ``heads_{i}``, ``mlp_{i}`` (kept fraction of
    the MLP hidden units), ``head_thr_{i}``/``mlp_thr_{i}`` (threshold mode), ``drop_{i}`` and
    ``token_keep_{i}``. Dimensions absent from the space keep the dense value.
    """

    model: ModelSpec
    arch: ViTArch
    dims: tuple[Dim, ...]
    width_mode: str = "count"
    preset: str = "hybrid"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        names = [d.name for d in self.dims]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate dimension names in the search space: {names}")

    def __getitem__(self, name: str) -> Dim:
        for d in self.dims:
            if d.name == name:
                return d
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def to_optuna(self) -> dict[str, Any]:
        return {d.name: d.to_optuna() for d in self.dims}

    def to_ray(self) -> dict[str, Any]:
        return {d.name: d.to_ray() for d in self.dims}

    def suggest(self, trial) -> dict[str, Any]:
        """Samples every dimension on an Optuna trial (define-by-run)."""
        return {d.name: d.suggest(trial) for d in self.dims}

    def to_config(self, params: dict[str, Any]) -> PruningConfig:
        """Builds the PruningConfig of one sample (missing parameters keep the dense value)."""
        a = self.arch
        blocks = []
        for i in range(a.depth):
            kw: dict[str, Any] = {}
            if self.width_mode == "count":
                if f"heads_{i}" in params:
                    kw["heads"] = int(params[f"heads_{i}"])
                if f"mlp_{i}" in params:
                    kept = round(float(params[f"mlp_{i}"]) * a.mlp_hidden)
                    kw["mlp"] = max(1, min(a.mlp_hidden, kept))
            else:
                kw["head_threshold"] = float(params.get(f"head_thr_{i}", 0.0))
                kw["mlp_threshold"] = float(params.get(f"mlp_thr_{i}", 0.0))
            if params.get(f"drop_{i}", False):
                kw["keep"] = False
            elif f"token_keep_{i}" in params:
                kw["token_keep"] = round(float(params[f"token_keep_{i}"]), 6)
            blocks.append(BlockConfig(**kw))
        if not any(b.keep for b in blocks):
            blocks[0] = BlockConfig(**{k: v for k, v in blocks[0].__dict__.items() if k != "keep"})
        return PruningConfig(
            self.model,
            tuple(blocks),
            criterion=params.get("criterion", self.meta.get("criterion", "taylor")),
            width_mode=self.width_mode,
            token_mode=params.get("token_mode", self.meta.get("token_mode", "attentive")),
        )
