from __future__ import annotations

import pytest
import torch

from prunetune import (
    BlockConfig,
    ConfigError,
    ModelSpec,
    PruningConfig,
    build_model,
    compute_scores,
    estimate_cost,
    load_pruned,
    measure_macs,
    prune,
    save_pruned,
)
from prunetune.evaluators import finetune
from prunetune.pruners._tokens import (
    TOKEN_MODES,
    TokenContext,
    kept_tokens,
    token_aux_loss,
)
from prunetune.registry import TOKEN_MODES as MODE_REGISTRY

SPECS = [
    ModelSpec("digits_vit"),
    # 2 prefix tokens
    ModelSpec("deit_tiny_distilled_patch16_224", {"img_size": 32, "patch_size": 4}),
    # LayerScale
    ModelSpec("deit3_small_patch16_224", {"img_size": 32, "patch_size": 4, "num_classes": 7}),
    # QK-norm
    ModelSpec(
        "vit_custom",
        {
            "img_size": 16,
            "patch_size": 2,
            "embed_dim": 32,
            "depth": 4,
            "num_heads": 4,
            "qk_norm": True,
            "num_classes": 5,
        },
    ),
]


def _model(spec):
    torch.manual_seed(0)
    return build_model(spec).eval()


def _shape(m):
    return (m.patch_embed.proj.in_channels, *m.patch_embed.img_size)


def _cfg(spec, depth, mode, **extra):
    blocks = [BlockConfig() for _ in range(depth)]
    blocks[1] = BlockConfig(token_keep=0.7, heads=2)
    blocks[2] = BlockConfig(keep=False)
    blocks[3] = BlockConfig(token_keep=0.3, mlp=17)
    return PruningConfig(spec, tuple(blocks), token_mode=mode, **extra)


@pytest.mark.parametrize("mode", TOKEN_MODES)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_token_modes_contract(spec, mode, tmp_path):
    m = _model(spec)
    shape = _shape(m)
    cfg = _cfg(spec, len(m.blocks), mode)
    p = prune(m, cfg)
    # analytic MACs (reduced tokens, package token, scorer/matching/predictor overhead) == measured
    assert estimate_cost(cfg).macs == measure_macs(p, shape)
    assert estimate_cost(cfg).macs < estimate_cost(PruningConfig.dense(spec)).macs
    x = torch.randn(4, *shape)
    tokens = [b.tokens for b in estimate_cost(cfg).blocks if b.kept]
    # batched: every image keeps the same count, the one the cost model uses
    assert p.forward_features(x).shape[1] == tokens[-1]
    # train and eval, forward and backward, both attention paths
    for fused in (True, False):
        for blk in p.blocks:
            blk.attn.fused_attn = fused
        for train in (True, False):
            p.train(train)
            p.zero_grad()
            loss = p(x).logsumexp(-1).mean()
            aux = token_aux_loss(p)
            assert (aux is not None) == (mode == "learned" and train)
            (loss + (aux if aux is not None else 0)).backward()
            assert torch.isfinite(p.head.weight.grad).all() and p.head.weight.grad.abs().sum() > 0
    p.eval()
    save_pruned(p, tmp_path / "o")
    q = load_pruned(tmp_path / "o").eval()
    assert torch.allclose(q(x), p(x), atol=1e-5)


@pytest.mark.parametrize("mode", TOKEN_MODES)
@pytest.mark.parametrize("spec", SPECS[:2], ids=lambda s: s.name)
def test_keep_rate_one_is_dense(spec, mode):
    m = _model(spec)
    x = torch.randn(3, *_shape(m))
    depth = len(m.blocks)
    ones = PruningConfig(
        spec, tuple(BlockConfig(token_keep=1.0) for _ in range(depth)), token_mode=mode
    )
    assert torch.allclose(prune(m, ones)(x), m(x), atol=1e-5)
    # token blocks installed but reducing nothing (⌈0.999·P⌉ = P) still match the dense model
    near = ones.with_block(1, token_keep=0.999)
    p = prune(m, near)
    assert type(p.blocks[1]).__name__ == "TokenBlock"
    if mode != "learned":  # learned mode's train-time masking is not a no-op; eval is exact
        assert torch.allclose(p(x), m(x), atol=1e-5)
    p.eval()
    assert torch.allclose(p(x), m(x), atol=1e-5)


