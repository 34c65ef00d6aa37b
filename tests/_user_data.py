"""A user's own image data for the own-model tests: grey textures of 3 classes in an ImageFolder,
read back with the user's own preprocessing, and a search small enough for a test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = ("checker", "horizontal", "vertical")
TINY_SEARCH = [
    "--n-trials",
    "3",
    "--tier-b-steps",
    "4",
    "--calib-samples",
    "32",
    "--batch-size",
    "16",
    "--final-epochs",
    "0.2",
    "--front-max",
    "1",
    "--device",
    "cpu",
    "--quiet",
]


def texture(kind: str, rng: np.random.Generator) -> np.ndarray:
    period = int(rng.integers(4, 9))
    phase = int(rng.integers(0, period))
    i = (np.arange(32)[:, None] + phase) // (period // 2)
    j = (np.arange(32)[None, :] + phase) // (period // 2)
    pattern = {"checker": (i + j) % 2, "horizontal": i % 2 + 0 * j, "vertical": j % 2 + 0 * i}[kind]
    img = 0.3 + 0.4 * pattern + rng.normal(0, 0.25, (32, 32))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def user_transform(path: Path) -> torch.Tensor:
    """The user's own preprocessing: grey, [0, 1], then (x - 0.5) / 0.5."""
    x = torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0)
    return ((x - 0.5) / 0.5).unsqueeze(0)


def user_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    files = [
        (p, c)
        for c, name in enumerate(CLASSES)
        for p in sorted((root / split / name).glob("*.png"))
    ]
    return torch.stack([user_transform(p) for p, _ in files]), torch.tensor([c for _, c in files])


def write_textures(data: Path, seed: int = 0) -> None:
    """``data/{train,val,test}/<class>/*.png``: 60, 25 and 25 images per class."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 60), ("val", 25), ("test", 25)):
        for kind in CLASSES:
            d = data / split / kind
            d.mkdir(parents=True)
            for k in range(n):
                Image.fromarray(texture(kind, rng), mode="L").save(d / f"{k}.png")
