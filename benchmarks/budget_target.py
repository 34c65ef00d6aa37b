"""Budget-aware sampling vs the default search vs random search, on the embedded default.

Each (method, seed) is one ``prunetune search`` with its defaults (24 trials, NSGA-II on the
hybrid space, tier b = 100 KD steps, 8-epoch Pareto stage for up to 4 front members) in its own
process; only the method's setting differs:

- **default**: NSGA-II, candidates shrunk onto the budget only when over it.
- **target**: NSGA-II with ``--budget-target-low LOW``: every candidate is scaled onto a sampled
  cost in [LOW, 1] x budget.
- **random**: ``--sampler random``.

Reported per run: the CPU seconds of the search process (user + system, both cores), the best
under-budget trial's held-out test accuracy after the Pareto stage (selected on val), its MACs
as a fraction of dense, the hypervolume of the feasible completed trials over (tier-b accuracy,
MACs / dense) with reference (0.1 = chance, the budget fraction), and the MACs range the
completed trials cover. Means, and paired differences against ``default`` with a 95 %
t-interval over seeds. Runs are appended to ``runs.jsonl`` in ``--work`` and skipped when
rerun; the table and ``budget_target.json`` are written to ``--out``.

Usage: python benchmarks/budget_target.py [--budget 10] [--seeds 0,1,2]
       [--methods default,target,random] [--low 0.5] [--work /tmp/prunetune-budget-target]
       [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from _common import ci95, hypervolume

CHANCE = 0.1  # digits: 10 classes

WORKER = r"""
import json, sys
import optuna
from prunetune.search import TrialRecord, best_trial, search, study_entry

kw = json.loads(sys.argv[1])
res = search(progress=False, **kw)
dense = study_entry(res.study, "dense")["macs"]
best, final = best_trial(res.study)
done = [t for t in res.study.trials if t.state == optuna.trial.TrialState.COMPLETE
        and TrialRecord.of(t).feasible]
print(json.dumps({
    "test": final["test_accuracy"], "val": final["val_accuracy"],
    "macs_ratio": TrialRecord.of(best).macs / dense,
    "points": [(t.values[0], TrialRecord.of(t).macs / dense) for t in done],
    "states": [t.state.name for t in res.study.trials],
}))
"""


def run_one(method: str, seed: int, budget: int, low: float, work: Path) -> dict:
    name = f"{method}_b{budget}_s{seed}"
    kw = {
        "budget": f"flops={budget}%",
        "seed": seed,
        "storage": f"sqlite:///{work}/studies.db",
        "study": name,
        "artifacts": str(work / "artifacts" / name),
    }
    if method == "target":
        kw["budget_target_low"] = low
    elif method == "random":
        kw["sampler"] = "random"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(kw)], capture_output=True, text=True
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed: {out.stderr.strip().splitlines()[-1:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.update(
        method=method,
        seed=seed,
        budget=budget,
        low=low if method == "target" else None,
        cpu_s=round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        hv=hypervolume(row["points"], CHANCE, budget / 100),
    )
    costs = [c for _, c in row.pop("points")]
    row["macs_range"] = [round(min(costs), 3), round(max(costs), 3)] if costs else None
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=10, help="percent of dense MACs")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument(
        "--methods", type=lambda s: s.split(","), default=["default", "target", "random"]
    )
    p.add_argument("--low", type=float, default=0.5)
    p.add_argument("--work", type=Path, default=Path("/tmp/prunetune-budget-target"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args()
    if not 0 < a.budget <= 100 or not 0 < a.low <= 1:
        p.error("--budget must be in (0, 100] and --low in (0, 1]")
    a.work.mkdir(parents=True, exist_ok=True)
    log = a.work / "runs.jsonl"
    runs = [json.loads(ln) for ln in log.read_text().splitlines()] if log.is_file() else []
    for seed in a.seeds:
        for method in a.methods:
            if any(
                r["method"] == method
                and r["seed"] == seed
                and r["budget"] == a.budget
                and r.get("low") in (None, a.low)
                for r in runs
            ):
                continue
            row = run_one(method, seed, a.budget, a.low, a.work)
            print(json.dumps(row), flush=True)
            runs.append(row)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
    mine = [
        r
        for r in runs
        if r["budget"] == a.budget and r["seed"] in a.seeds and r["method"] in a.methods
    ]
    by = {
        m: sorted((r for r in mine if r["method"] == m), key=lambda r: r["seed"]) for m in a.methods
    }
    print(
        f"\nflops={a.budget}% on digits_vit, seeds {a.seeds} (test accuracy after the Pareto "
        f"stage; CPU = user + system seconds of the search process)"
    )
    print(f"{'method':8} {'test %':>14} {'x dense':>8} {'hv':>7} {'CPU s':>6}  covered MACs")
    summary = {}
    for m, rs in by.items():
        if not rs:
            continue
        t_mean, t_hw = ci95([100 * r["test"] for r in rs])
        summary[m] = {
            "test_mean": t_mean,
            "test_ci95": t_hw,
            "macs_ratio_mean": statistics.mean(r["macs_ratio"] for r in rs),
            "hv_mean": statistics.mean(r["hv"] for r in rs),
            "cpu_s_mean": statistics.mean(r["cpu_s"] for r in rs),
            "runs": rs,
        }
        cover = " ".join(
            f"{r['macs_range'][0]:.2f}-{r['macs_range'][1]:.2f}" for r in rs if r["macs_range"]
        )
        print(
            f"{m:8} {t_mean:7.2f} ±{t_hw:5.2f} {summary[m]['macs_ratio_mean']:8.3f} "
            f"{summary[m]['hv_mean']:7.4f} {summary[m]['cpu_s_mean']:6.0f}  {cover}"
        )
    base = {r["seed"]: r for r in by.get("default", [])}
    for m, rs in by.items():
        pairs = [
            (100 * (r["test"] - base[r["seed"]]["test"]))
            for r in rs
            if m != "default" and r["seed"] in base
        ]
        if pairs:
            d, hw = ci95(pairs)
            summary[m]["test_minus_default"] = {"mean": d, "ci95": hw, "n": len(pairs)}
            print(
                f"{m} - default, test points (paired over {len(pairs)} seeds): {d:+.2f} ± {hw:.2f}"
            )
    a.out.mkdir(parents=True, exist_ok=True)
    out = a.out / f"budget_target_flops{a.budget}.json"
    out.write_text(
        json.dumps(
            {"budget": a.budget, "low": a.low, "seeds": a.seeds, "summary": summary}, indent=1
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
