"""ViT-Slim's learned soft masks as a saliency criterion (``learned_mask``).

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

__all__ = ["LearnedMask"]


class _Mask:
    """Forward pre-hook: multiplies the module's input channels by ``mask`` repeated ``width``
    times each (one mask per head of ``width`` channels, or per neuron with ``width`` 1)."""

    def __init__(self, mask: torch.Tensor, width: int):
        self.mask, self.width = mask, width

    def __call__(self, module, args):
        x = args[0]
        m = self.mask.repeat_interleave(self.width) if self.width > 1 else self.mask
        return (x * m.to(x.dtype),) + tuple(args[1:])


@register_saliency("learned_mask")
class LearnedMask:
    """ViT-Slim soft masks on heads and MLP neurons, trained under a global L1 penalty.

    Args:
        steps: Adam steps on the masks (the batches are cycled).
        l1: Weight of the L1 penalty on the sum of all masks.
        lr: Adam learning rate.
    """

    def __init__(self, steps: int = 40, l1: float = 2e-3, lr: float = 0.02):
        if steps < 1:
            raise ConfigError(f"`steps >= 1` must hold, but got steps={steps}")
        if l1 < 0 or lr <= 0:
            raise ConfigError(f"`l1 >= 0` and `lr > 0` must hold, but got l1={l1}, lr={lr}")
        self.steps, self.l1, self.lr = steps, l1, lr

    def masks(self, model, batches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The trained (head masks, neuron masks) per block."""
        _need_batches(batches, self.name)
        family = family_of(model)
        dev = _device(model)
        blocks = family.blocks(model)
        heads = [torch.ones(family.heads(b)[0], device=dev, requires_grad=True) for b in blocks]
        neurons = [torch.ones(family.mlp_width(b), device=dev, requires_grad=True) for b in blocks]
        hooks = []
        for b, mh, mn in zip(blocks, heads, neurons):
            attn_out = b.get_submodule(family.attn_out_path(b))
            mlp_out = b.get_submodule(family.mlp_out_path(b))
            hooks.append(attn_out.register_forward_pre_hook(_Mask(mh, family.heads(b)[1])))
            hooks.append(mlp_out.register_forward_pre_hook(_Mask(mn, 1)))
        params = list(model.parameters())
        flags = [p.requires_grad for p in params]
        was = model.training
        opt = torch.optim.Adam([*heads, *neurons], lr=self.lr)
        try:
            model.eval()
            for p in params:
                p.requires_grad_(False)
            with torch.enable_grad():
                for step in range(self.steps):
                    x, y = batches[step % len(batches)]
                    loss = F.cross_entropy(model(x.to(dev)), y.to(dev))
                    penalty = sum(m.abs().sum() for m in (*heads, *neurons))
                    opt.zero_grad()
                    (loss + self.l1 * penalty).backward()
                    opt.step()
        finally:
            for h in hooks:
                h.remove()
            for p, f in zip(params, flags):
                p.requires_grad_(f)
            model.train(was)
        return [m.detach().abs() for m in heads], [m.detach().abs() for m in neurons]

    def scores(self, model, batches):
        heads, neurons = self.masks(model, list(batches))
        blocks = torch.stack([(h.mean() + n.mean()) / 2 for h, n in zip(heads, neurons)]).float()
        return SaliencyScores(
            self.name, [h.float() for h in heads], [n.float() for n in neurons], blocks, None
        )
