"""Proxy fidelity: how well the tier-a and tier-b scores rank configurations by the accuracy they
reach after the Pareto-stage fine-tune, over configurations spread over cost.

For each task (``digits``: digits_vit; ``photos``: photos_vit) the script draws ``--configs``
configurations from the default hybrid search space with a random sampler and scales each onto
a cost drawn uniformly between ``--low`` and ``--high`` percent of dense MACs (the search's
``fit_to_target``), so the set covers the range a search visits, not only front members. Each
configuration is scored by the search's tiers exactly as in a search (tier a: zero-shot
agreement with the dense model; tier b: the short-KD proxy) and then pruned and fine-tuned with
the Pareto-stage recipe (``Evaluator.final_model``); its val and test accuracy are the truth.

Reports Kendall's tau of each tier against the final val accuracy, over all configurations and
within cost bands, and writes every row (appended to ``<work>/fidelity_<task>.jsonl``, so a
stopped run resumes) and ``proxy_fidelity_<task>.json`` to ``--out``. Correlations do not
depend on timing, so this benchmark may share the machine; ``--jobs 2`` splits the
configurations over two one-thread processes.

Usage: python benchmarks/proxy_fidelity.py [--task digits] [--configs 50] [--low 8] [--high 50]
       [--seed 0] [--jobs 1] [--work /tmp/prunetune-fidelity] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TASKS = {"digits": "digits_vit", "photos": "photos_vit"}

WORKER = r"""
import json, sys, time
import numpy as np, optuna, torch
torch.set_num_threads(1)
from prunetune.data import make_loader
from prunetune.evaluators import estimate_cost, evaluate_accuracy
from prunetune.pruners import prune
from prunetune.search import SearchSettings
from prunetune.search._evaluate import TARGET_PARAM, Evaluator

a = json.loads(sys.argv[1])
s = SearchSettings(model=a["model"], budget=f"flops={a['high']}%",
                   budget_target_low=a["low"] / a["high"], seed=a["seed"], start=[])
ev = Evaluator(s)
test = list(make_loader(ev.base.data.test, 256))
for i in a["indices"]:
    # configuration i's draws depend only on (seed, i): shards and resumed runs draw the same ones
    sampler = optuna.samplers.RandomSampler(seed=int(np.random.SeedSequence([a["seed"], i])
                                                     .generate_state(1)[0]))
    study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"])
    trial = study.ask()
    params = ev.space.suggest(trial)
    try:
        config, _ = ev.candidate(params)
    except Exception as e:  # infeasible draw: recorded, not scored
        print(json.dumps({"index": i, "infeasible": str(e)[:200]}), flush=True)
        continue
    cost = estimate_cost(config, ev.arch)
    model = prune(ev.base.model, config, scores=ev.scores(config.criterion))
    row = {"index": i, "macs": cost.macs, "macs_ratio": cost.macs / ev.dense_cost.macs,
           "config": config.to_dict()}
    for label, proxy in zip(ev.tiers.labels, ev.tiers.proxies):
        t0 = time.process_time()
        row[f"tier_{label}"] = float(proxy.score(model))
        row[f"tier_{label}_cpu_s"] = round(time.process_time() - t0, 2)
        acc = getattr(proxy, "last", {}).get("accuracy")
        if acc is not None:
            row[f"tier_{label}_accuracy"] = float(acc)
    t0 = time.process_time()
    final = ev.final_model(config, progress=False)
    row["final_cpu_s"] = round(time.process_time() - t0, 2)
    row["val_accuracy"] = evaluate_accuracy(final, ev.val).accuracy
    row["test_accuracy"] = evaluate_accuracy(final, test).accuracy
    print(json.dumps(row), flush=True)
