"""Save and load pruned models as base model + config + safetensors weights (no pickle)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ._io import atomic_dir
from .config import PruningConfig
from .errors import CheckpointError
from .models import build_model, load_weights

__all__ = ["save_pruned", "load_pruned", "CONFIG_FILE", "WEIGHTS_FILE"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
REPORT_FILE = "report.json"


def save_pruned(
    model: nn.Module,
    out: str | Path,
    config: PruningConfig | None = None,
    report: dict | None = None,
) -> Path:
    """Writes ``config.json``, ``model.safetensors`` (and ``report.json``) into ``out``
    atomically."""
    from safetensors.torch import save_file

    config = config or getattr(model, "pruning_config", None)
    if config is None:
        raise ValueError("save_pruned needs the model's PruningConfig")
    out = Path(out)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(out) as tmp:
        save_file(
            state,
            str(tmp / WEIGHTS_FILE),
            metadata={"format": "prunetune", "config": config.to_json()},
        )
        (tmp / CONFIG_FILE).write_text(config.to_json())
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return out


def load_pruned(path: str | Path, device: str | torch.device | None = None) -> nn.Module:
    """Rebuilds a pruned model from a folder written by :func:`save_pruned`."""
    from .pruners import rebuild_structure

    path = Path(path)
    cfg_path, w_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(
            f"{path} is not a pruned model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    config = PruningConfig.load(cfg_path)
    model = rebuild_structure(build_model(config.model), config)
    load_weights(model, w_path)
    return model.to(device) if device is not None else model
