"""Search quality at equal CPU time: prunetune's search against random search, TPE and one-shot
baselines, on budgets where pruning costs accuracy.

For each task (``digits``: digits_vit on scikit-learn's digits; ``photos``: photos_vit on 32x32
patches of scikit-image's photographs), budget (percent of dense MACs) and seed, every method
is one ``prunetune search`` process with one torch thread (so two runs may share the machine
without touching each other's CPU time) and the same tiers and Pareto stage; only these differ:

- **prunetune**: the defaults (NSGA-II, informed starting points: uniform and FastNAS-style).
- **random** / **tpe**: ``--sampler random`` / ``tpe`` with ``--start none``.
- **random3x**: random search with three times the CPU (for the hypervolume target; no
  Pareto stage).
- **uniform**: one trial, the uniform starting point (every block the same share of heads and
  MLP, L2 magnitude, scaled onto the budget: Torch-Pruning's uniform ViT recipe on our engine),
  then the same Pareto-stage fine-tune.
- **fastnas**: one trial, the FastNAS starting point (as NVIDIA ModelOpt's FastNAS: each
  head / MLP-width choice scored alone with the tier-a proxy, one global threshold bisected
  onto the budget), then the same fine-tune. Widths alone cannot reach 10 % on these models.
- **sensitivity**: the same over every dimension of the hybrid space (token keep rates and
  block dropping too): prunetune's second starting point on its own.
- **tp-uniform**: the real Torch-Pruning package (``pip install -e '.[bench]'``), uniform
  ``MetaPruner`` with L2 magnitude on heads and MLP, the pruning ratio bisected onto the same
  MACs, then the same KD fine-tune; skipped with a note when the package is missing.

Search methods stop starting trials once their process has used ``--cpu`` CPU seconds
(``--cpu-budget``), so they compare at equal CPU, not at equal trials. prunetune and TPE keep
TPE keeps the default trial count (24: it sizes TPE's random start); prunetune and random
search have a cap of 400 (NSGA-II's population stays at 8 whatever the cap), so the CPU budget
ends them; a search that reaches its cap before the CPU budget simply used less.
Every trial records the process's CPU seconds when it ended, giving anytime curves: best
feasible tier-b accuracy and hypervolume (feasible completed trials, (tier-b accuracy, MACs /
dense), reference (chance, the budget fraction)) against CPU seconds. The table reports the
held-out test accuracy of the best under-budget configuration after the Pareto stage (chosen on
val), paired differences over seeds with 95 % t-intervals, hypervolumes, and the CPU prunetune
needs to reach random search's final hypervolume.

Runs are appended to ``runs.jsonl`` in ``--work`` and skipped when rerun (``--jobs 2`` runs two
at a time). Writes ``search_quality_<task>.json`` and ``search_quality_<task>_flops<B>.png`` to
``--out``.

Usage: python benchmarks/search_quality.py [--task digits] [--budgets 10,20] [--seeds 0,1,2,3,4]
       [--cpu 240] [--methods prunetune,random,tpe,uniform,fastnas,random3x,tp-uniform]
       [--jobs 2] [--work /tmp/prunetune-search-quality] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ci95, hypervolume
from prunetune.search import SearchSettings

TASKS = {"digits": ("digits_vit", 0.1), "photos": ("photos_vit", 0.125)}
SEARCHES = ("prunetune", "random", "tpe", "random3x")
ONE_SHOT = ("uniform", "fastnas", "sensitivity", "tp-uniform")
METHODS = ("prunetune", "random", "tpe", "random3x", *ONE_SHOT)
MAX_TRIALS = 400

WORKER = r"""
import json, resource, sys, time
import optuna, torch
torch.set_num_threads(1)
from prunetune.search import TrialRecord, best_trial, search, study_entry

kw = json.loads(sys.argv[1])
res = search(progress=False, **kw)
dense = study_entry(res.study, "dense")["macs"]
best, final = best_trial(res.study)
trials = []
for t in sorted(res.study.trials, key=lambda t: t.number):
    if not t.state.is_finished() or "cpu_seconds" not in t.user_attrs:
        continue
    rec = TrialRecord.of(t)
    ok = t.state == optuna.trial.TrialState.COMPLETE and rec.feasible
    trials.append([t.user_attrs["cpu_seconds"], t.values[0] if ok else None,
                   rec.macs / dense if rec.macs else None])
u = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "test": final["test_accuracy"] if final else None,
    "val": final["val_accuracy"] if final else None,
    "macs_ratio": TrialRecord.of(best).macs / dense if best else None,
    "trials": trials, "cpu_s": round(u.ru_utime + u.ru_stime, 1),
    "search_cpu_s": trials[-1][0] if trials else None,
    "starts": res.study.user_attrs.get("starts") or [],
}))
"""

TP_WORKER = r"""
import copy, json, resource, sys
import torch
torch.set_num_threads(1)
import torch_pruning as tp
from prunetune import evaluate_accuracy, load_base, measure_macs
from prunetune.data import make_loader
from prunetune.evaluators import finetune
from prunetune.models import resolve_model_spec
from prunetune.search import SearchSettings

kw = json.loads(sys.argv[1])
s = SearchSettings(**{k: v for k, v in kw.items() if k in ("model", "seed", "budget")})
base = load_base(resolve_model_spec(s.model), None, None, check_dense=False)
torch.manual_seed(s.seed)
x = torch.randn(2, *base.input_shape)
dense_macs = measure_macs(base.model, base.input_shape)
target = dense_macs * float(s.budget.split("=")[1].rstrip("%")) / 100


def pruned(ratio):
    # heads (qkv groups) and MLP hidden units (fc1 groups) only: every layer that would root a
    # group on the residual width is ignored, as our uniform baseline prunes
    m = copy.deepcopy(base.model).eval()
    heads = {blk.attn.qkv: blk.attn.num_heads for blk in m.blocks}
    ignored = [m.head, m.patch_embed.proj]
    ignored += [layer for blk in m.blocks for layer in (blk.attn.proj, blk.mlp.fc2)]
    pr = tp.pruner.MetaPruner(
        m, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
        num_heads=heads, prune_head_dims=False, prune_num_heads=True,
        head_pruning_ratio=min(ratio, 1 - 1 / m.blocks[0].attn.num_heads),
        ignored_layers=ignored, global_pruning=False,
    )
    pr.step()
    for blk in m.blocks:
        a = blk.attn
        a.num_heads = pr.num_heads[a.qkv]
        if hasattr(a, "attn_dim"):
            a.attn_dim = a.num_heads * a.head_dim
    return m


lo, hi, best = 0.0, 0.99, None
for _ in range(12):  # the smallest uniform ratio that fits the budget
    mid = (lo + hi) / 2
    m = pruned(mid)
    macs = measure_macs(m, base.input_shape)
    if macs <= target:
        hi, best = mid, (m, macs, mid)
    else:
        lo = mid
if best is None:
    raise SystemExit(f"no uniform Torch-Pruning ratio reaches {s.budget}")
m, macs, ratio = best
heads = [blk.attn.num_heads for blk in m.blocks]
mlp = [blk.mlp.fc1.out_features for blk in m.blocks]
st = SearchSettings()
finetune(m, base.data.train, teacher=base.model, epochs=st.final_epochs, lr=st.lr,
         batch_size=st.batch_size, seed=s.seed)
val = evaluate_accuracy(m, base.val_batches()).accuracy
test = evaluate_accuracy(m, list(make_loader(base.data.test, 256))).accuracy
u = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"test": test, "val": val, "macs_ratio": macs / dense_macs, "trials": [],
                  "ratio": ratio, "heads": heads, "mlp": mlp,
                  "cpu_s": round(u.ru_utime + u.ru_stime, 1)}))