"""


def kendall(rows: list[dict], key: str) -> dict:
    from scipy.stats import kendalltau

    xs = [r[key] for r in rows]
    ys = [r["val_accuracy"] for r in rows]
    if len(rows) < 3:
        return {"tau": None, "n": len(rows)}
    res = kendalltau(xs, ys)
    return {"tau": round(float(res.statistic), 3), "p": float(res.pvalue), "n": len(rows)}


def run_shard(args: dict, log: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in proc.stdout:
        if line.startswith("{"):
            with log.open("a") as f:
                f.write(line)
            print(line.strip()[:160], flush=True)
    err = proc.stderr.read()
    if proc.wait() != 0:
        return (err.strip().splitlines() or ["?"])[-1][:300]
    return ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(TASKS), default="digits")
    p.add_argument("--configs", type=int, default=50)
    p.add_argument("--low", type=float, default=8.0, help="lowest cost, percent of dense MACs")
    p.add_argument("--high", type=float, default=50.0, help="highest cost, percent")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/prunetune-fidelity"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--report-only", action="store_true", help="only tabulate the log")
    a = p.parse_args()
    if not 0 < a.low < a.high <= 100:
        p.error("need 0 < --low < --high <= 100 (percent of dense MACs)")
    a.work.mkdir(parents=True, exist_ok=True)
    log = a.work / f"fidelity_{a.task}_s{a.seed}_{a.low:g}-{a.high:g}.jsonl"
    done = (
        {json.loads(ln)["index"] for ln in log.read_text().splitlines()} if log.is_file() else set()
    )
    if not a.report_only:
        # infeasible draws are skipped: keep drawing until --configs were scored
        todo = [i for i in range(a.configs * 2) if i not in done]
        scored = sum(
            1
            for ln in (log.read_text().splitlines() if log.is_file() else [])
            if "val_accuracy" in ln
        )
        todo = todo[: max(0, a.configs - scored)]
        shards = [todo[j :: a.jobs] for j in range(a.jobs)]
        base = {"model": TASKS[a.task], "low": a.low, "high": a.high, "seed": a.seed}
        with ThreadPoolExecutor(a.jobs) as pool:
            errs = list(pool.map(lambda idx: run_shard({**base, "indices": idx}, log), shards))
        for e in errs:
            if e:
                print(f"worker failed: {e}", file=sys.stderr)
    rows = [json.loads(ln) for ln in log.read_text().splitlines()] if log.is_file() else []
    rows = sorted((r for r in rows if "val_accuracy" in r), key=lambda r: r["index"])
    tiers = sorted(k for k in (rows[0] if rows else {}) if k in ("tier_a", "tier_b", "tier_c"))
    bands = [(a.low, 15.0), (15.0, 25.0), (25.0, a.high)]
    report = {"task": a.task, "configs": len(rows), "low": a.low, "high": a.high, "seed": a.seed}
    report["all"] = {t: kendall(rows, t) for t in tiers}
    if rows and "tier_b_accuracy" in rows[0]:
        report["all"]["tier_b_accuracy"] = kendall(rows, "tier_b_accuracy")
    for lo, hi in bands:
        band = [r for r in rows if lo <= 100 * r["macs_ratio"] < hi]
        report[f"band_{lo:g}-{hi:g}"] = {t: kendall(band, t) for t in tiers}
    for t in tiers:
        report[f"{t}_cpu_s_mean"] = round(sum(r[f"{t}_cpu_s"] for r in rows) / max(1, len(rows)), 2)
    report["final_cpu_s_mean"] = round(sum(r["final_cpu_s"] for r in rows) / max(1, len(rows)), 2)
    report["rows"] = rows
    print(
        f"\nproxy fidelity on {a.task}: {len(rows)} configurations, "
        f"{a.low:g}-{a.high:g} % of dense MACs, Kendall tau vs final val accuracy"
    )
    print(f"{'set':<14} {'n':>4} " + " ".join(f"{t:>8}" for t in tiers))
    for key in ["all", *(f"band_{lo:g}-{hi:g}" for lo, hi in bands)]:
        vals = report[key]
        n = next(iter(vals.values()))["n"] if vals else 0
        cells = " ".join(
            f"{vals[t]['tau']:>8.3f}" if vals[t]["tau"] is not None else f"{'-':>8}" for t in tiers
        )
        print(f"{key:<14} {n:>4} {cells}")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"proxy_fidelity_{a.task}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
