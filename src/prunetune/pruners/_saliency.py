"""Saliency criteria: which heads, MLP neurons and blocks matter.

A criterion is one small class registered by name with a one-method protocol,
``scores(model, batches) -> SaliencyScores``. Element-wise criteria compute a score per weight
of every block parameter and then sum it per head (q/k/v rows, proj columns), per MLP neuron
(fc1 row and bias, fc2 column) and per block; those element scores also drive unstructured
sparsity. All criteria run the model in eval mode on calibration batches of ``(x, y)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..families import family_of
from ..registry import SALIENCIES
from ._units import unit_scores

__all__ = [
    "Saliency",
    "SaliencyScores",
    "register_saliency",
    "get_saliency",
    "list_saliencies",
    "compute_scores",
    "hutchinson_hessian_diag",
    "empirical_fisher_diag",
    "group_scores",
]


@dataclass
class SaliencyScores:
    """Scores of one model's units; higher means more important.

    Attributes:
        criterion: Name of the criterion that produced them.
        heads: One tensor of shape ``[num_heads]`` per block.
        mlp: One tensor of shape ``[mlp_hidden]`` per block.
        blocks: Tensor of shape ``[depth]``.
        elements: Per-parameter element scores (same shapes as the block parameters, keyed by
            parameter name) or None when the criterion has none.
        extra: What a criterion hands its pruners beyond scores (CAP's inverse Fisher blocks,
            which the unstructured pruner uses to compensate), or None.
    """

    criterion: str
    heads: list[torch.Tensor]
    mlp: list[torch.Tensor]
    blocks: torch.Tensor
    elements: dict[str, torch.Tensor] | None = None
    extra: dict | None = None


@runtime_checkable
class Saliency(Protocol):
    """Protocol: ``scores(model, batches) -> SaliencyScores``."""

    name: str

    def scores(self, model: nn.Module, batches: Iterable) -> SaliencyScores: ...


def register_saliency(name: str) -> Callable[[type], type]:
    """Class decorator registering a saliency criterion under ``name`` (duplicates warn)."""
    return SALIENCIES.register(name)


def list_saliencies() -> list[str]:
    return SALIENCIES.names()


def get_saliency(criterion: str | Saliency, **kwargs) -> Saliency:
    """Returns an instance for a registered name, or ``criterion`` itself if it is one."""
    if not isinstance(criterion, str):
        if isinstance(criterion, type):
            raise ConfigError(
                f"got the class {criterion.__name__}, not an instance; pass {criterion.__name__}()"
            )
        if not isinstance(criterion, Saliency):
            raise ConfigError(
                f"a saliency must have .name and .scores(model, batches), got {criterion!r}"
            )
        return criterion
    if criterion not in SALIENCIES:
        raise ConfigError(
            f"unknown criterion {criterion!r}; choose one of {', '.join(list_saliencies())}"
        )
    return SALIENCIES.get(criterion)(**kwargs)


def compute_scores(
    model: nn.Module, criterion: str | Saliency, batches: Iterable | None, **kwargs
) -> SaliencyScores:
    """Convenience: ``get_saliency(criterion, **kwargs).scores(model, batches)``."""
    return get_saliency(criterion, **kwargs).scores(model, list(batches or []))


# --- grouping --------------------------------------------------------------------------------


def _block_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The prunable block parameters (token-keep predictors are not scored)."""
    prefix = family_of(model).blocks_path(model) + "."
    return {
        n: p
        for n, p in model.named_parameters()
        if n.startswith(prefix) and ".keep_predictor." not in n
    }


