"""Retrains the embedded default model on scikit-learn's digits.

Usage: ``python -m prunetune.default.train [--epochs 120] [--out DIR]``. Writes
``digits_vit.safetensors`` and ``digits_vit.json`` (the recipe and measured accuracies).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import digits_splits, make_loader
from ..evaluators._accuracy import evaluate_accuracy
from ..models import DEFAULT_MODEL, DIGITS_VIT_KWARGS, ModelSpec, build_model
from . import DEFAULT_METRICS, DEFAULT_WEIGHTS


def augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation (zero-background padding) and small random rotation/scale."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=gen) - 0.5) * (2 * math.pi * 15 / 360)
    scale = 1 + (torch.rand(b, generator=gen) - 0.5) * 0.2
    shift = (torch.randint(-max_shift, max_shift + 1, (b, 2), generator=gen).float() * 2 / x.shape[-1])
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1  # background is -1


def train(epochs: int = 120, lr: float = 2e-3, batch_size: int = 64, seed: int = 0,
          out: Path | None = None) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    splits = digits_splits(DIGITS_VIT_KWARGS["img_size"])
    model = build_model(ModelSpec(DEFAULT_MODEL))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    loader = make_loader(splits.train, batch_size, shuffle=True, seed=seed)
    steps = epochs * len(loader)
    warm = 5 * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    val_batches = list(make_loader(splits.val, 256))
    best, best_state = -1.0, None
    t0 = time.time()
    bar = tqdm(range(epochs), desc="train digits_vit", unit="epoch")
    for _ in bar:
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(augment(x, gen)), y, label_smoothing=0.1)
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
        "model": ModelSpec(DEFAULT_MODEL).to_dict(),
        "kwargs": DIGITS_VIT_KWARGS,
        "recipe": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
                   "optimizer": "AdamW(wd=0.05)", "schedule": "5-epoch warmup + cosine",
                   "augment": "shift<=2px, rot<=7.5deg, scale +-10%", "label_smoothing": 0.1},
        "val_accuracy": best,
        "test_accuracy": test,
        "train_seconds": round(time.time() - t0, 1),
        "command": f"python -m prunetune.default.train --epochs {epochs} --lr {lr} --seed {seed}",
    }
    from safetensors.torch import save_file

    weights = (out / DEFAULT_WEIGHTS.name) if out else DEFAULT_WEIGHTS
    meta = (out / DEFAULT_METRICS.name) if out else DEFAULT_METRICS
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    meta.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=120)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="folder (default: inside the package)")
    a = p.parse_args(argv)
    m = train(a.epochs, a.lr, seed=a.seed, out=a.out)
    print(f"val accuracy {m['val_accuracy']:.4f}  test accuracy {m['test_accuracy']:.4f}  ({m['train_seconds']} s)")


if __name__ == "__main__":
    main()
