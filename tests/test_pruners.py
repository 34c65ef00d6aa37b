"""Contract tests every registered pruner must pass, on every supported model family.

Parametrised over :func:`prunetune.pruners.list_pruners` (a newly registered pruner is picked
up automatically) and over the model families below. For each pruner ``exercising_config``
builds a configuration that makes it do real work; the contract then checks that

- the identity configuration (the pruner's own vocabulary, e.g. ``heads=num_heads``) keeps the
  dense outputs,
- the configuration's analytic cost never exceeds the dense cost, and the built model's
  measured MACs and parameters equal the analytic ones,
- the configuration round-trips through JSON and YAML,
- forward and backward run with timm's fused (sdpa) and explicit attention, with a gradient
  on every parameter,
- the pruned modules' attributes agree with their weights and the configuration,
- ``save_pruned``/``load_pruned`` reproduce the outputs without unpickling anything.

Further tests check *which* units go (the highest-scoring ones stay, given chosen saliency
scores) and that a pruned model computes exactly what the dense model computes with those
units' contributions removed.
"""

from __future__ import annotations

import copy
import functools
import json
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from _families import FAMILIES, SMALL  # noqa: E402,F401
from prunetune import (
    BlockConfig,
    ConfigError,
    ModelSpec,
    PruningConfig,
    UnsupportedModelError,
    build_model,
    estimate_cost,
    load_pruned,
    measure_macs,
    prune,
    save_pruned,
)
from prunetune._pruned import CONFIG_FILE, WEIGHTS_FILE
from prunetune.evaluators import count_params
from prunetune.models import ViTArch
from prunetune.pruners import SaliencyScores, get_pruner, list_pruners

STRUCTURAL = ("heads", "mlp", "unstructured", "depth")
#: Block sub-modules a pruner may add (the learned token pruner's predictor): their parameters
#: are the one allowed growth in parameter count; MACs may never grow.
ADDED_MODULES = ("keep_predictor",)

# float32 on CPU: pruned models run the same products over fewer terms, and the fused and
# explicit attention paths sum in different orders, so outputs agree to ~1e-6 of their scale.
RTOL, ATOL = 1e-4, 1e-5


# --- models, inputs, scores ------------------------------------------------------------------


@functools.cache
def dense_model(family: str) -> nn.Module:
    """The family's base model, with norms, biases and LayerScale moved off their init values.

    timm initialises LayerNorm to (1, 0), biases to 0 and DeiT-3's LayerScale to 1e-6; left
    like that, blocks barely change the residual stream and a wrongly pruned unit could go
    unnoticed. Shared between tests: never modify it (``prune`` works on a copy).
    """
    torch.manual_seed(0)
    model = build_model(FAMILIES[family]).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma") or (p.dim() == 1 and name.endswith("weight")):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # biases
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name in ("cls_token", "dist_token"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.startswith(("head", "head_dist")):  # outputs of order 1
                p.mul_(20.0)
    return model


def input_shape(model: nn.Module) -> tuple[int, ...]:
    return (model.patch_embed.proj.in_channels, *model.patch_embed.img_size)


@functools.cache
def inputs(family: str) -> torch.Tensor:
    """Two images for the small families; one for the timm ones (keeps the suite fast)."""
    g = torch.Generator().manual_seed(2)
    n = 2 if family in ("digits_vit", "vit_custom") else 1
    return torch.randn(n, *input_shape(dense_model(family)), generator=g)


@functools.cache
def dense_output(family: str) -> torch.Tensor:
    with torch.no_grad():
        return dense_model(family)(inputs(family))


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    """Drops the cached models when this module is done (they are large for deit3_small)."""
    yield
    for f in (dense_model, inputs, dense_output):
        f.cache_clear()


def chosen_scores(family: str) -> SaliencyScores:
    """Saliency scores chosen by the test (random, no ties), so the expected units are known."""
    model = dense_model(family)
    g = torch.Generator().manual_seed(3)
    heads = [torch.randperm(b.attn.num_heads, generator=g).float() for b in model.blocks]
    mlp = [torch.randn(b.mlp.fc1.out_features, generator=g) for b in model.blocks]
    elements = {
        n: torch.randn(p.shape, generator=g)
        for n, p in model.named_parameters()
        if n.startswith("blocks.")
    }
    return SaliencyScores(
        "chosen", heads, mlp, torch.randn(len(model.blocks), generator=g), elements
    )


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL * float(b.abs().max()))


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


