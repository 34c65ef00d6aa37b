"""CAP's OBS steps against the exact solution of a quadratic loss, in closed form.

For ``L(w) = ½ (w - w0)ᵀ F (w - w0)`` the best weights with the set ``Q`` forced to 0 keep the
others at ``w_R = w0_R + F_RR⁻¹ F_RQ w0_Q`` (solved directly on the free variables here, not with
the inverse OBS uses), and the loss increase of removing one weight ``q`` is that problem's
optimum. OBS must pick the weight a brute-force search over every choice picks, move the rest
exactly to the constrained optimum, and, removing gradually, follow the greedy exact path.
"""

from __future__ import annotations

import pytest
import torch

from prunetune import BlockConfig, PruningConfig, prune
from prunetune.errors import ConfigError
from prunetune.pruners import get_saliency
from prunetune.pruners._obs import obs_remove, obs_saliency
from prunetune.testing.saliency import TINY_SPEC, calibration_batches, tiny_model


def _spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(n, dtype=torch.float64)


def _constrained(F: torch.Tensor, w0: torch.Tensor, Q: list[int]) -> tuple[torch.Tensor, float]:
    """Exact minimiser of ½ (w - w0)ᵀ F (w - w0) with w_Q = 0, and its loss."""
    R = [i for i in range(len(w0)) if i not in Q]
    w = torch.zeros_like(w0)
    if R:
        rhs = F[R][:, Q] @ w0[Q]
        w[R] = w0[R] + torch.linalg.solve(F[R][:, R], rhs)
    d = w - w0
    return w, float(0.5 * d @ F @ d)


def _greedy(F: torch.Tensor, w0: torch.Tensor, k: int) -> list[int]:
    """The exact greedy removal order: each time the weight whose removal costs least."""
    Q: list[int] = []
    for _ in range(k):
        cands = [q for q in range(len(w0)) if q not in Q]
        Q.append(min(cands, key=lambda q: _constrained(F, w0, Q + [q])[1]))
    return Q


@pytest.mark.parametrize("seed", range(3))
def test_one_removal_is_the_brute_force_optimum(seed):
    F = _spd(6, seed)
    w0 = torch.randn(6, generator=torch.Generator().manual_seed(10 + seed), dtype=torch.float64)
    w, keep = obs_remove(w0[None], torch.linalg.inv(F)[None], k=1)
    (q,) = (~keep[0]).nonzero().flatten().tolist()
    assert q == _greedy(F, w0, 1)[0]
    torch.testing.assert_close(w[0], _constrained(F, w0, [q])[0], rtol=0, atol=1e-10)
    # the saliency is the exact loss increase
    sal = obs_saliency(w0[None], torch.linalg.inv(F)[None])[0]
    torch.testing.assert_close(sal[q].item(), _constrained(F, w0, [q])[1], rtol=1e-9, atol=0)


