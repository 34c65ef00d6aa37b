"""ViT-Slim's learned masks (``learned_mask``) against what Adam must do to them.

A head whose output projection columns are zero, or an MLP neuron whose output column is zero,
cannot change the loss: its mask gets no gradient from the cross-entropy, only the L1 pull
``l1 · sign(m) = l1``. Adam's update for a constant gradient g is ``lr · g / (|g| + eps)`` every
step (both moment estimates are exact after bias correction), so after ``k`` steps that mask is
``1 - k · lr · l1 / (l1 + eps)``: computed here in closed form and compared. Without the penalty
it stays exactly 1. Useful units are held up by the loss, so the dead ones rank low.
"""

from __future__ import annotations

import pytest
import torch

from prunetune.errors import ConfigError
from prunetune.pruners import get_saliency
from prunetune.testing.saliency import calibration_batches, tiny_model

EPS = 1e-8  # torch.optim.Adam's default


@pytest.fixture
def dead_model():
    """The tiny timm ViT with head 2 of block 1 and MLP neurons 5, 6 of block 0 switched off."""
    model = tiny_model().eval()
    d = model.blocks[1].attn.head_dim
    with torch.no_grad():
        model.blocks[1].attn.proj.weight[:, 2 * d : 3 * d] = 0
        model.blocks[0].mlp.fc2.weight[:, 5:7] = 0
    return model


def test_dead_units_shrink_by_adams_closed_form(dead_model):
    steps, l1, lr = 7, 1e-3, 0.05
    crit = get_saliency("learned_mask", steps=steps, l1=l1, lr=lr)
    heads, neurons = crit.masks(dead_model, calibration_batches(dead_model))
    want = 1 - steps * lr * l1 / (l1 + EPS)
    torch.testing.assert_close(heads[1][2].item(), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(neurons[0][5:7].tolist(), [want, want], rtol=0, atol=1e-6)


def test_without_the_penalty_dead_units_keep_their_mask(dead_model):
    crit = get_saliency("learned_mask", steps=5, l1=0.0, lr=0.05)
    heads, neurons = crit.masks(dead_model, calibration_batches(dead_model))
    assert heads[1][2].item() == 1.0 and neurons[0][5:7].tolist() == [1.0, 1.0]
    assert any((h != 1).any() for h in heads)  # the live ones did move


def test_dead_units_rank_last(dead_model):
    scores = get_saliency("learned_mask", steps=30).scores(
        dead_model, calibration_batches(dead_model)
    )
    assert int(scores.heads[1].argmin()) == 2
    # Adam moves every mask by about lr per step, so neurons the loss also pushes down tie with
    # the dead ones at the bottom: the dead ones are in the lowest quarter
    quarter = torch.quantile(scores.mlp[0], 0.25)
    assert (scores.mlp[0][5:7] <= quarter).all()
    assert scores.elements is None


@pytest.mark.parametrize("kw", [{"steps": 0}, {"l1": -1.0}, {"lr": 0.0}])
def test_bad_options_are_config_errors(kw):
    with pytest.raises(ConfigError):
        get_saliency("learned_mask", **kw)


# --- X-Pruner's class-wise masks ----------------------------------------------------------------


def test_xpruner_rows_of_absent_classes_and_dead_units_follow_the_closed_form(dead_model):
    """Calibration images of classes 0 and 1 only: the rows of classes 2-4 get no loss gradient
    (no image uses them), nor do any rows of the dead units; all of them shrink exactly as Adam
    does under the L1 pull alone, while the live units' rows of classes 0 and 1 do not."""
    steps, l1, lr = 6, 1e-3, 0.05
    batches = [(x, y % 2) for x, y in calibration_batches(dead_model, n_batches=3)]
    crit = get_saliency("xpruner", steps=steps, l1=l1, lr=lr)
    heads, neurons = crit.masks(dead_model, batches)
    want = 1 - steps * lr * l1 / (l1 + EPS)
    assert heads[0].shape == (5, 4) and neurons[0].shape == (5, 64)  # classes x units
    for masks in (heads, neurons):
        for m in masks:
            torch.testing.assert_close(m[2:], torch.full_like(m[2:], want), rtol=0, atol=1e-6)
    torch.testing.assert_close(heads[1][:, 2], torch.full((5,), want), rtol=0, atol=1e-6)
    torch.testing.assert_close(neurons[0][:, 5:7], torch.full((5, 2), want), rtol=0, atol=1e-6)
    assert (heads[0][:2] - want).abs().max() > 1e-3  # live units, present classes: the loss acts


def test_xpruner_scores_weight_the_class_rows_by_the_calibration_labels(dead_model):
    batches = [(x, torch.zeros_like(y)) for x, y in calibration_batches(dead_model)]
    crit = get_saliency("xpruner", steps=5)
    heads, neurons = crit.masks(dead_model, batches)
    scores = crit.scores(dead_model, batches)  # deterministic: the same masks again
    for i in range(len(heads)):
        torch.testing.assert_close(scores.heads[i], heads[i][0])  # only class 0 was seen
        torch.testing.assert_close(scores.mlp[i], neurons[i][0])


def test_the_xpruner_example_space_searches_thresholds_on_xpruner_masks():
    from pathlib import Path

    from prunetune.models import ModelSpec
    from prunetune.spaces import load_space

    path = Path(__file__).resolve().parents[1] / "examples" / "xpruner_space.yaml"
    space = load_space(ModelSpec("digits_vit"), str(path))
    assert space.width_mode == "threshold"
    assert space["criterion"].choices == ("xpruner",)
    assert any(d.name.startswith("head_thr_") for d in space.dims)
