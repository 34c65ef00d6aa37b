"""``prunetune prune`` as a Python function: apply a config, optionally fine-tune, measure."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from . import _session
from ._pruned import save_pruned
from .config import PruningConfig
from .errors import PrunetuneError
from .evaluators import (
    count_params,
    estimate_cost,
    evaluate_accuracy,
    finetune,
    measure_latency,
)
from .models import ModelSpec
from .pruners import prune

__all__ = ["PruneRun", "apply_config"]


@dataclass
class PruneRun:
    """What :func:`apply_config` returns.

    Attributes:
        model: The pruned (and, with ``finetune_epochs``, fine-tuned) model.
        config: The applied configuration, resolved to counts.
        stages: ``dense``, ``pruned`` and (after fine-tuning) ``+KD <E> ep``, each with
            ``macs``, ``params``, ``nonzero_params``, ``latency_ms`` (None when not
            measured) and ``val_accuracy``; in order.
        device: Where it ran.
    """

    model: nn.Module
    config: PruningConfig
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "cpu"

    @property
    def final(self) -> dict[str, Any]:
        return list(self.stages.values())[-1]

    @property
    def dense(self) -> dict[str, Any]:
        return self.stages["dense"]

    def report(self) -> dict[str, Any]:
        """What ``prunetune prune`` stores beside the weights (``report`` of ``save_pruned``)."""
        return {"config": self.config.to_dict(), "device": self.device, **self.stages}


def apply_config(
    config: PruningConfig,
    spec: ModelSpec | None = None,
    checkpoint: str | None = None,
    data: str | None = None,
    *,
    download: bool = False,
    data_root: str | None = None,
    device: str | None = None,
    calib_samples: int = 256,
    batch_size: int = 64,
    finetune_epochs: float = 0.0,
    lr: float = 5e-4,
    seed: int = 0,
    latency_batch: int | None = 64,
    threads: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
    **preprocessing,
) -> PruneRun:
    """Applies ``config`` to its base model, optionally fine-tunes with distillation, measures.

    The recipe is the Pareto stage's (``prunetune export`` prints the matching command):
    saliency on ``calib_samples`` calibration images, then ``finetune_epochs`` of KD from the
    dense model. Each stage's MACs, parameters, latency (``latency_batch`` None: not measured)
    and val accuracy are reported; with ``out`` the pruned weights and config are written
    there (atomically).

    Args:
        preprocessing: ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``check_dense`` as
            for the search.
    """
    spec = spec or config.model
    base = _session.load_base(
        spec, checkpoint, data, download, data_root, device, announce=announce, **preprocessing
    )
    config.check_fits(base.arch)
    calib = base.calibration(calib_samples, batch_size, seed)
    pruned = prune(base.model, config, calib)
    resolved = pruned.pruning_config
    val = base.val_batches()
    stages = [("dense", base.model, PruningConfig.dense(spec))]
    if finetune_epochs > 0:
        stages.append(("pruned", copy.deepcopy(pruned), resolved))
        finetune(
            pruned,
            base.data.train,
            teacher=base.model,
            epochs=finetune_epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
        )
        stages.append((f"+KD {finetune_epochs:g} ep", pruned, resolved))
    else:
        stages.append(("pruned", pruned, resolved))
    run = PruneRun(pruned, resolved, device=str(base.device))
    for name, model, cfg in stages:
        cost = estimate_cost(cfg, base.arch)
        params, nonzero = count_params(model)
        lat = (
            None
            if latency_batch is None
            else measure_latency(model, base.input_shape, latency_batch, threads=threads)
        )
        run.stages[name] = {
            "macs": cost.macs,
            "params": params,
            "nonzero_params": nonzero,
            "latency_ms": None if lat is None else lat.median_ms,
            "latency_p10_ms": None if lat is None else lat.p10_ms,
            "latency_p90_ms": None if lat is None else lat.p90_ms,
            "val_accuracy": evaluate_accuracy(model, val).accuracy,
            "tokens": [b.tokens if b.kept else None for b in cost.blocks],
        }
    if out is not None:
        try:
            save_pruned(pruned, Path(out), resolved, run.report())
        except OSError as e:
            raise PrunetuneError(f"cannot write {out}: {e.strerror or e}") from None
    return run
