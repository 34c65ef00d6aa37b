"""Cheap proxy evaluators: how good a pruned model will be, before full fine-tuning.

A proxy is a small registered class with ``score(model, data) -> float`` (higher is better);
it keeps the details of its last call in ``last``. Tier a is zero-shot (right after pruning);
tier b is a short recovery fine-tune with distillation, then held-out accuracy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import PROXIES
from ._accuracy import evaluate_accuracy
from ._finetune import finetune

__all__ = ["register_proxy", "get_proxy", "list_proxies", "ZeroShotProxy", "ShortKDProxy"]

def register_proxy(name: str) -> Callable[[type], type]:
    """Class decorator registering a proxy evaluator under ``name`` (duplicates warn)."""
    return PROXIES.register(name)


def list_proxies() -> list[str]:
    return PROXIES.names()


def get_proxy(name: str, **kwargs):
    return PROXIES.get(name)(**kwargs)


@torch.no_grad()
def _logits(model: nn.Module, batches: list) -> torch.Tensor:
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = torch.cat([model(x.to(dev)).float().cpu() for x, _ in batches])
    model.train(was)
    return out


@register_proxy("zero_shot")
class ZeroShotProxy:
    """Tier a: agreement with the dense model right after pruning, on calibration batches.

    Score: ``-KL(dense || pruned)`` of the softmax outputs (mean over images); ``last`` also
    holds the zero-shot accuracy. Dense logits are computed once.
    """

    def __init__(self, dense: nn.Module, batches: list):
        self.batches = batches
        self.dense_logits = _logits(dense, batches)
        self.labels = torch.cat([y for _, y in batches])
        self.last: dict = {}

    def score(self, model: nn.Module, data=None) -> float:
        logits = _logits(model, self.batches)
        kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(self.dense_logits, -1),
                      reduction="batchmean", log_target=True).item()
        acc = (logits.argmax(-1) == self.labels).float().mean().item()
        if kl != kl:  # NaN
            raise FloatingPointError("zero-shot KL is NaN: the pruned model produced non-finite logits")
        self.last = {"kl": kl, "accuracy": acc}
        return -kl


@register_proxy("short_kd")
class ShortKDProxy:
    """Tier b: ``steps`` of fine-tuning with distillation from the dense model, then accuracy.

    Works on a copy; the candidate passed in is left untouched.
    """

    def __init__(self, dense: nn.Module, train, steps: int = 100, lr: float = 5e-4,
                 batch_size: int = 64, seed: int = 0):
        self.dense, self.train, self.steps = dense, train, steps
        self.lr, self.batch_size, self.seed = lr, batch_size, seed
        self.last: dict = {}
        #: show a bar over the distillation steps (the search turns it on unless quiet)
        self.progress = False

    def score(self, model: nn.Module, data) -> float:
        student = copy.deepcopy(model)
        epochs = self.steps / max(1, -(-len(self.train) // self.batch_size))
        finetune(student, self.train, teacher=self.dense, epochs=epochs, lr=self.lr,
                 batch_size=self.batch_size, seed=self.seed, progress=self.progress, desc="tier b (distil)")
        acc = evaluate_accuracy(student, data).accuracy
        self.last = {"accuracy": acc, "steps": self.steps}
        return acc
