"""Token reduction: measured latency speedup against the MACs reduction.

For each model and each token mode, keep 50 % of the patch tokens from the middle block on
(one reduction at block depth // 2), measure the latency at a fixed batch size and thread count
(warm-up, median of repeats, dense and pruned interleaved in one run), and compare
speedup = dense_ms / pruned_ms with the MACs reduction = dense_MACs / pruned_MACs.
Target (token issue): speedup >= 0.8 x MACs reduction.

Usage: python benchmarks/token_latency.py [--batch 64] [--repeats 7] [--out benchmarks/results]
Writes token_latency.json and token_latency.csv in --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
from pathlib import Path

import torch

from _common import interleaved_latency
from prunetune import BlockConfig, ModelSpec, PruningConfig, build_model, estimate_cost, prune
from prunetune.registry import TOKEN_MODES

MODELS = {
    "digits_vit": ModelSpec("digits_vit"),
    "deit_tiny_224": ModelSpec("deit_tiny_patch16_224"),
    "deit_small_224": ModelSpec("deit_small_patch16_224"),
}


def run(model_names, batch, repeats, rounds, threads):
    rows = []
    for name in model_names:
        spec = MODELS[name]
        dense = build_model(spec).eval()  # random init: latency does not depend on the weights
        shape = (dense.patch_embed.proj.in_channels, *dense.patch_embed.img_size)
        depth = len(dense.blocks)
        models = {"dense": (dense, PruningConfig.dense(spec))}
        for mode in TOKEN_MODES:
            blocks = [BlockConfig() for _ in range(depth)]
            blocks[depth // 2] = BlockConfig(token_keep=0.5)
            cfg = PruningConfig(spec, tuple(blocks), token_mode=mode)
            models[mode] = (prune(dense, cfg).eval(), cfg)
        times = interleaved_latency(
            {k: m for k, (m, _) in models.items()}, shape, batch, repeats, rounds, threads
        )
        d_ms = statistics.median(times["dense"])
        d_macs = estimate_cost(models["dense"][1]).macs
        for k, (_, cfg) in models.items():
            ms = statistics.median(times[k])
            macs = estimate_cost(cfg).macs
            speed, red = d_ms / ms, d_macs / macs
            rows.append(
                {
                    "model": name,
                    "mode": k,
                    "macs": macs,
                    "ms": round(ms, 3),
                    "ms_spread": round(max(times[k]) - min(times[k]), 3),
                    "speedup": round(speed, 3),
                    "macs_reduction": round(red, 3),
                    "ratio": round(speed / red, 3),
                    "meets_0.8": k == "dense" or speed / red >= 0.8,
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        nargs="+",
        default=["digits_vit", "deit_tiny_224", "deit_small_224"],
        choices=MODELS,
    )
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args()
    rows = run(a.models, a.batch, a.repeats, a.rounds, a.threads)
    hdr = (
        f"{'model':15} {'mode':15} {'GMACs':>7} {'ms':>9} {'speedup':>8} {'MACs red.':>9} "
        f"{'ratio':>6}"
    )
    print(
        f"batch {a.batch}, {a.threads} threads, keep 0.5 of patch tokens from the middle block on"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(
            f"{r['model']:15} {r['mode']:15} {r['macs'] / 1e9:7.3f} {r['ms']:9.2f} "
            f"{r['speedup']:8.3f} "
            f"{r['macs_reduction']:9.3f} {r['ratio']:6.3f}"
        )
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "batch": a.batch,
        "threads": a.threads,
        "repeats": a.repeats,
        "rounds": a.rounds,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    (a.out / "token_latency.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    with open(a.out / "token_latency.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