# --- configurations ----------------------------------------------------------------------------


def _config(spec: ModelSpec, block, **kw) -> PruningConfig:
    arch = ViTArch.from_spec(spec)
    return PruningConfig(spec, tuple(block(i, arch) for i in range(arch.depth)), **kw)


def _heads_block(i: int, a: ViTArch) -> BlockConfig:
    return BlockConfig(heads=[1, max(1, a.num_heads - 1), None, max(1, a.num_heads // 2)][i % 4])


def _mlp_block(i: int, a: ViTArch) -> BlockConfig:
    return BlockConfig(mlp=[a.mlp_hidden // 3, None, a.mlp_hidden - 1, 7][i % 4])


def _sparse_block(i: int, a: ViTArch) -> BlockConfig:
    return BlockConfig(sparsity=[0.5, 0.0, 0.25, 0.9][i % 4])


def _depth_block(i: int, a: ViTArch) -> BlockConfig:
    return BlockConfig(keep=i not in (1, a.depth - 1))


def _token_block(i: int, a: ViTArch) -> BlockConfig:
    return BlockConfig(token_keep=0.7 if i in (1, a.depth // 2 + 1) else 1.0)


def _mixed_block(i: int, a: ViTArch) -> BlockConfig:
    h, m, s, k = _heads_block(i, a), _mlp_block(i + 1, a), _sparse_block(i, a), _depth_block(i, a)
    return BlockConfig(keep=k.keep, heads=h.heads, mlp=m.mlp, sparsity=s.sparsity)


_EXERCISE = {
    "heads": _heads_block,
    "mlp": _mlp_block,
    "unstructured": _sparse_block,
    "depth": _depth_block,
}


def exercising_config(name: str, spec: ModelSpec) -> PruningConfig:
    """A configuration on which pruner ``name`` does real work.

    Token pruners are registered as ``tokens_<token_mode>``. An unknown pruner gets the mixed
    configuration; if it does not apply to that, add an entry to ``_EXERCISE``.
    """
    if name.startswith("tokens_"):
        cfg = _config(spec, _token_block, token_mode=name.removeprefix("tokens_"))
    else:
        cfg = _config(spec, _EXERCISE.get(name, _mixed_block))
    assert get_pruner(name).applies(cfg), (
        f"no exercising config for pruner {name!r}: add one to _EXERCISE"
    )
    return cfg


def identity_config(name: str, spec: ModelSpec) -> PruningConfig:
    """The pruner's no-op, in its own vocabulary (explicit full widths, sparsity 0, ...)."""
    full = {
        "heads": lambda i, a: BlockConfig(heads=a.num_heads),
        "mlp": lambda i, a: BlockConfig(mlp=a.mlp_hidden),
    }
    kw = {"token_mode": name.removeprefix("tokens_")} if name.startswith("tokens_") else {}
    return _config(spec, full.get(name, lambda i, a: BlockConfig()), **kw)


# --- the pruned model under test (built once per pruner and family) -------------------------


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module", params=list_pruners())
def pruner_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def case(family, pruner_name):
    """(config, pruned model, its eval outputs) for one pruner on one family, chosen scores."""
    if pruner_name.startswith("tokens_attentive") and dense_model(family).cls_token is None:
        pytest.skip(
            "attentive token modes refuse models without a class token (test_tokens checks that)"
        )
    cfg = exercising_config(pruner_name, FAMILIES[family])
    pruned = prune(dense_model(family), cfg, scores=chosen_scores(family))
    return cfg, pruned, outputs(pruned, inputs(family))


# --- the contract --------------------------------------------------------------------------------


def test_identity_config_keeps_outputs(family, pruner_name):
    spec = FAMILIES[family]
    ident = identity_config(pruner_name, spec)
    pruned = prune(dense_model(family), ident, scores=chosen_scores(family))
    close(outputs(pruned, inputs(family)), dense_output(family))
    assert count_params(pruned) == count_params(dense_model(family))
    assert estimate_cost(ident) == estimate_cost(PruningConfig.dense(spec))


def test_cost_never_grows(family, pruner_name, case):
    cfg, pruned, out = case
    dense_cfg = PruningConfig.dense(FAMILIES[family])
    cost, dense = estimate_cost(cfg), estimate_cost(dense_cfg)
    # parameters a pruner adds on purpose (DynamicViT's keep predictors): the only growth allowed
    added = sum(
        count_params(m)[0]
        for blk in pruned.blocks
        for n, m in blk.named_children()
        if n in ADDED_MODULES
    )
    assert cost.macs <= dense.macs
    assert (
        cost.params <= dense.params + added and cost.nonzero_params <= dense.nonzero_params + added
    )
    for b, d in zip(cost.blocks, dense.blocks):
        assert b.macs <= d.macs and b.tokens <= d.tokens
    if pruner_name == "unstructured":  # masks zero weights but keep dense shapes and MACs
        assert cost.macs == dense.macs and cost.nonzero_params < dense.nonzero_params
    elif pruner_name in ("heads", "mlp", "depth") or pruner_name.startswith("tokens_"):
        assert cost.macs < dense.macs
    # and the model that was built costs exactly what the formula says
    shape = input_shape(pruned)
    assert measure_macs(pruned, shape) == cost.macs
    assert count_params(pruned) == (cost.params, cost.nonzero_params)


def test_config_round_trips(family, pruner_name, case, tmp_path):
    cfg, pruned, out = case
    assert PruningConfig.from_json(cfg.to_json()) == cfg
    assert PruningConfig.from_yaml(cfg.to_yaml()) == cfg
    assert PruningConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for suffix in (".json", ".yaml"):
        cfg.save(tmp_path / f"c{suffix}")
        assert PruningConfig.load(tmp_path / f"c{suffix}") == cfg
    assert yaml.safe_load(cfg.to_yaml()) == json.loads(cfg.to_json())
    assert pruned.pruning_config == cfg


def test_forward_backward_fused_and_explicit(family, pruner_name, case):
    cfg, pruned, out = case
    x = inputs(family)
    model = copy.deepcopy(pruned)
    attns = [m for m in model.modules() if hasattr(m, "fused_attn")]
    assert attns
    for fused in (True, False):
        for a in attns:
            a.fused_attn = fused
        if not fused:  # the explicit path computes what the fused (sdpa) one does
            close(outputs(model, x), out)
        model.train()
        model.zero_grad(set_to_none=True)
        y = model(x)
        if isinstance(y, tuple):  # distilled DeiT in distillation training returns two heads
            y = sum(y)
        loss = F.cross_entropy(y, torch.arange(len(x)) % y.shape[-1])
        loss.backward()
        assert torch.isfinite(loss)
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"fused_attn={fused}: no gradient reached {missing[:5]}"
        bad = [
            n
            for n, p in model.named_parameters()
            if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        assert not bad, f"fused_attn={fused}: non-finite gradients in {bad[:5]}"


def test_attributes_consistent(family, pruner_name, case):
    cfg, pruned, out = case
    arch = ViTArch.from_spec(FAMILIES[family])
    kept = [i for i, b in enumerate(cfg.blocks) if b.keep]
    assert len(pruned.blocks) == len(kept)
    heads, mlps = cfg.kept_heads(arch), cfg.kept_mlp(arch)
    D = arch.embed_dim
    for blk, i in zip(pruned.blocks, kept):
        attn, mlp = blk.attn, blk.mlp
        assert attn.num_heads == heads[i] and attn.head_dim == arch.head_dim
        assert attn.attn_dim == attn.num_heads * attn.head_dim
        assert attn.qkv.weight.shape == (3 * attn.attn_dim, D)
        assert attn.qkv.out_features == 3 * attn.attn_dim and attn.qkv.in_features == D
        if attn.qkv.bias is not None:
            assert attn.qkv.bias.shape == (3 * attn.attn_dim,)
        assert (
            attn.proj.weight.shape == (D, attn.attn_dim) and attn.proj.in_features == attn.attn_dim
        )
        if isinstance(attn.norm, nn.LayerNorm):
            assert attn.norm.normalized_shape == (attn.attn_dim,)
            assert attn.norm.weight.shape == (attn.attn_dim,)
        assert attn.scale == pytest.approx(arch.head_dim**-0.5)
        assert mlp.fc1.out_features == mlp.fc1.weight.shape[0] == mlps[i]
        assert mlp.fc2.in_features == mlp.fc2.weight.shape[1] == mlps[i]
        if isinstance(mlp.norm, nn.LayerNorm):
            assert mlp.norm.normalized_shape == (mlps[i],) and mlp.norm.weight.shape == (mlps[i],)
        # surgery keeps timm's module classes, dtype and trainability
        for mod in (attn.qkv, attn.proj, mlp.fc1, mlp.fc2, attn.norm, mlp.norm):
            for p in mod.parameters():
                assert p.dtype == torch.float32 and p.requires_grad
        assert type(attn.norm) is type(dense_model(family).blocks[0].attn.norm)
        assert type(mlp.norm) is type(dense_model(family).blocks[0].mlp.norm)


def test_save_load_round_trip(family, pruner_name, case, tmp_path, monkeypatch):
    cfg, pruned, out = case
    folder = save_pruned(pruned, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    assert PruningConfig.load(folder / CONFIG_FILE) == cfg

    def no_pickle(*args, **kwargs):
        raise AssertionError("load_pruned must not unpickle anything")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_pruned(folder)
    monkeypatch.undo()
    assert loaded.pruning_config == cfg
    want, got = pruned.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    torch.testing.assert_close(outputs(loaded, inputs(family)), out, rtol=0, atol=0)


# --- which units go, and what the pruned model computes --------------------------------------


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(scores, k).indices.sort().values


def _channels(heads: torch.Tensor, d: int) -> torch.Tensor:
    return (heads[:, None] * d + torch.arange(d)).reshape(-1)


def _complement(idx: torch.Tensor, n: int) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[idx] = False
    return mask.nonzero().flatten()


class _KeptChannelsNorm(nn.Module):
    """LayerNorm over the kept channels only; removed channels output 0.

    The dense computation with units removed when a norm spans them (timm's scale_attn_norm
    over heads, scale_mlp_norm over MLP neurons): the statistics cover only what is left.
    """

    def __init__(self, norm: nn.LayerNorm, idx: torch.Tensor):
        super().__init__()
        self.norm, self.idx = norm, idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, i = self.norm, self.idx
        out = torch.zeros_like(x)
        out[..., i] = F.layer_norm(x[..., i], (len(i),), n.weight[i], n.bias[i], n.eps)
        return out


def _kept_structure(family: str, cfg: PruningConfig, scores: SaliencyScores, i: int):
    """(kept heads, kept channels, kept neurons) of base block ``i``, from the scores."""
    arch = ViTArch.from_spec(FAMILIES[family])
    bc = cfg.blocks[i]
    heads = _top(scores.heads[i], bc.heads or arch.num_heads)
    neurons = _top(scores.mlp[i], bc.mlp or arch.mlp_hidden)
    return heads, _channels(heads, arch.head_dim), neurons


def reference_model(family: str, cfg: PruningConfig, scores: SaliencyScores) -> nn.Module:
    """The dense model with the configuration's units removed by zeroing, not slicing.

    A removed head's proj columns and a removed neuron's fc2 column are zeroed (nothing else
    of theirs reaches the output); for sparsity the round(s·n) lowest-scoring weights *among
    the kept ones* are zeroed; a removed block becomes the identity (its residual update gone).
    """
    ref = copy.deepcopy(dense_model(family))
    for i, (blk, bc) in enumerate(zip(ref.blocks, cfg.blocks)):
        attn, mlp = blk.attn, blk.mlp
        heads, ch, neurons = _kept_structure(family, cfg, scores, i)
        qkv_rows = torch.cat([ch, ch + attn.attn_dim, ch + 2 * attn.attn_dim])
        with torch.no_grad():
            if bc.sparsity > 0:
                for name, lin, rows, cols in (
                    ("attn.qkv", attn.qkv, qkv_rows, None),
                    ("attn.proj", attn.proj, None, ch),
                    ("mlp.fc1", mlp.fc1, neurons, None),
                    ("mlp.fc2", mlp.fc2, None, neurons),
                ):
                    rows = torch.arange(lin.out_features) if rows is None else rows
                    cols = torch.arange(lin.in_features) if cols is None else cols
                    sub = scores.elements[f"blocks.{i}.{name}.weight"][rows[:, None], cols[None, :]]
                    k = int(round(bc.sparsity * sub.numel()))
                    keep = torch.ones(sub.numel())
                    keep[torch.argsort(sub.flatten(), stable=True)[:k]] = 0
                    lin.weight[rows[:, None], cols[None, :]] *= keep.view(sub.shape)
            attn.proj.weight[:, _complement(ch, attn.attn_dim)] = 0
            mlp.fc2.weight[:, _complement(neurons, mlp.fc1.out_features)] = 0
        if isinstance(attn.norm, nn.LayerNorm):
            attn.norm = _KeptChannelsNorm(attn.norm, ch)
        if isinstance(mlp.norm, nn.LayerNorm):
            mlp.norm = _KeptChannelsNorm(mlp.norm, neurons)
    for i, bc in enumerate(cfg.blocks):
        if not bc.keep:
            ref.blocks[i] = nn.Identity()
    return ref


# each structural pruner alone on the small families; all of them together on every family
SEMANTIC_CASES = [(f, k) for k in STRUCTURAL for f in ("digits_vit", "vit_custom")] + [
    (f, "mixed") for f in FAMILIES
]


def _structural_config(kind: str, family: str) -> PruningConfig:
    spec = FAMILIES[family]
    return _config(spec, _mixed_block) if kind == "mixed" else exercising_config(kind, spec)


@pytest.mark.parametrize("fam,kind", SEMANTIC_CASES)
def test_highest_scoring_units_kept_and_outputs_match_dense(fam, kind):
    cfg, scores = _structural_config(kind, fam), chosen_scores(fam)
    dense = dense_model(fam)
    pruned = prune(dense, cfg, scores=scores)

    # what it computes: the dense model with the removed units' contributions taken out
    x = inputs(fam)
    got = outputs(pruned, x)
    close(got, outputs(reference_model(fam, cfg, scores), x))
    # and the pruning changed something, by far more than the tolerance
    assert (got - dense_output(fam)).abs().max() > 100 * ATOL * dense_output(fam).abs().max()

    # which units it kept
    kept = [i for i, b in enumerate(cfg.blocks) if b.keep]
    for blk, i in zip(pruned.blocks, kept):  # surviving blocks are the configured ones, in order
        bc, d_blk = cfg.blocks[i], dense.blocks[i]
        heads, ch, neurons = _kept_structure(fam, cfg, scores, i)
        A = d_blk.attn.attn_dim
        qkv_rows = torch.cat([ch, ch + A, ch + 2 * A])
        qkv_w = getattr(blk.attn.qkv, "weight_orig", blk.attn.qkv.weight)
        fc1_w = getattr(blk.mlp.fc1, "weight_orig", blk.mlp.fc1.weight)
        assert torch.equal(qkv_w, d_blk.attn.qkv.weight[qkv_rows])
        assert torch.equal(
            getattr(blk.attn.proj, "weight_orig", blk.attn.proj.weight),
            d_blk.attn.proj.weight[:, ch],
        )
        assert torch.equal(fc1_w, d_blk.mlp.fc1.weight[neurons])
        assert torch.equal(
            getattr(blk.mlp.fc2, "weight_orig", blk.mlp.fc2.weight),
            d_blk.mlp.fc2.weight[:, neurons],
        )
        assert torch.equal(blk.norm1.weight, d_blk.norm1.weight)
        # every kept head outscores every removed one (same for neurons)
        dropped_h = _complement(heads, d_blk.attn.num_heads)
        if len(dropped_h):
            assert scores.heads[i][heads].min() > scores.heads[i][dropped_h].max()
        dropped_n = _complement(neurons, d_blk.mlp.fc1.out_features)
        if len(dropped_n):
            assert scores.mlp[i][neurons].min() > scores.mlp[i][dropped_n].max()
        # unstructured: exactly the round(s·n) lowest-scoring kept weights are masked
        for name, lin, rows, cols in (
            ("attn.qkv", blk.attn.qkv, qkv_rows, None),
            ("attn.proj", blk.attn.proj, None, ch),
            ("mlp.fc1", blk.mlp.fc1, neurons, None),
            ("mlp.fc2", blk.mlp.fc2, None, neurons),
        ):
            if bc.sparsity == 0:
                assert not hasattr(lin, "weight_mask")
                continue
            el = scores.elements[f"blocks.{i}.{name}.weight"]
            el = el[rows] if rows is not None else el[:, cols]
            k = int(round(bc.sparsity * el.numel()))
            zeroed = (lin.weight_mask == 0).flatten().nonzero().flatten()
            assert len(zeroed) == k
            assert torch.equal(zeroed, torch.argsort(el.flatten(), stable=True)[:k].sort().values)
            assert int((lin.weight == 0).sum()) >= k
    assert len(pruned.blocks) == len(kept)
    assert chosen_scores(fam).elements.keys() == scores.elements.keys()
    for k, v in scores.elements.items():  # the caller's scores are not modified
        assert v.shape == dict(dense.named_parameters())[k].shape


def test_pruned_head_output_is_dense_minus_that_head():
    """Attention-module level: removing head h == zeroing h's proj columns in the dense module."""
    fam = "vit_tiny"
    dense = dense_model(fam).blocks[3].attn
    H, d = dense.num_heads, dense.head_dim
    x = torch.randn(2, 17, dense.qkv.in_features)
    for drop in range(H):
        scores = torch.ones(H)
        scores[drop] = 0.0
        cfg = _config(FAMILIES[fam], lambda i, a: BlockConfig(heads=H - 1 if i == 3 else None))
        full = chosen_scores(fam)
        full.heads[3] = scores
        pruned = prune(dense_model(fam), cfg, scores=full).blocks[3].attn
        ref = copy.deepcopy(dense)
        with torch.no_grad():
            ref.proj.weight[:, drop * d : (drop + 1) * d] = 0
        for fused in (True, False):
            pruned.fused_attn = ref.fused_attn = fused
            with torch.no_grad():
                close(pruned(x), ref(x))


# --- unstructured sparsity under training --------------------------------------------------


def test_unstructured_mask_survives_training(family):
    spec = FAMILIES[family]
    cfg = exercising_config("unstructured", spec)
    model = prune(dense_model(family), cfg, scores=chosen_scores(family))
    cost = estimate_cost(cfg)
    masked = [m for m in model.modules() if hasattr(m, "weight_mask")]
    zeros_before = [(m.weight_mask == 0).clone() for m in masked]
    assert sum(int(z.sum()) for z in zeros_before) == cost.params - cost.nonzero_params
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = inputs(family)
    model.train()
    out = model(x)
    out = sum(out) if isinstance(out, tuple) else out
    F.cross_entropy(out, torch.ones(len(x), dtype=torch.long)).backward()
    opt.step()
    outputs(model, x)  # the forward pre-hook recomputes weight = weight_orig * mask
    for m, z in zip(masked, zeros_before):
        assert torch.equal(m.weight_mask == 0, z)
        assert (m.weight[z] == 0).all()
    assert any(
        not torch.equal(before[n], p)
        for n, p in model.named_parameters()
        if n.endswith("weight_orig")
    )
    assert count_params(model) == (cost.params, cost.nonzero_params)


# --- other behaviour ---------------------------------------------------------------------------


def test_identity_threshold_config_needs_no_scores():
    spec = FAMILIES["digits_vit"]
    cfg = _config(
        spec,
        lambda i, a: BlockConfig(head_threshold=0.0, mlp_threshold=0.0),
        width_mode="threshold",
    )
    assert cfg.is_identity
    pruned = prune(dense_model("digits_vit"), cfg)  # no scores, no batches
    assert pruned.pruning_config.width_mode == "count"
    close(outputs(pruned, inputs("digits_vit")), dense_output("digits_vit"))


@pytest.mark.parametrize("where", ["heads", "mlp", "elements"])
def test_non_finite_scores_raise(where):
    fam = "digits_vit"
    spec, scores = FAMILIES[fam], chosen_scores(fam)
    if where == "elements":
        scores.elements["blocks.2.mlp.fc1.weight"][3, 4] = float("nan")
        cfg = _config(spec, lambda i, a: BlockConfig(sparsity=0.5))
    else:
        getattr(scores, where)[2][1] = float("nan")
        cfg = _config(spec, lambda i, a: BlockConfig(heads=2, mlp=50))
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        prune(dense_model(fam), cfg, scores=scores)


def test_surgery_keeps_dtype_and_frozen_parameters():
    fam = "vit_custom"
    base = copy.deepcopy(dense_model(fam)).double()
    for p in base.parameters():
        p.requires_grad_(False)
    cfg = _config(FAMILIES[fam], _mixed_block)
    pruned = prune(base, cfg, scores=chosen_scores(fam))
    assert all(p.dtype == torch.float64 and not p.requires_grad for p in pruned.parameters())
    assert outputs(pruned, inputs(fam).double()).dtype == torch.float64


# --- configurations that do not fit, models that are not supported ------------------------------


@pytest.mark.parametrize("fam", ["digits_vit", "vit_tiny"])
def test_config_that_does_not_fit_raises(fam):
    spec, model = FAMILIES[fam], dense_model(fam)
    arch = ViTArch.from_spec(spec)
    too_many = PruningConfig.dense(spec).with_block(2, heads=arch.num_heads + 1)
    with pytest.raises(ConfigError, match=r"`heads <= num_heads` must hold.*in block 2"):
        prune(model, too_many)
    with pytest.raises(ConfigError, match="`heads <= num_heads` must hold"):
        estimate_cost(too_many)
    too_wide = PruningConfig.dense(spec).with_block(0, mlp=arch.mlp_hidden + 1)
    with pytest.raises(ConfigError, match="`mlp <= mlp_hidden` must hold"):
        prune(model, too_wide)
    short = PruningConfig(spec, tuple(BlockConfig() for _ in range(arch.depth - 1)))
    with pytest.raises(ConfigError, match="`len\\(blocks\\) == depth` must hold"):
        prune(model, short)
    with pytest.raises(ConfigError, match="`len\\(blocks\\) == depth` must hold"):
        estimate_cost(short)
    other = "vit_tiny" if fam == "digits_vit" else "digits_vit"  # a config for another depth
    with pytest.raises(ConfigError, match="`len\\(blocks\\) == depth` must hold"):
        prune(model, PruningConfig.dense(FAMILIES[other]))
    with pytest.raises(ConfigError):
        PruningConfig.from_dict({**PruningConfig.dense(spec).to_dict(), "blocks": [{"heads": 0}]})


def test_unsupported_models_raise():
    with pytest.raises(UnsupportedModelError, match="not supported"):
        ModelSpec("resnet18")
    with pytest.raises(UnsupportedModelError):
        build_model("resnet18")
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=10)
    cfg = PruningConfig.dense(FAMILIES["digits_vit"])
    with pytest.raises(UnsupportedModelError, match="ResNet is not a supported Vision Transformer"):
        prune(resnet, cfg)
    with pytest.raises(UnsupportedModelError):
        ViTArch.from_model(resnet)
    with pytest.raises(UnsupportedModelError, match="attention-pool"):
        build_model(
            ModelSpec(
                "vit_custom",
                {**SMALL, "embed_dim": 32, "depth": 2, "num_heads": 2, "global_pool": "map"},
            )
        )


def test_depth_and_token_only_configs_need_no_calibration_data():
    """A data-driven criterion is not run when no pruner has to choose units."""
    spec = FAMILIES["digits_vit"]
    model = build_model(spec).eval()
    cfg = (
        PruningConfig.dense(spec, criterion="fisher")
        .with_block(4, keep=False)
        .with_block(2, token_keep=0.5)
    )
    pruned = prune(model, cfg)  # no batches: fine, nothing is ranked
    assert len(pruned.blocks) == 5
    with pytest.raises(ConfigError, match="needs calibration batches"):
        prune(model, cfg.with_block(0, heads=3))
