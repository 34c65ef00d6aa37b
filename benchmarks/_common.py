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


def hypervolume(points: list[tuple[float, float]], ref_acc: float, ref_cost: float) -> float:
    """2-D hypervolume of (accuracy to maximise, cost to minimise) points w.r.t. (ref_acc,
    ref_cost)."""
    pts = sorted((c, a) for a, c in points if c <= ref_cost and a > ref_acc)
    area, best = 0.0, ref_acc
    for i, (c, a) in enumerate(pts):
        best = max(best, a)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref_cost
        area += (nxt - c) * (best - ref_acc)
    return area


def ci95(xs: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t-interval (Student t for n <= 10, 2.0 beyond)."""
    import math
    import statistics

    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}
    m = statistics.mean(xs)
    if len(xs) < 2:
        return m, math.nan
    return m, t.get(len(xs), 2.0) * statistics.stdev(xs) / math.sqrt(len(xs))