def _cls_attention(m, x, block):
    """Class-token attention (mean over heads) of ``block``, computed by hand."""
    seen = {}
    attn = m.blocks[block].attn
    hq = attn.q_norm.register_forward_hook(lambda mod, i, o: seen.__setitem__("q", o))
    hk = attn.k_norm.register_forward_hook(lambda mod, i, o: seen.__setitem__("k", o))
    m.forward_features(x)
    hq.remove()
    hk.remove()
    q, k = seen["q"], seen["k"]
    a = ((q[:, :, :1] @ k.transpose(-2, -1)) * attn.head_dim**-0.5).softmax(-1)
    return a.mean(1).squeeze(1)  # (B, N)


@pytest.mark.parametrize("fuse", [False, True])
def test_attentive_keeps_top_class_attention_tokens(fuse):
    """Independent reference: run dense blocks, select by class attention by hand, continue."""
    spec = SPECS[0]
    m = _model(spec)
    x = torch.randn(2, *_shape(m))
    cfg = (
        PruningConfig.dense(spec)
        .with_block(3, token_keep=0.5)
        .replace(token_mode="attentive_fuse" if fuse else "attentive")
    )
    out = prune(m, cfg).forward_features(x)

    cls_attn = _cls_attention(m, x, 2)[:, 1:]
    h = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
    for blk in m.blocks[:3]:
        h = blk(h)
    k = kept_tokens(64, 0.5)
    ref = []
    for b in range(2):
        order = cls_attn[b].argsort(descending=True)
        keep = order[:k].sort().values
        toks = [h[b, :1], h[b, 1:][keep]]
        if fuse:
            w = cls_attn[b][order[k:]]
            toks.append((w / w.sum()) @ h[b, 1:][order[k:]][None])
        ref.append(torch.cat([t.reshape(-1, h.shape[-1]) for t in toks]))
    h = torch.stack(ref)
    for blk in m.blocks[3:]:
        h = blk(h)
    assert torch.allclose(out, m.norm(h), atol=1e-5)


def test_merge_preserves_mass_and_sizes():
    torch.manual_seed(0)
    b, pre, p, d, dim = 3, 1, 30, 8, 16
    x = torch.randn(b, pre + p, dim)
    for rate in (0.9, 0.5, 0.2):  # 0.2 needs several matching rounds
        merge = MODE_REGISTRY.get("merge")
        ctx = TokenContext(merge, pre)
        ctx.k = torch.randn(b, 4, pre + p, d)
        blk = type("B", (), {"token_keep": rate})()
        out = merge.reduce(blk, ctx, x)
        keep = kept_tokens(p, rate)
        assert out.shape == (b, pre + keep, dim)
        assert torch.equal(out[:, :pre], x[:, :pre])
        sizes = ctx.sizes[:, pre:]
        assert torch.allclose(sizes.sum(1), torch.full((b, 1), float(p)))
        # size-weighted averages: Σ size·token over merged tokens == Σ token over the originals
        assert torch.allclose((sizes * out[:, pre:]).sum(1), x[:, pre:].sum(1), atol=1e-4)


def test_merge_uses_proportional_attention():
    spec = SPECS[0]
    m = _model(spec)
    cfg = PruningConfig.dense(spec).with_block(2, token_keep=0.5).replace(token_mode="merge")
    p = prune(m, cfg)
    seen = {}
    p.blocks[4].attn.register_forward_pre_hook(lambda mod, a, kw: seen.update(kw), with_kwargs=True)
    p(torch.randn(2, *_shape(m)))
    bias = seen["attn_mask"]
    assert bias.shape == (2, 1, 1, 1 + 32)
    # sizes sum to all tokens
    assert torch.allclose(bias.exp().sum(-1), torch.full((2, 1, 1), 65.0))


