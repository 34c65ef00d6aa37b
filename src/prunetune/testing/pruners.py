"""The contract every registered pruner must pass.

Run it from a plug-in's own tests::

    from prunetune.testing import check_pruner

    def test_my_pruner():
        check_pruner("my_pruner")

On a tiny timm VisionTransformer (:data:`prunetune.testing.saliency.TINY_SPEC`) the pruner must

- apply to a configuration that needs it and not to the dense one. The configuration is the
  pruner's own ``example_config(spec) -> PruningConfig`` when it has that method, else the
  first of a few standard ones it applies to (fewer heads, narrower MLPs, sparsity, dropped
  blocks, token reduction in each registered token mode, all of them mixed);
- leave the dense model untouched (``prune`` works on a copy);
- cost what the formula says: ``estimate_cost(config).macs`` equals ``measure_macs`` of the
  pruned model, and never exceeds the dense cost;
- give a model that runs forward (finite outputs) and backward (a finite gradient on every
  trainable parameter);
- round-trip: ``rebuild_structure`` of a fresh base model with the resolved configuration,
  then ``load_state_dict`` of the pruned weights (strict), computes the same outputs.

A broken rule raises AssertionError naming the pruner and the rule.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BlockConfig, PruningConfig
from ..evaluators import estimate_cost, measure_macs
from ..models import ModelSpec, ViTArch, build_model, input_shape
from ..pruners import prune, rebuild_structure
from ..registry import PRUNERS, TOKEN_MODES
from .saliency import TINY_SPEC, tiny_model

__all__ = ["check_pruner", "standard_configs"]


def standard_configs(spec: ModelSpec) -> list[PruningConfig]:
    """Configurations that make the built-in kinds of pruning do real work on ``spec``."""
    arch = ViTArch.from_spec(spec)
    H, M, depth = arch.num_heads, arch.mlp_hidden, arch.depth

    def cfg(block: Callable[[int], BlockConfig], **kw) -> PruningConfig:
        return PruningConfig(spec, tuple(block(i) for i in range(depth)), **kw)

    heads = [max(1, H // 2), None, max(1, H - 1)]
    mlp = [max(1, M // 3), M - 1, None]
    configs = [
        cfg(lambda i: BlockConfig(heads=heads[i % 3])),
        cfg(lambda i: BlockConfig(mlp=mlp[i % 3])),
        cfg(lambda i: BlockConfig(sparsity=0.5 if i % 2 == 0 else 0.0)),
        cfg(lambda i: BlockConfig(keep=i != 1)),
    ]
    for mode in TOKEN_MODES.names():
        configs.append(
            cfg(lambda i: BlockConfig(token_keep=0.5 if i == 1 else 1.0), token_mode=mode)
        )
    configs.append(
        cfg(
            lambda i: BlockConfig(
                keep=i != depth - 1,
                heads=heads[i % 3],
                mlp=mlp[(i + 1) % 3],
                sparsity=0.25 * (i % 2),
            )
        )
    )
    return configs


def check_pruner(name: str, spec: ModelSpec = TINY_SPEC) -> None:
    """Runs the pruner contract on the pruner registered as ``name``.

    Args:
        name: A name in :data:`prunetune.registry.PRUNERS`.
        spec: The model to run it on (keep it tiny; a token pruner in an ``attentive`` mode
            needs a class token).

    Raises:
        AssertionError: A rule is broken; the message names the pruner and the rule.
    """
    _require(
        name in PRUNERS,
        name,
        "it is registered in prunetune.registry.PRUNERS",
        f"registered: {', '.join(PRUNERS.names())}",
    )
    pruner = PRUNERS.get(name)
    _require(
        not pruner.applies(PruningConfig.dense(spec)),
        name,
        "it does not apply to the dense configuration",
    )
    cfg = _exercising_config(name, pruner, spec)

    dense = tiny_model(spec).eval()
    arch = ViTArch.from_model(dense)
    shape = input_shape(dense)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
    before = {k: v.detach().clone() for k, v in dense.state_dict().items()}
    try:
        pruned = prune(dense, cfg)
    except Exception as e:
        raise AssertionError(
            f"pruner {name!r} breaks a rule: prune() builds its configuration "
            f"(raised {type(e).__name__}: {e})"
        ) from e
    after = dense.state_dict()
    changed = [k for k in before if k not in after or not torch.equal(before[k], after[k])]
    _require(
        not changed and after.keys() == before.keys(),
        name,
        "prune() leaves the dense model untouched",
        f"changed {changed[:5]}",
    )
    resolved = pruned.pruning_config

    cost, dense_cost = estimate_cost(resolved), estimate_cost(PruningConfig.dense(spec))
    measured = measure_macs(pruned, shape)
    _require(
        cost.macs == measured,
        name,
        "estimate_cost(config).macs equals measure_macs(pruned model)",
        f"estimated {cost.macs:,}, measured {measured:,}",
    )
    _require(
        cost.macs <= dense_cost.macs,
        name,
        "the cost never exceeds the dense cost",
        f"{cost.macs:,} > {dense_cost.macs:,} MACs",
    )

    out = _outputs(pruned, x)
    _require(
        out.shape == (len(x), arch.num_classes) and bool(torch.isfinite(out).all()),
        name,
        "the pruned model runs forward to finite outputs",
        f"got shape {tuple(out.shape)}, finite={bool(torch.isfinite(out).all())}",
    )
    _check_backward(name, copy.deepcopy(pruned), x)

    fresh = build_model(spec)
    try:
        rebuild_structure(fresh, resolved)
        fresh.load_state_dict(pruned.state_dict())
    except Exception as e:
        raise AssertionError(
            f"pruner {name!r} breaks a rule: rebuild_structure + load_state_dict "
            f"(strict) round-trips (raised {type(e).__name__}: {e})"
        ) from e
    again = _outputs(fresh, x)
    _require(
        torch.equal(again, out),
        name,
        "the rebuilt model with the pruned weights computes the same outputs",
        f"max difference {float((again - out).abs().max()):.3g}",
    )


# --- rules -----------------------------------------------------------------------------------


def _require(ok: bool, name: str, rule: str, detail: str = "") -> None:
    if not ok:
        raise AssertionError(
            f"pruner {name!r} breaks a rule: {rule}" + (f" ({detail})" if detail else "")
        )


def _exercising_config(name: str, pruner, spec: ModelSpec) -> PruningConfig:
    own = getattr(pruner, "example_config", None)
    configs = [own(spec)] if own is not None else standard_configs(spec)
    for cfg in configs:
        if pruner.applies(cfg):
            return cfg
    where = "its example_config(spec)" if own is not None else "a standard configuration"
    raise AssertionError(
        f"pruner {name!r} breaks a rule: it applies to {where} (define "
        "example_config(spec) -> PruningConfig on the pruner to give one)"
    )


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def _check_backward(name: str, model: nn.Module, x: torch.Tensor) -> None:
    model.train()
    y = model(x)
    if isinstance(y, tuple):  # distilled DeiT in training returns two heads
        y = sum(y)
    loss = F.cross_entropy(y, torch.arange(len(x)) % y.shape[-1])
    loss.backward()
    _require(bool(torch.isfinite(loss)), name, "the pruned model trains to a finite loss")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    _require(
        not missing,
        name,
        "backward reaches every trainable parameter",
        f"no gradient for {missing[:5]}",
    )
    bad = [n for n, p in params if not torch.isfinite(p.grad).all()]
    _require(not bad, name, "backward gives finite gradients", f"non-finite in {bad[:5]}")
