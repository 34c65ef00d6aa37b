"""What a configuration costs: analytic MACs/params (no model built) and a measured count.

Convention: MACs of every matrix multiply and convolution for one image, including the
attention matmuls (q·kᵀ and attn·v per head), the class/prefix tokens and the classifier.
Norms, softmax, activations and additions are not counted (as in the papers' GFLOPs). FLOPs
are printed as 2·MACs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import PruningConfig
from ..models import ViTArch
from ..registry import TOKEN_MODES

__all__ = [
    "BLOCK_TABLE_HEADER",
    "BlockCost",
    "Cost",
    "block_table",
    "count_params",
    "estimate_cost",
    "format_macs",
    "measure_macs",
]


@dataclass(frozen=True)
class BlockCost:
    index: int
    kept: bool
    tokens: int
    heads: int
    mlp: int
    macs: int
    params: int


@dataclass(frozen=True)
class Cost:
    """Per-image cost of a configuration.

    ``macs`` is the dense count: unstructured sparsity lowers ``nonzero_params`` only.
    """

    macs: int
    params: int
    nonzero_params: int
    blocks: tuple[BlockCost, ...] = field(default=())

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _block_macs(arch: ViTArch, n: int, h: int, m: int) -> int:
    D, d = arch.embed_dim, arch.head_dim
    a = h * d
    linear = n * (D * 3 * a + a * D + (D * a if arch.gated_attn else 0) + 2 * D * m)
    attn = 2 * h * n * n * d  # q·kᵀ and attn·v
    return linear + attn


def _block_params(arch: ViTArch, h: int, m: int) -> int:
    return arch.params_block_fixed + h * arch.params_per_head + m * arch.params_per_neuron


def _block_linear_numels(arch: ViTArch, h: int, m: int) -> list[int]:
    D, a = arch.embed_dim, h * arch.head_dim
    numels = [D * 3 * a, a * D, D * m, m * D]
    if arch.gated_attn:
        numels.append(D * a)
    return numels


def estimate_cost(config: PruningConfig, arch: ViTArch | None = None) -> Cost:
    """Analytic cost of a count-mode ``config`` (microseconds; builds no model).

    Threshold-mode configs need saliency scores to know their widths: resolve them first.
    Token reduction costs what the config's token mode says (``tokens_out``, ``extra_macs``,
    ``extra_params``; see :class:`prunetune.pruners.TokenMode`).
    """
    from ..pruners._tokens import token_schedule
    from ..pruners._unstructured import num_zeroed

    arch = arch or ViTArch.from_spec(config.model)
    config.check_fits(arch)
    heads, mlps = config.kept_heads(arch), config.kept_mlp(arch)
    tokens, token_macs = token_schedule(config, arch, heads)
    token_mode = TOKEN_MODES.get(config.token_mode)
    macs = arch.num_patches * arch.embed_dim * arch.in_chans * arch.patch_area
    macs += arch.num_heads_out * arch.embed_dim * arch.num_classes
    params = arch.params_outside_blocks
    zeros = 0
    blocks = []
    for i, bc in enumerate(config.blocks):
        if not bc.keep:
            blocks.append(BlockCost(i, False, 0, 0, 0, 0, 0))
            continue
        n = tokens[i]
        bm = _block_macs(arch, n, heads[i], mlps[i]) + token_macs[i]
        bp = _block_params(arch, heads[i], mlps[i])
        if bc.token_keep < 1.0:
            bp += token_mode.extra_params(arch)
        if bc.sparsity > 0:
            zeros += sum(
                num_zeroed(k, bc.sparsity) for k in _block_linear_numels(arch, heads[i], mlps[i])
            )
        blocks.append(BlockCost(i, True, n, heads[i], mlps[i], bm, bp))
        macs += bm
        params += bp
    return Cost(macs=macs, params=params, nonzero_params=params - zeros, blocks=tuple(blocks))


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, parameters not zeroed by a sparsity mask) of a real model."""
    total = unmasked = 0
    masks = {
        id(m.weight_orig): m.weight_mask
        for m in model.modules()
        if hasattr(m, "weight_mask") and hasattr(m, "weight_orig")
    }
    for p in model.parameters():
        total += p.numel()
        mask = masks.get(id(p))
        unmasked += p.numel() if mask is None else int((mask != 0).sum().item())
    return total, unmasked


def measure_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass on a single image, counted by torch's FlopCounterMode.

    FlopCounterMode counts matmuls and convolutions at the aten level but, as of torch 2.14,
    has no formula for the CPU kernel of scaled_dot_product_attention
    (``aten._scaled_dot_product_flash_attention_for_cpu``); we register torch's own sdpa
    formula for it so the attention matmuls are counted on CPU too.
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = cpu_sdpa
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as fc:
            model(torch.zeros(1, *input_shape, device=dev))
    finally:
        model.train(was)
    return fc.get_total_flops() // 2


def format_macs(macs: int) -> str:
    """``"12.3 MMACs (24.6 MFLOPs)"`` with a unit that fits."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if macs >= div:
            return f"{macs / div:.4g} {unit}MACs ({2 * macs / div:.4g} {unit}FLOPs)"
    return f"{macs} MACs ({2 * macs} FLOPs)"


#: Columns of :func:`block_table`.
BLOCK_TABLE_HEADER = (
    "block",
    "kept",
    "token keep",
    "tokens",
    "heads",
    "mlp",
    "sparsity",
    "MMACs",
    "Mparams",
)


def block_table(config: PruningConfig, arch: ViTArch | None) -> list[tuple[str, ...]]:
    """One row of text per block of a count-mode ``config`` (columns :data:`BLOCK_TABLE_HEADER`).

    What ``prunetune info`` and ``prunetune report`` show. ``tokens`` are the tokens the block
    processes and ``token keep`` the fraction of patch tokens kept from the block on. Without
    ``arch`` (the base model cannot be built here), the rows come from the config alone: widths
    it leaves at the dense size read ``all`` and tokens, MACs and params ``-``.
    """
    if arch is None:
        return [
            (
                str(i),
                "yes" if b.keep else "dropped",
                f"{b.token_keep:g}" if b.keep else "-",
                "-",
                (str(b.heads) if b.heads else "all") if b.keep else "0",
                (str(b.mlp) if b.mlp else "all") if b.keep else "0",
                f"{b.sparsity:g}",
                "-",
                "-",
            )
            for i, b in enumerate(config.blocks)
        ]
    return [
        (
            str(b.index),
            "yes" if b.kept else "dropped",
            f"{config.blocks[b.index].token_keep:g}" if b.kept else "-",
            str(b.tokens) if b.kept else "-",
            str(b.heads),
            str(b.mlp),
            f"{config.blocks[b.index].sparsity:g}",
            f"{b.macs / 1e6:.3f}",
            f"{b.params / 1e6:.3f}",
        )
        for b in estimate_cost(config, arch).blocks
    ]