"""


def settings_for(method: str, task: str, budget: int, seed: int, cpu: float, work: Path) -> dict:
    name = f"{task}_{method}_b{budget}_s{seed}"
    kw = {
        "budget": f"flops={budget}%",
        "model": TASKS[task][0],
        "seed": seed,
        "storage": f"sqlite:///{work}/{name}.db",
        "study": name,
        "artifacts": str(work / "artifacts" / name),
        "n_trials": MAX_TRIALS,
        "cpu_budget": cpu,
    }
    if method == "tpe":
        # the default trial count sets TPE's random start as a user's search has it
        kw["n_trials"] = SearchSettings().n_trials
    if method in ("random", "tpe", "random3x"):
        kw.update(sampler="random" if method != "tpe" else "tpe", start=[])
    if method == "random3x":
        kw.update(cpu_budget=3 * cpu, run_final=False)
    if method in ("uniform", "fastnas", "sensitivity"):
        kw.update(n_trials=1, cpu_budget=None, start=[method])
    return kw


def run_one(method: str, task: str, budget: int, seed: int, cpu: float, work: Path) -> dict:
    kw = settings_for(method, task, budget, seed, cpu, work)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    code = TP_WORKER if method == "tp-uniform" else WORKER
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kw)], capture_output=True, text=True, env=env
    )
    row = dict(method=method, task=task, budget=budget, seed=seed, cpu=cpu)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1][:300]
        if "reaches" in last:  # Torch-Pruning's widths cannot reach the budget
            return {**row, "unreachable": last, "test": None, "trials": []}
        return {"error": last}
    row.update(json.loads(out.stdout.strip().splitlines()[-1]))
    if method in ("uniform", "fastnas", "sensitivity") and method not in row["starts"]:
        # the one trial was not the starting point: it does not exist at this budget
        return {
            **row,
            "unreachable": f"no {method} configuration fits flops={budget}%",
            "test": None,
            "trials": [],
        }
    return row


def curves(trials: list, chance: float, fraction: float, grid: list[float]):
    """Best feasible tier-b accuracy and hypervolume at each CPU second of ``grid``."""
    best, hv = [], []
    for g in grid:
        pts = [(a, c) for cpu, a, c in trials if cpu <= g and a is not None]
        best.append(max((a for a, _ in pts), default=math.nan))
        hv.append(hypervolume(pts, chance, fraction))
    return best, hv


def cpu_to_reach(trials: list, chance: float, fraction: float, target: float) -> float | None:
    """CPU seconds after which the run's hypervolume first reaches ``target``."""
    pts = []
    for cpu, a, c in sorted(trials, key=lambda t: t[0]):
        if a is not None:
            pts.append((a, c))
        if hypervolume(pts, chance, fraction) >= target:
            return cpu
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(TASKS), default="digits")
    p.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[10, 20])
    p.add_argument(
        "--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2, 3, 4]
    )
    p.add_argument("--cpu", type=float, default=240.0, help="CPU seconds per search")
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/prunetune-search-quality"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--report-only", action="store_true", help="only tabulate runs.jsonl")
    a = p.parse_args()
    bad = [m for m in a.methods if m not in METHODS]
    if bad:
        p.error(f"unknown method {bad[0]}; choose from {', '.join(METHODS)}")
    if "tp-uniform" in a.methods:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            print("tp-uniform skipped: torch-pruning is not installed (pip install -e '.[bench]')")
            a.methods.remove("tp-uniform")
    a.work.mkdir(parents=True, exist_ok=True)
    log = a.work / "runs.jsonl"
    runs = [json.loads(ln) for ln in log.read_text().splitlines()] if log.is_file() else []

    def have(m, b, s):
        return any(
            r["method"] == m
            and r["task"] == a.task
            and r["budget"] == b
            and r["seed"] == s
            and r["cpu"] == a.cpu
            for r in runs
        )

    todo = [(m, b, s) for s in a.seeds for b in a.budgets for m in a.methods if not have(m, b, s)]

    def job(item):
        m, b, s = item
        row = run_one(m, a.task, b, s, a.cpu, a.work)
        if "error" in row:
            print(f"{m} flops={b}% seed {s} failed: {row['error']}", flush=True)
            return
        brief = {k: row.get(k) for k in ("method", "budget", "seed", "test", "macs_ratio", "cpu_s")}
        print(json.dumps(brief), flush=True)
        runs.append(row)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")

    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        list(pool.map(job, todo))
    report(runs, a)


