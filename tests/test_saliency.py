"""Saliency criteria checked against exact computations on a model small enough to form them.

The tiny model (one block, embed 8, two heads of dim 4, MLP hidden 8, three classes) has 464
block parameters, so the Hessian of the mean cross-entropy fits in a 464x464 matrix and
per-sample gradients can be taken one sample at a time. Everything numeric runs in float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from prunetune.errors import ConfigError
from prunetune.models import ModelSpec, build_model
from prunetune.pruners import (
    SaliencyScores,
    _saliency,
    compute_scores,
    empirical_fisher_diag,
    get_saliency,
    group_scores,
    hutchinson_hessian_diag,
    list_saliencies,
    register_saliency,
)

TINY = {
    "img_size": 4,
    "patch_size": 2,
    "in_chans": 1,
    "embed_dim": 8,
    "depth": 1,
    "num_heads": 2,
    "mlp_ratio": 1.0,
    "num_classes": 3,
}
#: Same size, plus every optional per-head / per-neuron / per-block parameter timm offers.
TINY_EXTRAS = {
    **TINY,
    "depth": 2,
    "qk_norm": True,
    "scale_attn_norm": True,
    "scale_mlp_norm": True,
    "init_values": 0.1,
}
ALL_CRITERIA = (
    "activation",
    "fisher",
    "hessian",
    "magnitude_l1",
    "magnitude_l2",
    "random",
    "taylor",
)
DATA_DRIVEN = ("activation", "fisher", "hessian", "taylor")
GRADIENT_BASED = ("fisher", "hessian", "taylor")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one thread is as fast, and immune to OpenMP oversubscription
    (with 2 threads and one busy core, 512 Hutchinson probes took 25-55 s instead of 2 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(kwargs: dict | None = None) -> nn.Module:
    model = build_model(ModelSpec("vit_custom", dict(kwargs or TINY))).double()
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():  # timm zero-inits biases; random ones make every slice matter
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return model


def _batches(
    sizes=(5, 3, 4), seed: int = 1, img: int = 4, classes: int = 3, dtype=torch.float64
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(n, 1, img, img, generator=gen, dtype=dtype),
            torch.randint(0, classes, (n,), generator=gen),
        )
        for n in sizes
    ]


def _block_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if n.startswith("blocks.")}


def _flat(tensors: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([tensors[n].reshape(-1) for n in names])


@contextmanager
def _unfused_eval(model: nn.Module) -> Iterator[None]:
    """timm's explicit attention path: its fused SDPA has no double backward on CPU."""
    fused = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    model.eval()
    for m, _ in fused:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, flag in fused:
            m.fused_attn = flag


def _head_slices(blk: nn.Module, h: int) -> tuple[list[slice], slice]:
    """Rows of head ``h`` in qkv ([q heads | k heads | v heads]) and its columns in proj."""
    A, d = blk.attn.attn_dim, blk.attn.head_dim
    own = slice(h * d, (h + 1) * d)
    return [slice(c * A + h * d, c * A + (h + 1) * d) for c in range(3)], own


def _manual_groups(model: nn.Module, el: dict[str, torch.Tensor]):
    """Per-head, per-neuron and per-block sums of element scores by explicit slicing."""
    heads, mlp, blocks = [], [], []
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}."
        hs = []
        for h in range(blk.attn.num_heads):
            rows, own = _head_slices(blk, h)
            s = sum(
                el[p + "attn.qkv.weight"][r].sum() + el[p + "attn.qkv.bias"][r].sum() for r in rows
            )
            s = s + el[p + "attn.proj.weight"][:, own].sum()
            if p + "attn.norm.weight" in el:  # scale_attn_norm: LayerNorm over attn_dim
                s = s + el[p + "attn.norm.weight"][own].sum() + el[p + "attn.norm.bias"][own].sum()
            hs.append(s)
        ns = []
        for j in range(blk.mlp.fc1.out_features):
            s = (
                el[p + "mlp.fc1.weight"][j].sum()
                + el[p + "mlp.fc1.bias"][j]
                + el[p + "mlp.fc2.weight"][:, j].sum()
            )
            if p + "mlp.norm.weight" in el:  # scale_mlp_norm: LayerNorm over the hidden units
                s = s + el[p + "mlp.norm.weight"][j] + el[p + "mlp.norm.bias"][j]
            ns.append(s)
        heads.append(torch.stack(hs))
        mlp.append(torch.stack(ns))
        blocks.append(sum(v.sum() for k, v in el.items() if k.startswith(p)))
    return heads, mlp, torch.stack(blocks)


