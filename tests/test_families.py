"""Model families: the seam itself, and a Hugging Face ViT used the way its user would.

- Nothing outside ``prunetune/families/`` reaches into a model's modules or imports timm's or
  transformers' model code (timm's data config and transforms are allowed: that is
  preprocessing, not the model). The check has a self-test.
- A user trains a tiny ``transformers`` ViT on an ImageFolder of their own, saves it with
  ``save_pretrained`` plus a ``preprocessor_config.json``, and runs ``prunetune search --model
  hf:DIR`` and ``export`` from other folders; the export reloads and scores what export.json
  says on the user's own evaluation.
- Loading a folder gives transformers' own logits; bad ``hf:`` folders are one-line errors.

The contract suites (pruners, token modes, saliency) run over every family in
``tests/_families.py`` (``test_contracts.py``, ``test_token_mode_plugin.py``).
"""

from __future__ import annotations

import ast
import json
import os
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _helpers import assert_usage_error, run, sqlite_url
from _user_data import TINY_SEARCH, write_textures
from _user_data import user_split as _split
from prunetune import ModelSpec, build_model, estimate_cost, load_pruned, measure_macs, save_pruned
from prunetune.errors import UnsupportedModelError
from prunetune.models import ViTArch, input_shape

SRC = Path(__file__).resolve().parents[1] / "src" / "prunetune"

# --- the seam ----------------------------------------------------------------------------------

#: attributes of timm's and transformers' ViT modules
MODULE_ATTRS = {
    "attn",
    "qkv",
    "proj",
    "fc1",
    "fc2",
    "norm1",
    "norm2",
    "patch_embed",
    "cls_token",
    "fused_attn",
    "q_norm",
    "k_norm",
    "head_dist",
    "attn_dim",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "layernorm_before",
    "layernorm_after",
    "base_model",
    "num_attention_heads",
    "attention",
    "embeddings",
}
#: names our code gives models and blocks (``b``/``dense`` are configs here, so not listed)
MODEL_NAMES = {
    "model",
    "pruned",
    "one",
    "empty",
    "out",
    "net",
    "student",
    "teacher",
    "blk",
    "block",
}
MODEL_NAMES |= {"prev_block", "attn", "mlp", "base"}


def model_access(source: str) -> list[str]:
    """``line: what`` for every model-library import and module attribute access in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            for mod in mods:
                top = (mod or "").split(".")[0]
                if top in ("timm", "transformers") and not (mod or "").startswith("timm.data"):
                    found.append(f"{node.lineno}: import {mod}")
        elif isinstance(node, ast.Attribute):
            recv = node.value
            name = recv.id if isinstance(recv, ast.Name) else getattr(recv, "attr", None)
            if name in MODEL_NAMES and (node.attr in MODULE_ATTRS or node.attr == "blocks"):
                found.append(f"{node.lineno}: {name}.{node.attr}")
    return found


def test_no_model_module_access_outside_the_family_adapters():
    bad = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("families/"):
            continue
        hits = model_access(path.read_text())
        if hits:
            bad[rel] = hits
    assert not bad, bad


@pytest.mark.parametrize(
    "snippet",
    [
        "from timm.models.vision_transformer import Block",
        "import transformers",
        "def f(model):\n    return model.blocks[0]",
        "def f(blk):\n    return blk.attn.qkv",
        "def f(model):\n    return model.patch_embed.img_size",
        "def f(block):\n    return block.attention.q_proj",
        "def f(model):\n    model.base_model.layers = []",
    ],
)
def test_the_seam_check_flags_model_access(snippet):
    assert model_access(snippet)


def test_the_seam_check_passes_configs_and_preprocessing():
    ok = (
        "from timm.data import resolve_data_config\n"
        "def f(config, b, arch):\n"
        "    return [b.mlp for b in config.blocks], arch.num_prefix_tokens\n"
    )
    assert model_access(ok) == []


def test_transformers_is_imported_only_for_an_hf_model():
    import subprocess
    import sys

    code = (
        "import sys, prunetune, prunetune.search\n"
        "prunetune.build_model('digits_vit')\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# --- a Hugging Face user's own model and data -------------------------------------------------

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_user(tmp_path_factory):
    """The user's files: data/{train,val,test} and hf_vit/ (save_pretrained + preprocessing)."""
    root = tmp_path_factory.mktemp("hf_user")
    write_textures(root / "data")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    model = transformers.ViTForImageClassification(config)
    x, y = _split(root / "data", "train")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(25):
        for idx in torch.randperm(len(y)).split(30):
            opt.zero_grad()
            F.cross_entropy(model(pixel_values=x[idx]).logits, y[idx]).backward()
            opt.step()
    model.eval()
    xv, yv = _split(root / "data", "val")
    with torch.no_grad():
        correct = int((model(pixel_values=xv).logits.argmax(-1) == yv).sum())
    model.save_pretrained(root / "hf_vit")
    (root / "hf_vit" / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "do_resize": True,
                "size": {"height": 32, "width": 32},
                "resample": 2,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.5],
                "image_std": [0.5],
            }
        )
    )
    assert correct / len(yv) > 0.8, correct  # the user's model works: the checks mean something
    return {"root": root, "model": model, "val_correct": correct, "val_n": len(yv)}


