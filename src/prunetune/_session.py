"""Resolve what the user passed (model, weights, data, device) into ready objects.

Shared by the CLI and the Python API so both behave the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .data import DataSplits, calibration_batches, load_data, make_loader
from .errors import CheckpointError, PrunetuneError
from .models import DEFAULT_MODEL, ModelSpec, ViTArch, build_model, load_weights

__all__ = ["resolve_device", "Loaded", "load_base"]


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when available, else CPU; anything else is used as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise PrunetuneError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise PrunetuneError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PrunetuneError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


@dataclass
class Loaded:
    spec: ModelSpec
    model: nn.Module
    arch: ViTArch
    data: DataSplits | None
    device: torch.device

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w = self.model.patch_embed.img_size
        return (self.arch.in_chans, h, w)

    def calibration(self, num_samples: int = 256, batch_size: int = 64, seed: int = 0) -> list:
        if self.data is None:
            raise PrunetuneError("this needs data: pass --data (an ImageFolder directory or a torchvision name)")
        return calibration_batches(self.data.train, num_samples, batch_size, seed)

    def val_batches(self, batch_size: int = 256) -> list:
        if self.data is None:
            raise PrunetuneError("this needs data: pass --data (an ImageFolder directory or a torchvision name)")
        return list(make_loader(self.data.val, batch_size))


def load_base(spec: ModelSpec, checkpoint: str | Path | None = None, data: str | None = None,
              download: bool = False, data_root: str | None = None, device: str | None = None,
              need_data: bool = True) -> Loaded:
    """Builds the base model, loads its weights and its data.

    The embedded default loads its shipped weights and the digits; any other model needs a
    ``checkpoint`` (prunetune never downloads weights).
    """
    dev = resolve_device(device)
    model = build_model(spec)
    if checkpoint is None and spec.name == DEFAULT_MODEL and not spec.kwargs:
        from .default import DEFAULT_WEIGHTS

        checkpoint = DEFAULT_WEIGHTS
    if checkpoint is None:
        raise CheckpointError(f"--checkpoint is required for model {spec.name} (prunetune never downloads weights)")
    load_weights(model, checkpoint)
    model.to(dev).eval()
    arch = ViTArch.from_model(model)
    splits = None
    if need_data:
        if data is None and spec.name != DEFAULT_MODEL:
            raise PrunetuneError(f"--data is required for model {spec.name}; the digits default fits only digits_vit")
        cfg = getattr(model, "pretrained_cfg", None) or {}
        splits = load_data(
            data, img_size=model.patch_embed.img_size[0], in_chans=arch.in_chans,
            mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))), std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
            download=download, root=data_root,
        )
        if len(splits.train) == 0 or len(splits.val) == 0:
            raise PrunetuneError(f"data set {splits.name} is empty")
        if splits.num_classes and splits.num_classes != arch.num_classes:
            raise PrunetuneError(
                f"data set {splits.name} has {splits.num_classes} classes but the model's head has "
                f"{arch.num_classes}; pass a checkpoint trained on this data"
            )
    return Loaded(spec, model, arch, splits, dev)
