"""Retrains a built-in model: ``digits_vit`` (the default) or ``photos_vit``.

Usage: ``python -m prunetune.default.train [--model photos_vit] [--epochs 120] [--out DIR]``.
Writes ``<model>.safetensors`` and ``<model>.json`` (the recipe and measured accuracies).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .._io import atomic_write_text, prepare_out
from ..data import load_data, make_loader
from ..errors import PrunetuneError
from ..evaluators._accuracy import evaluate_accuracy
from ..models import BUILTIN_MODELS, DEFAULT_MODEL, ModelSpec, build_model
from . import metrics_of, weights_of

#: per built-in: its augmentation, described in the recipe
AUGMENT = {
    "digits_vit": "shift<=2px, rot<=7.5deg, scale +-10%",
    "photos_vit": "random horizontal and vertical flips, 90-degree rotations",
}


def augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation (zero-background padding) and small random rotation/scale."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=gen) - 0.5) * (2 * math.pi * 15 / 360)
    scale = 1 + (torch.rand(b, generator=gen) - 0.5) * 0.2
    shift = (
        torch.randint(-max_shift, max_shift + 1, (b, 2), generator=gen).float() * 2 / x.shape[-1]
    )
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return (
        F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1
    )  # background is -1


def flip_rotate(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal / vertical flips and 90-degree rotations, per image (the photos)."""
    out = []
    for img, (h, v, r) in zip(x, torch.randint(0, 2, (x.shape[0], 3), generator=gen).tolist()):
        if h:
            img = img.flip(-1)
        if v:
            img = img.flip(-2)
        if r:
            img = img.transpose(-1, -2)
        out.append(img)
    return torch.stack(out)


def check_out(out: str | Path | None, model: str = DEFAULT_MODEL) -> Path | None:
    """Checks where the weights will go before any training: ``out`` or the package folder.

    Raises:
        PrunetuneError: ``out`` is a file, lies under a file or is not writable, or (without
            ``out``) the installed package folder is read-only.
    """
    if out is None:
        folder = weights_of(model).parent
        if not os.access(folder, os.W_OK):
            raise PrunetuneError(f"the package folder {folder} is not writable; pass --out DIR")
        return None
    return prepare_out(out, overwrite=True)


def train(
    epochs: int = 120,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
    out: str | Path | None = None,
    model: str = DEFAULT_MODEL,
) -> dict:
    """Trains a built-in model and writes its weights and metrics into ``out`` (default: the
    package).

    ``out`` is checked before any training, so a bad folder fails in a second, not at the end.

    Returns:
        The metrics written to ``<model>.json``, plus ``weights``: the path written.
    """
    if model not in BUILTIN_MODELS:
        raise PrunetuneError(
            f"unknown built-in model {model!r}; choose one of {', '.join(BUILTIN_MODELS)}"
        )
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PrunetuneError(f"`{name} >= 1` must hold (an integer), but got {name}={value!r}")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise PrunetuneError(f"`lr > 0` must hold (a finite number), but got lr={lr!r}")
    out = check_out(out, model)
    name = model
    kwargs, data = BUILTIN_MODELS[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    splits = load_data(data, img_size=kwargs["img_size"], in_chans=kwargs["in_chans"])
    aug = augment if name == DEFAULT_MODEL else flip_rotate
    model = build_model(ModelSpec(name))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    loader = make_loader(splits.train, batch_size, shuffle=True, seed=seed)
    steps = epochs * len(loader)
    warm = 5 * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    val_batches = list(make_loader(splits.val, 256))
    best, best_state = -1.0, None
    t0 = time.time()
    bar = tqdm(range(epochs), desc=f"train {name}", unit="epoch")
    for _ in bar:
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(aug(x, gen)), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate_accuracy(model, val_batches).accuracy
        if acc >= best:
            best, best_state = acc, {k: v.detach().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(val=f"{acc:.4f}", best=f"{best:.4f}")
    model.load_state_dict(best_state)
    test = evaluate_accuracy(model, list(make_loader(splits.test, 256))).accuracy
    metrics = {
        "model": ModelSpec(name).to_dict(),
        "kwargs": kwargs,
        "recipe": {
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "seed": seed,
            "optimizer": "AdamW(wd=0.05)",
            "schedule": "5-epoch warmup + cosine",
            "augment": AUGMENT[name],
            "label_smoothing": 0.1,
        },
        "val_accuracy": best,
        "test_accuracy": test,
        "train_seconds": round(time.time() - t0, 1),
        "command": (
            f"prunetune train-default --model {name} --epochs {epochs} --lr {lr} --seed {seed}"
        ),
    }
    from safetensors.torch import save_file

    weights = (out / weights_of(name).name) if out else weights_of(name)
    meta = (out / metrics_of(name).name) if out else metrics_of(name)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(f".{weights.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, weights)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_text(meta, json.dumps(metrics, indent=2) + "\n")
    return {**metrics, "weights": str(weights)}


if __name__ == "__main__":  # the same command as `prunetune train-default`
    from prunetune.cli import main

    sys.exit(main(["train-default", *sys.argv[1:]]))
