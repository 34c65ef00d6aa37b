"""The analytic cost model against real counters, and the latency probe.

``estimate_cost`` computes MACs and parameters from a configuration in closed form, without
building a model. Here it is checked against the model that ``prune`` builds for many random
configurations: MACs counted by torch's FlopCounterMode (``measure_macs``) and parameters
counted on the module (``count_params``). The contract is agreement within 0.5 %; in fact the
two are equal, and the tests say so, so any missing term shows up at once.

Which external counter agrees with ours, for the dense vit_tiny at 32 px / patch 4 (65 tokens,
365,107,584 MACs):

- torch's FlopCounterMode agrees exactly once ``measure_macs`` registers torch's own sdpa
  formula for the CPU flash-attention kernel. Without it, FlopCounterMode misses precisely
  the attention matmuls, Σ_blocks 2·h·N²·d = 19,468,800 MACs.
- ptflops' aten backend has the same blind spot: with timm's fused attention it is short by
  exactly the attention term (it counts no sdpa op), and with the explicit attention path it
  counts the two matmuls as bmm and then exceeds ours by exactly the bias additions, which
  it counts and we do not (366,467,722).
- ptflops' pytorch backend (252,352,942 with ptflops 0.7.5) is *not* short by the attention
  term, contrary to the usual story: it has a module hook for timm's Attention that counts
  q·kᵀ and attn·v (N²·d per head each, as we do) plus q scaling and softmax. But its total
  takes a hooked module's own count without descending into its children, so the qkv and
  proj Linears inside every Attention (N·4·D² per block, 115,015,680 in all) drop out of the
  total; it also adds bias additions and counts GELU twice (module hook and F.gelu patch).
  ``test_ptflops_pytorch_backend`` reconciles that number term by term.
"""

from __future__ import annotations

import copy
import random
import time

import ptflops
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode

from _families import FAMILIES, SMALL  # noqa: E402,F401
from prunetune import (
    BlockConfig,
    ModelSpec,
    PruningConfig,
    build_model,
    estimate_cost,
    measure_latency,
    measure_macs,
    prune,
)
from prunetune import models as models_mod
from prunetune.evaluators import count_params
from prunetune.models import ViTArch
from prunetune.pruners import get_saliency
from prunetune.pruners._tokens import TOKEN_MODES

#: Random configurations per family: 33 in all, more on the cheap families.
N_RANDOM = {
    "digits_vit": 9,
    "vit_custom": 9,
    "vit_tiny": 6,
    "deit_tiny_distilled": 5,
    "deit3_small": 4,
}
REL_TOL = 0.005


def random_config(spec: ModelSpec, rng: random.Random) -> PruningConfig:
    """Random heads / MLP width / keep / sparsity per block; half of them also reduce tokens."""
    arch = ViTArch.from_spec(spec)
    keep = [rng.random() < 0.8 for _ in range(arch.depth)]
    keep[rng.randrange(arch.depth)] = True
    modes = (
        TOKEN_MODES if arch.num_prefix_tokens else ("merge", "learned")
    )  # attentive needs a class token
    mode = rng.choice(modes) if rng.random() < 0.5 else modes[0]
    reduce_tokens = mode != modes[0] or rng.random() < 0.5
    first = keep.index(True)
    blocks = []
    for i, k in enumerate(keep):
        token_keep = 1.0
        if reduce_tokens and k and (i > first or mode == "learned") and rng.random() < 0.4:
            token_keep = round(rng.uniform(0.3, 0.95), 2)
        blocks.append(
            BlockConfig(
                keep=k,
                heads=rng.choice([None, rng.randint(1, arch.num_heads)]),
                mlp=rng.choice([None, rng.randint(1, arch.mlp_hidden)]),
                sparsity=rng.choice([0.0, round(rng.uniform(0.05, 0.9), 3)]),
                token_keep=token_keep,
            )
        )
    return PruningConfig(spec, tuple(blocks), token_mode=mode)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    """(name, dense model, element-wise random saliency scores): one model per family."""
    torch.manual_seed(0)
    model = build_model(FAMILIES[request.param]).eval()
    return request.param, model, get_saliency("random").scores(model)


def _input_shape(model) -> tuple[int, ...]:
    return (model.patch_embed.proj.in_channels, *model.patch_embed.img_size)


