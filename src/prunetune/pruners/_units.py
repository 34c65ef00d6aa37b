"""Cutting units (attention heads, MLP neurons) out of a block, for any model family.

A family describes which modules' channels follow a unit as :class:`~prunetune.families.Part` s;
this module slices them, and the element scores of their parameters with them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..families import Part, part_channels
from ._obs import EXTRA_KEY as CAP_KEY
from ._obs import compensate_columns
from ._surgery import slice_element_scores, slice_linear, slice_norm


def cut_units(
    block: nn.Module,
    parts: list[Part],
    keep: torch.Tensor,
    unit_size: int,
    total: int,
    scores=None,
    prefix: str = "",
) -> None:
    """Keeps units ``keep`` (each ``unit_size`` channels of ``total``) in every part of
    ``block``; ``prefix`` is the block's parameter-name prefix for the element scores."""
    finvs = ((scores.extra or {}).get(CAP_KEY) or {}) if scores is not None else {}
    for part in parts:
        idx = part_channels(part, keep, unit_size, total)
        mod = block.get_submodule(part.path)
        finv = finvs.get(f"{prefix}{part.path}.weight")
        if finv is not None and isinstance(mod, nn.Linear) and part.axis == 1:
            dropped = torch.ones(mod.in_features, dtype=torch.bool)
            dropped[idx] = False  # CAP: the other inputs make up for the cut ones
            compensate_columns(mod.weight, finv, dropped.nonzero().flatten())
        if isinstance(mod, nn.Linear):
            new = slice_linear(mod, **({"out_idx": idx} if part.axis == 0 else {"in_idx": idx}))
        else:
            new = slice_norm(mod, idx)
        block.set_submodule(part.path, new)
        key = f"{prefix}{part.path}"
        if part.axis == 0:
            for pname in ("weight", "bias"):
                slice_element_scores(scores, f"{key}.{pname}", out_idx=idx)
        else:
            slice_element_scores(scores, f"{key}.weight", in_idx=idx)


def unit_scores(
    elements: dict[str, torch.Tensor],
    parts: list[Part],
    prefix: str,
    units: int,
    unit_size: int,
    dev: torch.device,
) -> torch.Tensor:
    """Sums the element scores of ``parts``' parameters per unit (float64)."""
    out = torch.zeros(units, dtype=torch.float64, device=dev)
    for pname in ("weight", "bias"):
        for part in parts:
            if part.axis != 0:
                continue
            t = elements.get(f"{prefix}{part.path}.{pname}")
            if t is not None:  # rows: one copy of the units' channels after the other
                out += t.double().reshape(part.repeat, units, unit_size, -1).sum(dim=(0, 2, 3))
    for part in parts:
        if part.axis != 1:
            continue
        t = elements.get(f"{prefix}{part.path}.weight")
        if t is not None:  # columns
            out += t.double().reshape(-1, part.repeat, units, unit_size).sum(dim=(0, 1, 3))
    return out
