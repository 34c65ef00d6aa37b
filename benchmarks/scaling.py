"""Scaling: completed trials per minute with 1 and 2 workers, via Ray Tune and via a shared \
PostgreSQL study.

Each condition runs a fresh search on the embedded default (budget flops=50 %, default tiers,
no Pareto stage) in its own process, with every trial sent to tier b (tier a's ``warmup`` = the
trial count) so each trial is the same amount of work. The CPU cores are split between the workers:
1 worker uses all torch threads, 2 workers use half each (Ray does this itself; the PostgreSQL
processes set it). Throughput is counted from the study's own timestamps: completed trials divided
by the span from the first trial's start to the last trial's end (so model loading and Ray start-up
are left out), and also over the whole wall time.
Target: >= 1.7x with 2 workers.

Usage: python benchmarks/scaling.py [--trials 12] [--postgres postgresql://postgres@127.0.0.1:5432/test]
Writes scaling.json in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

WORKER = r"""
import sys, torch, optuna
from prunetune.errors import PrunetuneError
from prunetune.search import default_tiers, search
threads, storage, study, trials, backend, workers = sys.argv[1:7]
torch.set_num_threads(int(threads))
try:
    search("flops=50%", progress=False, storage=storage, study=study, n_trials=int(trials),
           tiers=default_tiers(warmup=int(trials)), run_final=False, backend=backend,
           workers=int(workers))
except PrunetuneError as e:
    sys.exit(f"scaling worker: {e}")
"""


def throughput(storage: str, study_name: str) -> dict:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    span = (
        max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    ).total_seconds()
    return {"completed": len(done), "span_s": round(span, 1), "per_min": 60 * len(done) / span}


def run(condition: str, workers: int, trials: int, cores: int, postgres: str, tmp: Path) -> dict:
    name = f"scaling_{condition}_{workers}_{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    if condition == "ray":
        storage = f"sqlite:///{tmp}/{name}.db"
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    WORKER,
                    str(cores),
                    storage,
                    name,
                    str(trials),
                    "ray",
                    str(workers),
                ],
                env=env,
                cwd=tmp,
            )
        ]
    else:
        storage = postgres
        threads = max(1, cores // workers)
        procs = []
        for i in range(workers):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        WORKER,
                        str(threads),
                        storage,
                        name,
                        str(trials),
                        "optuna",
                        "1",
                    ],
                    env=env,
                    cwd=tmp,
                )
            )
            if i == 0:
                time.sleep(3)  # the first process creates the study and stores its settings
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"{condition} with {workers} workers failed (exit codes {codes})")
    r = throughput(storage, name)
    r.update(
        {
            "condition": condition,
            "workers": workers,
            "wall_s": round(wall, 1),
            "per_min_wall": 60 * r["completed"] / wall,
        }
    )
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--conditions", default="ray,postgres")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for cond in a.conditions.split(","):
            for w in (1, 2):
                r = run(cond, w, a.trials, cores, a.postgres, Path(d))
                rows.append(r)
                print(
                    f"[{time.strftime('%H:%M:%S')}] {cond} x{w}: {r['completed']} trials, "
                    f"{r['per_min']:.2f}/min",
                    flush=True,
                )
    print(
        f"\n{'backend':10} {'workers':>7} {'trials':>6} {'span s':>7} {'trials/min':>10} "
        f"{'speedup':>7} "
        f"{'wall s':>7} {'/min wall':>9} {'speedup':>7}"
    )
    for r in rows:
        one = next(x for x in rows if x["condition"] == r["condition"] and x["workers"] == 1)
        r["speedup"] = r["per_min"] / one["per_min"]
        r["speedup_wall"] = r["per_min_wall"] / one["per_min_wall"]
        r["meets_1.7"] = r["workers"] == 1 or r["speedup"] >= 1.7
        print(
            f"{r['condition']:10} {r['workers']:7} {r['completed']:6} {r['span_s']:7.1f} "
            f"{r['per_min']:10.2f} "
            f"{r['speedup']:7.2f} {r['wall_s']:7.1f} {r['per_min_wall']:9.2f} "
            f"{r['speedup_wall']:7.2f}"
        )
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "scaling.json").write_text(json.dumps({"cores": cores, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
