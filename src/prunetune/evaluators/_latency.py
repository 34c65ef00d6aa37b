"""Measured latency: warm-up, then the median of timed repeats, at a fixed batch and threads."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LatencyResult", "measure_latency"]


@dataclass(frozen=True)
class LatencyResult:
    """Milliseconds per forward pass of one batch."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    batch_size: int
    threads: int
    device: str

    def __str__(self) -> str:
        return (
            f"{self.median_ms:.2f} ms (p10 {self.p10_ms:.2f}, p90 {self.p90_ms:.2f}; "
            f"batch {self.batch_size})"
        )


@contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 64,
    warmup: int = 5,
    repeats: int = 20,
    threads: int | None = None,
) -> LatencyResult:
    """Times ``model`` on a random batch of ``input_shape`` images (eval mode)."""
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(
            f"measure_latency needs repeats >= 1, warmup >= 0, batch_size >= 1; "
            f"got repeats={repeats}, warmup={warmup}, batch_size={batch_size}"
        )
    dev = next(model.parameters()).device
    x = torch.randn(batch_size, *input_shape, device=dev)
    was = model.training
    model.eval()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    try:
        with _threads(threads) as n:
            for _ in range(warmup):
                model(x)
            sync()
            for _ in range(repeats):
                t = time.perf_counter()
                model(x)
                sync()
                times.append((time.perf_counter() - t) * 1e3)
    finally:
        model.train(was)
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else times * 9
    return LatencyResult(statistics.median(times), q[0], q[-1], repeats, batch_size, n, str(dev))
