"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

from prunetune import measure_latency


def interleaved_latency(
    models: dict, shape: tuple[int, ...], batch: int, repeats: int, rounds: int, threads: int
) -> dict[str, list[float]]:
    """Per-pass median ms per batch of each model, over ``rounds`` interleaved passes over all
    models.

    Interleaving makes drift on a shared machine hit every model alike; each pass records the
    median of ``repeats`` timed forwards after two warm-ups.
    """
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            times[k].append(
                measure_latency(
                    m, shape, batch, warmup=2, repeats=repeats, threads=threads
                ).median_ms
            )
    return times
