"""Learned soft masks as saliency criteria: ViT-Slim (``learned_mask``) and X-Pruner (``xpruner``).

ViT-Slim (Chavan et al., "Vision Transformer Slimming: Multi-Dimension Searching in Continuous
Optimization Space", CVPR 2022) multiplies every prunable dimension by a learnable soft mask,
initialised at 1, and trains the masks under one global L1 sparsity penalty; the masks' sizes
are then one importance ranking across all dimensions, cut at the budget by a single global
threshold. Here the weights stay frozen (the masks are trained alone, for a short, user-set
number of steps on the calibration batches) and the masks sit where the family adapter says a
head's or an MLP neuron's output is read:

- one mask per head, on the input of the attention's output projection (each head's ``head_dim``
  channels share it);
- one mask per MLP hidden neuron, on the input of the MLP's output linear.

Loss: cross-entropy on the calibration batches plus ``l1`` times the sum of all masks' absolute
values; Adam with learning rate ``lr``. A unit whose output does not help the loss feels only the
L1 pull and shrinks by about ``lr`` per step; a useful one is held up by the loss. The scores are
the masks' absolute values (heads and neurons on one scale, as the paper's global ranking); a
block's score is the mean of its head and neuron scores. ViT-Slim also masks the embedding
(residual) width; prunetune has no residual-width pruner, so those masks are not trained. No
element scores: unstructured sparsity falls back to |w| with this criterion.

The global cut at a budget (the paper's allocator) is the ``slim`` starting point of the search
(:mod:`prunetune.search._start`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..families import family_of
from ._saliency import SaliencyScores, _device, _need_batches, register_saliency

__all__ = ["LearnedMask", "XPruner"]


class _Mask:
    """Forward pre-hook: multiplies the module's input channels by ``mask`` repeated ``width``
    times each (one mask per head of ``width`` channels, or per neuron with ``width`` 1).

    A class-wise mask (classes x units) uses, for every image, the row of its label (set in
    ``labels`` before each forward).
    """

    def __init__(self, mask: torch.Tensor, width: int, labels: list | None = None):
        self.mask, self.width, self.labels = mask, width, labels

    def __call__(self, module, args):
        x = args[0]
        m = self.mask if self.labels is None else self.mask[self.labels[0]]
        if self.width > 1:
            m = m.repeat_interleave(self.width, dim=-1)
        if self.labels is not None:  # (B, units) -> (B, 1, ..., channels)
            m = m.reshape(m.shape[0], *([1] * (x.dim() - 2)), m.shape[-1])
        return (x * m.to(x.dtype),) + tuple(args[1:])


def _train_masks(
    model, batches, steps: int, l1: float, lr: float, classes: int | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Soft masks on every head and MLP neuron (``classes`` rows each when class-wise), trained
    with the weights frozen: cross-entropy plus ``l1`` times the sum of |masks|, Adam."""
    family = family_of(model)
    dev = _device(model)
    blocks = family.blocks(model)
    rows = () if classes is None else (classes,)
    heads = [torch.ones(*rows, family.heads(b)[0], device=dev, requires_grad=True) for b in blocks]
    neurons = [
        torch.ones(*rows, family.mlp_width(b), device=dev, requires_grad=True) for b in blocks
    ]
    labels: list | None = None if classes is None else [None]
    hooks = []
    for b, mh, mn in zip(blocks, heads, neurons):
        attn_out = b.get_submodule(family.attn_out_path(b))
        mlp_out = b.get_submodule(family.mlp_out_path(b))
        hooks.append(attn_out.register_forward_pre_hook(_Mask(mh, family.heads(b)[1], labels)))
        hooks.append(mlp_out.register_forward_pre_hook(_Mask(mn, 1, labels)))
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was = model.training
    opt = torch.optim.Adam([*heads, *neurons], lr=lr)
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            for step in range(steps):
                x, y = batches[step % len(batches)]
                if labels is not None:
                    labels[0] = y.to(dev)
                loss = F.cross_entropy(model(x.to(dev)), y.to(dev))
                penalty = sum(m.abs().sum() for m in (*heads, *neurons))
                opt.zero_grad()
                (loss + l1 * penalty).backward()
                opt.step()
    finally:
        for h in hooks:
            h.remove()
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was)
    return [m.detach().abs() for m in heads], [m.detach().abs() for m in neurons]


