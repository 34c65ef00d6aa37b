from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunetune import PruningConfig, prune
from prunetune.evaluators import count_params, distillation_loss, finetune


def test_distillation_loss_matches_definition():
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    T, a = 3.0, 0.4
    kl = (
        (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1)))
        .sum(-1)
        .mean()
    )
    expect = (1 - a) * F.cross_entropy(s, y) + a * T * T * kl
    assert torch.allclose(distillation_loss(s, t, y, a, T), expect, atol=1e-6)
    assert torch.allclose(distillation_loss(s, t, y, 0.0), F.cross_entropy(s, y))
    assert distillation_loss(t, t, y, 1.0, T).abs() < 1e-6  # student == teacher: no KD loss


def test_finetune_keeps_sparsity_masks(digits_base):
    cfg = PruningConfig.uniform("digits_vit", 0.5, 0.5, sparsity=0.5)
    student = prune(digits_base.model, cfg)
    before = count_params(student)
    finetune(student, digits_base.data.train, teacher=digits_base.model, epochs=0.1, progress=False)
    assert count_params(student) == before
    w = student.blocks[0].mlp.fc1.weight
    assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_finetune_rejects_nan(digits_base):
    student = prune(digits_base.model, PruningConfig.uniform("digits_vit", 0.5, 0.5))
    with torch.no_grad():
        student.head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss became nan"):
        finetune(student, digits_base.data.train, epochs=0.05, progress=False)
