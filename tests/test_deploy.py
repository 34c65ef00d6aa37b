"""Deployment exports: ONNX checked with onnxruntime, torch.export programs, the model card.

Each export is run on inputs the export's own check did not use (batch 5) and compared with the
PyTorch model here, so the test does not rely on the check it tests. Every token mode exports
(static keep counts); the default run covers ToMe merging (the issue's acceptance case), a
hybrid width/depth/token configuration and the tolerance refusal; ``-m slow`` runs every mode.
"""

from __future__ import annotations

import json

import pytest
import torch

from prunetune import PruningConfig, prune
from prunetune.config import BlockConfig
from prunetune.deploy import (
    export_onnx,
    export_pt2,
    model_card,
    onnx_session,
    parse_formats,
    write_deploy,
)
from prunetune.errors import PrunetuneError
from prunetune.models import ModelSpec, ViTArch, build_model, input_shape

pytest.importorskip("onnxruntime")

SPEC = ModelSpec("digits_vit")


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return build_model(SPEC).eval()


def _tokens(mode: str) -> PruningConfig:
    cfg = PruningConfig.dense(SPEC).replace(token_mode=mode)
    return cfg.with_block(2, token_keep=36 / 64).with_block(4, token_keep=25 / 36)


def _hybrid() -> PruningConfig:
    blocks = [BlockConfig(heads=4, mlp=200, sparsity=0.3) for _ in range(6)]
    blocks[1] = BlockConfig(heads=2, mlp=96, token_keep=0.5)
    blocks[4] = BlockConfig(keep=False)
    return PruningConfig(SPEC, tuple(blocks), token_mode="attentive")


def _fresh_input(model, batch=5):
    return torch.randn(batch, *input_shape(model), generator=torch.Generator().manual_seed(7))


def _check_onnx(model, tmp_path):
    info = export_onnx(model, tmp_path / "model.onnx")
    assert info["max_abs_diff"] <= 1e-4
    x = _fresh_input(model)
    sess = onnx_session(tmp_path / "model.onnx")
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        assert torch.allclose(got, model(x), atol=1e-4, rtol=0)
    return info


def test_onnx_of_a_token_merging_config_matches_pytorch(base, tmp_path):
    model = prune(base, _tokens("merge"))
    info = _check_onnx(model, tmp_path)
    assert info["opset"] >= 17 and "onnxruntime" in info["checked_with"]


def test_onnx_and_pt2_of_a_hybrid_config(base, tmp_path):
    model = prune(base, _hybrid())
    done = write_deploy(model, tmp_path, ("onnx", "pt2"))
    assert set(done) == {"onnx", "pt2"}
    x = _fresh_input(model, 2)
    prog = torch.export.load(str(tmp_path / "model.pt2")).module()
    with torch.no_grad():
        assert torch.allclose(prog(x), model(x), atol=1e-5, rtol=0)
    sess = onnx_session(tmp_path / "model.onnx")
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        assert torch.allclose(got, model(x), atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["attentive", "attentive_fuse", "spatial_merge", "learned"])
def test_every_token_mode_exports(base, tmp_path, mode):
    model = prune(base, _tokens(mode))
    _check_onnx(model, tmp_path)
    export_pt2(model, tmp_path / "model.pt2")


def test_a_mismatching_export_is_refused(base, tmp_path, monkeypatch):
    import prunetune.deploy as deploy

    model = prune(base, PruningConfig.dense(SPEC))
    monkeypatch.setattr(deploy, "TOLERANCE", -1.0)  # every difference, even 0, is too large
    with pytest.raises(PrunetuneError, match="differs from PyTorch"):
        export_pt2(model, tmp_path / "model.pt2")


def test_parse_formats():
    assert parse_formats("onnx,pt2") == ("onnx", "pt2")
    assert parse_formats("safetensors") == ()
    assert parse_formats(None) == ()
    for bad in ("tflite", "", "onnx,trt"):
        with pytest.raises(PrunetuneError, match="export format"):
            parse_formats(bad)


def test_model_card_carries_preprocessing_and_shapes_and_loads_as_a_config(base, tmp_path):
    from prunetune._session import deployment_preprocessing

    config = _hybrid()
    pre = deployment_preprocessing(base, SPEC)
    assert pre["input_size"] == [1, 16, 16] and pre["mean"] == [0.5] and pre["std"] == [0.5]
    card = model_card(config, pre, ViTArch.from_spec(SPEC))
    assert card["architecture"] == "digits_vit" and card["num_classes"] == 10
    shapes = card["block_shapes"]
    assert [s["heads"] for s in shapes] == [4, 2, 4, 4, 0, 4]
    assert [s["mlp"] for s in shapes][:2] == [200, 96] and not shapes[4]["kept"]
    assert shapes[2]["tokens"] == 33  # 32 of 64 patch tokens kept after block 1, + class token
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**config.to_dict(), **card}))
    assert PruningConfig.load(path) == config


def test_model_card_preprocessing_of_a_user_model(tmp_path):
    from prunetune._session import deployment_preprocessing

    spec = ModelSpec(
        "vit_custom",
        {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3},
        {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.2, 0.2], "interpolation": "bicubic"},
    )
    model = build_model(spec)
    pre = deployment_preprocessing(model, spec, data=str(tmp_path))
    assert pre["input_size"] == [3, 32, 32]
    assert pre["mean"] == [0.4, 0.5, 0.6] and pre["interpolation"] == "bicubic"
    assert pre["crop_pct"] == 1.0