class _MaskOptions:
    """``steps``, ``l1`` and ``lr`` of a mask-training criterion, checked."""

    def __init__(self, steps: int, l1: float, lr: float):
        if steps < 1:
            raise ConfigError(f"`steps >= 1` must hold, but got steps={steps}")
        if l1 < 0 or lr <= 0:
            raise ConfigError(f"`l1 >= 0` and `lr > 0` must hold, but got l1={l1}, lr={lr}")
        self.steps, self.l1, self.lr = steps, l1, lr


def _unit_scores(name: str, heads: list, neurons: list) -> SaliencyScores:
    blocks = torch.stack([(h.mean() + n.mean()) / 2 for h, n in zip(heads, neurons)]).float()
    return SaliencyScores(name, [h.float() for h in heads], [n.float() for n in neurons], blocks)


@register_saliency("learned_mask")
class LearnedMask(_MaskOptions):
    """ViT-Slim soft masks on heads and MLP neurons, trained under a global L1 penalty.

    Args:
        steps: Adam steps on the masks (the batches are cycled).
        l1: Weight of the L1 penalty on the sum of all masks.
        lr: Adam learning rate.
    """

    def __init__(self, steps: int = 40, l1: float = 2e-3, lr: float = 0.02):
        super().__init__(steps, l1, lr)

    def masks(self, model, batches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The trained (head masks, neuron masks) per block, as |mask|."""
        _need_batches(batches, self.name)
        return _train_masks(model, list(batches), self.steps, self.l1, self.lr)

    def scores(self, model, batches):
        return _unit_scores(self.name, *self.masks(model, list(batches)))


@register_saliency("xpruner")
class XPruner(_MaskOptions):
    """X-Pruner's explainability-aware masks: one soft mask per class and unit, trained end to end.

    X-Pruner (Yu and Xiang, "X-Pruner: eXplainable Pruning for Vision Transformers", CVPR 2023)
    gives every prunable unit a mask per class, measuring the unit's contribution to predicting
    that class, learns the masks differentiably, then searches layer-wise thresholds on the mask
    values under the cost constraint and fine-tunes. Here: every head and MLP neuron has a row
    of masks (one per class), initialised at 1; an image of class ``c`` runs with row ``c``; the
    masks are trained with the weights frozen for ``steps`` Adam steps on the calibration
    batches, under an L1 penalty (as ``learned_mask``). A unit's score is the mean over the
    calibration images of its mask for the image's class (the class-frequency-weighted mean of
    its class rows): rows of classes absent from the calibration batches are not used. The
    layer-wise thresholds are prunetune's threshold width mode (``width_mode: threshold`` with
    ``criteria: [xpruner]`` in a space file) searched under the budget, and the Pareto stage is
    the final fine-tune. ``masks`` returns the class-wise masks (the explanation itself).

    Args:
        steps: Adam steps on the masks (the batches are cycled).
        l1: Weight of the L1 penalty on the sum of all masks.
        lr: Adam learning rate.
    """

    def __init__(self, steps: int = 40, l1: float = 5e-4, lr: float = 0.02):
        super().__init__(steps, l1, lr)

    def masks(self, model, batches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The trained class-wise (head masks, neuron masks) per block: (classes, units), |mask|."""
        _need_batches(batches, self.name)
        classes = family_of(model).stem(model).num_classes
        return _train_masks(model, list(batches), self.steps, self.l1, self.lr, classes)

    def scores(self, model, batches):
        batches = list(batches)
        heads, neurons = self.masks(model, batches)
        classes = heads[0].shape[0]
        counts = torch.zeros(classes, dtype=torch.float64)
        for _, y in batches:
            counts += torch.bincount(y.cpu(), minlength=classes).double()[:classes]
        w = (counts / counts.sum()).to(heads[0].device, heads[0].dtype)
        return _unit_scores(self.name, [w @ h for h in heads], [w @ n for n in neurons])
