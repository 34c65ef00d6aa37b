from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prunetune import PruningConfig, load_pruned
from prunetune.cli import main
from prunetune.models import ModelSpec, build_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "half.json"


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_usage_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunetune: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_info_dense_and_config(capsys):
    code, out, _ = run(["info"], capsys)
    assert code == 0
    assert "48.02 MMACs (96.05 MFLOPs)" in out and "679,018 params" in out
    code, out, _ = run(["info", "--config", str(EXAMPLE)], capsys)
    assert code == 0 and "24.83 MMACs" in out


def test_prune_default_writes_model_and_table(tmp_path, capsys):
    out_dir = tmp_path / "half"
    code, out, err = run(
        [
            "prune",
            "--config",
            str(EXAMPLE),
            "--out",
            str(out_dir),
            "--device",
            "cpu",
            "--latency-batch",
            "16",
        ],
        capsys,
    )
    assert code == 0, err
    assert "dense" in out and "pruned" in out and "val acc %" in out
    report = json.loads((out_dir / "report.json").read_text())
    assert report["pruned"]["macs"] < 0.55 * report["dense"]["macs"]
    assert report["dense"]["val_accuracy"] > 0.9
    assert report["pruned"]["latency_ms"] > 0
    model = load_pruned(out_dir)
    assert [b.attn.num_heads for b in model.blocks] == [4, 4, 3, 3, 3, 4]
    cfg = PruningConfig.load(out_dir / "config.json")
    assert cfg == PruningConfig.load(EXAMPLE)
    # no pickle: weights are plain safetensors and match the rebuilt model
    state = load_file(str(out_dir / "model.safetensors"))
    assert state.keys() == model.state_dict().keys()


def test_saliency_table(capsys):
    code, out, _ = run(
        ["saliency", "--criterion", "fisher", "--calib-samples", "32", "--device", "cpu"], capsys
    )
    assert code == 0
    assert "criterion fisher on 32 calibration images" in out
    assert len([ln for ln in out.splitlines() if ln[:1].isdigit()]) == 6


@pytest.fixture
def bad_inputs(tmp_path):
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file at all")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir(parents=True)
    cfg = PruningConfig.load(EXAMPLE).with_block(0, heads=9)
    cfg_path = tmp_path / "toomany.json"
    cfg_path.write_text(cfg.to_json())
    return tmp_path


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["info", "--model", "resnet50"], ["resnet50", "not supported"]),
        (["info", "--model", "vit_nonexistent_patch99"], ["unknown timm model"]),
        (["prune", "--config", "{d}/bad.json", "--out", "{d}/o"], ["malformed JSON"]),
        (["prune", "--config", "{d}/missing.json", "--out", "{d}/o"], ["does not exist"]),
        (
            ["prune", "--config", "{d}/toomany.json", "--out", "{d}/o"],
            ["heads <= num_heads", "block 0"],
        ),
        (
            [
                "prune",
                "--config",
                str(EXAMPLE),
                "--out",
                "{d}/o",
                "--checkpoint",
                "{d}/nope.safetensors",
            ],
            ["does not exist"],
        ),
        (
            [
                "prune",
                "--config",
                str(EXAMPLE),
                "--out",
                "{d}/o",
                "--checkpoint",
                "{d}/corrupt.safetensors",
            ],
            ["could not be read"],
        ),
        (
            ["prune", "--config", str(EXAMPLE), "--out", "{d}/o", "--data", "{d}/empty"],
            ["no images"],
        ),
        (
            ["prune", "--config", str(EXAMPLE), "--out", "{d}/o", "--data", "{d}/nodir/"],
            ["does not exist"],
        ),
        (
            [
                "prune",
                "--config",
                str(EXAMPLE),
                "--out",
                "{d}/o",
                "--model",
                "deit_tiny_patch16_224",
            ],
            ["made for model digits_vit"],
        ),
        (["saliency", "--criterion", "hessain"], ["unknown criterion 'hessain'"]),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(bad_inputs, argv, needles, capsys):
    argv = [a.format(d=bad_inputs) for a in argv]
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, *needles)
    assert not (bad_inputs / "o").exists()
    assert not [p for p in bad_inputs.iterdir() if p.name.startswith(".o.")]