def _assert_groups(
    scores: SaliencyScores,
    model: nn.Module,
    el: dict[str, torch.Tensor],
    finalize=lambda t: t,
    rtol: float = 1e-6,
) -> None:
    heads, mlp, blocks = _manual_groups(model, el)
    assert len(scores.heads) == len(scores.mlp) == len(model.blocks)
    for got, want in zip(scores.heads, heads):
        torch.testing.assert_close(got.double(), finalize(want), rtol=rtol, atol=1e-12)
    for got, want in zip(scores.mlp, mlp):
        torch.testing.assert_close(got.double(), finalize(want), rtol=rtol, atol=1e-12)
    torch.testing.assert_close(scores.blocks.double(), finalize(blocks), rtol=rtol, atol=1e-12)


# --- layout --------------------------------------------------------------------------------


def test_head_slices_match_timms_forward():
    """Perturbing head h's q/k/v rows (our slicing) changes only proj-input columns of head h."""
    model = _tiny()
    x, _ = _batches((4,))[0]
    blk = model.blocks[0]
    seen = []
    hook = blk.attn.proj.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    try:
        with torch.no_grad():
            model.eval()
            model(x)
            for h in range(blk.attn.num_heads):
                rows, own = _head_slices(blk, h)
                saved = blk.attn.qkv.weight.clone()
                for r in rows:
                    blk.attn.qkv.weight[r] += 1.0
                model(x)
                blk.attn.qkv.weight.copy_(saved)
                changed = (seen[-1] - seen[0]).abs().amax(dim=(0, 1)) > 1e-9
                expected = torch.zeros_like(changed)
                expected[own] = True
                assert torch.equal(changed, expected), f"head {h}"
    finally:
        hook.remove()


# --- Hutchinson vs the exact Hessian -------------------------------------------------------


@pytest.fixture(scope="module")
def exact_hessians():
    """Tiny model, two calibration batches and the exact per-batch Hessians of the mean CE.

    ``H = sum_b H_b`` with ``H_b`` the Hessian of ``sum_{i in b} CE_i / n_total`` w.r.t. the
    flattened block parameters (reverse-over-reverse autograd). The estimator draws fresh probes
    per batch, so its error variance is ``sum_b sum_{i != j} (H_b)_ij^2 / num_probes``.
    """
    model = _tiny()
    batches = _batches((6, 4), seed=2)
    params = _block_params(model)
    names = list(params)
    shapes = {n: p.shape for n, p in params.items()}
    flat0 = _flat({n: p.detach() for n, p in params.items()}, names)
    n_total = sum(len(y) for _, y in batches)

    def loss_fn(x, y):
        def f(flat):
            d, o = {}, 0
            for n in names:
                k = shapes[n].numel()
                d[n] = flat[o : o + k].reshape(shapes[n])
                o += k
            out = functional_call(model, d, (x,))
            return F.cross_entropy(out, y, reduction="sum") / n_total

        return f

    # Note: torch.func.hessian (forward-over-reverse) gets the LayerNorm-weight rows wrong here
    # (asymmetric by ~1e-3 on torch 2.14); reverse-over-reverse agrees with finite differences.
    with _unfused_eval(model):
        per_batch = [torch.autograd.functional.hessian(loss_fn(x, y), flat0) for x, y in batches]
        parts = [loss_fn(x, y) for x, y in batches]

        def total(flat):
            return sum(f(flat) for f in parts)

        probe = torch.randperm(flat0.numel(), generator=torch.Generator().manual_seed(0))[:12]
        fd = []
        for k in probe.tolist():  # central differences of dL/dθ_k along θ_k
            e = torch.zeros_like(flat0)
            e[k] = 1e-4
            gp = torch.func.grad(total)(flat0 + e)[k]
            gm = torch.func.grad(total)(flat0 - e)[k]
            fd.append((gp - gm) / 2e-4)
    model.train()
    return {
        "model": model,
        "batches": batches,
        "names": names,
        "per_batch": per_batch,
        "fd_index": probe,
        "fd_diag": torch.stack(fd),
    }