def group_scores(
    model: nn.Module,
    elements: dict[str, torch.Tensor],
    criterion: str,
    finalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> SaliencyScores:
    """Sums element scores per head, MLP neuron and block (then applies ``finalize``).

    The model's family names the parameters that belong to each head and MLP neuron.
    """
    fin = finalize or (lambda t: t)
    dev = next(iter(elements.values())).device if elements else torch.device("cpu")
    family = family_of(model)
    path = family.blocks_path(model)
    heads, mlp, blocks = [], [], []
    for i, blk in enumerate(family.blocks(model)):
        prefix = f"{path}.{i}."
        H, d = family.heads(blk)
        h = unit_scores(elements, family.head_parts(blk), prefix, H, d, dev)
        M = family.mlp_width(blk)
        n = unit_scores(elements, family.mlp_parts(blk), prefix, M, 1, dev)
        b = sum(v.double().sum() for k, v in elements.items() if k.startswith(prefix))
        heads.append(fin(h).float())
        mlp.append(fin(n).float())
        blocks.append(fin(torch.as_tensor(b, dtype=torch.float64, device=dev)).float())
    return SaliencyScores(criterion, heads, mlp, torch.stack(blocks), elements)


# --- helpers ---------------------------------------------------------------------------------


@contextmanager
def _eval_unfused(model: nn.Module):
    """Eval mode and the explicit attention path (needed for double backward and vmap)."""
    was_training = model.training
    model.eval()
    try:
        with family_of(model).explicit_attention(model):
            yield model
    finally:
        model.train(was_training)


@contextmanager
def _grads_on(params: Iterable[nn.Parameter]):
    """Grad mode on and ``requires_grad`` set on ``params`` (restored on exit).

    Scores must not depend on the caller's ``torch.no_grad()`` or on frozen parameters.
    """
    params = list(params)
    flags = [p.requires_grad for p in params]
    try:
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _need_batches(batches: list, name: str) -> None:
    if not batches:
        raise ConfigError(f"criterion {name!r} needs calibration batches, but got none")


def _mean_grad(model: nn.Module, batches: list) -> dict[str, torch.Tensor]:
    params = _block_params(model)
    dev = _device(model)
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    n_total = sum(len(y) for _, y in batches)
    with _grads_on(params.values()):
        for x, y in batches:
            loss = F.cross_entropy(model(x.to(dev)), y.to(dev), reduction="sum") / n_total
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (n, _), g in zip(params.items(), grads):
                if g is not None:
                    acc[n] += g
    return acc


def hutchinson_hessian_diag(
    model: nn.Module, batches: list, num_probes: int = 32, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Hutchinson estimate of the Hessian diagonal of the mean cross-entropy.

    ``diag(H) ≈ mean_k z_k ⊙ (H z_k)`` with Rademacher ``z_k``; ``H z`` by a Hessian-vector
    product (double backward). Unbiased; error shrinks as ``1/sqrt(num_probes)``.
    """
    _need_batches(batches, "hessian")
    if num_probes < 1:
        raise ConfigError(f"`num_probes >= 1` must hold, but got num_probes={num_probes}")
    params = _block_params(model)
    names, plist = list(params), list(params.values())
    dev = _device(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    est = [torch.zeros_like(p) for p in plist]
    n_total = sum(len(y) for _, y in batches)
    with _eval_unfused(model), _grads_on(plist):
        for x, y in batches:
            loss = F.cross_entropy(model(x.to(dev)), y.to(dev), reduction="sum") / n_total
            grads = torch.autograd.grad(loss, plist, create_graph=True)
            for _ in range(num_probes):
                zs = [(torch.randint(0, 2, p.shape, generator=gen).to(p) * 2 - 1) for p in plist]
                hz = torch.autograd.grad(grads, plist, grad_outputs=zs, retain_graph=True)
                for e, z, h in zip(est, zs, hz):
                    e += z * h / num_probes
    return dict(zip(names, [e.detach() for e in est]))


def empirical_fisher_diag(
    model: nn.Module, batches: list, chunk: int = 64
) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal: mean over samples of the squared per-sample gradient.

    Per-sample gradients come from ``torch.func.vmap(grad(...))`` over chunks of samples.
    """
    _need_batches(batches, "fisher")
    if chunk < 1:
        raise ConfigError(f"`chunk >= 1` must hold, but got chunk={chunk}")
    params = {n: p.detach() for n, p in _block_params(model).items()}
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    count = 0
    for g in per_sample_grads(model, params, batches, chunk):
        for n in acc:
            acc[n] += g[n].pow(2).sum(0)
        count += next(iter(g.values())).shape[0]
    return {n: a / count for n, a in acc.items()}


def per_sample_grads(
    model: nn.Module, params: dict[str, torch.Tensor], batches: list, chunk: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Per-sample gradients of the cross-entropy w.r.t. ``params`` (name -> detached tensor),
    ``{name: (n, *shape)}`` per chunk of at most ``chunk`` calibration images, by
    ``torch.func.vmap(grad(...))``, in eval mode on the explicit attention path."""
    from torch.func import functional_call, grad, vmap

    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    fixed.update(dict(model.named_buffers()))
    dev = _device(model)

    def loss_fn(p, xi, yi):
        out = functional_call(model, {**fixed, **p}, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss_fn), in_dims=(None, 0, 0))
    with _eval_unfused(model):
        for x, y in batches:
            x, y = x.to(dev), y.to(dev)
            for s in range(0, len(y), chunk):
                yield per_sample(params, x[s : s + chunk], y[s : s + chunk])


# --- criteria --------------------------------------------------------------------------------


@register_saliency("magnitude_l1")
class MagnitudeL1:
    """Sum of |w| over each unit's weights."""

    def scores(self, model, batches=()):
        el = {n: p.detach().abs() for n, p in _block_params(model).items()}
        return group_scores(model, el, self.name)


@register_saliency("magnitude_l2")
class MagnitudeL2:
    """L2 norm of each unit's weights (element scores are w²; groups take the square root)."""

    def scores(self, model, batches=()):
        el = {n: p.detach().pow(2) for n, p in _block_params(model).items()}
        return group_scores(model, el, self.name, finalize=torch.sqrt)


@register_saliency("taylor")
class Taylor:
    """First-order Taylor: |w · dL/dw| with dL/dw the mean gradient on the calibration batches."""

    def scores(self, model, batches):
        _need_batches(batches, self.name)
        was = model.training
        model.eval()
        try:
            g = _mean_grad(model, batches)
        finally:
            model.train(was)
        params = _block_params(model)
        el = {n: (params[n].detach() * g[n]).abs() for n in g}
        return group_scores(model, el, self.name)


@register_saliency("hessian")
class HessianOBD:
    """Optimal Brain Damage: ½ h_ii w², h_ii by a Hutchinson estimator.

    Args:
        num_probes: Rademacher probes per calibration batch.
        seed: Probe seed.
    """

    def __init__(self, num_probes: int = 32, seed: int = 0):
        self.num_probes, self.seed = num_probes, seed

    def scores(self, model, batches):
        _need_batches(batches, self.name)
        diag = hutchinson_hessian_diag(model, batches, self.num_probes, self.seed)
        params = _block_params(model)
        # h_ii may come out slightly negative (non-convex loss, estimator noise): clamp at 0
        el = {n: 0.5 * diag[n].clamp_min(0) * params[n].detach().pow(2) for n in diag}
        return group_scores(model, el, self.name)


@register_saliency("fisher")
class FisherDiag:
    """Empirical Fisher: ½ F_ii w² with F_ii the mean per-sample squared gradient."""

    def scores(self, model, batches):
        _need_batches(batches, self.name)
        diag = empirical_fisher_diag(model, batches)
        params = _block_params(model)
        el = {n: 0.5 * diag[n] * params[n].detach().pow(2) for n in diag}
        return group_scores(model, el, self.name)


@register_saliency("activation")
class ActivationMagnitude:
    """Mean |activation| of each head's output and each MLP neuron; block = relative residual
    update.

    Element scores are |w_ij|·‖x_j‖ (each weight times the RMS of its input feature, as Wanda).
    """

    def scores(self, model, batches):
        _need_batches(batches, self.name)
        dev = _device(model)
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        family = family_of(model)
        path = family.blocks_path(model)
        blocks = family.blocks(model)
        block_rel = torch.zeros(len(blocks), dtype=torch.float64)
        hooks = []

        def lin_hook(name):
            def hook(mod, inp, out):
                x = inp[0].detach().reshape(-1, inp[0].shape[-1])
                sums[name + ".abs"] = sums.get(name + ".abs", 0) + x.abs().sum(0).double()
                sums[name + ".sq"] = sums.get(name + ".sq", 0) + x.pow(2).sum(0).double()
                counts[name] = counts.get(name, 0) + x.shape[0]

            return hook

        block_in: dict[int, torch.Tensor] = {}

        def norm1_hook(i):
            def hook(mod, inp):  # the block's input after any token reduction
                block_in[i] = inp[0].detach()

            return hook

        def blk_hook(i):
            def hook(mod, inp, out):
                x = block_in.pop(i)
                rel = (out.detach() - x).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)
                block_rel[i] += rel.double().sum().item()
                counts[f"block{i}"] = counts.get(f"block{i}", 0) + rel.numel()

            return hook

        for n, mod in model.named_modules():
            if n.startswith(path + ".") and isinstance(mod, nn.Linear):
                hooks.append(mod.register_forward_hook(lin_hook(n)))
        for i, blk in enumerate(blocks):
            hooks.append(family.input_norm(blk).register_forward_pre_hook(norm1_hook(i)))
            hooks.append(blk.register_forward_hook(blk_hook(i)))
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                for x, _ in batches:
                    model(x.to(dev))
        finally:
            for h in hooks:
                h.remove()
            model.train(was)
        heads, mlp, el = [], [], {}
        for i, blk in enumerate(blocks):
            H, d = family.heads(blk)
            a_out = f"{path}.{i}.{family.attn_out_path(blk)}"
            m_out = f"{path}.{i}.{family.mlp_out_path(blk)}"
            heads.append((sums[f"{a_out}.abs"] / counts[a_out]).reshape(H, d).mean(1).float())
            mlp.append((sums[f"{m_out}.abs"] / counts[m_out]).float())
            block_rel[i] /= counts[f"block{i}"]
        for n, p in _block_params(model).items():
            mod = n.rsplit(".", 1)[0]
            if n.endswith(".weight") and p.dim() == 2 and f"{mod}.sq" in sums:
                rms = (sums[f"{mod}.sq"] / counts[mod]).sqrt().float()
                el[n] = p.detach().abs() * rms.to(p.device)
            else:
                el[n] = p.detach().abs()
        return SaliencyScores(self.name, heads, mlp, block_rel.float(), el)


@register_saliency("random")
class RandomSaliency:
    """Uniform random scores: the control every criterion should beat."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def scores(self, model, batches=()):
        gen = torch.Generator().manual_seed(self.seed)
        el = {
            n: torch.rand(p.shape, generator=gen).to(p.device)
            for n, p in _block_params(model).items()
        }
        family = family_of(model)
        blocks = family.blocks(model)
        heads = [torch.rand(family.heads(b)[0], generator=gen) for b in blocks]
        mlp = [torch.rand(family.mlp_width(b), generator=gen) for b in blocks]
        return SaliencyScores(self.name, heads, mlp, torch.rand(len(blocks), generator=gen), el)
