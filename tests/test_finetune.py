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


def test_teacher_cache_gives_the_same_student_and_runs_the_teacher_once(digits_base):
    from prunetune.evaluators import TeacherCache

    dense, train = digits_base.model, digits_base.data.train
    calls = []
    # prune copies the model with its hooks: count only the dense model's own forwards
    hook = dense.register_forward_hook(lambda m, *a: calls.append(1) if m is dense else None)
    cfg = PruningConfig.uniform("digits_vit", 0.5, 0.5)
    plain = prune(dense, cfg)
    finetune(plain, train, teacher=dense, epochs=0.2, seed=3, progress=False)
    steps = len(calls)
    cache = TeacherCache(dense)
    students, teacher_runs = [], []
    for shape in (cfg, cfg, PruningConfig.uniform("digits_vit", 0.25, 0.25)):
        s = prune(dense, shape)
        calls.clear()
        finetune(s, train, teacher=dense, epochs=0.2, seed=3, progress=False, teacher_cache=cache)
        students.append(s)
        teacher_runs.append(len(calls))
    hook.remove()
    assert steps > 1 and teacher_runs == [steps, 0, 0]  # only the cache's first run
    assert (cache.misses, cache.hits) == (steps, 2 * steps)
    for a, b in zip(plain.state_dict().values(), students[0].state_dict().values()):
        assert torch.equal(a, b)  # the cached logits are the numbers the teacher gives
    for a, b in zip(students[0].state_dict().values(), students[1].state_dict().values()):
        assert torch.equal(a, b)
    # another seed is another run: its batches differ, so the teacher runs again
    other = prune(dense, cfg)
    finetune(other, train, teacher=dense, epochs=0.2, seed=4, progress=False, teacher_cache=cache)
    assert cache.misses == 2 * steps
    with pytest.raises(ValueError, match="another teacher"):
        finetune(other, train, teacher=plain, epochs=0.05, progress=False, teacher_cache=cache)


def test_teacher_cache_stays_under_its_size(digits_base):
    from prunetune.evaluators import TeacherCache

    dense, train = digits_base.model, digits_base.data.train
    cache = TeacherCache(dense, max_bytes=64 * 10 * 4 * 2)  # two batches of 64 x 10 logits
    for _ in range(2):
        s = prune(dense, PruningConfig.uniform("digits_vit", 0.5, 0.5))
        finetune(s, train, teacher=dense, epochs=0.2, seed=0, progress=False, teacher_cache=cache)
    assert cache.bytes <= cache.max_bytes
    assert cache.hits == 2 and cache.misses > cache.hits