def test_estimate_matches_measured_on_random_configs(family):
    name, dense, scores = family
    rng = random.Random(f"cost-{name}")
    shape = _input_shape(dense)
    for trial in range(N_RANDOM[name]):
        cfg = random_config(FAMILIES[name], rng)
        est = estimate_cost(cfg)
        model = prune(dense, cfg, scores=scores)
        macs = measure_macs(model, shape)
        params, nonzero = count_params(model)
        where = f"{name} config {trial}: {cfg.to_json()}"
        assert abs(est.macs - macs) <= REL_TOL * macs, where
        assert abs(est.params - params) <= REL_TOL * params, where
        assert abs(est.nonzero_params - nonzero) <= REL_TOL * nonzero, where
        # in fact exact: a difference means a term is missing on one side
        assert (est.macs, est.params, est.nonzero_params) == (macs, params, nonzero), where
        arch = ViTArch.from_spec(cfg.model)
        outside = arch.num_patches * arch.embed_dim * arch.in_chans * arch.patch_area
        outside += arch.num_heads_out * arch.embed_dim * arch.num_classes
        assert outside + sum(b.macs for b in est.blocks) == est.macs
        assert arch.params_outside_blocks + sum(b.params for b in est.blocks) == est.params


def test_dense_estimate_matches_measured(family):
    name, dense, _ = family
    est = estimate_cost(PruningConfig.dense(FAMILIES[name]))
    assert measure_macs(dense, _input_shape(dense)) == est.macs
    assert count_params(dense) == (est.params, est.params) and est.nonzero_params == est.params


# --- vit_tiny at 32 px / patch 4 against a formula and other counters ------------------------

VIT_TINY = FAMILIES["vit_tiny"]
N, D, H, HEAD_DIM, M, DEPTH, PATCHES, CLASSES = 65, 192, 3, 64, 768, 12, 64, 10
ATTN_MATMULS = DEPTH * 2 * H * N * N * HEAD_DIM  # q·kᵀ and attn·v: 19,468,800
QKV_PROJ = DEPTH * N * 4 * D * D  # the Linears inside timm's Attention: 115,015,680
BIAS_ADDS = DEPTH * N * (3 * D + D + M + D) + PATCHES * D + CLASSES  # every Linear/conv bias


@pytest.fixture(scope="module")
def vit_tiny():
    torch.manual_seed(0)
    return build_model(VIT_TINY).eval()


def _set_fused(model, fused: bool) -> None:
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused


def test_vit_tiny_dense_macs(vit_tiny):
    est = estimate_cost(PruningConfig.dense(VIT_TINY))
    by_hand = (
        PATCHES * D * 3 * 16 + DEPTH * (N * (4 * D * D + 2 * D * M)) + ATTN_MATMULS + D * CLASSES
    )
    assert est.macs == by_hand == 365_107_584
    assert est.macs == pytest.approx(365.1e6, abs=0.05e6)
    assert est.params == count_params(vit_tiny)[0] == 5_362_762
    for fused in (True, False):  # FlopCounterMode sees sdpa (registered formula) and the bmm path
        _set_fused(vit_tiny, fused)
        assert measure_macs(vit_tiny, (3, 32, 32)) == est.macs
    _set_fused(vit_tiny, True)


def test_flop_counter_without_sdpa_formula_misses_exactly_the_attention_term(vit_tiny):
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        vit_tiny(torch.zeros(1, 3, 32, 32))
    plain = fc.get_total_flops() // 2
    if plain == 365_107_584:
        pytest.skip("this torch counts the CPU sdpa kernel itself")
    assert 365_107_584 - plain == ATTN_MATMULS


def _ptflops(model, backend: str) -> int:
    macs, params = ptflops.get_model_complexity_info(
        model,
        (3, 32, 32),
        backend=backend,
        as_strings=False,
        print_per_layer_stat=False,
        verbose=False,
    )
    assert macs is not None, f"ptflops ({backend}) failed"
    assert params == 5_362_762
    return int(macs)


def test_ptflops_aten_backend_misses_exactly_the_sdpa_term(vit_tiny):
    ours = estimate_cost(PruningConfig.dense(VIT_TINY)).macs
    model = copy.deepcopy(vit_tiny)
    _set_fused(model, True)
    fused = _ptflops(model, "aten")
    _set_fused(model, False)
    explicit = _ptflops(model, "aten")
    assert fused < ours
    assert explicit - fused == ATTN_MATMULS  # the matmuls it cannot see inside sdpa
    assert explicit == ours + BIAS_ADDS  # otherwise it counts what we count, plus biases
    gap = ours - fused
    # the gap is the attention-matmul term less the biases it adds (BIAS_ADDS ≈ 7 % of it)
    assert gap == pytest.approx(ATTN_MATMULS, rel=0.08)