def test_entry_point_exit_code(tmp_path):
    exe = Path(sys.executable).with_name("prunetune")
    r = subprocess.run(
        [str(exe), "prune", "--config", str(tmp_path / "x.json"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr
    r = subprocess.run([str(exe), "prune"], capture_output=True, text=True)
    assert r.returncode == 2  # argparse usage error


def _write_images(root: Path, classes: int, per_class: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = (rng.random((size, size, 3)) * 255).astype("uint8")
                Image.fromarray(arr).save(d / f"{i}.png")


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_user_model_checkpoint_and_imagefolder(tmp_path, capsys, fmt):
    """Real-use path: a local model file, a local checkpoint and an ImageFolder directory."""
    spec = {
        "name": "vit_custom",
        "kwargs": {
            "img_size": 16,
            "patch_size": 4,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 4,
            "num_classes": 3,
        },
    }
    (tmp_path / "model.json").write_text(json.dumps(spec))
    model = build_model(ModelSpec.from_obj(spec))
    ckpt = tmp_path / f"w.{fmt}"
    if fmt == "pth":
        torch.save({"model": model.state_dict()}, ckpt)
    else:
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(ckpt))
    _write_images(tmp_path / "data", classes=3, per_class=4, size=20)
    cfg = PruningConfig(
        ModelSpec.from_obj(spec),
        PruningConfig.uniform(ModelSpec.from_obj(spec), 0.5, 0.5).blocks,
        criterion="taylor",
    )
    cfg.save(tmp_path / "cfg.yaml")
    code, out, err = run(
        [
            "prune",
            "--config",
            str(tmp_path / "cfg.yaml"),
            "--model",
            str(tmp_path / "model.json"),
            "--checkpoint",
            str(ckpt),
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "o"),
            "--no-latency",
            "--device",
            "cpu",
            "--mean",
            "0.5",
            "0.5",
            "0.5",
            "--std",
            "0.25",
            "--skip-dense-check",
        ],
        capsys,
    )  # an untrained model: near chance by design
    assert code == 0, err
    assert "mean (0.5, 0.5, 0.5), std (0.25, 0.25, 0.25) (flags)" in out
    pruned = load_pruned(tmp_path / "o")
    assert [b.attn.num_heads for b in pruned.blocks] == [2, 2]
    assert pruned(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_checkpoint_mismatch_is_a_usage_error(tmp_path, capsys):
    other = build_model(
        ModelSpec(
            "vit_custom",
            {
                "img_size": 16,
                "patch_size": 2,
                "in_chans": 1,
                "embed_dim": 32,
                "depth": 2,
                "num_heads": 2,
                "num_classes": 10,
            },
        )
    )
    torch.save(other.state_dict(), tmp_path / "other.pth")
    code, _, err = run(
        [
            "prune",
            "--config",
            str(EXAMPLE),
            "--out",
            str(tmp_path / "o"),
            "--checkpoint",
            str(tmp_path / "other.pth"),
        ],
        capsys,
    )
    assert_usage_error(code, err, "does not match the model")
    assert not (tmp_path / "o").exists()


def test_prune_with_kd_finetune_recovers(tmp_path, capsys):
    code, out, err = run(
        [
            "prune",
            "--config",
            str(EXAMPLE),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "--no-latency",
            "--finetune-epochs",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    before, after = report["pruned"]["val_accuracy"], report["+KD 1 ep"]["val_accuracy"]
    assert after > before + 0.05  # one epoch of distillation recovers a real part of the loss
    assert "after 1 epochs of KD fine-tuning" in out
    # the saved weights are the fine-tuned ones
    from prunetune import evaluate_accuracy
    from prunetune.data import digits_splits, make_loader

    acc = evaluate_accuracy(
        load_pruned(tmp_path / "o"), make_loader(digits_splits().val, 256)
    ).accuracy
    assert acc == pytest.approx(after)
