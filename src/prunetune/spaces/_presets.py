"""Presets (structured, tokens, hybrid) and user YAML files that define a SearchSpace."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .._io import read_mapping
from ..errors import ConfigError
from ..models import ModelSpec, ViTArch
from ..registry import TOKEN_MODES
from ._space import Dim, SearchSpace

__all__ = ["PRESETS", "DEFAULT_CRITERIA", "build_space", "load_space"]

PRESETS = ("structured", "tokens", "hybrid")
#: Criteria searched by default: data-driven ones that are cheap to compute once per search.
DEFAULT_CRITERIA = ("magnitude_l1", "magnitude_l2", "taylor", "fisher", "activation")
#: Token modes searched by default (``learned`` needs fine-tuning before it means anything).
DEFAULT_TOKEN_MODES = ("attentive", "attentive_fuse", "merge")

_KEYS = {
    "preset",
    "criteria",
    "width_mode",
    "heads",
    "mlp_ratio",
    "threshold",
    "drop_blocks",
    "token_blocks",
    "token_keep",
    "token_modes",
}


def default_token_blocks(depth: int) -> list[int]:
    """Blocks where the token presets may reduce tokens: about 1/4, 1/2 and 3/4 of the depth."""
    return sorted({max(1, round(depth * f)) for f in (0.25, 0.5, 0.75)} - {depth})


def _is_number(v: Any, integer: bool = False) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return isinstance(v, int) if integer else math.isfinite(v)


def _range(d: Any, default: tuple, name: str, integer: bool = False) -> tuple:
    """``{low, high, step}`` of one range key, each falling back to ``default``."""
    if d is None:
        return default
    if not isinstance(d, dict) or not set(d) <= {"low", "high", "step"}:
        raise ConfigError(f"search space `{name}` must be a mapping of low/high/step, got {d!r}")
    out = (d.get("low", default[0]), d.get("high", default[1]), d.get("step", default[2]))
    kind = "an integer" if integer else "a number"
    for key, v in zip(("low", "high", "step"), out):
        if key == "step" and v is None and not integer:
            continue  # a continuous float range
        if not _is_number(v, integer):
            raise ConfigError(f"search space `{name}.{key}` must be {kind}, but got {v!r}")
    if out[2] is not None and out[2] <= 0:
        raise ConfigError(f"search space `{name}.step > 0` must hold, but got {out[2]!r}")
    return out


def _names(o: dict, key: str, default: tuple) -> tuple[str, ...]:
    """A list of names (criteria, token modes); a bare string is a common slip, so say so."""
    v = o.get(key, default)
    if isinstance(v, str):
        raise ConfigError(
            f"search space `{key}` must be a list, e.g. [{v}], but got the string {v!r}"
        )
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"search space `{key}` must be a list of names, but got {v!r}")
    if not v:
        raise ConfigError(f"search space `{key}` must list at least one name, but is empty")
    return tuple(v)


def _blocks(o: dict, key: str, default: list[int], lo: int, hi: int, why: str) -> list[int]:
    """A list of distinct block indices in ``lo..hi``."""
    v = o.get(key, default)
    if not isinstance(v, (list, tuple)) or not all(_is_number(i, integer=True) for i in v):
        raise ConfigError(
            f"search space `{key}` must be a list of block indices, e.g. "
            f"[{lo}, {hi}], but got {v!r}"
        )
    for i in v:
        if not lo <= i <= hi:
            raise ConfigError(f"{key} has block {i}; {why} {lo}..{hi}")
    dup = sorted({i for i in v if list(v).count(i) > 1})
    if dup:
        raise ConfigError(f"search space `{key}` lists block {dup[0]} more than once")
    return list(v)


def build_space(
    model: ModelSpec | str, preset: str = "hybrid", overrides: dict[str, Any] | None = None
) -> SearchSpace:
    """A SearchSpace for ``model`` from a preset, optionally changed by ``overrides`` (YAML
    keys)."""
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(
            f"search-space overrides must be a mapping, but got {type(overrides).__name__}"
        )
    o = dict(overrides or {})
    unknown = set(o) - _KEYS
    if unknown:
        raise ConfigError(
            f"unknown search-space keys {sorted(unknown, key=str)}; allowed: {sorted(_KEYS)}"
        )
    preset = o.pop("preset", preset)
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    spec = ModelSpec.from_obj(model)
    a = ViTArch.from_spec(spec)
    from ..pruners._saliency import list_saliencies

    criteria = _names(o, "criteria", DEFAULT_CRITERIA)
    bad = [c for c in criteria if c not in list_saliencies()]
    if bad:
        raise ConfigError(
            f"unknown criteria {bad} in the search space; choose from "
            f"{', '.join(list_saliencies())}"
        )
    width_mode = o.get("width_mode", "count")
    if not isinstance(width_mode, str) or width_mode not in ("count", "threshold"):
        raise ConfigError(f"width_mode must be count or threshold, got {width_mode!r}")
    dims = [Dim("criterion", "categorical", choices=criteria)]
    structured = preset in ("structured", "hybrid")
    tokens = preset in ("tokens", "hybrid")
    if structured:
        h_lo, h_hi, h_step = _range(o.get("heads"), (1, a.num_heads, 1), "heads", integer=True)
        m_lo, m_hi, m_step = _range(o.get("mlp_ratio"), (0.1, 1.0, 0.05), "mlp_ratio")
        t_lo, t_hi, t_step = _range(o.get("threshold"), (0.0, 0.9, 0.05), "threshold")
        if not 1 <= h_lo <= h_hi <= a.num_heads:
            raise ConfigError(
                f"`1 <= heads.low <= heads.high <= {a.num_heads}` must hold, "
                f"but got ({h_lo}, {h_hi})"
            )
        if not 0 < m_lo <= m_hi <= 1:
            raise ConfigError(
                f"`0 < mlp_ratio.low <= mlp_ratio.high <= 1` must hold, but got ({m_lo}, {m_hi})"
            )
        if not 0 <= t_lo <= t_hi <= 1:
            raise ConfigError(
                f"`0 <= threshold.low <= threshold.high <= 1` must hold, but got ({t_lo}, {t_hi})"
            )
        drop_blocks = _blocks(
            o,
            "drop_blocks",
            list(range(max(1, a.depth // 2), a.depth)),
            0,
            a.depth - 1,
            "the model has blocks",
        )
        for i in range(a.depth):
            if width_mode == "count":
                dims.append(Dim(f"heads_{i}", "int", h_lo, h_hi, h_step))
                dims.append(Dim(f"mlp_{i}", "float", m_lo, m_hi, m_step))
            else:
                dims.append(Dim(f"head_thr_{i}", "float", t_lo, t_hi, t_step))
                dims.append(Dim(f"mlp_thr_{i}", "float", t_lo, t_hi, t_step))
        for i in drop_blocks:
            dims.append(Dim(f"drop_{i}", "categorical", choices=(False, True)))
    if tokens:
        k_lo, k_hi, k_step = _range(o.get("token_keep"), (0.3, 1.0, 0.05), "token_keep")
        if not 0 < k_lo <= k_hi <= 1:
            raise ConfigError(
                f"`0 < token_keep.low <= token_keep.high <= 1` must hold, but got ({k_lo}, {k_hi})"
            )
        # without a class token, only the modes that need none (not attentive)
        default_modes = tuple(
            m
            for m in DEFAULT_TOKEN_MODES
            if a.num_prefix_tokens or not TOKEN_MODES.get(m).needs_class_token
        )
        modes = _names(o, "token_modes", default_modes)
        if any(m not in TOKEN_MODES for m in modes):
            raise ConfigError(
                f"token_modes must be a subset of {tuple(TOKEN_MODES.names())}, got {list(modes)}"
            )
        token_blocks = _blocks(
            o,
            "token_blocks",
            default_token_blocks(a.depth),
            1,
            a.depth - 1,
            "token reduction can start at blocks",
        )
        for i in token_blocks:
            dims.append(Dim(f"token_keep_{i}", "float", k_lo, k_hi, k_step))
        dims.append(Dim("token_mode", "categorical", choices=modes))
    return SearchSpace(spec, a, tuple(dims), width_mode=width_mode, preset=preset)


def load_space(model: ModelSpec | str, preset_or_file: str | None) -> SearchSpace:
    """``--space``: a preset name or a YAML/JSON file of overrides (which may name a preset)."""
    if preset_or_file is None:
        return build_space(model, "hybrid")
    if preset_or_file in PRESETS:
        return build_space(model, preset_or_file)
    if not isinstance(preset_or_file, str):
        raise ConfigError(
            f"--space must be a preset name or a file path, but got {preset_or_file!r}"
        )
    path = Path(preset_or_file)
    if preset_or_file.strip() and (
        path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_dir()
    ):
        data = read_mapping(path, what="search-space")
        try:
            return build_space(model, data.get("preset", "hybrid"), data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    if path.is_file():
        raise ConfigError(f"search-space file {path} must end in .yaml, .yml or .json; rename it")
    raise ConfigError(
        f"unknown preset {preset_or_file!r}; choose one of {', '.join(PRESETS)} or pass a YAML file"
    )
