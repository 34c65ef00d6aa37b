"""A user's own model and data, end to end: the README's own-model path on files made here.

The test plays the user: it draws a grey ImageFolder (train/val/test), trains a small timm
``VisionTransformer`` on it with its own ``(x - 0.5) / 0.5`` normalisation, evaluates it its
own way, writes a model file with a ``pretrained_cfg`` and a safetensors checkpoint, and then
runs prunetune's commands, from other folders too.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from _helpers import PG_URL, _postgres_reachable, assert_usage_error, run, sqlite_url
from _user_data import TINY_SEARCH, write_textures
from _user_data import user_split as _split
from prunetune import PruningConfig, load_pruned
from prunetune.models import ModelSpec
from prunetune.search import load_study

KWARGS = {
    "img_size": 32,
    "patch_size": 8,
    "in_chans": 1,
    "num_classes": 3,
    "embed_dim": 32,
    "depth": 4,
    "num_heads": 2,
    "mlp_ratio": 2.0,
}


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The user's files: data/{train,val,test}, tex_vit.json (with pretrained_cfg),
    tex_vit.safetensors."""
    root = tmp_path_factory.mktemp("user")
    write_textures(root / "data")
    torch.manual_seed(0)
    model = VisionTransformer(**KWARGS)
    x, y = _split(root / "data", "train")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(25):
        for idx in torch.randperm(len(y)).split(30):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        xv, yv = _split(root / "data", "val")
        correct = int((model(xv).argmax(-1) == yv).sum())
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(root / "tex_vit.safetensors"),
    )
    cfg = {"mean": [0.5], "std": [0.5], "crop_pct": 1.0, "interpolation": "bilinear"}
    (root / "tex_vit.json").write_text(
        json.dumps({"name": "vit_custom", "kwargs": KWARGS, "pretrained_cfg": cfg})
    )
    (root / "bare_vit.json").write_text(json.dumps({"name": "vit_custom", "kwargs": KWARGS}))
    spec = ModelSpec("vit_custom", KWARGS, cfg)
    PruningConfig.dense(spec).save(root / "dense.json")
    assert correct / len(yv) > 0.8, (
        correct
    )  # the user's model works: the checks below mean something
    return {"root": root, "val_correct": correct, "val_n": len(yv), "spec": spec}


def _dense_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("preprocessing: "))


def _printed_accuracy(out: str) -> float:
    line = _dense_line(out)
    return float(line.split("dense val accuracy ")[1].split(" %")[0])


def _stored_weights(study, info: dict, dest: Path) -> bytes:
    """The Pareto-stage weights of the exported trial, read from the study's artifact store."""
    from optuna.artifacts import download_artifact

    from prunetune.search import open_store, study_store

    download_artifact(
        artifact_store=open_store(study_store(study)),
        file_path=str(dest),
        artifact_id=info["artifact"]["artifact_id"],
    )
    return dest.read_bytes()


def test_model_file_preprocessing_gives_the_users_own_accuracy(user, tmp_path, capsys, monkeypatch):
    r = user["root"]
    monkeypatch.chdir(r)
    code, out, err = run(
        [
            "prune",
            "--config",
            "dense.json",
            "--model",
            "tex_vit.json",
            "--checkpoint",
            "tex_vit.safetensors",
            "--data",
            "data",
            "--out",
            str(tmp_path / "o"),
            "--no-latency",
        ],
        capsys,
    )
    assert code == 0, err
    expected = 100 * user["val_correct"] / user["val_n"]
    assert _printed_accuracy(out) == pytest.approx(expected, abs=0.005), _dense_line(out)
    line = _dense_line(out)
    assert "mean (0.5), std (0.5)" in line and "model file" in line and "grey" in line
    # the before/after table's dense row is the same evaluation
    dense_row = next(row for row in out.splitlines() if row.startswith("dense "))
    assert float(dense_row.split()[-1]) == pytest.approx(expected, abs=0.005)


def test_flags_give_the_same_accuracy_and_no_normalisation_is_refused(
    user, tmp_path, capsys, monkeypatch
):
    r = user["root"]
    monkeypatch.chdir(r)
    base = [
        "saliency",
        "--criterion",
        "magnitude_l1",
        "--model",
        "bare_vit.json",
        "--checkpoint",
        "tex_vit.safetensors",
        "--data",
        "data",
        "--calib-samples",
        "16",
    ]
    code, out, err = run(
        [*base, "--mean", "0.5", "--std", "0.5", "--crop-pct", "1", "--interpolation", "bilinear"],
        capsys,
    )
    assert code == 0, err
    assert _printed_accuracy(out) == pytest.approx(
        100 * user["val_correct"] / user["val_n"], abs=0.005
    )
    assert "(flags)" in _dense_line(out)
    code, out, err = run(base, capsys)
    assert_usage_error(code, err, "no known normalisation", "--mean", "--std", "pretrained_cfg")
    # a checkpoint whose classes are in another order (the head's rows rolled) scores below chance
    from safetensors.torch import load_file

    state = load_file(str(r / "tex_vit.safetensors"))
    for k in ("head.weight", "head.bias"):
        state[k] = state[k].roll(1, 0).contiguous()
    save_file(state, str(tmp_path / "rolled.safetensors"))
    rolled = [
        *base[:6],
        str(tmp_path / "rolled.safetensors"),
        *base[7:],
        "--mean",
        "0.5",
        "--std",
        "0.5",
    ]
    code, out, err = run(rolled, capsys)
    assert_usage_error(
        code, err, "within 5 points of chance", "normalisation", "class order", "--skip-dense-check"
    )
    code, out, err = run([*rolled, "--skip-dense-check"], capsys)
    assert code == 0, err


