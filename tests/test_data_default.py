from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from prunetune import DataError, evaluate_accuracy
from prunetune.data import calibration_batches, digits_splits, load_data, make_loader
from prunetune.default import DEFAULT_METRICS, DEFAULT_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]


def test_digits_split_fixed_and_disjoint():
    a, b = digits_splits(), digits_splits()
    sizes = (len(a.train), len(a.val), len(a.test))
    assert sum(sizes) == 1797 and sizes == (1167, 270, 360)
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])
    x, _ = a.train.tensors
    assert x.shape[1:] == (1, 16, 16) and -1.0 <= x.min() and x.max() <= 1.0
    # no image appears in two splits
    flat = lambda ds: {tuple(v.flatten().tolist()) for v in ds.tensors[0]}  # noqa: E731
    assert not flat(a.train) & flat(a.test) and not flat(a.val) & flat(a.test)


def test_calibration_batches_deterministic():
    ds = digits_splits().train
    a = calibration_batches(ds, 100, 32, seed=1)
    b = calibration_batches(ds, 100, 32, seed=1)
    assert [len(y) for _, y in a] == [32, 32, 32, 4]
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))


def test_load_data_errors(tmp_path):
    with pytest.raises(DataError, match="digits data set has 1 channel"):
        load_data(None, img_size=16, in_chans=3)
    with pytest.raises(DataError, match="does not exist"):
        load_data(str(tmp_path / "missing/"), img_size=16, in_chans=3)
    (tmp_path / "d" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no val/ folder"):
        load_data(str(tmp_path / "d"), img_size=16, in_chans=3)
    with pytest.raises(DataError, match="neither a directory nor a torchvision"):
        load_data("imagenette9000", img_size=16, in_chans=3)
    # a known torchvision name without --download must not touch the network
    with pytest.raises(DataError, match="pass --download"):
        load_data("CIFAR10", img_size=32, in_chans=3, root=tmp_path / "tv")
    assert not any((tmp_path / "tv").rglob("*.tar.gz"))


def test_shipped_default_is_well_trained(digits_base):
    """The shipped weights reach >= 97 % on the held-out digits test split (measured here)."""
    meta = json.loads(DEFAULT_METRICS.read_text())
    assert DEFAULT_WEIGHTS.stat().st_size < 5e6
    acc = evaluate_accuracy(digits_base.model, make_loader(digits_base.data.test, 256)).accuracy
    assert acc >= 0.97
    assert abs(acc - meta["test_accuracy"]) < 1e-9  # the recorded number is the one we measure


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = [line for line in ci.splitlines() if "pytest" in line][0]
    assert test_cmd in readme
    assert re.search(
        r"prunetune search --budget flops=50% && .venv/bin/prunetune export --out runs/best", readme
    )


def test_photos_split_fixed_disjoint_and_hard():
    """The second built-in: 8 photographs, splits that share no pixel, >= 1,000 test images."""
    from prunetune.data import PHOTO_NAMES, photos_splits

    a = photos_splits()
    sizes = (len(a.train), len(a.val), len(a.test))
    assert sizes == (1701, 459, 1026) and a.num_classes == len(PHOTO_NAMES) == 8
    x, y = a.test.tensors
    assert x.shape[1:] == (3, 32, 32) and -1.0 <= x.min() and x.max() <= 1.0
    assert set(y.tolist()) == set(range(8))
    assert torch.equal(a.val.tensors[0], photos_splits().val.tensors[0])
    flat = lambda ds: {tuple(v.flatten().tolist()) for v in ds.tensors[0]}  # noqa: E731
    assert not flat(a.train) & flat(a.test) and not flat(a.val) & flat(a.test)


def test_shipped_photos_model_is_trained_but_below_95(tmp_path):
    """photos_vit loads without --checkpoint/--data; its test accuracy is the recorded one and
    leaves room for pruning to hurt (< 95 %)."""
    from prunetune._session import load_base
    from prunetune.default import metrics_of, weights_of
    from prunetune.models import ModelSpec

    base = load_base(ModelSpec("photos_vit"), device="cpu")
    assert base.data.name == "photos" and base.arch.in_chans == 3
    acc = evaluate_accuracy(base.model, make_loader(base.data.test, 256)).accuracy
    meta = json.loads(metrics_of("photos_vit").read_text())
    assert abs(acc - meta["test_accuracy"]) < 1e-9
    assert 0.85 <= acc < 0.95
    assert weights_of("photos_vit").stat().st_size < 5e6
    with pytest.raises(DataError, match="3 channel"):
        load_data("photos", img_size=16, in_chans=1)


def test_train_photos_builtin_writes_weights_and_recipe(tmp_path):
    from prunetune.default.train import train

    m = train(epochs=1, out=tmp_path / "o", model="photos_vit")
    assert (tmp_path / "o" / "photos_vit.safetensors").is_file()
    meta = json.loads((tmp_path / "o" / "photos_vit.json").read_text())
    assert meta["command"].startswith("prunetune train-default --model photos_vit")
    assert 0.125 < meta["val_accuracy"] == m["val_accuracy"]  # one epoch beats chance