def test_exact_hessian_reference_is_sound(exact_hessians):
    H = sum(exact_hessians["per_batch"])
    assert H.shape == (464, 464)
    torch.testing.assert_close(H, H.T, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        H.diagonal()[exact_hessians["fd_index"]], exact_hessians["fd_diag"], rtol=1e-5, atol=1e-8
    )


@pytest.fixture(scope="module")
def hutchinson_runs(exact_hessians):
    """Relative L2 error of the Hutchinson diagonal, and its predicted value, per probe count."""
    per_batch = exact_hessians["per_batch"]
    exact = sum(per_batch).diagonal()
    var_one_probe = sum((Hb**2).sum() - (Hb.diagonal() ** 2).sum() for Hb in per_batch)
    runs = {}
    for n in (16, 256, 4096):
        est = hutchinson_hessian_diag(
            exact_hessians["model"], exact_hessians["batches"], num_probes=n, seed=7
        )
        err = ((_flat(est, exact_hessians["names"]) - exact).norm() / exact.norm()).item()
        pred = ((var_one_probe / n).sqrt() / exact.norm()).item()
        runs[n] = (err, pred)
    return runs


def test_hutchinson_converges_to_exact_diagonal(hutchinson_runs):
    err, pred = hutchinson_runs[4096]
    assert err < 0.1, f"relative L2 error {err:.3f} at 4096 probes (predicted {pred:.3f})"


def test_hutchinson_error_decreases_like_inverse_sqrt_probes(hutchinson_runs):
    errs = [hutchinson_runs[n][0] for n in (16, 256, 4096)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[0] / errs[2] > 8  # ideal sqrt(4096 / 16) = 16
    for n, (err, pred) in hutchinson_runs.items():  # and it is the error theory predicts
        assert 0.5 < err / pred < 2.0, f"{n} probes: error {err:.3f}, predicted {pred:.3f}"


def test_hutchinson_is_seeded_and_restores_the_model():
    model = _tiny()
    model.train()
    batches = _batches((3,))
    fused_before = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    a = hutchinson_hessian_diag(model, batches, num_probes=3, seed=0)
    b = hutchinson_hessian_diag(model, batches, num_probes=3, seed=0)
    c = hutchinson_hessian_diag(model, batches, num_probes=3, seed=1)
    assert set(a) == set(_block_params(model))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)
    assert model.training
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == fused_before
    assert all(p.grad is None for p in model.parameters())


def test_hessian_obd_is_half_h_w_squared_grouped():
    model = _tiny()
    batches = _batches((4, 2))
    s = get_saliency("hessian", num_probes=5, seed=3).scores(model, batches)
    diag = hutchinson_hessian_diag(model, batches, num_probes=5, seed=3)
    assert s.criterion == "hessian"
    params = _block_params(model)
    el = {n: 0.5 * diag[n].clamp_min(0) * params[n].detach() ** 2 for n in params}
    for n in params:
        torch.testing.assert_close(s.elements[n], el[n], rtol=1e-12, atol=0)
    _assert_groups(s, model, el)


# --- Fisher vs a per-sample loop -----------------------------------------------------------


@pytest.mark.parametrize("chunk", [2, 64])
def test_empirical_fisher_matches_per_sample_loop(chunk):
    model = _tiny()
    batches = _batches((5, 3, 4))
    params = _block_params(model)
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    count = 0
    model.eval()
    for x, y in batches:
        for i in range(len(y)):
            loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
            for n, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
                acc[n] += g**2
            count += 1
    model.train()
    got = empirical_fisher_diag(model, batches, chunk=chunk)
    assert set(got) == set(params)
    for n in params:
        torch.testing.assert_close(got[n], acc[n] / count, rtol=1e-10, atol=1e-15)
    assert model.training


