"""Per-device latency table: predicts a configuration's latency before any model is built.

Measured once per (device, threads, model, batch size) and cached as JSON under
``~/.cache/prunetune/latency``. Each entry is one timed transformer block of a given shape
(kept heads, MLP width, token count); a least-squares fit over those rows on the block's
cost terms (q/k/v/proj MACs, attention-matmul MACs, MLP MACs, tokens, constant) turns the table
into a predictor for any shape. The model outside the blocks (patch embedding, head) is timed
once. Prediction error on whole random configurations is measured when the table is built and
stored with it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import BlockConfig, PruningConfig
from ..families import family_of
from ..models import ViTArch
from ._latency import measure_latency

__all__ = ["LatencyTable"]

CACHE = Path.home() / ".cache" / "prunetune" / "latency"


def _features(arch: ViTArch, n: int, h: int, m: int) -> list[float]:
    D, d = arch.embed_dim, arch.head_dim
    return [1.0, n, n * D * 4 * h * d, 2 * h * n * n * d, 2 * n * D * m]


def _lstsq(x: list[list[float]], y: list[float]) -> list[float]:
    X = torch.tensor(x, dtype=torch.float64)
    scale = X.abs().amax(0).clamp_min(1e-12)
    sol = torch.linalg.lstsq(
        X / scale, torch.tensor(y, dtype=torch.float64).unsqueeze(1)
    ).solution.squeeze(1)
    return (sol / scale).tolist()


@dataclass
class LatencyTable:
    """Block-latency rows, their fit, and the time outside the blocks (milliseconds)."""

    arch: ViTArch
    batch_size: int
    device: str
    threads: int
    outside_ms: float
    coef: list[float]
    rows: list[dict]
    error_pct: float | None = None

    def block_ms(self, n: int, h: int, m: int) -> float:
        return max(0.0, sum(c * f for c, f in zip(self.coef, _features(self.arch, n, h, m))))

    def predict(self, config: PruningConfig) -> float:
        """Predicted milliseconds per batch of a count-mode config."""
        from ..pruners._tokens import token_schedule

        heads, mlps = config.kept_heads(self.arch), config.kept_mlp(self.arch)
        tokens, _ = token_schedule(config, self.arch, heads)
        return self.outside_ms + sum(
            self.block_ms(tokens[i], heads[i], mlps[i])
            for i, b in enumerate(config.blocks)
            if b.keep
        )

    @classmethod
    def for_model(
        cls, base, batch_size: int = 64, rebuild: bool = False, samples: int = 24, seed: int = 0
    ) -> LatencyTable:
        """Loads the cached table for this device/model/batch, or measures and caches it."""
        model, arch = base.model, base.arch
        dev = next(model.parameters()).device
        name = (
            torch.cuda.get_device_name(dev)
            if dev.type == "cuda"
            else f"cpu-{torch.get_num_threads()}t"
        )
        key = hashlib.sha1(
            json.dumps(
                [base.spec.to_dict(), batch_size, name, torch.__version__], sort_keys=True
            ).encode()
        ).hexdigest()[:16]
        path = CACHE / f"{key}.json"
        if path.is_file() and not rebuild:
            d = json.loads(path.read_text())
            return cls(
                arch,
                d["batch_size"],
                d["device"],
                d["threads"],
                d["outside_ms"],
                d["coef"],
                d["rows"],
                d.get("error_pct"),
            )
        table = cls._measure(
            base.spec, model, arch, base.input_shape, batch_size, name, samples, seed
        )
        table.error_pct = table.validate(base.spec, model, base.input_shape, seed=seed + 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "batch_size": batch_size,
                    "device": name,
                    "threads": table.threads,
                    "outside_ms": table.outside_ms,
                    "coef": table.coef,
                    "rows": table.rows,
                    "error_pct": table.error_pct,
                },
                indent=1,
            )
        )
        tmp.replace(path)
        return table

    @classmethod
    def _measure(
        cls,
        spec,
        model: nn.Module,
        arch: ViTArch,
        input_shape,
        batch_size: int,
        device: str,
        samples: int,
        seed: int,
    ) -> LatencyTable:
        rng = random.Random(seed)
        dev = next(model.parameters()).device
        rows = []
        shapes = {
            (arch.num_tokens, arch.num_heads, arch.mlp_hidden),
            (arch.num_prefix_tokens + 1, 1, 1),
        }
        while len(shapes) < samples:
            shapes.add(
                (
                    rng.randint(arch.num_prefix_tokens + 1, arch.num_tokens),
                    rng.randint(1, arch.num_heads),
                    rng.randint(1, arch.mlp_hidden),
                )
            )
        family = family_of(model)
        dense_block = family.blocks(model)[0]
        with torch.no_grad():
            for n, h, m in sorted(shapes):
                one = copy.deepcopy(model)
                family.set_blocks(one, [copy.deepcopy(dense_block)])
                cfg = PruningConfig(spec, (BlockConfig(heads=h, mlp=m),), criterion="magnitude_l1")
                blk = family.blocks(_shrink(one, cfg))[0]
                x = torch.randn(batch_size, n, arch.embed_dim, device=dev)
                ms = _time(blk, x)
                rows.append({"tokens": n, "heads": h, "mlp": m, "ms": ms})
            empty = copy.deepcopy(model)
            family.set_blocks(empty, [])
            outside = measure_latency(empty, input_shape, batch_size, warmup=2, repeats=7).median_ms
        coef = _lstsq(
            [_features(arch, r["tokens"], r["heads"], r["mlp"]) for r in rows],
            [r["ms"] for r in rows],
        )
        return cls(arch, batch_size, device, torch.get_num_threads(), outside, coef, rows)

    def validate(self, spec, model: nn.Module, input_shape, n: int = 5, seed: int = 1) -> float:
        """Mean absolute percentage error of :meth:`predict` on random whole configurations."""
        from ..pruners import prune

        rng = random.Random(seed)
        errs = []
        for _ in range(n):
            blocks = tuple(
                BlockConfig(
                    heads=rng.randint(1, self.arch.num_heads),
                    mlp=rng.randint(1, self.arch.mlp_hidden),
                )
                for _ in range(self.arch.depth)
            )
            cfg = PruningConfig(spec, blocks, criterion="magnitude_l1")
            pred = self.predict(cfg)
            meas = measure_latency(
                prune(model, cfg), input_shape, self.batch_size, warmup=2, repeats=7
            ).median_ms
            errs.append(abs(pred - meas) / meas)
        return 100 * sum(errs) / len(errs)


def _shrink(one: nn.Module, cfg: PruningConfig) -> nn.Module:
    """Shape-only head and MLP surgery on a one-block copy (weights do not matter for timing)."""
    from ..pruners._heads import HeadPruner
    from ..pruners._mlp import MlpPruner

    HeadPruner().apply(one, cfg, None)
    MlpPruner().apply(one, cfg, None)
    return one


@torch.no_grad()
def _time(block: nn.Module, x: torch.Tensor, warmup: int = 2, repeats: int = 7) -> float:
    import statistics
    import time

    block.eval()
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        block(x)
    sync()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        block(x)
        sync()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)