def report(runs: list[dict], a) -> None:
    model, chance = TASKS[a.task]
    out: dict = {"task": a.task, "model": model, "cpu": a.cpu, "seeds": a.seeds, "budgets": {}}
    for b in a.budgets:
        mine = [
            r
            for r in runs
            if r["task"] == a.task
            and r["budget"] == b
            and r["seed"] in a.seeds
            and r["cpu"] == a.cpu
        ]
        by = {m: {r["seed"]: r for r in mine if r["method"] == m} for m in a.methods}
        print(
            f"\n{model}, flops={b}%, {a.cpu:.0f} CPU-s per search (random3x: {3 * a.cpu:.0f}); "
            f"test accuracy after the Pareto stage"
        )
        print(
            f"{'method':11} {'n':>2} {'test %':>15} {'x dense':>8} {'trials':>6} {'hv':>7} "
            f"{'CPU s':>6}"
        )
        summary: dict = {}
        for m, rs in by.items():
            if any(r.get("unreachable") for r in rs.values()):
                summary[m] = {"unreachable": next(iter(rs.values()))["unreachable"]}
                print(f"{m:11} cannot reach the budget: {summary[m]['unreachable']}")
                continue
            rs = [r for r in rs.values() if r.get("test") is not None or m == "random3x"]
            if not rs:
                continue
            hvs = [curves(r["trials"], chance, b / 100, [math.inf])[1][0] for r in rs]
            entry = {
                "n": len(rs),
                "hv_mean": statistics.mean(hvs),
                "cpu_s_mean": statistics.mean(r["cpu_s"] for r in rs),
                "trials_mean": statistics.mean(len(r["trials"]) for r in rs),
            }
            tests = [100 * r["test"] for r in rs if r.get("test") is not None]
            if tests:
                entry["test_mean"], entry["test_ci95"] = ci95(tests)
                entry["macs_ratio_mean"] = statistics.mean(
                    r["macs_ratio"] for r in rs if r.get("macs_ratio") is not None
                )
            summary[m] = entry
            test = (
                f"{entry['test_mean']:7.2f} ±{entry['test_ci95']:6.2f}" if tests else f"{'-':>15}"
            )
            ratio = f"{entry['macs_ratio_mean']:8.3f}" if tests else f"{'-':>8}"
            print(
                f"{m:11} {len(rs):2d} {test} {ratio} {entry['trials_mean']:6.1f} "
                f"{entry['hv_mean']:7.4f} {entry['cpu_s_mean']:6.0f}"
            )
        pairs: dict = {}
        ours = by.get("prunetune", {})
        for other in [m for m in by if m not in ("prunetune", "random3x")]:
            diffs = [
                100 * (ours[s]["test"] - by[other][s]["test"])
                for s in ours
                if s in by[other]
                and by[other][s].get("test") is not None
                and ours[s].get("test") is not None
            ]
            if diffs:
                d, hw = ci95(diffs)
                pairs[other] = {"mean": d, "ci95": hw, "n": len(diffs)}
                print(
                    f"prunetune - {other}: {d:+.2f} ± {hw:.2f} test points (paired, n={len(diffs)})"
                )
        # the peers
        one_shot = [
            m for m in ("uniform", "fastnas", "tp-uniform") if "test_mean" in summary.get(m, {})
        ]
        if one_shot and "prunetune" in summary:
            top = max(one_shot, key=lambda m: summary[m]["test_mean"])
            pairs["best_one_shot"] = {"method": top, **pairs.get(top, {})}
        reach = []
        for s, r in ours.items():
            rnd = by.get("random", {}).get(s)
            if rnd is None:
                continue
            target = curves(rnd["trials"], chance, b / 100, [math.inf])[1][0]
            cpu = cpu_to_reach(r["trials"], chance, b / 100, target)
            reach.append(None if cpu is None else cpu / rnd["search_cpu_s"])
        if reach:
            got = [x for x in reach if x is not None]
            print(
                "CPU to reach random's final hypervolume, as a fraction of random's: "
                + ", ".join("never" if x is None else f"{x:.2f}" for x in reach)
            )
            summary["cpu_to_reach_random_hv"] = reach
            if got:
                summary["cpu_to_reach_random_hv_median"] = statistics.median(
                    [x if x is not None else math.inf for x in reach]
                )
        out["budgets"][b] = {"summary": summary, "paired": pairs}
        _plot(by, chance, b, a)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"search_quality_{a.task}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


def _plot(by: dict, chance: float, budget: int, a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [a.cpu * 3 * i / 60 for i in range(1, 61)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for m, rs in by.items():
        rs = [r for r in rs.values() if r["trials"]]
        if not rs or m in ONE_SHOT:
            continue
        end = max(r["trials"][-1][0] for r in rs)
        g = [x for x in grid if x <= end] or grid[:1]
        bests = [curves(r["trials"], chance, budget / 100, g) for r in rs]
        for ax, k in ((ax1, 0), (ax2, 1)):
            ys = [
                statistics.mean([c[k][i] for c in bests if not math.isnan(c[k][i])] or [math.nan])
                for i in range(len(g))
            ]
            ax.plot(g, [100 * y if k == 0 else y for y in ys], label=m)
    ax1.set(xlabel="CPU seconds", ylabel="best feasible tier-b val accuracy %")
    ax2.set(xlabel="CPU seconds", ylabel="hypervolume")
    ax1.set_title(f"{a.task}, flops={budget}% (mean over seeds)")
    ax1.legend()
    fig.tight_layout()
    a.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out / f"search_quality_{a.task}_flops{budget}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