@pytest.mark.parametrize("seed", range(3))
def test_joint_removal_lands_on_the_constrained_optimum(seed):
    F = _spd(8, seed)
    w0 = torch.randn(8, generator=torch.Generator().manual_seed(20 + seed), dtype=torch.float64)
    w, keep = obs_remove(w0[None], torch.linalg.inv(F)[None], k=3, steps=1)
    Q = (~keep[0]).nonzero().flatten().tolist()
    sal = obs_saliency(w0[None], torch.linalg.inv(F)[None])[0]
    assert Q == sorted(sal.argsort()[:3].tolist())  # one step: the 3 lowest saliencies
    torch.testing.assert_close(w[0], _constrained(F, w0, Q)[0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_gradual_removal_follows_the_exact_greedy_path(seed):
    F = _spd(8, seed)
    w0 = torch.randn(8, generator=torch.Generator().manual_seed(30 + seed), dtype=torch.float64)
    w, keep = obs_remove(w0[None], torch.linalg.inv(F)[None], k=4, steps=4)
    Q = (~keep[0]).nonzero().flatten().tolist()
    assert sorted(Q) == sorted(_greedy(F, w0, 4))
    torch.testing.assert_close(w[0], _constrained(F, w0, Q)[0], rtol=0, atol=1e-9)


def test_blocks_are_independent_and_chosen_globally():
    F1, F2 = _spd(4, 1), _spd(4, 2)
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(2, 4, generator=g, dtype=torch.float64)
    finv = torch.stack([torch.linalg.inv(F1), torch.linalg.inv(F2)])
    w, keep = obs_remove(w0, finv, k=3, steps=3)
    assert int((~keep).sum()) == 3
    for b, F in enumerate((F1, F2)):
        Q = (~keep[b]).nonzero().flatten().tolist()
        torch.testing.assert_close(w[b], _constrained(F, w0[b], Q)[0], rtol=0, atol=1e-9)
    # the 3 removals are the 3 cheapest exact increases across both blocks, greedily
    cost = {}
    for b, F in enumerate((F1, F2)):
        for q in range(4):
            cost[(b, q)] = _constrained(F, w0[b], [q])[1]
    first = min(cost, key=cost.get)
    assert not keep[first]


def test_cap_prunes_with_compensation_on_a_model():
    model = tiny_model(TINY_SPEC).eval()
    batches = calibration_batches(model)
    scores = get_saliency("cap", block_size=8, steps=2).scores(model, batches)
    cfg = PruningConfig(TINY_SPEC, tuple(BlockConfig(sparsity=0.5) for _ in range(3)), "cap")
    pruned = prune(model, cfg, scores=scores)
    lin, dense = pruned.blocks[0].attn.qkv, model.blocks[0].attn.qkv
    mask = lin.weight_mask
    assert int((mask == 0).sum()) == round(0.5 * mask.numel())
    kept = mask.bool()
    # the kept weights moved to compensate for the removed ones
    assert not torch.allclose(lin.weight_orig[kept], dense.weight[kept])
    assert torch.all(lin.weight[~kept] == 0)
    magnitude = prune(model, cfg.replace(criterion="magnitude_l2"), batches)
    assert not torch.equal(magnitude.blocks[0].attn.qkv.weight_mask, mask)


@pytest.mark.parametrize("kw", [{"block_size": 0}, {"steps": 0}, {"damp": 0.0}])
def test_bad_options_are_config_errors(kw):
    with pytest.raises(ConfigError):
        get_saliency("cap", **kw)


def test_group_removal_of_columns_lands_on_the_constrained_optimum():
    from prunetune.pruners._obs import compensate_columns

    g = torch.Generator().manual_seed(5)
    w0 = torch.randn(3, 8, generator=g, dtype=torch.float64)  # 3 rows, 2 blocks of 4 per row
    Fs = [_spd(4, 40 + k) for k in range(6)]
    finv = torch.stack([torch.linalg.inv(F) for F in Fs])
    w = w0.clone()
    removed = torch.tensor([1, 2, 5])  # one unit's input columns, across both blocks
    compensate_columns(w, finv, removed)
    for r in range(3):
        for blk in range(2):
            F, cols = Fs[2 * r + blk], range(4 * blk, 4 * blk + 4)
            Q = [c - 4 * blk for c in removed.tolist() if c in cols]
            want = _constrained(F, w0[r, 4 * blk : 4 * blk + 4], Q)[0]
            torch.testing.assert_close(w[r, 4 * blk : 4 * blk + 4], want, rtol=0, atol=1e-10)


def test_cap_compensates_the_output_projection_when_heads_go():
    model = tiny_model(TINY_SPEC).eval()
    batches = calibration_batches(model)
    cfg = PruningConfig(TINY_SPEC, tuple(BlockConfig(heads=2, mlp=32) for _ in range(3)), "cap")
    # blocks of 16 input columns span two heads of 8: the kept head of a pair makes up for the other
    cap = prune(model, cfg, scores=get_saliency("cap", block_size=16).scores(model, batches))
    mag = prune(model, cfg.replace(criterion="magnitude_l2"), batches)
    d = model.blocks[0].attn.head_dim
    for pruned, moved in ((cap, True), (mag, False)):
        attn = pruned.blocks[0].attn
        # which heads were kept: match the kept q rows against the dense qkv
        dense_q = model.blocks[0].attn.qkv.weight[: 4 * d].reshape(4, d, -1)
        kept = [
            h
            for h in range(4)
            for r in attn.qkv.weight[: 2 * d].reshape(2, d, -1)
            if torch.equal(r, dense_q[h])
        ]
        cols = torch.cat([torch.arange(h * d, (h + 1) * d) for h in kept])
        same = torch.equal(attn.proj.weight, model.blocks[0].attn.proj.weight[:, cols])
        assert same != moved
