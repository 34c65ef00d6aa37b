from __future__ import annotations

import json

import pytest
import torch

from prunetune import BlockConfig, ConfigError, ModelSpec, PruningConfig, UnsupportedModelError
from prunetune.config import SCHEMA_VERSION
from prunetune.models import ViTArch
from prunetune.pruners import SaliencyScores

SPEC = ModelSpec("digits_vit")


def test_dense_and_uniform():
    arch = ViTArch.from_spec(SPEC)
    dense = PruningConfig.dense(SPEC)
    assert dense.is_identity and len(dense.blocks) == arch.depth == 6
    u = PruningConfig.uniform(SPEC, head_ratio=0.5, mlp_ratio=0.25)
    assert [b.heads for b in u.blocks] == [3] * 6 and [b.mlp for b in u.blocks] == [96] * 6
    assert not u.is_identity


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"heads": 0}, "`heads >= 1` must hold"),
        ({"heads": 2.5}, "`heads >= 1` must hold"),
        ({"mlp": -3}, "`mlp >= 1` must hold"),
        ({"sparsity": 1.0}, "`0 <= sparsity < 1` must hold"),
        ({"token_keep": 0.0}, "`0 < token_keep <= 1` must hold"),
        ({"head_threshold": 1.5}, "`0 <= head_threshold <= 1` must hold"),
        ({"keep": "yes"}, "`keep` must be true or false"),
    ],
)
def test_block_validation_messages(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        BlockConfig(**kw)


def test_config_validation():
    with pytest.raises(ConfigError, match="at least one block must be kept"):
        PruningConfig(SPEC, tuple(BlockConfig(keep=False) for _ in range(6)))
    with pytest.raises(ConfigError, match="unknown criterion 'l3'"):
        PruningConfig(SPEC, (BlockConfig(),) * 6, criterion="l3")
    with pytest.raises(ConfigError, match="width_mode='count' takes heads/mlp counts, but block 1"):
        PruningConfig(SPEC, (BlockConfig(), BlockConfig(head_threshold=0.2)) + (BlockConfig(),) * 4)
    with pytest.raises(ConfigError, match="width_mode='threshold' takes thresholds"):
        PruningConfig(SPEC, (BlockConfig(heads=2),) * 6, width_mode="threshold")
    with pytest.raises(ConfigError, match="schema_version"):
        PruningConfig(SPEC, (BlockConfig(),) * 6, schema_version=99)
    with pytest.raises(UnsupportedModelError, match="not supported"):
        PruningConfig(ModelSpec.from_obj("resnet50"), (BlockConfig(),))


def test_frozen():
    cfg = PruningConfig.dense(SPEC)
    with pytest.raises(AttributeError):
        cfg.criterion = "fisher"
    with pytest.raises(AttributeError):
        cfg.blocks[0].heads = 1


def test_check_fits_messages():
    arch = ViTArch.from_spec(SPEC)
    cfg = PruningConfig.dense(SPEC).with_block(3, heads=7)
    with pytest.raises(
        ConfigError,
        match=r"`heads <= num_heads` must hold, but got \(heads=7, num_heads=6\) in block 3",
    ):
        cfg.check_fits(arch)
    short = PruningConfig(SPEC, (BlockConfig(),) * 4)
    with pytest.raises(ConfigError, match=r"len\(blocks\)=4, depth=6"):
        short.check_fits(arch)
    with pytest.raises(ConfigError, match="`mlp <= mlp_hidden`"):
        PruningConfig.dense(SPEC).with_block(0, mlp=1000).check_fits(arch)


def test_json_yaml_round_trip(tmp_path):
    cfg = PruningConfig(
        SPEC,
        (
            BlockConfig(heads=3, mlp=100, sparsity=0.25),
            BlockConfig(keep=False),
            BlockConfig(token_keep=0.7),
        )
        + (BlockConfig(heads=1),) * 3,
        criterion="fisher",
    )
    assert PruningConfig.from_json(cfg.to_json()) == cfg
    assert PruningConfig.from_yaml(cfg.to_yaml()) == cfg
    d = json.loads(cfg.to_json())
    assert d["schema_version"] == SCHEMA_VERSION and d["model"]["name"] == "digits_vit"
    assert d["blocks"][1] == {"keep": False}  # defaults are omitted
    for name in ("c.json", "c.yaml"):
        cfg.save(tmp_path / name)
        assert PruningConfig.load(tmp_path / name) == cfg
    thr = PruningConfig(
        SPEC, (BlockConfig(head_threshold=0.5, mlp_threshold=0.1),) * 6, width_mode="threshold"
    )
    assert PruningConfig.from_json(thr.to_json()) == thr


@pytest.mark.parametrize(
    "text,msg",
    [
        ("{not json", "malformed JSON"),
        ('{"model": "digits_vit"}', "missing the required key 'blocks'"),
        (
            '{"model": "digits_vit", "blocks": [{}], "colour": 1}',
            "unknown config keys \\['colour'\\]",
        ),
        (
            '{"model": "digits_vit", "blocks": [{"heds": 2}]}',
            "unknown keys \\['heds'\\] in block 0",
        ),
        ('{"model": "digits_vit", "blocks": [{"heads": 0}]}', "in block 0"),
        ("[1, 2]", "must be a mapping"),
    ],
)
def test_bad_json(text, msg):
    with pytest.raises(ConfigError, match=msg):
        PruningConfig.from_json(text)


def test_threshold_resolution_keeps_at_least_one():
    cfg = PruningConfig(
        SPEC, (BlockConfig(head_threshold=0.5, mlp_threshold=1.0),) * 6, width_mode="threshold"
    )
    heads = [torch.tensor([1.0, 0.6, 0.5, 0.49, 0.1, 0.0])] * 6
    mlp = [torch.linspace(0, 1, 384)] * 6
    s = SaliencyScores("magnitude_l1", heads, mlp, torch.ones(6))
    r = cfg.resolve(s)
    assert r.width_mode == "count"
    assert [b.heads for b in r.blocks] == [3] * 6  # 1.0, 0.6, 0.5 are >= 0.5 of the max
    assert [b.mlp for b in r.blocks] == [1] * 6
    zero = SaliencyScores(
        "magnitude_l1", [torch.zeros(6)] * 6, [torch.zeros(384)] * 6, torch.ones(6)
    )
    everything = PruningConfig(SPEC, (BlockConfig(head_threshold=1.0),) * 6, width_mode="threshold")
    assert [b.heads for b in everything.resolve(zero).blocks] == [6] * 6
