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
