"""Accuracy and loss of a model on a data loader."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["evaluate_accuracy", "AccuracyResult"]


class AccuracyResult(dict):
    """``{"accuracy": float, "loss": float, "n": int}`` with attribute access."""

    __getattr__ = dict.__getitem__


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, batches, device: str | torch.device | None = None
) -> AccuracyResult:
    """Top-1 accuracy and mean cross-entropy of ``model`` over ``batches`` of (x, y)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(-1) == y).sum().item()
        total += y.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluate_accuracy got no samples")
    return AccuracyResult(accuracy=correct / total, loss=loss_sum / total, n=total)
