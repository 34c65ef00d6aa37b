"""Engine overhead: sample + repair + cost one candidate, and build + prune a DeiT-S on CPU.

Targets (benchmarks issue): < 5 ms per candidate; < 1 s to build and prune deit_small from
random init. Prints a table and writes engine_overhead.json in --out.

Usage: python benchmarks/engine_overhead.py [--candidates 500] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import optuna

from prunetune import PruningConfig, build_model, estimate_cost, prune
from prunetune.models import ModelSpec, ViTArch
from prunetune.search import parse_budget, repair
from prunetune.spaces import build_space


def candidate_ms(spec: ModelSpec, n: int) -> list[float]:
    """Per-candidate time of: Optuna sampling (NSGA-II), config, repair to 50 %, analytic cost."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = build_space(spec, "hybrid")
    arch = ViTArch.from_spec(spec)
    budget = parse_budget("flops=50%").resolve(estimate_cost(PruningConfig.dense(spec), arch).macs)
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.NSGAIISampler(seed=0)
    )
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        trial = study.ask()
        cfg = space.to_config(space.suggest(trial))
        try:
            cfg, _ = repair(cfg, arch, budget)
            cost = estimate_cost(cfg, arch).macs
        except Exception:  # infeasible candidates still cost their sampling time
            cost = None
        times.append((time.perf_counter() - t0) * 1e3)
        study.tell(trial, [0.0, float(cost or 0)])
    return times


def build_prune_s(spec: ModelSpec, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model = build_model(spec)
        prune(model, PruningConfig.uniform(spec, 0.5, 0.5), inplace=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args()
    rows = []
    for name in ("digits_vit", "deit_small_patch16_224"):
        ms = candidate_ms(ModelSpec(name), a.candidates)
        rows.append(
            {
                "what": f"sample+repair+cost ({name})",
                "median": statistics.median(ms),
                "p90": statistics.quantiles(ms, n=10)[-1],
                "unit": "ms",
                "target": 5.0,
            }
        )
    s = build_prune_s(ModelSpec("deit_small_patch16_224"), a.repeats)
    rows.append(
        {
            "what": "build+prune deit_small (random init, magnitude)",
            "median": statistics.median(s),
            "p90": max(s),
            "unit": "s",
            "target": 1.0,
        }
    )
    print(f"{'what':52} {'median':>9} {'p90/max':>9} {'target':>8}  met")
    for r in rows:
        print(
            f"{r['what']:52} {r['median']:9.3f} {r['p90']:9.3f} {r['target']:8.1f}  "
            f"{'yes' if r['median'] < r['target'] else 'NO'}  ({r['unit']})"
        )
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "engine_overhead.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
