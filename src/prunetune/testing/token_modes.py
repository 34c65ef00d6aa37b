"""The contract every registered token mode must pass.

Run it from a plug-in's own tests::

    from prunetune.testing.token_modes import check_token_mode

    def test_my_mode():
        check_token_mode("my_mode")

On a tiny timm VisionTransformer (:data:`prunetune.testing.saliency.TINY_SPEC`), with the
mode's own ``example_config(spec) -> PruningConfig`` when it has one, else a random valid
configuration (random heads, MLP widths, dropped blocks and keep rates), the mode must

- be a :class:`~prunetune.pruners.TokenMode` whose pruner ``tokens_<name>`` is registered and
  applies to that configuration;
- cost what its formula says: ``estimate_cost(config)`` equals the pruned model's measured
  MACs (``measure_macs``) and parameters, and the pruned model runs on the token count the
  cost model uses;
- run forward in eval and train mode (finite outputs) and backward (a finite gradient on every
  trainable parameter, its auxiliary loss included), with timm's fused and explicit attention;
  an eval forward after a training one gives what it gave before (per-forward state resets);
- compute the dense outputs (eval) when its reducing blocks keep every token;
- round-trip: ``rebuild_structure`` of a fresh base model, then ``load_state_dict`` of the
  pruned weights (strict), computes the same outputs;
- enforce its rules: a mode that reads the previous block's attention (``captures``) rejects
  reduction at the first kept block, naming it; one that ``needs_class_token`` refuses a model
  without a class token.

A broken rule raises AssertionError naming the mode and the rule.
"""

from __future__ import annotations

import copy
import random

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BlockConfig, PruningConfig
from ..errors import ConfigError
from ..evaluators import count_params, estimate_cost, measure_macs
from ..families import family_of
from ..models import ModelSpec, ViTArch, build_model, input_shape
from ..pruners import TokenMode, prune, rebuild_structure
from ..pruners._tokens import token_aux_loss
from ..registry import PRUNERS, TOKEN_MODES
from .saliency import TINY_SPEC, tiny_model

__all__ = ["check_token_mode", "random_token_config"]

#: TINY_SPEC without a class token (average pooling): what class-token modes must refuse.
NO_CLASS_TOKEN_SPEC = ModelSpec(
    "vit_custom",
    {
        "img_size": 16,
        "patch_size": 4,
        "in_chans": 3,
        "num_classes": 5,
        "embed_dim": 32,
        "depth": 3,
        "num_heads": 4,
        "mlp_ratio": 2.0,
        "class_token": False,
        "global_pool": "avg",
    },
)


def random_token_config(name: str, spec: ModelSpec, rng: random.Random) -> PruningConfig:
    """A random configuration in token mode ``name`` with at least one reducing block.

    Reduction starts after the first kept block when the mode captures the previous block's
    attention (the rule the base class enforces).
    """
    mode = TOKEN_MODES.get(name)
    arch = ViTArch.from_spec(spec)
    keep = [rng.random() < 0.8 for _ in range(arch.depth)]
    keep[rng.randrange(arch.depth)] = True
    kept = [i for i, k in enumerate(keep) if k]
    if mode.captures and len(kept) == 1:  # a capturing mode needs a block before reduction
        keep = [True] * arch.depth
        kept = list(range(arch.depth))
    can_reduce = kept[1:] if mode.captures else kept
    reduce = {i for i in can_reduce if rng.random() < 0.6} or {rng.choice(can_reduce)}
    blocks = [
        BlockConfig(
            keep=keep[i],
            heads=rng.choice([None, rng.randint(1, arch.num_heads)]),
            mlp=rng.choice([None, rng.randint(1, arch.mlp_hidden)]),
            token_keep=round(rng.uniform(0.3, 0.9), 2) if i in reduce else 1.0,
        )
        for i in range(arch.depth)
    ]
    return PruningConfig(spec, tuple(blocks), token_mode=name)


