"""spatial_merge: adjacent columns, then rows, of the patch grid merge; the grid stays a grid.

Reference computations on crafted tokens: only adjacent columns merge, the most similar pair
first, into size-weighted means; the grid sizes follow the near-square rule the cost model
uses. The token-mode contract (exact cost, forward/backward, both attention paths, every
family) runs in test_token_mode_plugin.py.
"""

from __future__ import annotations

import pytest
import torch

from prunetune import ModelSpec, PruningConfig, build_model, prune
from prunetune.errors import ConfigError
from prunetune.pruners.token_modes.spatial import _merge_axis, grid_of, near_square


def test_near_square_grids():
    assert [near_square(k) for k in (1, 2, 3, 4, 5, 7, 10, 13, 49, 50)] == [
        1,
        2,
        4,
        4,
        6,
        9,
        12,
        16,
        49,
        56,
    ]
    assert grid_of(16) == (4, 4) and grid_of(12) == (4, 3) and grid_of(56) == (8, 7)
    with pytest.raises(ValueError):
        grid_of(10)


def _tokens(columns: list[torch.Tensor], rows: int = 2) -> torch.Tensor:
    """(1, rows, w, C): column j is ``columns[j]`` in every row."""
    return torch.stack(columns)[None, None].expand(1, rows, -1, -1).clone()


def test_the_most_similar_adjacent_columns_merge_into_a_size_weighted_mean():
    e = torch.eye(4)
    a, b = e[0], e[0] + 0.1 * e[1]  # columns 0 and 1: nearly the same
    x = _tokens([a, b, e[2], e[3]])
    s = torch.ones(1, 2, 4, 1)
    s[:, :, 1] = 3.0  # column 1 already holds 3 tokens
    out, sizes = _merge_axis(x, s, target=3)
    assert out.shape == (1, 2, 3, 4)
    torch.testing.assert_close(out[0, :, 0], ((a + 3 * b) / 4).expand(2, -1))
    torch.testing.assert_close(out[0, :, 1:], x[0, :, 2:])
    assert sizes[0, :, :, 0].tolist() == [[4.0, 1.0, 1.0]] * 2


def test_only_adjacent_columns_merge():
    e = torch.eye(4)
    x = _tokens([e[0], e[1], e[2], e[0]])  # columns 0 and 3 are equal but not neighbours
    out, sizes = _merge_axis(x, torch.ones(1, 2, 4, 1), target=3)
    # every adjacent pair is orthogonal: one of them merges, never 0 with 3
    assert sizes[0, 0, :, 0].tolist() in ([2.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 1.0, 2.0])
    # one pair merged, so column 0 or column 3 is still there as it was
    assert torch.equal(out[0, :, 0], x[0, :, 0]) or torch.equal(out[0, :, -1], x[0, :, 3])


def test_each_image_picks_its_own_pairs_but_all_merge_as_many():
    e = torch.eye(4)
    x = torch.cat([_tokens([e[0], e[0], e[1], e[2]]), _tokens([e[0], e[1], e[2], e[2]])])
    out, sizes = _merge_axis(x, torch.ones(2, 2, 4, 1), target=3)
    assert sizes[0, 0, :, 0].tolist() == [2.0, 1.0, 1.0]
    assert sizes[1, 0, :, 0].tolist() == [1.0, 1.0, 2.0]


def test_the_pruned_model_keeps_a_grid_and_refuses_a_non_square_one():
    spec = ModelSpec(
        "vit_custom",
        {
            "img_size": 16,
            "patch_size": 2,
            "embed_dim": 32,
            "depth": 3,
            "num_heads": 2,
            "num_classes": 3,
        },
    )  # 8 x 8 patches
    cfg = (
        PruningConfig.dense(spec).replace(token_mode="spatial_merge").with_block(1, token_keep=0.3)
    )
    pruned = prune(build_model(spec).eval(), cfg)
    seen = []
    pruned.blocks[1].register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
    pruned(torch.randn(2, 3, 16, 16))
    assert seen == [1 + 20]  # ⌈0.3·64⌉ = 20 = 5 x 4, a near-square grid, plus the class token
    wide = ModelSpec("vit_custom", {**spec.kwargs, "img_size": (16, 12)})  # 8 x 6 patches
    cfg = (
        PruningConfig.dense(wide).replace(token_mode="spatial_merge").with_block(1, token_keep=0.5)
    )
    with pytest.raises(ConfigError, match="square patch grid"):
        prune(build_model(wide), cfg)