def _printed_accuracy(out: str) -> float:
    line = next(line for line in out.splitlines() if line.startswith("preprocessing: "))
    return float(line.split("dense val accuracy ")[1].split(" %")[0])


def test_a_folder_loads_with_transformers_own_logits(hf_user):
    from prunetune._session import load_base

    folder = hf_user["root"] / "hf_vit"
    base = load_base(ModelSpec(f"hf:{folder}"), data=str(hf_user["root"] / "data"), device="cpu")
    assert type(base.model).__name__ == "ViTForImageClassification"
    assert base.dense_accuracy == pytest.approx(hf_user["val_correct"] / hf_user["val_n"])
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(base.model(x), hf_user["model"](pixel_values=x).logits)
    assert input_shape(base.model) == (1, 32, 32)
    # the analytic cost is exact on a Hugging Face model
    from prunetune import PruningConfig

    assert estimate_cost(PruningConfig.dense(base.spec)).macs == measure_macs(
        base.model, (1, 32, 32)
    )
    assert ViTArch.from_model(base.model).num_prefix_tokens == 1


def test_without_an_image_processor_the_normalisation_is_asked_for(hf_user, tmp_path, capsys):
    import shutil

    folder = tmp_path / "no_processor"
    shutil.copytree(hf_user["root"] / "hf_vit", folder)
    (folder / "preprocessor_config.json").unlink()
    argv = ["saliency", "--criterion", "magnitude_l1", "--model", f"hf:{folder}"]
    argv += ["--data", str(hf_user["root"] / "data"), "--calib-samples", "16"]
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, "no known normalisation", "--mean", "preprocessor_config.json")
    code, out, err = run([*argv, "--mean", "0.5", "--std", "0.5", "--crop-pct", "1"], capsys)
    assert code == 0, err
    assert _printed_accuracy(out) == pytest.approx(
        100 * hf_user["val_correct"] / hf_user["val_n"], abs=0.005
    )