def test_learned_ratio_loss_trains_predictor_toward_rate():
    spec = SPECS[0]
    m = _model(spec)
    cfg = PruningConfig.dense(spec).with_block(2, token_keep=0.1).replace(token_mode="learned")
    p = prune(m, cfg).train()
    pred = p.blocks[2].keep_predictor
    opt = torch.optim.Adam(pred.parameters(), lr=1e-2)
    x = torch.randn(16, *_shape(m))
    target = kept_tokens(64, 0.1) / 64
    losses = []
    for _ in range(60):
        p(x)
        loss = token_aux_loss(p)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.25 * sum(losses[:10]) / 10
    assert abs(p._token_ctx.policy.mean().item() - target) < 0.1
    p.eval()
    assert p.forward_features(x).shape[1] == 1 + kept_tokens(64, 0.1)


def test_saliency_and_finetune_work_on_token_models(digits_base):
    calib = digits_base.calibration(32, 16)
    for mode in TOKEN_MODES:
        cfg = (
            PruningConfig.dense("digits_vit").with_block(2, token_keep=0.5).replace(token_mode=mode)
        )
        p = prune(digits_base.model, cfg)
        for crit in ("taylor", "fisher", "hessian", "activation"):
            s = compute_scores(p, crit, calib, **({"num_probes": 2} if crit == "hessian" else {}))
            assert all(torch.isfinite(h).all() for h in s.heads) and len(s.mlp) == 6
        finetune(p, digits_base.data.train, teacher=digits_base.model, epochs=0.05, progress=False)


def test_token_config_rules():
    spec = SPECS[0]
    dense = PruningConfig.dense(spec)
    with pytest.raises(ConfigError, match=r"first kept block \(0\) must have token_keep=1"):
        dense.with_block(0, token_keep=0.5)
    with pytest.raises(ConfigError, match=r"first kept block \(1\) must have token_keep=1"):
        dense.with_block(0, keep=False).with_block(1, token_keep=0.5)
    # a predictor needs no attention
    dense.replace(token_mode="learned").with_block(0, token_keep=0.5)
    with pytest.raises(ConfigError, match="dropped .* token_keep"):
        dense.with_block(3, keep=False, token_keep=0.5)
    with pytest.raises(
        ConfigError, match=r"`token_mode in \(.*\)` must hold, but got token_mode='tome'"
    ):
        dense.replace(token_mode="tome")
    v1 = {"schema_version": 1, "model": "digits_vit", "blocks": [{}] * 6}
    cfg = PruningConfig.from_dict(v1)
    assert cfg.token_mode == "attentive" and cfg.to_dict()["schema_version"] == 2


def test_timm_version_in_tested_range():
    import timm
    from packaging.version import Version

    from prunetune.families.timm_vit import TimmViT
    from prunetune.pruners._tokens import check_token_support

    v = Version(timm.__version__)
    assert Version("1.0.15") <= v < Version("1.1")  # the range pinned in pyproject.toml
    check_token_support(TimmViT())  # the hooks our token blocks rely on exist in this timm


def test_attentive_modes_need_a_class_token():
    spec = ModelSpec(
        "vit_custom",
        {
            "img_size": 16,
            "patch_size": 4,
            "embed_dim": 32,
            "depth": 3,
            "num_heads": 2,
            "class_token": False,
            "global_pool": "avg",
            "num_classes": 3,
        },
    )
    m = _model(spec)
    for mode in ("attentive", "attentive_fuse"):
        cfg = PruningConfig.dense(spec).replace(token_mode=mode).with_block(1, token_keep=0.5)
        with pytest.raises(ConfigError, match="no class token"):
            prune(m, cfg)
    from prunetune.spaces import build_space

    assert build_space(spec, "tokens")["token_mode"].choices == ("merge",)