def test_fisher_scores_are_half_f_w_squared_grouped():
    model = _tiny()
    batches = _batches((4, 3))
    s = compute_scores(model, "fisher", batches)
    fisher = empirical_fisher_diag(model, batches)
    params = _block_params(model)
    el = {n: 0.5 * fisher[n] * params[n].detach() ** 2 for n in params}
    for n in params:
        torch.testing.assert_close(s.elements[n], el[n], rtol=1e-12, atol=0)
    _assert_groups(s, model, el)


# --- Taylor and magnitude vs manual slicing ------------------------------------------------


def test_taylor_matches_full_batch_gradient_and_slicing():
    model = _tiny()
    batches = _batches((5, 3, 4))
    params = _block_params(model)
    X = torch.cat([x for x, _ in batches])
    Y = torch.cat([y for _, y in batches])
    model.eval()
    grads = torch.autograd.grad(F.cross_entropy(model(X), Y), list(params.values()))
    model.train()
    el = {n: (p.detach() * g).abs() for (n, p), g in zip(params.items(), grads)}
    s = compute_scores(model, "taylor", batches)
    assert s.criterion == "taylor"
    for n in params:
        torch.testing.assert_close(s.elements[n], el[n], rtol=1e-10, atol=1e-15)
    _assert_groups(s, model, el)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kwargs", [TINY, TINY_EXTRAS], ids=["plain", "norms-layerscale-depth2"])
def test_magnitude_l1_and_l2_match_manual_slicing(kwargs):
    model = _tiny(kwargs)
    params = {n: p.detach() for n, p in _block_params(model).items()}
    l1 = compute_scores(model, "magnitude_l1", None)
    _assert_groups(l1, model, {n: p.abs() for n, p in params.items()})
    l2 = compute_scores(model, "magnitude_l2", None)
    _assert_groups(l2, model, {n: p**2 for n, p in params.items()}, finalize=torch.sqrt)
    # direct form of the L2 of head 0: the norm of its q/k/v rows and proj columns together
    blk = model.blocks[0]
    rows, own = _head_slices(blk, 0)
    parts = [blk.attn.qkv.weight[r] for r in rows] + [blk.attn.qkv.bias[r] for r in rows]
    parts.append(blk.attn.proj.weight[:, own])
    if kwargs is TINY_EXTRAS:
        parts += [blk.attn.norm.weight[own], blk.attn.norm.bias[own]]
    want = torch.cat([t.detach().reshape(-1) for t in parts]).norm()
    torch.testing.assert_close(l2.heads[0][0].double(), want, rtol=1e-6, atol=0)


def test_group_scores_sums_the_layout_given_one_hot_elements():
    """A single unit element lands in exactly the head / neuron it belongs to."""
    model = _tiny()
    blk = model.blocks[0]
    A, d = blk.attn.attn_dim, blk.attn.head_dim
    zeros = {n: torch.zeros_like(p.detach()) for n, p in _block_params(model).items()}
    for c, h, r in [(0, 1, 2), (1, 0, 3), (2, 1, 0)]:  # (q|k|v chunk, head, row in head)
        el = {n: t.clone() for n, t in zeros.items()}
        el["blocks.0.attn.qkv.weight"][c * A + h * d + r, 5] = 1.0
        s = group_scores(model, el, "probe")
        assert s.heads[0].tolist() == [float(k == h) for k in range(blk.attn.num_heads)]
        assert s.mlp[0].sum().item() == 0.0 and s.blocks.tolist() == [1.0]
    el = {n: t.clone() for n, t in zeros.items()}
    el["blocks.0.attn.proj.weight"][2, 1 * d + 1] = 1.0  # column of head 1
    el["blocks.0.mlp.fc2.weight"][7, 3] = 2.0  # column of neuron 3
    el["blocks.0.mlp.fc1.weight"][5, 0] = 4.0  # row of neuron 5
    s = group_scores(model, el, "probe")
    assert s.heads[0].tolist() == [0.0, 1.0]
    assert s.mlp[0].tolist() == [0, 0, 0, 2.0, 0, 4.0, 0, 0]
    assert s.blocks.tolist() == [7.0]


