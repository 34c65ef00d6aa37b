"""Saliency criteria at equal shapes: zero-shot and after tier b, on both built-in tasks.

For each task (``digits``: digits_vit; ``photos``: photos_vit) and each shape (every block cut to
the same heads and MLP width: ``half`` keeps 3 of 6 heads and 192 of 384 neurons, ``third`` 2
heads and 128 neurons; or ``sparse50``/``sparse70``: 50 / 70 % unstructured sparsity in every
block linear, where ``cap`` also moves the kept weights to compensate), every criterion ranks
the units on the search's own calibration batches (256 training images), the dense model is
pruned to the shape with its scores, and the pruned model is scored as a search scores a
candidate: zero-shot val accuracy, tier a (agreement with
the dense model on the calibration batches) and tier b (100 distillation steps from the dense
model, then val accuracy; the same seed for every criterion). The scoring CPU seconds of each
criterion are reported too: ``learned_mask`` trains its masks, ``hessian`` runs Hessian-vector
products.

Then every token mode at the same token counts (36 of the 64 patch tokens from block 2 on, 25
from block 4 on; widths dense), scored the same way (``learned``'s predictors are untrained here, so
its zero-shot row is a floor: in a search they train during the fine-tune).

Run alone (two torch threads): ``python benchmarks/criteria.py [--tasks digits,photos]
[--criteria ...] [--out benchmarks/results]``. Writes ``criteria.json`` and prints one table
per task.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prunetune import BlockConfig, PruningConfig, prune
from prunetune.evaluators import estimate_cost, evaluate_accuracy
from prunetune.search import Evaluator, SearchSettings

TASKS = {"digits": "digits_vit", "photos": "photos_vit"}
CRITERIA = (
    "magnitude_l2",
    "taylor",
    "hessian",
    "fisher",
    "activation",
    "learned_mask",
    "xpruner",
    "cap",
    "random",
)
TOKEN_MODES = ("attentive", "attentive_fuse", "merge", "spatial_merge", "learned")
SHAPES = {
    "half": {"heads": 3, "mlp": 192},
    "third": {"heads": 2, "mlp": 128},
    "sparse50": {"sparsity": 0.5},
    "sparse70": {"sparsity": 0.7},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=lambda s: s.split(","), default=list(TASKS))
    p.add_argument("--criteria", type=lambda s: s.split(","), default=list(CRITERIA))
    p.add_argument("--modes", type=lambda s: s.split(","), default=list(TOKEN_MODES))
    p.add_argument("--shapes", type=lambda s: s.split(","), default=list(SHAPES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    report = {}
    for task in a.tasks:
        ev = Evaluator(SearchSettings(model=TASKS[task], budget="flops=50%", start=[]))
        tier_a, tier_b = ev.tiers.proxies[0], ev.tiers.proxies[1]
        rows = []
        for crit in a.criteria:
            t0 = time.process_time()
            scores = ev.scores(crit)
            cpu = time.process_time() - t0
            for shape in a.shapes:
                kw = SHAPES[shape]
                blocks = tuple(BlockConfig(**kw) for _ in range(ev.arch.depth))
                config = PruningConfig(ev.base.spec, blocks, criterion=crit)
                model = prune(ev.base.model, config, scores=scores)
                row = {
                    "criterion": crit,
                    "shape": shape,
                    **kw,
                    "scores_cpu_s": round(cpu, 2),
                    "zero_shot_val": evaluate_accuracy(model, ev.val).accuracy,
                    "tier_a": float(tier_a.score(model)),
                    "tier_b_val": float(tier_b.score(model)),
                }
                rows.append(row)
                print(json.dumps({"task": task, **row}), flush=True)
        modes = []
        for mode in a.modes:
            # the same token counts for every mode: 36 of the 64 patch tokens from block 2 on,
            # 25 from block 4 on (near-square grids, so spatial_merge keeps exactly as many);
            # widths dense
            cfg = PruningConfig.dense(ev.base.spec).replace(token_mode=mode)
            cfg = cfg.with_block(2, token_keep=36 / 64).with_block(4, token_keep=25 / 36)
            model = prune(ev.base.model, cfg)
            row = {
                "mode": mode,
                "macs_ratio": estimate_cost(cfg, ev.arch).macs / ev.dense_cost.macs,
                "zero_shot_val": evaluate_accuracy(model, ev.val).accuracy,
                "tier_a": float(tier_a.score(model)),
                "tier_b_val": float(tier_b.score(model)),
            }
            modes.append(row)
            print(json.dumps({"task": task, **row}), flush=True)
        report[task] = {"dense_val": ev.base.dense_accuracy, "rows": rows, "token_modes": modes}
        print(f"\n{task} (dense val {100 * ev.base.dense_accuracy:.2f} %)")
        print(f"{'criterion':<14} {'shape':<6} {'zero-shot %':>11} {'tier a':>8} {'tier b %':>9}")
        for r in rows:
            print(
                f"{r['criterion']:<14} {r['shape']:<6} {100 * r['zero_shot_val']:>11.2f} "
                f"{r['tier_a']:>8.3f} {100 * r['tier_b_val']:>9.2f}"
            )
        print(f"{'token mode':<16} {'x MACs':>7} {'zero-shot %':>11} {'tier a':>8} {'tier b %':>9}")
        for r in modes:
            print(
                f"{r['mode']:<16} {r['macs_ratio']:>7.3f} {100 * r['zero_shot_val']:>11.2f} "
                f"{r['tier_a']:>8.3f} {100 * r['tier_b_val']:>9.2f}"
            )
        cpu = ", ".join(f"{r['criterion']} {r['scores_cpu_s']}" for r in rows[:: len(a.shapes)])
        print(f"scoring CPU s: {cpu}")
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "criteria.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
