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
    with pytest.raises(DataError, match="grayscale"):
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
