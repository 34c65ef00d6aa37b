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

__all__ = ["finetune", "distillation_loss"]


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
) -> nn.Module:
    """Fine-tunes ``student`` in place (AdamW, cosine schedule) with KD from ``teacher``.

    ``epochs`` may be fractional (a number of steps). Sparsity masks stay applied (they are
    ``torch.nn.utils.prune`` re-parametrisations); learned token-keep predictors train end to
    end with their ratio loss added. Raises FloatingPointError on a non-finite loss.
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