# --- activation vs manual hooks ------------------------------------------------------------


def test_activation_matches_manual_hooks():
    model = _tiny(TINY_EXTRAS)
    batches = _batches((5, 3))
    inputs: dict[str, list[torch.Tensor]] = {}
    rel: dict[int, list[torch.Tensor]] = {}
    hooks = []
    for n, m in model.named_modules():
        if n.startswith("blocks.") and isinstance(m, nn.Linear):
            hooks.append(
                m.register_forward_hook(
                    lambda m, i, o, n=n: inputs.setdefault(n, []).append(
                        i[0].reshape(-1, i[0].shape[-1])
                    )
                )
            )
    for b, blk in enumerate(model.blocks):
        hooks.append(
            blk.register_forward_hook(
                lambda m, i, o, b=b: rel.setdefault(b, []).append(
                    ((o - i[0]).norm(dim=-1) / i[0].norm(dim=-1)).reshape(-1)
                )
            )
        )
    model.eval()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in hooks:
        h.remove()
    model.train()

    s = compute_scores(model, "activation", batches)
    for i, blk in enumerate(model.blocks):
        H, d = blk.attn.num_heads, blk.attn.head_dim
        proj_in = torch.cat(inputs[f"blocks.{i}.attn.proj"])  # [samples * tokens, attn_dim]
        want = torch.stack([proj_in[:, h * d : (h + 1) * d].abs().mean() for h in range(H)])
        torch.testing.assert_close(s.heads[i].double(), want, rtol=1e-6, atol=0)
        fc2_in = torch.cat(inputs[f"blocks.{i}.mlp.fc2"])
        torch.testing.assert_close(s.mlp[i].double(), fc2_in.abs().mean(0), rtol=1e-6, atol=0)
    torch.testing.assert_close(
        s.blocks.double(), torch.stack([torch.cat(rel[b]).mean() for b in rel]), rtol=1e-6, atol=0
    )
    for n, p in _block_params(model).items():  # Wanda-style |w_ij| * rms(x_j) for Linear weights
        mod = n.rsplit(".", 1)[0]
        if n.endswith(".weight") and mod in inputs:
            rms = torch.cat(inputs[mod]).pow(2).mean(0).sqrt()
            torch.testing.assert_close(
                s.elements[n].double(), p.detach().abs() * rms, rtol=1e-6, atol=0
            )
        else:
            torch.testing.assert_close(s.elements[n], p.detach().abs())
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


# --- random --------------------------------------------------------------------------------


def test_random_is_deterministic_per_seed():
    model = _tiny()
    a = get_saliency("random", seed=5).scores(model, [])
    b = get_saliency("random", seed=5).scores(model, [])
    c = get_saliency("random", seed=6).scores(model, [])
    for x, y, z in zip(
        a.heads + a.mlp + [a.blocks], b.heads + b.mlp + [b.blocks], c.heads + c.mlp + [c.blocks]
    ):
        assert torch.equal(x, y)
        assert not torch.equal(x, z)
        assert ((x >= 0) & (x < 1)).all()
    assert all(torch.equal(a.elements[n], b.elements[n]) for n in a.elements)
    assert not any(torch.equal(a.elements[n], c.elements[n]) for n in a.elements)


# --- registry ------------------------------------------------------------------------------


def test_registry_lists_every_criterion():
    names = list_saliencies()
    assert set(ALL_CRITERIA) <= set(names)
    assert names == sorted(set(names))
    for name in ALL_CRITERIA:
        inst = get_saliency(name)
        assert inst.name == name
        assert isinstance(inst, _saliency.Saliency)


def test_get_saliency_passes_kwargs():
    h = get_saliency("hessian", num_probes=3, seed=9)
    assert (h.num_probes, h.seed) == (3, 9)


def test_unknown_criterion_raises_config_error():
    with pytest.raises(ConfigError, match=r"unknown criterion 'nope'.*magnitude_l1"):
        get_saliency("nope")
    with pytest.raises(ConfigError, match="must have .name and .scores"):
        get_saliency(object())
    cls = type(get_saliency("magnitude_l2"))
    with pytest.raises(
        ConfigError, match=rf"the class {cls.__name__}, not an instance; pass {cls.__name__}\(\)"
    ):
        get_saliency(cls)