def test_search_and_export_from_anywhere(user, tmp_path, capsys, monkeypatch):
    r = user["root"]
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    rel = [
        os.path.relpath(r / f, work) for f in ("tex_vit.json", "tex_vit.safetensors", "data")
    ]  # as typed
    code, out, err = run(
        [
            "search",
            "--budget",
            "flops=50%",
            "--model",
            rel[0],
            "--checkpoint",
            rel[1],
            "--data",
            rel[2],
            *TINY_SEARCH,
        ],
        capsys,
    )
    assert code == 0, err
    assert "study prunetune-flops50" in out
    assert "final test %" in out
    assert _printed_accuracy(out) == pytest.approx(
        100 * user["val_correct"] / user["val_n"], abs=0.005
    )
    monkeypatch.chdir("/")
    storage = sqlite_url(work / "prunetune.db")
    code, out, err = run(["export", "--storage", storage, "--out", str(elsewhere / "best")], capsys)
    assert code == 0, err
    info = json.loads((elsewhere / "best" / "export.json").read_text())
    assert info["tuned"] and info["final"]["test_accuracy"] is not None
    # the user's own evaluation of the exported model agrees with export.json, image for image
    exported = load_pruned(elsewhere / "best").eval()
    from timm.data import resolve_data_config

    assert resolve_data_config({}, model=exported)["mean"] == [
        0.5
    ]  # the preprocessing travels with it
    xt, yt = _split(r / "data", "test")
    with torch.no_grad():
        correct = int((exported(xt).argmax(-1) == yt).sum())
    assert correct / len(yt) == pytest.approx(info["final"]["test_accuracy"], abs=1e-9)
    monkeypatch.chdir(work)  # the same export from the study's own folder
    code, _, err = run(["export", "--out", "here"], capsys)
    assert code == 0, err
    for f in ("config.json", "model.safetensors"):
        assert (work / "here" / f).read_bytes() == (elsewhere / "best" / f).read_bytes(), f
    here = json.loads((work / "here" / "export.json").read_text())
    assert {k: v for k, v in here.items() if k != "reproduce"} == {
        k: v for k, v in info.items() if k != "reproduce"
    }
    monkeypatch.chdir("/")
    study = load_study(storage)
    assert Path(info["artifact"]["store"]).is_absolute()
    assert (elsewhere / "best" / "model.safetensors").read_bytes() == _stored_weights(
        study, info, tmp_path / "dl.safetensors"
    )
    # the reproduce command works from yet another folder and gives the same weights
    argv = shlex.split(
        info["reproduce"].replace("--out DIR", f"--out {shlex.quote(str(elsewhere / 'repro'))}")
    )
    code, _, err = run(argv[1:] + ["--no-latency"], capsys)
    assert code == 0, err
    x = torch.randn(8, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            load_pruned(elsewhere / "repro")(x),
            load_pruned(elsewhere / "best")(x),
            atol=1e-4,
            rtol=0,
        )
    # a second budget in the same folder is its own study
    monkeypatch.chdir(work)
    code, out, err = run(
        [
            "search",
            "--budget",
            "flops=30%",
            "--model",
            rel[0],
            "--checkpoint",
            rel[1],
            "--data",
            rel[2],
            *TINY_SEARCH,
            "--no-final",
        ],
        capsys,
    )
    assert code == 0, err
    assert "study prunetune-flops30" in out and "this worker ran 3 of the study's 3 trials" in out
    code, _, err = run(["export", "--out", str(elsewhere / "x")], capsys)
    assert_usage_error(code, err, "2 studies", "prunetune-flops30", "prunetune-flops50", "--study")
    code, _, err = run(
        ["export", "--study", "prunetune-flops30", "--out", str(elsewhere / "x")], capsys
    )
    assert_usage_error(code, err, "not finished", "the Pareto stage has not run", "--partial")
    code, out, err = run(
        ["export", "--study", "prunetune-flops30", "--out", str(elsewhere / "x"), "--partial"],
        capsys,
    )
    assert code == 0, err
    info = json.loads((elsewhere / "x" / "export.json").read_text())
    assert (
        "Pareto stage has not run" in info["partial"]
        and not info["tuned"]
        and info["final"] is None
    )
    assert "partial:" in out and "not fine-tuned" in out


def test_postgres_study_exports_tuned_weights_from_another_folder(
    user, tmp_path, capsys, monkeypatch
):
    why = _postgres_reachable()
    if why:
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable ({why})")
    import uuid

    name = f"own-{uuid.uuid4().hex[:8]}"
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    r = user["root"]
    try:
        code, out, err = run(
            [
                "search",
                "--budget",
                "flops=50%",
                "--model",
                str(r / "tex_vit.json"),
                "--checkpoint",
                str(r / "tex_vit.safetensors"),
                "--data",
                str(r / "data"),
                "--storage",
                PG_URL,
                "--study",
                name,
                *TINY_SEARCH,
            ],
            capsys,
        )
        assert code == 0, err
        monkeypatch.chdir(elsewhere)
        code, out, err = run(
            ["export", "--storage", PG_URL, "--study", name, "--out", "best"], capsys
        )
        assert code == 0, err
        info = json.loads((elsewhere / "best" / "export.json").read_text())
        stored = _stored_weights(load_study(PG_URL, name), info, tmp_path / "dl.safetensors")
        assert info["tuned"] and (elsewhere / "best" / "model.safetensors").read_bytes() == stored
        assert math.isfinite(info["final"]["val_accuracy"])
    finally:
        import optuna

        try:
            optuna.delete_study(study_name=name, storage=PG_URL)
        except KeyError:
            pass
