"""Attention-head pruning: slice qkv rows and proj columns, update Attention's attributes."""

from __future__ import annotations

import torch

from ._registry import register_pruner
from ._surgery import keep_index, slice_element_scores, slice_linear, slice_norm


def _channels(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


@register_pruner("heads", order=10)
class HeadPruner:
    """Physically removes attention heads.

    timm's Attention reshapes by ``num_heads``/``head_dim``/``attn_dim``, so slicing ``qkv``,
    ``proj`` (and ``norm``/``gate`` when present) and updating those attributes is the whole
    job; the fused (scaled_dot_product_attention) and explicit paths both keep working.
    """

    def applies(self, config) -> bool:
        return any(b.heads is not None for b in config.blocks)

    def apply(self, model, config, scores) -> None:
        for i, (blk, bc) in enumerate(zip(model.blocks, config.blocks)):
            attn = blk.attn
            if bc.heads is None or bc.heads == attn.num_heads:
                continue
            H, d, A = attn.num_heads, attn.head_dim, attn.attn_dim
            keep = keep_index(None if scores is None else scores.heads[i], H, bc.heads)
            ch = _channels(keep, d)
            qkv_rows = torch.cat([ch, ch + A, ch + 2 * A])
            attn.qkv = slice_linear(attn.qkv, out_idx=qkv_rows)
            attn.proj = slice_linear(attn.proj, in_idx=ch)
            attn.norm = slice_norm(attn.norm, ch)
            if attn.gate is not None:
                attn.gate = slice_linear(attn.gate, out_idx=ch)
            p = f"blocks.{i}.attn"
            for pname in ("weight", "bias"):
                slice_element_scores(scores, f"{p}.qkv.{pname}", out_idx=qkv_rows)
                slice_element_scores(scores, f"{p}.gate.{pname}", out_idx=ch)
                slice_element_scores(scores, f"{p}.norm.{pname}", out_idx=ch)
            slice_element_scores(scores, f"{p}.proj.weight", in_idx=ch)
            attn.num_heads = len(keep)
            attn.attn_dim = len(keep) * d
