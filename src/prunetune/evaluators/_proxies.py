"""Cheap proxy evaluators: how good a pruned model will be, before full fine-tuning.

A proxy is a small class registered in :data:`prunetune.registry.PROXIES`. The search builds
it once per search with ``from_context(ctx, **options)`` (``ctx``: a :class:`ProxyContext`
with the dense model, calibration, train and val data; ``options``: keyword-only, set per
tier in the settings) and calls ``score(model) -> float`` (higher is better) per candidate;
``last`` holds the details of the last call (stored with the trial). The default tiers are
``zero_shot`` (right after pruning) and ``short_kd`` (a short distillation, then val
accuracy); see :class:`prunetune.search.TierSpec`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import PROXIES
from ._accuracy import evaluate_accuracy
from ._finetune import TeacherCache, finetune

__all__ = [
    "ProxyContext",
    "register_proxy",
    "get_proxy",
    "list_proxies",
    "ZeroShotProxy",
    "ShortKDProxy",
]


def register_proxy(name: str) -> Callable[[type], type]:
    """Class decorator registering a proxy evaluator under ``name`` (duplicates warn)."""
    return PROXIES.register(name)


def list_proxies() -> list[str]:
    return PROXIES.names()


def get_proxy(name: str, ctx: ProxyContext, **options):
    """The proxy registered as ``name``, built for one search."""
    return PROXIES.get(name).from_context(ctx, **options)


@dataclass
class ProxyContext:
    """What a proxy may use, shared by every tier of one search.

    Attributes:
        dense: The unpruned model (the distillation teacher), in eval mode.
        calib: Calibration batches ``[(x, y), ...]`` (also what saliency used).
        train: The training data set (a torch Dataset).
        val: Validation batches ``[(x, y), ...]``.
        lr, batch_size, seed: The search's fine-tuning settings.
        progress: Whether a proxy may show a progress bar.
        teacher_cache: The dense model's logits per distillation step, shared by every
            distillation of the search (:class:`prunetune.evaluators.TeacherCache`), or None.
    """

    dense: nn.Module
    calib: list
    train: Any
    val: list
    lr: float = 5e-4
    batch_size: int = 64
    seed: int = 0
    progress: bool = False
    teacher_cache: TeacherCache | None = None


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
    """Agreement with the dense model right after pruning, on the calibration batches.

    Score: ``-KL(dense || pruned)`` of the softmax outputs (mean over images); ``last`` also
    holds the zero-shot accuracy. Dense logits are computed once.
    """

    def __init__(self, dense: nn.Module, batches: list):
        self.batches = batches
        self.dense_logits = _logits(dense, batches)
        self.labels = torch.cat([y for _, y in batches])
        self.last: dict = {}

    @classmethod
    def from_context(cls, ctx: ProxyContext) -> ZeroShotProxy:
        return cls(ctx.dense, ctx.calib)

    def score(self, model: nn.Module) -> float:
        logits = _logits(model, self.batches)
        kl = F.kl_div(
            F.log_softmax(logits, -1),
            F.log_softmax(self.dense_logits, -1),
            reduction="batchmean",
            log_target=True,
        ).item()
        acc = (logits.argmax(-1) == self.labels).float().mean().item()
        if kl != kl:  # NaN
            raise FloatingPointError(
                "zero-shot KL is NaN: the pruned model produced non-finite logits"
            )
        self.last = {"kl": kl, "accuracy": acc}
        return -kl


@register_proxy("short_kd")
class ShortKDProxy:
    """``steps`` of fine-tuning with distillation from the dense model, then val accuracy.

    Works on a copy; the candidate passed in is left untouched.
    """

    def __init__(
        self,
        dense: nn.Module,
        train,
        val: list,
        steps: int = 100,
        lr: float = 5e-4,
        batch_size: int = 64,
        seed: int = 0,
        progress: bool = False,
        teacher_cache: TeacherCache | None = None,
    ):
        self.dense, self.train, self.val, self.steps = dense, train, val, steps
        self.teacher_cache = teacher_cache
        self.lr, self.batch_size, self.seed = lr, batch_size, seed
        self.last: dict = {}
        self.progress = progress

    @staticmethod
    def check(*, steps: int = 100) -> None:
        """Rejects option values before anything loads (the settings call it)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"`steps >= 0 (an integer)` must hold, but got steps={steps!r}")

    @classmethod
    def from_context(cls, ctx: ProxyContext, *, steps: int = 100) -> ShortKDProxy:
        cls.check(steps=steps)
        return cls(
            ctx.dense,
            ctx.train,
            ctx.val,
            steps,
            ctx.lr,
            ctx.batch_size,
            ctx.seed,
            ctx.progress,
            ctx.teacher_cache,
        )

    def score(self, model: nn.Module) -> float:
        student = copy.deepcopy(model)
        epochs = self.steps / max(1, -(-len(self.train) // self.batch_size))
        finetune(
            student,
            self.train,
            teacher=self.dense,
            epochs=epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=self.seed,
            progress=self.progress,
            desc="short_kd (distil)",
            teacher_cache=self.teacher_cache,
        )
        acc = evaluate_accuracy(student, self.val).accuracy
        self.last = {"accuracy": acc, "steps": self.steps}
        return acc