def test_search_and_export_a_hugging_face_vit_from_anywhere(hf_user, tmp_path, capsys, monkeypatch):
    r = hf_user["root"]
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    folder, data = (os.path.relpath(r / f, work) for f in ("hf_vit", "data"))  # as typed
    code, out, err = run(
        [
            "search",
            "--budget",
            "flops=50%",
            "--model",
            f"hf:{folder}",
            "--data",
            data,
            *TINY_SEARCH,
        ],
        capsys,
    )
    assert code == 0, err
    assert "final test %" in out
    assert "preprocessor_config.json" in out  # where the preprocessing came from
    assert _printed_accuracy(out) == pytest.approx(
        100 * hf_user["val_correct"] / hf_user["val_n"], abs=0.005
    )
    monkeypatch.chdir("/")
    storage = sqlite_url(work / "prunetune.db")
    code, out, err = run(["export", "--storage", storage, "--out", str(elsewhere / "best")], capsys)
    assert code == 0, err
    info = json.loads((elsewhere / "best" / "export.json").read_text())
    exported = load_pruned(elsewhere / "best").eval()
    assert isinstance(exported, transformers.ViTForImageClassification)
    dense = build_model(exported.pruning_config.model)
    assert measure_macs(exported, (1, 32, 32)) <= 0.5 * measure_macs(dense, (1, 32, 32))
    assert estimate_cost(exported.pruning_config).macs == measure_macs(exported, (1, 32, 32))
    # the user's own evaluation of the export agrees with export.json, image for image
    xt, yt = _split(r / "data", "test")
    with torch.no_grad():
        logits = exported(xt)
    correct = int((logits.argmax(-1) == yt).sum())
    assert correct / len(yt) == pytest.approx(info["final"]["test_accuracy"], abs=1e-9)
    # saved again the prunetune way (base + config + safetensors), it reloads to the same logits
    save_pruned(exported, tmp_path / "again")
    with torch.no_grad():
        torch.testing.assert_close(load_pruned(tmp_path / "again").eval()(xt), logits)
    # the reproduce command names the model folder absolute and works from yet another folder
    assert f"--model hf:{r / 'hf_vit'} " in info["reproduce"], info["reproduce"]
    argv = shlex.split(
        info["reproduce"].replace("--out DIR", f"--out {shlex.quote(str(elsewhere / 'repro'))}")
    )
    code, _, err = run(argv[1:] + ["--no-latency"], capsys)
    assert code == 0, err
    with torch.no_grad():
        torch.testing.assert_close(
            load_pruned(elsewhere / "repro").eval()(xt), logits, atol=1e-4, rtol=0
        )


def test_bad_hf_folders_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for folder, needle in (
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "empty", "has no config.json"),
        (tmp_path / "bert", "model_type 'bert'"),
    ):
        with pytest.raises(UnsupportedModelError, match=needle):
            ModelSpec(f"hf:{folder}")
        code, _, err = run(["info", "--model", f"hf:{folder}"], capsys)
        assert_usage_error(code, err, needle)
    code, _, err = run(["info", "--model", "hf:"], capsys)
    assert_usage_error(code, err, "hf: needs a folder")


def test_a_model_built_outside_prunetune_is_asked_to_return_logits():
    from prunetune.families.hf_vit import as_logits_model
    from prunetune.models import check_supported

    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    model = transformers.ViTForImageClassification(config)
    with pytest.raises(UnsupportedModelError, match="as_logits_model"):
        check_supported(model)
    x = torch.randn(2, 3, 16, 16)
    want = model(pixel_values=x).logits
    torch.testing.assert_close(as_logits_model(model)(x), want)
    check_supported(model)


def test_the_latency_table_times_hugging_face_blocks(hf_user, tmp_path, monkeypatch):
    from prunetune import PruningConfig
    from prunetune._session import load_base
    from prunetune.evaluators import LatencyTable, _latency_table

    monkeypatch.setattr(_latency_table, "CACHE", tmp_path)
    folder = hf_user["root"] / "hf_vit"
    base = load_base(ModelSpec(f"hf:{folder}"), data=str(hf_user["root"] / "data"), device="cpu")
    table = LatencyTable.for_model(base, batch_size=4, samples=6)
    assert len(table.rows) == 6 and all(r["ms"] > 0 for r in table.rows)
    dense = PruningConfig.dense(base.spec)
    small = dense.replace(blocks=tuple(b.__class__(heads=1, mlp=8) for b in dense.blocks))
    # blocks of this 32-wide model take ~0.6 ms: their order is within timing noise, so only
    # that both shapes are predicted from the measured HF rows is checked
    for cfg in (small, dense):
        assert 0 < table.predict(cfg) < float("inf")