def check_token_mode(name: str, spec: ModelSpec = TINY_SPEC, seed: int = 0) -> None:
    """Runs the token-mode contract on the mode registered as ``name``.

    Args:
        name: A name in :data:`prunetune.registry.TOKEN_MODES`.
        spec: The model to run it on (keep it tiny; a class-token mode needs a class token).
        seed: Seed of the random configuration and inputs.

    Raises:
        AssertionError: A rule is broken; the message names the mode and the rule.
    """
    _require(
        name in TOKEN_MODES,
        name,
        "it is registered in prunetune.registry.TOKEN_MODES",
        f"registered: {', '.join(TOKEN_MODES.names())}",
    )
    mode = TOKEN_MODES.get(name)
    _require(
        isinstance(mode, TokenMode),
        name,
        "it is a prunetune.pruners.TokenMode",
        f"got {type(mode).__name__}",
    )
    pruner_name = f"tokens_{name}"
    _require(pruner_name in PRUNERS, name, f"its pruner {pruner_name!r} is registered")
    rng = random.Random(f"{name}-{seed}")
    own = getattr(mode, "example_config", None)
    cfg = own(spec) if own is not None else random_token_config(name, spec, rng)
    _require(
        PRUNERS.get(pruner_name).applies(cfg),
        name,
        f"its pruner {pruner_name!r} applies to a configuration that reduces tokens",
    )

    dense = tiny_model(spec, seed).eval()
    arch = ViTArch.from_model(dense)
    shape = input_shape(dense)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(seed + 2))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            pruned = prune(dense, cfg)
        except Exception as e:
            raise AssertionError(
                f"token mode {name!r} breaks a rule: prune() builds "
                f"{cfg.to_json()} (raised {type(e).__name__}: {e})"
            ) from e
    _check_cost(name, cfg, pruned, shape, x)
    _check_forward(name, pruned, x, arch)
    _check_backward(name, copy.deepcopy(pruned), x)
    _check_full_keep(name, cfg, dense, x)
    _check_round_trip(name, cfg, pruned, spec, x)
    _check_rules(name, mode, spec)


# --- rules -----------------------------------------------------------------------------------


def _require(ok: bool, name: str, rule: str, detail: str = "") -> None:
    if not ok:
        raise AssertionError(
            f"token mode {name!r} breaks a rule: {rule}" + (f" ({detail})" if detail else "")
        )


def _run(name: str, rule: str, fn, *args):
    """``fn(*args)``; an exception becomes an AssertionError naming the mode and the rule."""
    try:
        return fn(*args)
    except Exception as e:
        raise AssertionError(
            f"token mode {name!r} breaks a rule: {rule} (raised {type(e).__name__}: {e})"
        ) from e


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def _check_cost(
    name: str, cfg: PruningConfig, pruned: nn.Module, shape: tuple[int, ...], x: torch.Tensor
) -> None:
    cost = _run(name, "estimate_cost(config) computes its cost", estimate_cost, cfg)
    measured = _run(name, "measure_macs(pruned model) runs", measure_macs, pruned, shape)
    _require(
        cost.macs == measured,
        name,
        "estimate_cost(config).macs equals measure_macs(pruned model)",
        f"estimated {cost.macs:,}, measured {measured:,} for {cfg.to_json()}",
    )
    params = count_params(pruned)[0]
    _require(
        cost.params == params,
        name,
        "estimate_cost(config).params equals the pruned model's parameters",
        f"estimated {cost.params:,}, counted {params:,}",
    )
    tokens = [b.tokens for b in cost.blocks if b.kept][-1]
    pruned.eval()
    family = family_of(pruned)
    seen = []
    hook = family.blocks(pruned)[-1].register_forward_hook(
        lambda mod, args, out: seen.append(out.shape[1])
    )
    try:
        with torch.no_grad():
            pruned(x)
    finally:
        hook.remove()
    got = seen[-1]
    _require(
        got == tokens,
        name,
        "the pruned model runs on the token count the cost model uses",
        f"last block: cost model {tokens}, model {got}",
    )


def _check_forward(name: str, pruned: nn.Module, x: torch.Tensor, arch: ViTArch) -> None:
    first = _run(name, "the pruned model runs forward (eval)", _outputs, pruned, x)
    family = family_of(pruned)
    for fused in (True, False):
        family.set_explicit_attention(pruned, not fused)
        for train in (True, False):
            pruned.train(train)
            with torch.no_grad():
                out = _run(
                    name,
                    f"the pruned model runs forward (train={train}, fused_attn={fused})",
                    pruned,
                    x,
                )
            if isinstance(out, tuple):  # distilled DeiT in training returns two heads
                out = out[0]
            _require(
                out.shape == (len(x), arch.num_classes) and bool(torch.isfinite(out).all()),
                name,
                f"the pruned model runs forward to finite outputs (train={train}, "
                f"fused_attn={fused})",
                f"got shape {tuple(out.shape)}",
            )
    family.set_explicit_attention(pruned, False)
    again = _outputs(pruned, x)
    _require(
        torch.allclose(again, first, atol=1e-5),
        name,
        "an eval forward after training forwards gives the same outputs (reset state)",
        f"max difference {float((again - first).abs().max()):.3g}",
    )