def test_ptflops_pytorch_backend(vit_tiny):
    """ptflops' pytorch backend is 31 % low: it drops the qkv/proj Linears, not the attention."""
    ours = estimate_cost(PruningConfig.dense(VIT_TINY)).macs
    counted = {fused: _ptflops(_fused_copy(vit_tiny, fused), "pytorch") for fused in (True, False)}
    assert counted[True] == counted[False]  # its timm-Attention hook ignores the attention path
    pt = counted[True]
    assert pt < ours
    gap = ours - pt  # 112,754,642
    # the gap is the qkv+proj term (less the extras below), about 5.8x the attention term
    assert gap == pytest.approx(QKV_PROJ, rel=0.03)
    assert gap > 5 * ATTN_MATMULS
    extras = (
        DEPTH * (N * H * HEAD_DIM + H * N * N)  # its Attention hook: q scaling and softmax
        + DEPTH * N * (M + D)
        + PATCHES * D
        + CLASSES  # biases of fc1, fc2, patch conv, head
        + DEPTH * 2 * N * M  # GELU, counted by its module hook and again by its F.gelu patch
    )
    assert pt == pytest.approx(ours - QKV_PROJ + extras, rel=REL_TOL)
    assert pt == ours - QKV_PROJ + extras  # exact for ptflops 0.7.5


def _fused_copy(model, fused: bool):
    m = copy.deepcopy(model)
    _set_fused(m, fused)
    return m


# --- estimate_cost builds nothing ----------------------------------------------------------------


def test_estimate_cost_builds_no_model(monkeypatch, request):
    rng = random.Random("no-build")
    configs = [random_config(spec, rng) for spec in FAMILIES.values() for _ in range(20)]
    for spec in FAMILIES.values():
        ViTArch.from_spec(spec)  # cached: built once, on the meta device

    def no_build(*args, **kwargs):
        raise AssertionError("estimate_cost must not build a model")

    monkeypatch.setattr(models_mod, "build_model", no_build)
    monkeypatch.setattr(timm, "create_model", no_build)
    monkeypatch.setattr(VisionTransformer, "__init__", no_build)
    t0 = time.perf_counter()
    costs = [estimate_cost(c) for c in configs]
    per_call = (time.perf_counter() - t0) / len(configs)
    # reported (pytest's user properties, e.g. in --junitxml output), not asserted
    request.node.user_properties.append(("estimate_cost_us", round(per_call * 1e6, 1)))
    assert all(c.macs > 0 and 0 < c.nonzero_params <= c.params for c in costs)
    with pytest.raises(AssertionError, match="must not build"):
        models_mod.build_model(VIT_TINY)  # the guard is live


def test_arch_of_a_new_spec_is_read_on_the_meta_device(monkeypatch):
    monkeypatch.setattr(models_mod, "_ARCH_CACHE", {})
    built = []
    real = models_mod.build_model

    def spy(spec, *args, **kwargs):
        model = real(spec, *args, **kwargs)
        built.append({p.device.type for p in model.parameters()})
        return model

    monkeypatch.setattr(models_mod, "build_model", spy)
    spec = ModelSpec("deit3_small_patch16_224", {"img_size": 224, "patch_size": 16})
    cost = estimate_cost(PruningConfig.dense(spec))
    assert built == [{"meta"}]  # no weights allocated, even for a 224 px base model
    assert cost.macs == pytest.approx(4.6e9, rel=0.01)  # DeiT-III-S: 4.6 GMACs, 22 M params
    assert cost.params == pytest.approx(22.1e6, rel=0.01)
    estimate_cost(PruningConfig.uniform(spec, head_ratio=0.5))
    assert len(built) == 1  # cached from then on


# --- latency ------------------------------------------------------------------------------------


def test_measure_latency_is_sane():
    torch.manual_seed(0)
    model = build_model("digits_vit").train()
    res = measure_latency(model, (1, 16, 16), batch_size=4, warmup=1, repeats=7, threads=1)
    assert 0 < res.p10_ms <= res.median_ms <= res.p90_ms < 60_000
    assert (res.repeats, res.batch_size, res.threads, res.device) == (7, 4, 1, "cpu")
    assert model.training  # mode restored
    one = measure_latency(model, (1, 16, 16), batch_size=2, warmup=0, repeats=1)
    assert 0 < one.p10_ms == one.median_ms == one.p90_ms
    assert "ms" in str(res)
