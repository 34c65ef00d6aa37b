"""Recovery fine-tuning with knowledge distillation from the dense model."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data import make_loader
from ..pruners._tokens import token_aux_loss

__all__ = ["TeacherCache", "finetune", "distillation_loss"]


class TeacherCache:
    """The teacher's logits for every step of seeded fine-tuning runs, computed once.

    :func:`finetune` draws its batches from a loader shuffled by a fixed seed, and prunetune's
    data sets are deterministic (the eval transform, no augmentation), so step ``k`` of every
    run with the same data set, batch size and seed sees the same batch, and the teacher's
    logits for it are the same numbers. A search distils many candidates from one dense model
    with one seed (the short-KD tier and the Pareto stage): the teacher runs once per step
    instead of once per step and candidate. At low budgets the dense teacher's forward is most
    of a distillation step's cost.

    Do not use it over a data set whose samples change between reads (random augmentation).

    Args:
        teacher: The dense model (eval mode).
        max_bytes: Logits kept at most; beyond, steps are computed as without the cache.
    """

    def __init__(self, teacher: nn.Module, max_bytes: int = 512 * 2**20):
        self.teacher, self.max_bytes = teacher, max_bytes
        self._logits: dict[tuple, torch.Tensor] = {}
        self.bytes = self.hits = self.misses = 0

    @torch.no_grad()
    def __call__(self, key: tuple, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``x``, the batch of step ``key`` (see :func:`finetune`)."""
        hit = self._logits.get(key)
        if hit is not None and hit.shape[0] == x.shape[0]:
            self.hits += 1
            return hit.to(x.device)
        self.misses += 1
        out = self.teacher(x)
        size = out.numel() * out.element_size()
        if self.bytes + size <= self.max_bytes:
            self._logits[key] = out.detach().clone()
            self.bytes += size
        return out


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 2.0,
) -> torch.Tensor:
    """``(1-alpha)·CE(student, y) + alpha·T²·KL(softmax(teacher/T) || softmax(student/T))``
    (Hinton et al.)."""
    ce = F.cross_entropy(student_logits, target)
    if alpha == 0:
        return ce
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, -1),
        F.log_softmax(teacher_logits / temperature, -1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - alpha) * ce + alpha * temperature**2 * kl


def finetune(
    student: nn.Module,
    train: Dataset,
    teacher: nn.Module | None = None,
    epochs: float = 1.0,
    lr: float = 5e-4,
    batch_size: int = 64,
    alpha: float = 0.5,
    temperature: float = 2.0,
    weight_decay: float = 0.05,
    seed: int = 0,
    progress: bool = True,
    desc: str = "fine-tune",
    teacher_cache: TeacherCache | None = None,
) -> nn.Module:
    """Fine-tunes ``student`` in place (AdamW, cosine schedule) with KD from ``teacher``.

    ``epochs`` may be fractional (a number of steps). Sparsity masks stay applied (they are
    ``torch.nn.utils.prune`` re-parametrisations); learned token-keep predictors train end to
    end with their ratio loss added. Raises FloatingPointError on a non-finite loss.
    With ``teacher_cache`` (whose teacher is ``teacher``), the teacher's logits of each step
    are computed once across runs with the same data, batch size and seed.
    """
    dev = next(student.parameters()).device
    loader = make_loader(train, batch_size, shuffle=True, seed=seed)
    steps = max(1, math.ceil(epochs * len(loader)))
    opt = torch.optim.AdamW(
        [p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    if teacher_cache is not None and teacher_cache.teacher is not teacher:
        raise ValueError("teacher_cache holds another teacher's logits")
    run = (id(train), len(train), batch_size, seed)
    if teacher is not None:
        teacher.eval()
    student.train()
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=False)
    done = 0
    try:
        while done < steps:
            for x, y in loader:
                x, y = x.to(dev), y.to(dev)
                out = student(x)
                if teacher is not None:
                    if teacher_cache is not None:
                        t = teacher_cache((*run, done), x)
                    else:
                        with torch.no_grad():
                            t = teacher(x)
                    loss = distillation_loss(out, t, y, alpha, temperature)
                else:
                    loss = F.cross_entropy(out, y)
                aux = token_aux_loss(student)  # DynamicViT keep-ratio loss, when the model has one
                if aux is not None:
                    loss = loss + aux
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"fine-tuning loss became {loss.item()} at step {done}"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                done += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if done >= steps:
                    break
    finally:
        bar.close()
        student.eval()
    return student
