"""Adding a token mode is one new file plus its registration.

The plug-in below is written to a temporary file and imported with importlib; nothing else in
prunetune is touched, yet configs validate it, the analytic cost counts its MACs exactly, the
generic token pruner builds it and the contract suite passes. The contract
(:func:`prunetune.testing.token_modes.check_token_mode`) also runs over every built-in mode.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest
import torch

from _families import CONTRACT_FAMILIES, needs_library
from prunetune import (
    BlockConfig,
    ConfigError,
    ModelSpec,
    PruningConfig,
    build_model,
    estimate_cost,
    list_pruners,
    measure_macs,
    prune,
)
from prunetune.models import ViTArch
from prunetune.pruners import kept_tokens
from prunetune.pruners._tokens import token_schedule
from prunetune.registry import PRUNERS, TOKEN_MODES
from prunetune.testing.token_modes import NO_CLASS_TOKEN_SPEC, check_token_mode

SPEC = ModelSpec("digits_vit")  # 64 patches, a class token, 6 blocks

PLUGIN = '''
"""Keep the patch tokens with the largest L2 norm (needs no attention, no class token)."""

from __future__ import annotations

import torch

from prunetune.errors import ConfigError
from prunetune.pruners import TokenMode, kept_tokens
from prunetune.registry import TOKEN_MODES

MIN_KEEP = 0.2


@TOKEN_MODES.register("{name}")
class L2NormMode(TokenMode):
    def validate(self, config):
        for i, b in enumerate(config.blocks):
            if b.keep and b.token_keep < MIN_KEEP:
                raise ConfigError(
                    f"`token_keep >= {{MIN_KEEP}}` must hold in token_mode={{self.name!r}}, "
                    f"but got token_keep={{b.token_keep}} in block {{i}}"
                )

    def extra_macs(self, arch, step):
        return {macs}  # one squared norm (a 1xD by Dx1 product) per patch token

    def reduce(self, block, ctx, x):
        pre = ctx.prefix
        patches = x[:, pre:]
        sq = (patches.unsqueeze(-2) @ patches.unsqueeze(-1)).flatten(1)  # (B, P)
        k = kept_tokens(patches.shape[1], block.token_keep)
        idx = sq.topk(k, dim=1).indices.sort(dim=1).values
        kept = patches.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return torch.cat([x[:, :pre], kept], dim=1)
'''


def _write_and_import(tmp_path, name: str, macs: str = "step.p_in * arch.embed_dim"):
    """Writes the plug-in module for mode ``name`` and imports it (which registers it)."""
    path = tmp_path / f"{name}_mode.py"
    path.write_text(textwrap.dedent(PLUGIN.format(name=name, macs=macs)))
    spec = importlib.util.spec_from_file_location(f"_plugin_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def plugin(tmp_path):
    """Registers the ``l2norm`` plug-in for one test, then removes it (mode and pruner)."""
    assert "l2norm" not in TOKEN_MODES
    module = _write_and_import(tmp_path, "l2norm")
    yield module
    TOKEN_MODES.unregister("l2norm")
    PRUNERS.unregister("tokens_l2norm")
    sys.modules.pop(module.__name__, None)


def _model():
    torch.manual_seed(0)
    return build_model(SPEC).eval()


def _config(**block3) -> PruningConfig:
    blocks = [BlockConfig() for _ in range(6)]
    blocks[0] = BlockConfig(token_keep=0.5)  # allowed: this mode needs no previous attention
    blocks[2] = BlockConfig(keep=False)
    blocks[3] = BlockConfig(heads=2, **({"token_keep": 0.4} | block3))
    return PruningConfig(SPEC, tuple(blocks), token_mode="l2norm")


def test_new_mode_needs_one_file_and_its_registration(plugin):
    assert "l2norm" in TOKEN_MODES and "tokens_l2norm" in list_pruners()
    cfg = _config()
    m = _model()
    p = prune(m, cfg)
    shape = (m.patch_embed.proj.in_channels, *m.patch_embed.img_size)

    # the analytic cost: its own extra MACs at each reducing block, equal to the counted MACs
    arch = ViTArch.from_spec(SPEC)
    tokens, extra = token_schedule(cfg, arch, cfg.kept_heads(arch))
    p0, p3 = 64, kept_tokens(64, 0.5)
    assert extra == [p0 * arch.embed_dim, 0, 0, p3 * arch.embed_dim, 0, 0]
    assert tokens == [1 + p3, 1 + p3, 0, 1 + kept_tokens(p3, 0.4)] + [1 + kept_tokens(p3, 0.4)] * 2
    cost = estimate_cost(cfg)
    assert cost.macs == measure_macs(p, shape)
    assert cost.macs < estimate_cost(PruningConfig.dense(SPEC)).macs

    # the pruned model runs on the expected tokens, keeping the largest-norm ones
    x = torch.randn(4, *shape)
    seen = {}
    m.blocks[0].register_forward_pre_hook(lambda mod, args: seen.__setitem__("in", args[0]))
    p.blocks[0].norm1.register_forward_pre_hook(lambda mod, args: seen.__setitem__("out", args[0]))
    m(x)
    assert p.forward_features(x).shape[1] == tokens[-1] == 1 + kept_tokens(p3, 0.4)
    h = seen["in"]
    idx = h[:, 1:].norm(dim=-1).topk(p3, dim=1).indices.sort(dim=1).values
    want = torch.cat([h[:, :1], torch.stack([h[b, 1:][idx[b]] for b in range(4)])], dim=1)
    assert torch.allclose(seen["out"], want)

    # forward and backward in training
    p.train()
    p(x).logsumexp(-1).mean().backward()
    assert torch.isfinite(p.head.weight.grad).all() and p.head.weight.grad.abs().sum() > 0


def test_new_mode_validation_names_the_problem(plugin):
    with pytest.raises(
        ConfigError,
        match=r"`token_keep >= 0\.2` must hold in "
        r"token_mode='l2norm', but got token_keep=0\.1 in block 3",
    ):
        _config(token_keep=0.1)
    with pytest.raises(ConfigError, match="dropped .* token_keep"):  # the generic rules hold too
        _config(keep=False)


def test_new_mode_passes_the_contract(plugin):
    for seed in range(3):
        check_token_mode("l2norm", seed=seed)
    check_token_mode("l2norm", spec=NO_CLASS_TOKEN_SPEC)  # it needs no class token


def test_unregistered_mode_is_gone(tmp_path):
    module = _write_and_import(tmp_path, "l2norm")
    TOKEN_MODES.unregister("l2norm")
    PRUNERS.unregister("tokens_l2norm")
    sys.modules.pop(module.__name__, None)
    assert "l2norm" not in TOKEN_MODES and "tokens_l2norm" not in list_pruners()
    with pytest.raises(
        ConfigError,
        match=r"`token_mode in \(.*\)` must hold, but got "
        r"token_mode='l2norm'",
    ):
        PruningConfig.dense(SPEC).replace(token_mode="l2norm")


def test_contract_fails_on_a_mode_whose_cost_is_wrong(tmp_path):
    module = _write_and_import(tmp_path, "l2norm_uncounted", macs="0")
    try:
        with pytest.raises(
            AssertionError,
            match="'l2norm_uncounted' breaks a rule: "
            r"estimate_cost\(config\)\.macs equals measure_macs",
        ):
            check_token_mode("l2norm_uncounted")
    finally:
        TOKEN_MODES.unregister("l2norm_uncounted")
        PRUNERS.unregister("tokens_l2norm_uncounted")
        sys.modules.pop(module.__name__, None)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", TOKEN_MODES.names())
@pytest.mark.parametrize("family", list(CONTRACT_FAMILIES))
def test_every_registered_mode_passes_the_contract(family, name, seed):
    needs_library(family)
    check_token_mode(name, CONTRACT_FAMILIES[family], seed=seed)
