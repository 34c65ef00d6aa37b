"""PruningConfig: the one artifact prunetune produces, consumes and scores.

Plain, frozen data, validated on construction, JSON/YAML round trip, versioned schema. It names
the base model it fits. Widths are given either as counts (``heads``/``mlp`` per block) or as
per-layer thresholds on max-normalised saliency (``head_threshold``/``mlp_threshold``): a
threshold keeps every unit whose score divided by the layer's largest score is at or above it,
and never fewer than one head or one neuron (the WDPruning / X-Pruner form).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._io import read_mapping, yaml_problem
from .errors import ConfigError, PrunetuneError
from .models import ModelSpec, ViTArch
from .registry import SALIENCIES, TOKEN_MODES

if TYPE_CHECKING:
    from .pruners._saliency import SaliencyScores

__all__ = ["BlockConfig", "PruningConfig", "SCHEMA_VERSION", "WIDTH_MODES"]

SCHEMA_VERSION = 2
#: Versions this release reads (1 had no token_mode; it defaults to "attentive").
READABLE_SCHEMAS = (1, 2)
WIDTH_MODES = ("count", "threshold")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class BlockConfig:
    """What one transformer block keeps.

    Attributes:
        keep: False drops the whole block (depth pruning).
        heads: Attention heads kept (count mode); None keeps all.
        mlp: MLP hidden neurons kept (count mode); None keeps all.
        head_threshold: Normalised-saliency threshold for heads (threshold mode).
        mlp_threshold: Normalised-saliency threshold for MLP neurons (threshold mode).
        sparsity: Fraction of each linear weight in the block zeroed (unstructured).
        token_keep: Fraction of patch tokens kept from this block on (token pruning).
    """

    keep: bool = True
    heads: int | None = None
    mlp: int | None = None
    head_threshold: float | None = None
    mlp_threshold: float | None = None
    sparsity: float = 0.0
    token_keep: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.keep, bool):
            raise ConfigError(f"`keep` must be true or false, but got {self.keep!r}")
        for name in ("heads", "mlp"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 1):
                raise ConfigError(
                    f"`{name} >= 1` must hold (an integer count), but got {name}={v!r}"
                )
        for name in ("head_threshold", "mlp_threshold"):
            v = getattr(self, name)
            if v is not None and (not _is_num(v) or not 0.0 <= v <= 1.0):
                raise ConfigError(f"`0 <= {name} <= 1` must hold, but got {name}={v!r}")
        if not _is_num(self.sparsity) or not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"`0 <= sparsity < 1` must hold, but got sparsity={self.sparsity!r}")
        if not _is_num(self.token_keep) or not 0.0 < self.token_keep <= 1.0:
            raise ConfigError(
                f"`0 < token_keep <= 1` must hold, but got token_keep={self.token_keep!r}"
            )

    @property
    def uses_counts(self) -> bool:
        return self.heads is not None or self.mlp is not None

    @property
    def uses_thresholds(self) -> bool:
        return self.head_threshold is not None or self.mlp_threshold is not None


_BLOCK_KEYS = {f for f in BlockConfig.__dataclass_fields__}
_TOP_KEYS = {"schema_version", "model", "criterion", "width_mode", "token_mode", "blocks"}
#: timm-style model-card keys an export writes beside the config (prunetune.deploy.model_card);
#: read past, never used to build the model
_CARD_KEYS = {"architecture", "num_classes", "num_features", "pretrained_cfg", "block_shapes"}


@dataclass(frozen=True)
class PruningConfig:
    """A full pruning configuration for one base model.

    Attributes:
        model: The base model it applies to.
        blocks: One entry per block of the base model.
        criterion: Saliency criterion name (see :func:`prunetune.list_saliencies`).
        width_mode: ``"count"`` or ``"threshold"``.
        token_mode: How blocks with ``token_keep < 1`` reduce tokens: a name registered in
            :data:`prunetune.registry.TOKEN_MODES` (``attentive``, ``attentive_fuse``,
            ``merge``, ``learned``; see :mod:`prunetune.pruners.token_modes`).
        schema_version: Version of the serialised form.
    """

    model: ModelSpec
    blocks: tuple[BlockConfig, ...]
    criterion: str = "magnitude_l1"
    width_mode: str = "count"
    token_mode: str = "attentive"
    schema_version: int = SCHEMA_VERSION
    _meta: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", ModelSpec.from_obj(self.model))
        if not isinstance(self.blocks, (tuple, list)) or not self.blocks:
            raise ConfigError(f"`blocks` must be a non-empty list, but got {self.blocks!r}")
        blocks = tuple(
            b if isinstance(b, BlockConfig) else _block_from_obj(b, i)
            for i, b in enumerate(self.blocks)
        )
        object.__setattr__(self, "blocks", blocks)
        if self.schema_version not in READABLE_SCHEMAS:
            raise ConfigError(
                f"`schema_version in {READABLE_SCHEMAS}` must hold (the versions this prunetune "
                f"reads), but got schema_version={self.schema_version!r}"
            )
        object.__setattr__(self, "schema_version", SCHEMA_VERSION)
        if self.width_mode not in WIDTH_MODES:
            raise ConfigError(
                f"`width_mode` must be one of {WIDTH_MODES}, but got {self.width_mode!r}"
            )
        if self.criterion not in SALIENCIES:
            raise ConfigError(
                f"unknown criterion {self.criterion!r}; choose one of "
                f"{', '.join(SALIENCIES.names())}"
            )
        for i, b in enumerate(blocks):
            if self.width_mode == "count" and b.uses_thresholds:
                raise ConfigError(
                    f"width_mode='count' takes heads/mlp counts, but block {i} has thresholds"
                )
            if self.width_mode == "threshold" and b.uses_counts:
                raise ConfigError(
                    f"width_mode='threshold' takes thresholds, but block {i} has heads/mlp counts"
                )
        if not any(b.keep for b in blocks):
            raise ConfigError("at least one block must be kept, but every block has keep=false")
        for i, b in enumerate(blocks):
            if not b.keep and b.token_keep < 1.0:
                raise ConfigError(
                    f"block {i} is dropped (keep=false) but sets token_keep={b.token_keep}; "
                    f"remove one"
                )
        if self.token_mode not in TOKEN_MODES:
            raise ConfigError(
                f"`token_mode in {tuple(TOKEN_MODES.names())}` must hold, but got "
                f"token_mode={self.token_mode!r}"
            )
        TOKEN_MODES.get(self.token_mode).validate(self)

    # --- construction helpers -------------------------------------------------------------
    @classmethod
    def dense(cls, model: ModelSpec | str, criterion: str = "magnitude_l1") -> PruningConfig:
        """The identity configuration: keeps everything."""
        arch = ViTArch.from_spec(model)
        return cls(model, tuple(BlockConfig() for _ in range(arch.depth)), criterion=criterion)

    @classmethod
    def uniform(
        cls,
        model: ModelSpec | str,
        head_ratio: float = 1.0,
        mlp_ratio: float = 1.0,
        sparsity: float = 0.0,
        criterion: str = "magnitude_l1",
    ) -> PruningConfig:
        """Same kept fraction of heads and MLP neurons in every block (rounded, at least 1)."""
        arch = ViTArch.from_spec(model)
        for name, r in (("head_ratio", head_ratio), ("mlp_ratio", mlp_ratio)):
            if not _is_num(r) or not 0.0 < r <= 1.0:
                raise ConfigError(f"`0 < {name} <= 1` must hold, but got {name}={r!r}")
        h = max(1, round(head_ratio * arch.num_heads))
        m = max(1, round(mlp_ratio * arch.mlp_hidden))
        return cls(
            model,
            tuple(BlockConfig(heads=h, mlp=m, sparsity=sparsity) for _ in range(arch.depth)),
            criterion=criterion,
        )

    def replace(self, **changes: Any) -> PruningConfig:
        return replace(self, **changes)

    def with_block(self, index: int, **changes: Any) -> PruningConfig:
        blocks = list(self.blocks)
        blocks[index] = replace(blocks[index], **changes)
        return replace(self, blocks=tuple(blocks))

    # --- checks against a model ---------------------------------------------------------
    def check_fits(self, arch: ViTArch) -> None:
        """Raises :class:`ConfigError` unless this config fits a model with ``arch``."""
        if len(self.blocks) != arch.depth:
            raise ConfigError(
                f"`len(blocks) == depth` must hold, but got (len(blocks)={len(self.blocks)}, "
                f"depth={arch.depth}) for model {self.model.name}"
            )
        for i, b in enumerate(self.blocks):
            if b.heads is not None and b.heads > arch.num_heads:
                raise ConfigError(
                    f"`heads <= num_heads` must hold, but got (heads={b.heads}, "
                    f"num_heads={arch.num_heads}) in block {i}"
                )
            if b.mlp is not None and b.mlp > arch.mlp_hidden:
                raise ConfigError(
                    f"`mlp <= mlp_hidden` must hold, but got (mlp={b.mlp}, "
                    f"mlp_hidden={arch.mlp_hidden}) in block {i}"
                )

    def kept_heads(self, arch: ViTArch) -> list[int]:
        """Heads kept per *base* block (0 for dropped blocks); count mode only."""
        self._need_counts()
        return [(b.heads or arch.num_heads) if b.keep else 0 for b in self.blocks]

    def kept_mlp(self, arch: ViTArch) -> list[int]:
        """MLP neurons kept per *base* block (0 for dropped blocks); count mode only."""
        self._need_counts()
        return [(b.mlp or arch.mlp_hidden) if b.keep else 0 for b in self.blocks]

    def _need_counts(self) -> None:
        if self.width_mode != "count":
            raise ConfigError(
                "this needs counts; resolve a threshold config with saliency scores first"
            )

    @property
    def is_identity(self) -> bool:
        return all(
            b.keep
            and b.heads is None
            and b.mlp is None
            and not b.head_threshold
            and not b.mlp_threshold
            and b.sparsity == 0
            and b.token_keep == 1.0
            for b in self.blocks
        )

    @property
    def has_tokens(self) -> bool:
        return any(b.keep and b.token_keep < 1.0 for b in self.blocks)

    def resolve(self, scores: SaliencyScores) -> PruningConfig:
        """Turns a threshold config into counts using ``scores``; count configs return self."""
        if self.width_mode == "count":
            return self
        blocks = []
        for i, b in enumerate(self.blocks):
            heads = mlp = None
            if b.head_threshold is not None:
                heads = _count_at_threshold(scores.heads[i], b.head_threshold)
            if b.mlp_threshold is not None:
                mlp = _count_at_threshold(scores.mlp[i], b.mlp_threshold)
            blocks.append(
                BlockConfig(
                    keep=b.keep, heads=heads, mlp=mlp, sparsity=b.sparsity, token_keep=b.token_keep
                )
            )
        meta = {**self._meta, "resolved_from": self.to_dict()}
        return PruningConfig(
            self.model, tuple(blocks), self.criterion, "count", self.token_mode, _meta=meta
        )

    # --- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        defaults = asdict(BlockConfig())
        blocks = [{k: v for k, v in asdict(b).items() if v != defaults[k]} for b in self.blocks]
        return {
            "schema_version": self.schema_version,
            "model": self.model.to_dict(),
            "criterion": self.criterion,
            "width_mode": self.width_mode,
            "token_mode": self.token_mode,
            "blocks": blocks,
        }

    @classmethod
    def from_dict(cls, d: Any) -> PruningConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"a pruning config must be a mapping, but got {type(d).__name__}")
        unknown = set(d) - _TOP_KEYS - _CARD_KEYS
        if unknown:
            raise ConfigError(
                f"unknown config keys {sorted(unknown, key=str)}; allowed: {sorted(_TOP_KEYS)}"
            )
        for key in ("model", "blocks"):
            if key not in d:
                raise ConfigError(f"config is missing the required key {key!r}")
        kw = {
            k: d[k] for k in ("criterion", "width_mode", "token_mode", "schema_version") if k in d
        }
        try:
            return cls(
                model=ModelSpec.from_obj(d["model"]),
                blocks=tuple(d["blocks"]) if isinstance(d["blocks"], list) else d["blocks"],
                **kw,
            )
        except PrunetuneError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid config: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> PruningConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"malformed JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def from_yaml(cls, text: str) -> PruningConfig:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"malformed YAML: {yaml_problem(e)}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = self.to_yaml() if path.suffix.lower() in (".yaml", ".yml") else self.to_json()
        from ._io import atomic_write_text

        atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | Path) -> PruningConfig:
        """Reads a JSON or YAML config file; errors name the file."""
        path = Path(path)
        data = read_mapping(path, what="config")
        try:
            return cls.from_dict(data)
        except PrunetuneError as e:
            raise type(e)(f"config file {path}: {e}") from None


def _block_from_obj(obj: Any, i: int) -> BlockConfig:
    if not isinstance(obj, dict):
        raise ConfigError(f"block {i} must be a mapping, but got {obj!r}")
    unknown = set(obj) - _BLOCK_KEYS
    if unknown:
        raise ConfigError(
            f"unknown keys {sorted(unknown, key=str)} in block {i}; allowed: {sorted(_BLOCK_KEYS)}"
        )
    try:
        return BlockConfig(**obj)
    except ConfigError as e:
        raise ConfigError(f"{e} in block {i}") from None


def _count_at_threshold(scores, threshold: float) -> int:
    s = scores.detach().double()
    top = s.max()
    if top <= 0:
        return int(s.numel())  # nothing to tell the units apart: keep all
    return max(1, int((s / top >= threshold).sum().item()))
