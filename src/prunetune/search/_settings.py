"""What defines a search: validated, frozen settings with a YAML form.

``prunetune search --config run.yaml`` reads them (flags given on the command line win); the
resolved settings (study named, every path absolute) are stored with the study and written to
``settings.yaml`` beside the artifacts, so the same search can be rerun from the file.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .._io import read_mapping
from ..errors import ConfigError, PrunetuneError
from ..evaluators import tier_label
from ..families.hf_vit import PREFIX as HF_PREFIX
from ..models import INTERPOLATIONS
from ..registry import BACKENDS, PROXIES, SAMPLERS
from ._artifacts import STORE_FOLDER, parse_store
from ._budget import parse_budget
from ._study import DEFAULT_STORAGE, default_study_name
from ._study import _sqlite_path as sqlite_path

__all__ = ["SearchSettings", "TierSpec", "default_tiers", "settings_of"]

#: Version of the settings' file form (``settings.yaml``, the study's ``settings`` entry).
SETTINGS_VERSION = 1


#: Informed starting points a new study may try first (:mod:`prunetune.search._start`).
STARTS = ("uniform", "sensitivity", "fastnas", "slim")
#: The ones it tries by default.
DEFAULT_STARTS = ("uniform", "sensitivity")

#: Settings of the first file form, read into ``tiers``.
_LEGACY_TIER_KEYS = ("tier_a_warmup", "tier_b_fraction", "tier_b_steps")


def _bad(rule: str, name: str, value: Any) -> PrunetuneError:
    return PrunetuneError(f"`{rule}` must hold, but got {name}={value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class TierSpec:
    """One proxy tier: a registered proxy, its options and the gate after it.

    Attributes:
        proxy: Name in :data:`prunetune.registry.PROXIES` (``zero_shot``, ``short_kd``, ...).
        options: Keyword arguments of the proxy's ``from_context`` (e.g. ``steps`` of
            ``short_kd``).
        keep: Fraction of candidates that go on to the next tier: a candidate passes when its
            score reaches the ``1 - keep`` quantile of this tier's earlier scores in the study.
            1.0 (and the last tier) pass everything.
        warmup: Every candidate passes while the tier has fewer than this many earlier scores.
    """

    proxy: str
    options: dict[str, Any] = field(default_factory=dict)
    keep: float = 1.0
    warmup: int = 0

    def validate(self, label: str) -> None:
        where = f"tiers[{label}]"
        if not isinstance(self.proxy, str) or self.proxy not in PROXIES:
            raise PrunetuneError(
                f"{where}: unknown proxy {self.proxy!r}; choose one of {', '.join(PROXIES.names())}"
            )
        if not isinstance(self.options, dict):
            raise _bad(f"{where}.options is a mapping", "options", self.options)
        params = inspect.signature(PROXIES.get(self.proxy).from_context).parameters
        takes = [n for n, p in params.items() if n != "ctx" and p.kind == p.KEYWORD_ONLY]
        for k in self.options:
            if k not in takes:
                raise PrunetuneError(
                    f"{where}: proxy {self.proxy!r} takes the options "
                    f"{', '.join(takes) or '(none)'}, but got {k!r}"
                )
        if not _is_num(self.keep) or not 0 < self.keep <= 1:
            raise _bad(f"0 < {where}.keep <= 1", "keep", self.keep)
        if not _is_int(self.warmup) or self.warmup < 0:
            raise _bad(f"{where}.warmup >= 0 (an integer)", "warmup", self.warmup)
        check = getattr(PROXIES.get(self.proxy), "check", None)
        if check is not None:
            try:
                check(**self.options)
            except (TypeError, ValueError) as e:
                raise PrunetuneError(f"{where} ({self.proxy}): {e}") from None

    @classmethod
    def from_obj(cls, obj: Any, label: str) -> TierSpec:
        if isinstance(obj, TierSpec):
            return obj
        if isinstance(obj, str):
            return cls(obj)
        if not isinstance(obj, dict):
            raise PrunetuneError(
                f"tiers[{label}] must be a proxy name or a mapping with 'proxy', but got {obj!r}"
            )
        unknown = set(obj) - {f.name for f in fields(cls)}
        if unknown:
            raise PrunetuneError(
                f"tiers[{label}] has unknown keys {sorted(unknown)}; "
                f"a tier takes proxy, options, keep, warmup"
            )
        if "proxy" not in obj:
            raise PrunetuneError(
                f"tiers[{label}] names no proxy; add proxy: zero_shot (or another "
                f"of {', '.join(PROXIES.names())})"
            )
        return cls(**{**obj, "options": dict(obj.get("options") or {})})


def default_tiers(steps: int = 100, keep: float = 0.5, warmup: int = 4) -> tuple[TierSpec, ...]:
    """Tier a: zero-shot agreement with the dense model, the best ``keep`` fraction go on;
    tier b: ``steps`` of distillation, then val accuracy (the trial's accuracy objective)."""
    return (
        TierSpec("zero_shot", keep=keep, warmup=warmup),
        TierSpec("short_kd", options={"steps": steps}),
    )


@dataclass(frozen=True)
class SearchSettings:
    """Everything that defines a search; validated on construction, immutable.

    Stored with the study (``settings``) and beside the artifacts (``settings.yaml``);
    :meth:`load` reads that file form back.
    """

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
    tiers: tuple[TierSpec, ...] = field(default_factory=default_tiers)
    budget_target_low: float | None = None
    start: tuple[str, ...] = DEFAULT_STARTS
    cpu_budget: float | None = None
    lr: float = 5e-4
    final_epochs: float = 8.0
    front_max: int = 4
    run_final: bool = True
    artifacts: str | None = None
    artifact_store: str | None = None
    latency_batch: int = 64
    measure_latency: bool = False
    refresh_latency_table: bool = False
    grace_period: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    check_dense: bool = True
    backend: str = "optuna"
    workers: int = 1
    address: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if isinstance(self.tiers, (list, tuple)):
            set_(
                self,
                "tiers",
                tuple(TierSpec.from_obj(t, tier_label(i)) for i, t in enumerate(self.tiers)),
            )
        for name in ("mean", "std", "start"):
            v = getattr(self, name)
            if isinstance(v, list):
                set_(self, name, tuple(v))
        self._validate()

    def _validate(self) -> None:
        ints = {
            "n_trials": 1,
            "seed": 0,
            "calib_samples": 1,
            "batch_size": 1,
            "front_max": 1,
            "latency_batch": 1,
            "workers": 1,
        }
        for name, low in ints.items():
            v = getattr(self, name)
            if not _is_int(v) or v < low:
                raise _bad(f"{name} >= {low} (an integer)", name, v)
        if not _is_num(self.lr) or self.lr <= 0:
            raise _bad("lr > 0", "lr", self.lr)
        if not _is_num(self.final_epochs) or self.final_epochs < 0:
            raise _bad("final_epochs >= 0", "final_epochs", self.final_epochs)
        if self.budget_target_low is not None and (
            not _is_num(self.budget_target_low) or not 0 < self.budget_target_low <= 1
        ):
            raise _bad("0 < budget_target_low <= 1", "budget_target_low", self.budget_target_low)
        if not isinstance(self.start, tuple) or any(k not in STARTS for k in self.start):
            raise PrunetuneError(
                f"start must list starting points among {', '.join(STARTS)} (or none), "
                f"but got {self.start!r}"
            )
        if self.cpu_budget is not None and (not _is_num(self.cpu_budget) or self.cpu_budget <= 0):
            raise _bad("cpu_budget > 0 (CPU seconds)", "cpu_budget", self.cpu_budget)
        if self.cpu_budget is not None and self.backend != "optuna":
            raise PrunetuneError(
                "cpu_budget counts this process's CPU time and works only with --backend optuna"
            )
        if self.grace_period is not None and (
            not _is_int(self.grace_period) or self.grace_period < 1
        ):
            raise _bad("grace_period >= 1 (seconds)", "grace_period", self.grace_period)
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and (
                not isinstance(v, tuple)
                or not v
                or not all(_is_num(x) and (name == "mean" or x > 0) for x in v)
            ):
                raise _bad(
                    f"{name} is a list of finite numbers" + (" > 0" if name == "std" else ""),
                    name,
                    v,
                )
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise _bad(f"interpolation in {INTERPOLATIONS}", "interpolation", self.interpolation)
        if self.crop_pct is not None and (not _is_num(self.crop_pct) or not 0 < self.crop_pct <= 1):
            raise _bad("0 < crop_pct <= 1", "crop_pct", self.crop_pct)
        if self.study is not None and (not isinstance(self.study, str) or not self.study.strip()):
            raise _bad("study is a non-empty name", "study", self.study)
        for name in (
            "model",
            "checkpoint",
            "data",
            "data_root",
            "space",
            "artifacts",
            "artifact_store",
            "device",
            "address",
        ):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise _bad(f"{name} is a string", name, v)
        if self.artifact_store is not None:
            parse_store(self.artifact_store)
        for name in (
            "download",
            "run_final",
            "measure_latency",
            "refresh_latency_table",
            "check_dense",
        ):
            if not isinstance(getattr(self, name), bool):
                raise _bad(f"{name} is true or false", name, getattr(self, name))
        if not isinstance(self.storage, str) or "://" not in self.storage:
            raise PrunetuneError(
                f"storage {self.storage!r} is not a URL; use e.g. "
                f"sqlite:///prunetune.db or postgresql://host/db"
            )
        for reg, name in ((SAMPLERS, "sampler"), (BACKENDS, "backend")):
            if getattr(self, name) not in reg:
                raise PrunetuneError(
                    f"unknown {name} {getattr(self, name)!r}; choose one of "
                    f"{', '.join(reg.names())}"
                )
        if self.backend != "ray" and (self.workers != 1 or self.address is not None):
            flag = "workers" if self.workers != 1 else "address"
            raise PrunetuneError(
                f"--{flag} needs --backend ray; several in-process workers are several "
                f"`prunetune search` processes on one shared --storage"
            )
        if not isinstance(self.tiers, tuple) or not self.tiers:
            raise _bad("tiers is a non-empty list", "tiers", self.tiers)
        for i, t in enumerate(self.tiers):
            t.validate(tier_label(i))
        parse_budget(self.budget)  # a malformed budget fails here, before anything loads

    # --- file form ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tiers"] = [{k: v for k, v in asdict(t).items()} for t in self.tiers]
        for name in ("mean", "std", "start"):
            if d[name] is not None:
                d[name] = list(d[name])
        return {"settings_version": SETTINGS_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "settings") -> SearchSettings:
        d = dict(d)
        version = d.pop("settings_version", SETTINGS_VERSION)
        if version != SETTINGS_VERSION:
            raise PrunetuneError(
                f"{where}: `settings_version == {SETTINGS_VERSION}` must hold "
                f"(the version this prunetune reads), but got {version!r}"
            )
        legacy = {k: d.pop(k) for k in _LEGACY_TIER_KEYS if k in d}
        if legacy and "tiers" not in d:  # studies stored before tiers were a list
            d["tiers"] = default_tiers(
                steps=legacy.get("tier_b_steps", 100),
                keep=legacy.get("tier_b_fraction", 0.5),
                warmup=legacy.get("tier_a_warmup", 4),
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PrunetuneError(
                f"{where}: unknown settings {unknown}; see `prunetune search --help` "
                f"(a setting is a flag's name with _ for -)"
            )
        return cls(**d)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> SearchSettings:
        """Reads a settings file (YAML or JSON, by suffix); one-line errors name the file."""
        path = Path(path)
        try:
            return cls.from_dict(read_mapping(path, what="settings"), where=f"settings file {path}")
        except ConfigError as e:
            raise PrunetuneError(str(e)) from None

    def dump(self, path: str | Path) -> Path:
        """Writes the YAML form atomically."""
        from .._io import atomic_write_text

        path = Path(path)
        atomic_write_text(path, self.to_yaml())
        return path

    # --- derived -----------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """The fields that must match when a search resumes an existing study."""
        d = self.to_dict()
        return {
            k: d[k]
            for k in (
                "budget",
                "model",
                "checkpoint",
                "data",
                "space",
                "calib_samples",
                "batch_size",
                "tiers",
                "budget_target_low",
                "lr",
                "seed",
                "mean",
                "std",
                "interpolation",
                "crop_pct",
            )
        }

    def artifacts_dir(self) -> Path:
        if self.artifacts:
            return Path(self.artifacts)
        study = self.study or default_study_name(self.budget)
        path = sqlite_path(self.storage)
        if path is not None:
            return path.parent / "prunetune-artifacts" / study
        return Path("prunetune-artifacts") / study

    def store_spec(self) -> str:
        """The Optuna artifact store of the Pareto-stage weights: ``artifact_store``, by default
        the folder ``optuna-artifacts`` in :meth:`artifacts_dir`."""
        return self.artifact_store or str(self.artifacts_dir() / STORE_FOLDER)

    def resolved(self) -> SearchSettings:
        """The same settings with the study named and every location absolute.

        Stored with the study, so ``export``, ``report``, ``dashboard`` and the ``reproduce``
        command work from any folder; a relative path that names nothing stays as given (a
        timm model name, a torchvision data set name).
        """

        def absolute(v: str | None) -> str | None:
            if v is not None and str(v).startswith(HF_PREFIX):  # hf:DIR, a model folder
                return HF_PREFIX + str(absolute(str(v)[len(HF_PREFIX) :]))
            if v is None or not str(v).strip() or not Path(v).expanduser().exists():
                return v
            return str(Path(v).expanduser().resolve())

        storage = self.storage
        path = sqlite_path(storage)
        if (
            path is not None
            and not path.is_absolute()
            and not storage.startswith("sqlite:///file:")
        ):
            query = storage.partition("?")[2]
            storage = "sqlite:///" + str(path.resolve()) + ("?" + query if query else "")
        out = replace(
            self,
            storage=storage,
            study=self.study or default_study_name(self.budget),
            model=absolute(self.model),
            checkpoint=absolute(self.checkpoint),
            data=absolute(self.data),
            data_root=absolute(self.data_root),
            space=absolute(self.space),
        )
        out = replace(out, artifacts=str(out.artifacts_dir().expanduser().resolve()))
        store = out.store_spec()
        if parse_store(store)[0] == "folder":
            store = str(Path(store).expanduser().resolve())
        return replace(out, artifact_store=store)


def settings_of(study) -> SearchSettings:
    """The settings a study was started with (one-line error for a study prunetune did not make)."""
    raw = study.user_attrs.get("settings")
    if raw is None:
        raise PrunetuneError(f"study {study.study_name!r} was not made by prunetune search")
    return SearchSettings.from_dict(raw, where=f"study {study.study_name!r}")