def test_duplicate_registration_warns_and_the_later_wins():
    from prunetune.registry import SALIENCIES

    original = SALIENCIES.get("magnitude_l1")
    try:
        with pytest.warns(UserWarning, match="'magnitude_l1' registered twice"):

            @register_saliency("magnitude_l1")
            class Shadow:
                def scores(self, model, batches=()):
                    raise AssertionError("not called")

        assert isinstance(get_saliency("magnitude_l1"), Shadow)
        assert Shadow.name == "magnitude_l1"
    finally:
        with pytest.warns(UserWarning):
            SALIENCIES.register("magnitude_l1")(original)
    assert get_saliency("magnitude_l1").__class__ is original


def test_user_instance_is_accepted():
    model = _tiny()

    class Ones:
        name = "ones"

        def scores(self, model, batches):
            heads = [torch.ones(b.attn.num_heads) for b in model.blocks]
            mlp = [torch.ones(b.mlp.fc1.out_features) for b in model.blocks]
            return SaliencyScores(self.name, heads, mlp, torch.ones(len(model.blocks)))

    inst = Ones()
    assert get_saliency(inst) is inst
    s = compute_scores(model, inst, None)
    assert s.criterion == "ones" and s.heads[0].tolist() == [1.0, 1.0]
    assert "ones" not in list_saliencies()


# --- every criterion on the embedded default -----------------------------------------------


@pytest.fixture(scope="module")
def digits_model():
    torch.manual_seed(0)
    return build_model(ModelSpec("digits_vit"))  # random init, float32


@pytest.mark.parametrize("name", ALL_CRITERIA)
def test_every_criterion_shapes_on_default_model(digits_model, name):
    model = digits_model
    batches = _batches((3, 2), img=16, classes=10, dtype=torch.float32)
    kwargs = {"num_probes": 1} if name == "hessian" else {}
    s = compute_scores(model, get_saliency(name, **kwargs), batches)
    assert s.criterion == name
    assert len(s.heads) == len(s.mlp) == 6
    assert all(h.shape == (6,) for h in s.heads)
    assert all(m.shape == (384,) for m in s.mlp)
    assert s.blocks.shape == (6,)
    for t in s.heads + s.mlp + [s.blocks]:
        assert torch.isfinite(t).all() and (t >= 0).all()
    params = _block_params(model)
    assert set(s.elements) == set(params)
    assert all(s.elements[n].shape == p.shape for n, p in params.items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_data_driven_criteria_need_batches(name):
    model = _tiny()
    with pytest.raises(ConfigError, match=f"criterion '{name}' needs calibration batches"):
        compute_scores(model, name, None)
    with pytest.raises(ConfigError, match="needs calibration batches"):
        get_saliency(name).scores(model, [])


def test_estimators_validate_their_inputs():
    model = _tiny()
    with pytest.raises(ConfigError, match="needs calibration batches"):
        hutchinson_hessian_diag(model, [])
    with pytest.raises(ConfigError, match="needs calibration batches"):
        empirical_fisher_diag(model, [])  # used to return 0/0 = NaN silently
    with pytest.raises(ConfigError, match="num_probes >= 1"):
        hutchinson_hessian_diag(model, _batches((2,)), num_probes=0)
    with pytest.raises(ConfigError, match="chunk >= 1"):
        empirical_fisher_diag(model, _batches((2,)), chunk=0)


@pytest.mark.parametrize("name", GRADIENT_BASED)
def test_gradient_criteria_ignore_callers_grad_mode_and_frozen_weights(name):
    model = _tiny()
    batches = _batches((3, 2))
    ref = compute_scores(model, name, batches)
    with torch.no_grad():
        under_no_grad = compute_scores(model, name, batches)
    model.requires_grad_(False)
    frozen = compute_scores(model, name, batches)
    assert not any(p.requires_grad for p in model.parameters())
    for s in (under_no_grad, frozen):
        for n in ref.elements:
            torch.testing.assert_close(s.elements[n], ref.elements[n], rtol=1e-12, atol=0)