def _check_backward(name: str, model: nn.Module, x: torch.Tensor) -> None:
    for fused in (True, False):
        family_of(model).set_explicit_attention(model, not fused)
        model.train()
        model.zero_grad()
        y = _run(name, f"the pruned model runs forward (train, fused_attn={fused})", model, x)
        if isinstance(y, tuple):
            y = sum(y)
        loss = F.cross_entropy(y, torch.arange(len(x)) % y.shape[-1])
        aux = token_aux_loss(model)
        if aux is not None:
            _require(bool(torch.isfinite(aux)), name, "its auxiliary loss is finite")
            loss = loss + aux
        _require(bool(torch.isfinite(loss)), name, "the pruned model trains to a finite loss")
        _run(name, "the pruned model runs backward", loss.backward)
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        missing = [n for n, p in params if p.grad is None]
        _require(
            not missing,
            name,
            f"backward reaches every trainable parameter (fused_attn={fused})",
            f"no gradient for {missing[:5]}",
        )
        bad = [n for n, p in params if not torch.isfinite(p.grad).all()]
        _require(not bad, name, "backward gives finite gradients", f"non-finite in {bad[:5]}")


def _check_full_keep(name: str, cfg: PruningConfig, dense: nn.Module, x: torch.Tensor) -> None:
    """Reducing blocks that keep every token (⌈0.999·P⌉ = P) change nothing but the mode's
    own overhead: the dense outputs (eval), and a cost that still matches the count."""
    full = PruningConfig(
        cfg.model,
        tuple(
            BlockConfig(keep=b.keep, token_keep=0.999 if b.token_keep < 1.0 else 1.0)
            for b in cfg.blocks
        ),
        token_mode=name,
    )
    same_depth = PruningConfig(cfg.model, tuple(BlockConfig(keep=b.keep) for b in cfg.blocks))
    with torch.random.fork_rng(devices=[]):
        pruned = prune(dense, full)
    got = _run(name, "the model runs forward when no token goes", _outputs, pruned, x)
    want = _outputs(prune(dense, same_depth), x)
    _require(
        torch.allclose(got, want, atol=1e-5),
        name,
        "reducing blocks that keep every token compute the unreduced outputs (eval)",
        f"max difference {float((got - want).abs().max()):.3g}",
    )
    est, measured = estimate_cost(full).macs, measure_macs(pruned, tuple(x.shape[1:]))
    _require(
        est == measured,
        name,
        "estimate_cost equals measure_macs when no token goes",
        f"estimated {est:,}, measured {measured:,}",
    )


def _check_round_trip(
    name: str, cfg: PruningConfig, pruned: nn.Module, spec: ModelSpec, x: torch.Tensor
) -> None:
    _require(
        PruningConfig.from_dict(cfg.to_dict()) == cfg,
        name,
        "its configuration round-trips through to_dict/from_dict",
    )
    out = _outputs(pruned, x)
    fresh = build_model(spec)
    try:
        rebuild_structure(fresh, pruned.pruning_config)
        fresh.load_state_dict(pruned.state_dict())
    except Exception as e:
        raise AssertionError(
            f"token mode {name!r} breaks a rule: rebuild_structure + "
            f"load_state_dict (strict) round-trips (raised {type(e).__name__}: "
            f"{e})"
        ) from e
    again = _outputs(fresh, x)
    _require(
        torch.allclose(again, out, atol=1e-6),
        name,
        "the rebuilt model with the pruned weights computes the same outputs",
        f"max difference {float((again - out).abs().max()):.3g}",
    )


def _check_rules(name: str, mode: TokenMode, spec: ModelSpec) -> None:
    arch = ViTArch.from_spec(spec)
    first_reduces = tuple(BlockConfig(token_keep=0.5 if i == 0 else 1.0) for i in range(arch.depth))
    if mode.captures:
        try:
            PruningConfig(spec, first_reduces, token_mode=name)
        except ConfigError as e:
            _require(
                "first kept block (0)" in str(e) and "token_keep=1" in str(e),
                name,
                "its rejection of reduction at the first kept block names the block and "
                "what must hold",
                f"got {e}",
            )
        else:
            _require(
                False,
                name,
                "a mode that captures the previous block's attention rejects "
                "token reduction at the first kept block",
            )
    if mode.needs_class_token:
        cfg = PruningConfig(
            NO_CLASS_TOKEN_SPEC,
            tuple(BlockConfig(token_keep=0.5 if i == 1 else 1.0) for i in range(3)),
            token_mode=name,
        )
        try:
            prune(build_model(NO_CLASS_TOKEN_SPEC), cfg)
        except ConfigError as e:
            _require(
                "class token" in str(e),
                name,
                "its refusal names the missing class token",
                f"got {e}",
            )
        else:
            _require(False, name, "a mode that needs a class token refuses a model without one")
