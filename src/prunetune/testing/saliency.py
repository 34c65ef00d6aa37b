"""The contract every registered saliency criterion must pass.

Run it from a plug-in's own tests::

    from prunetune.testing import check_saliency

    def test_my_criterion():
        check_saliency("my_criterion")

On a tiny timm VisionTransformer (:data:`TINY_SPEC`, a second or so on a CPU) the criterion,
built as ``get_saliency(name)`` builds it (no arguments), must

- return a :class:`~prunetune.pruners.SaliencyScores` named after it, with one finite tensor per
  block of shape ``[num_heads]`` (heads) and ``[mlp_hidden]`` (mlp), a finite ``[depth]`` tensor
  of block scores, and element scores (if any) shaped like the block parameters they score;
- leave the model as it found it: weights, train/eval mode of every module, timm's
  attention path (fused or explicit), ``requires_grad`` flags, and no ``.grad`` left behind;
- be deterministic: two calls give the same scores. A criterion taking a ``seed`` is built with
  the same seed both times; one that cannot be reproducible sets ``deterministic = False`` on
  its class to opt out;
- drive :func:`~prunetune.pruners.prune`: a threshold-mode configuration naming it resolves
  with its scores and the pruned model runs forward to finite outputs.

A broken rule raises AssertionError naming the criterion and the rule.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import BlockConfig, PruningConfig
from ..families import family_of
from ..models import ModelSpec, ViTArch, build_model, input_shape
from ..pruners import SaliencyScores, prune
from ..registry import SALIENCIES

__all__ = ["TINY_SPEC", "calibration_batches", "check_saliency", "tiny_model"]

#: A tiny ViT with a class token and every per-head / per-neuron / per-block parameter timm has
#: (QK-norm, norms over heads and MLP neurons, LayerScale): 3 blocks, 4 heads of dim 8, MLP 64.
TINY_SPEC = ModelSpec(
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
        "qk_norm": True,
        "scale_attn_norm": True,
        "scale_mlp_norm": True,
        "init_values": 0.5,
    },
)


def tiny_model(spec: ModelSpec = TINY_SPEC, seed: int = 0) -> nn.Module:
    """``build_model(spec)`` with norms, biases and LayerScale moved off their init values.

    timm initialises norms to (1, 0) and biases to 0; left like that, whole groups of units
    score alike and a criterion that mixes them up goes unnoticed. The global RNG is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith((".weight", ".gamma")):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def calibration_batches(
    model: nn.Module, n_batches: int = 2, batch_size: int = 4, seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random ``(images, labels)`` batches that fit ``model``."""
    arch = ViTArch.from_model(model)
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch_size, *input_shape(model), generator=gen),
            torch.randint(0, arch.num_classes, (batch_size,), generator=gen),
        )
        for _ in range(n_batches)
    ]


def check_saliency(name: str, spec: ModelSpec = TINY_SPEC) -> SaliencyScores:
    """Runs the saliency contract on the criterion registered as ``name``.

    Args:
        name: A name in :data:`prunetune.registry.SALIENCIES`.
        spec: The model to run it on (keep it tiny).

    Returns:
        The scores of the first call (for further checks of the caller's own).

    Raises:
        AssertionError: A rule is broken; the message names the criterion and the rule.
    """
    _require(
        name in SALIENCIES,
        name,
        "it is registered in prunetune.registry.SALIENCIES",
        f"registered: {', '.join(SALIENCIES.names())}",
    )
    cls = SALIENCIES.get(name)
    model = tiny_model(spec)
    arch = ViTArch.from_model(model)
    batches = calibration_batches(model)

    runs = []
    for training in (True, False):  # the first call in train mode, the second in eval mode
        model.train(training)
        before = _snapshot(model)
        criterion = _build(cls, name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            scores = criterion.scores(model, [(x.clone(), y.clone()) for x, y in batches])
        _check_untouched(name, model, before)
        _check_shapes(name, model, arch, scores)
        runs.append(scores)

    if getattr(cls, "deterministic", True):
        _check_same(name, runs[0], runs[1])

    cfg = PruningConfig(
        spec,
        tuple(
            BlockConfig(head_threshold=0.6, mlp_threshold=0.6, sparsity=0.25 if i == 0 else 0.0)
            for i in range(arch.depth)
        ),
        criterion=name,
        width_mode="threshold",
    )
    model.eval()
    try:
        pruned = prune(model, cfg, batches=batches)
    except Exception as e:
        raise AssertionError(
            f"saliency {name!r} breaks a rule: prune() works with a threshold "
            f"config naming it (raised {type(e).__name__}: {e})"
        ) from e
    resolved = pruned.pruning_config
    _require(
        resolved.width_mode == "count",
        name,
        "prune() resolves a threshold config",
        f"got width_mode={resolved.width_mode!r}",
    )
    if getattr(cls, "deterministic", True):
        want = cfg.resolve(runs[1])
        _require(
            resolved == want,
            name,
            "prune() keeps the units its scores rank highest",
            f"resolved {resolved.to_dict()['blocks']}, expected {want.to_dict()['blocks']}",
        )
    with torch.no_grad():
        out = pruned.eval()(batches[0][0])
    finite = bool(torch.isfinite(out).all())
    _require(
        out.shape == (len(batches[0][1]), arch.num_classes) and finite,
        name,
        "the pruned model runs forward to finite outputs",
        f"got shape {tuple(out.shape)}, finite={finite}",
    )
    return runs[0]


# --- rules -----------------------------------------------------------------------------------


def _require(ok: bool, name: str, rule: str, detail: str = "") -> None:
    if not ok:
        raise AssertionError(
            f"saliency {name!r} breaks a rule: {rule}" + (f" ({detail})" if detail else "")
        )


def _build(cls: type, name: str) -> Any:
    try:
        return cls()
    except Exception as e:
        raise AssertionError(
            f"saliency {name!r} breaks a rule: the class builds without arguments"
            f", as get_saliency does (raised {type(e).__name__}: {e})"
        ) from e


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "attention": family_of(model).attention_state(model),
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n for n, p in model.named_parameters() if p.grad is not None},
    }


def _check_untouched(name: str, model: nn.Module, before: dict[str, Any]) -> None:
    after = _snapshot(model)
    state, old = after["state"], before["state"]
    _require(
        state.keys() == old.keys(),
        name,
        "scores() leaves the model's state keys unchanged",
        f"added {sorted(state.keys() - old.keys())}, removed {sorted(old.keys() - state.keys())}",
    )
    changed = [k for k in old if not torch.equal(old[k], state[k])]
    _require(
        not changed, name, "scores() leaves the model's weights unchanged", f"changed {changed[:5]}"
    )
    _require(
        before["attention"] == after["attention"],
        name,
        "scores() leaves the attention path (fused or explicit) as it was",
    )
    for key, what in (
        ("modes", "the train/eval mode of every module"),
        ("requires_grad", "requires_grad of every parameter"),
    ):
        diff = [n or "<model>" for n in before[key] if before[key][n] != after[key].get(n)]
        _require(not diff, name, f"scores() leaves {what} unchanged", f"changed {diff[:5]}")
    new = sorted(after["grads"] - before["grads"])
    _require(
        not new,
        name,
        "scores() leaves no .grad behind (use torch.autograd.grad)",
        f"set .grad of {new[:5]}",
    )


def _check_tensor(name: str, what: str, t: Any, shape: tuple[int, ...]) -> None:
    _require(isinstance(t, torch.Tensor), name, f"{what} is a tensor", f"got {type(t).__name__}")
    _require(
        tuple(t.shape) == shape and t.is_floating_point(),
        name,
        f"{what} is a float tensor of shape {list(shape)}",
        f"got {t.dtype} of shape {list(t.shape)}",
    )
    _require(
        bool(torch.isfinite(t).all()),
        name,
        f"{what} is finite",
        f"{int((~torch.isfinite(t)).sum())} of {t.numel()} scores are NaN or infinite",
    )


def _check_shapes(name: str, model: nn.Module, arch: ViTArch, s: Any) -> None:
    _require(
        isinstance(s, SaliencyScores),
        name,
        "scores() returns a SaliencyScores",
        f"got {type(s).__name__}",
    )
    _require(
        s.criterion == name,
        name,
        "SaliencyScores.criterion is the registered name",
        f"got {s.criterion!r}",
    )
    for field, n, width in (
        ("heads", arch.num_heads, "num_heads"),
        ("mlp", arch.mlp_hidden, "mlp_hidden"),
    ):
        per_block = getattr(s, field)
        _require(
            isinstance(per_block, (list, tuple)) and len(per_block) == arch.depth,
            name,
            f"`{field}` holds one tensor per block (depth={arch.depth})",
            f"got {type(per_block).__name__} of length {len(per_block)}",
        )
        for i, t in enumerate(per_block):
            _check_tensor(name, f"{field}[{i}] ([{width}={n}])", t, (n,))
    _check_tensor(name, f"blocks ([depth={arch.depth}])", s.blocks, (arch.depth,))
    if s.elements is None:
        return
    params = dict(model.named_parameters())
    _require(
        isinstance(s.elements, dict),
        name,
        "`elements` is None or a dict",
        f"got {type(s.elements).__name__}",
    )
    prefix = family_of(model).blocks_path(model) + "."
    unknown = [k for k in s.elements if not (k.startswith(prefix) and k in params)]
    _require(
        not unknown, name, "`elements` keys are names of block parameters", f"got {unknown[:5]}"
    )
    for k, t in s.elements.items():
        _check_tensor(name, f"elements[{k!r}]", t, tuple(params[k].shape))


def _check_same(name: str, a: SaliencyScores, b: SaliencyScores) -> None:
    pairs = [(f"heads[{i}]", x, y) for i, (x, y) in enumerate(zip(a.heads, b.heads))]
    pairs += [(f"mlp[{i}]", x, y) for i, (x, y) in enumerate(zip(a.mlp, b.mlp))]
    pairs.append(("blocks", a.blocks, b.blocks))
    if a.elements is not None and b.elements is not None:
        pairs += [(f"elements[{k!r}]", a.elements[k], b.elements.get(k)) for k in a.elements]
    for what, x, y in pairs:
        same = y is not None and torch.allclose(x.double(), y.double(), rtol=1e-5, atol=1e-8)
        _require(
            same,
            name,
            "two calls with the same seed give the same scores (or the class "
            "sets `deterministic = False`)",
            f"{what} differs",
        )
