"""Scaling: Ray's overhead against the in-process loop, and trials per CPU-minute at 1 and 2 \
workers.

Each condition ``backend:workers:cores`` runs a fresh search on the embedded default (budget
flops=50 %, default tiers with every trial sent to tier b, so each trial is the same work; no
Pareto stage) in its own processes, pinned to ``cores`` CPU cores (``sched_setaffinity``,
inherited by Ray's servers and workers, so everything the search runs shares those cores):

- ``optuna:1:1``  one in-process worker, one core, one torch thread
- ``ray:1:1``     Ray Tune, one worker on one core (the local cluster sees one CPU)
- ``ray:2:2``     Ray Tune, two workers on two cores (one CPU and one torch thread each)
- ``optuna:2:2``  two in-process workers sharing one study, one thread each

Throughput is counted from the study's own timestamps: completed trials over the span from the
first trial's start to the last trial's end (model loading and Ray's start-up left out), and
also over the whole wall time. The same seed draws the same candidates in the same order at one
worker (both backends); with two workers the draws interleave differently. Each row also gives
the median trial time, ``busy`` (the trials' summed time over span x workers: 1.0 means no
worker waited) and every trial's start and duration in scaling.json: a worker's first trials
are slower (they fill that process's caches: the teacher's logits, each criterion's saliency
scores), so a short run under-states the per-core scaling of many workers. Reported:

- **Ray's overhead**: 1 - trials/min of ``ray:1:1`` / ``optuna:1:1`` (target < 10 %),
- **trials per CPU-minute** (trials/min / cores) and the **per-core scaling** of 2 workers on
  2 cores against 1 on 1 (target >= 0.9, linear = 1.0).

Run it alone on the machine. Needs at least 2 cores.

Usage: python benchmarks/scaling.py [--trials 12] [--storage postgresql://... | sqlite]
           [--conditions optuna:1:1,ray:1:1,ray:2:2,optuna:2:2]
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
import sys, torch
from prunetune.errors import PrunetuneError
from prunetune.search import default_tiers, search
threads, storage, study, trials, backend, workers = sys.argv[1:7]
torch.set_num_threads(int(threads))  # in-process trials; Ray's take the CPUs Ray gives them
try:
    search("flops=50%", progress=False, storage=storage, study=study, n_trials=int(trials),
           tiers=default_tiers(warmup=int(trials)), run_final=False, backend=backend,
           workers=int(workers))
except PrunetuneError as e:
    sys.exit(f"scaling worker: {e}")
"""

DEFAULT_CONDITIONS = "optuna:1:1,ray:1:1,ray:2:2,optuna:2:2"

# The machine's own ceiling: the same candidates (after every cache is filled) scored by one
# process on one core, then by two processes at once, one per core; no storage, no search loop.
CEILING = r"""
import sys, time, torch, optuna
from prunetune.search import Evaluator, SearchSettings, default_tiers
torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.WARNING)
n = int(sys.argv[1])
s = SearchSettings(budget="flops=50%", tiers=default_tiers(warmup=n + 1), n_trials=n + 1)
ev = Evaluator(s.resolved())
study = optuna.create_study(
    directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
)
for c in {d for dim in ev.space.dims if dim.name == "criterion" for d in dim.choices}:
    ev.scores(c)
seconds = []
for i in range(n + 1):
    t = study.ask()
    params = ev.space.suggest(t)
    t0 = time.perf_counter()
    ev.evaluate(params, study)
    if i:  # the first fills the teacher's logits
        seconds.append(time.perf_counter() - t0)
    study.tell(t, state=optuna.trial.TrialState.FAIL)
print(sum(seconds))
"""


def ceiling(candidates: int, tmp: Path) -> dict:
    """Seconds to score the same ``candidates`` alone on one core and two at once on two."""
    cores = sorted(os.sched_getaffinity(0))[:2]
    env = dict(os.environ, PYTHONWARNINGS="ignore")

    def start(core: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", CEILING, str(candidates)],
            env=env,
            cwd=tmp,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        )

    def seconds(procs: list[subprocess.Popen]) -> list[float]:
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit("the ceiling run failed")
        return [float(o.strip().splitlines()[-1]) for o in outs]

    alone = seconds([start(cores[0])])[0]
    together = seconds([start(c) for c in cores])
    return {
        "candidates": candidates,
        "alone_s": round(alone, 1),
        "together_s": [round(t, 1) for t in together],
        "per_core_scaling": alone / (sum(together) / len(together)),
    }


def parse_conditions(text: str, max_cores: int) -> list[tuple[str, int, int]]:
    out = []
    for item in filter(None, text.split(",")):
        try:
            backend, workers, cores = item.split(":")
            cond = (backend, int(workers), int(cores))
        except ValueError:
            raise SystemExit(f"--conditions: {item!r} is not backend:workers:cores") from None
        if backend not in ("optuna", "ray") or cond[1] < 1 or not 1 <= cond[2] <= max_cores:
            raise SystemExit(
                f"--conditions: {item!r} needs backend optuna or ray, workers >= 1 and "
                f"1..{max_cores} cores"
            )
        out.append(cond)
    return out


def throughput(storage: str, study_name: str) -> dict:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    span = (
        max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    ).total_seconds()
    first = min(t.datetime_start for t in done)
    seconds = sorted((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
    optuna.delete_study(study_name=study_name, storage=storage)  # the numbers are kept below
    return {
        "completed": len(done),
        "span_s": round(span, 1),
        "per_min": 60 * len(done) / span,
        # how long one trial takes, and how much of the span the workers spent in trials (the
        # rest: waiting at the start and the end, and between trials)
        "median_trial_s": round(seconds[len(seconds) // 2], 2),
        "trial_s_total": round(sum(seconds), 1),
        # what the trials were: the same seed draws the same candidates in every condition
        # only where the trials are asked for in the same order
        "mean_mmacs": round(sum(t.user_attrs.get("macs", 0) for t in done) / len(done) / 1e6, 2),
        "criteria": sorted({t.params.get("criterion", "") for t in done}),
        "trials": [
            {
                "number": t.number,
                "criterion": t.params.get("criterion"),
                "token_mode": t.params.get("token_mode"),
                "start_s": round((t.datetime_start - first).total_seconds(), 2),
                "seconds": round((t.datetime_complete - t.datetime_start).total_seconds(), 2),
            }
            for t in sorted(done, key=lambda t: t.number)
        ],
    }


def run(backend: str, workers: int, cores: int, trials: int, storage: str, tmp: Path) -> dict:
    name = f"scaling_{backend}_{workers}x{cores}_{uuid.uuid4().hex[:6]}"
    if storage == "sqlite":
        storage = f"sqlite:///{tmp}/{name}.db"
    cpus = set(sorted(os.sched_getaffinity(0))[:cores])
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    processes = 1 if backend == "ray" else workers  # Ray runs its workers itself
    threads = max(1, cores // workers)
    t0 = time.perf_counter()
    procs = []
    for i in range(processes):
        argv = [str(threads), storage, name, str(trials), backend, str(workers // processes)]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, *argv],
                env=env,
                cwd=tmp,
                preexec_fn=lambda: os.sched_setaffinity(0, cpus),
            )
        )
        if i == 0 and processes > 1:
            time.sleep(3)  # the first process creates the study and stores its settings
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"{backend} with {workers} workers failed (exit codes {codes})")
    r = throughput(storage, name)
    r.update(
        {
            "condition": f"{backend}:{workers}:{cores}",
            "backend": backend,
            "workers": workers,
            "cores": cores,
            "torch_threads": threads,
            "per_cpu_min": r["per_min"] / cores,
            "wall_s": round(wall, 1),
            "per_min_wall": 60 * r["completed"] / wall,
            "busy": r["trial_s_total"] / (r["span_s"] * workers),
        }
    )
    return r


def summary(rows: list[dict]) -> dict:
    """Ray's overhead at 1 worker and the per-core scaling of each backend (where measured)."""
    by = {r["condition"]: r for r in rows}
    out = {}
    if "ray:1:1" in by and "optuna:1:1" in by:
        out["ray_overhead"] = 1 - by["ray:1:1"]["per_min"] / by["optuna:1:1"]["per_min"]
        out["ray_overhead_wall"] = (
            1 - by["ray:1:1"]["per_min_wall"] / by["optuna:1:1"]["per_min_wall"]
        )
        out["meets_overhead_10pct"] = out["ray_overhead"] < 0.10
    for backend in ("ray", "optuna"):
        one, two = by.get(f"{backend}:1:1"), by.get(f"{backend}:2:2")
        if one and two:
            out[f"{backend}_per_core_scaling"] = two["per_cpu_min"] / one["per_cpu_min"]
            out[f"{backend}_meets_0.9_linear"] = out[f"{backend}_per_core_scaling"] >= 0.9
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument(
        "--storage",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="a PostgreSQL URL shared by every condition, or `sqlite` (a file per condition)",
    )
    p.add_argument("--conditions", default=DEFAULT_CONDITIONS, help="backend:workers:cores,...")
    p.add_argument(
        "--ceiling",
        type=int,
        default=6,
        help="candidates for the machine's own 2-process ceiling (0: skip it)",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args()
    max_cores = len(os.sched_getaffinity(0))
    conditions = parse_conditions(a.conditions, max_cores)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for backend, workers, cores in conditions:
            r = run(backend, workers, cores, a.trials, a.storage, Path(d))
            rows.append(r)
            print(
                f"[{time.strftime('%H:%M:%S')}] {r['condition']}: {r['completed']} trials, "
                f"{r['per_min']:.2f}/min, {r['per_cpu_min']:.2f}/CPU-min",
                flush=True,
            )
    print(
        f"\n{'condition':12} {'threads':>7} {'trials':>6} {'span s':>7} {'trials/min':>10} "
        f"{'/CPU-min':>8} {'wall s':>7} {'/min wall':>9} {'trial s':>7} {'busy':>5}"
    )
    for r in rows:
        print(
            f"{r['condition']:12} {r['torch_threads']:7} {r['completed']:6} {r['span_s']:7.1f} "
            f"{r['per_min']:10.2f} {r['per_cpu_min']:8.2f} {r['wall_s']:7.1f} "
            f"{r['per_min_wall']:9.2f} {r['median_trial_s']:7.1f} {r['busy']:5.2f}"
        )
    s = summary(rows)
    if "ray_overhead" in s:
        print(
            f"\nRay's overhead at 1 worker: {100 * s['ray_overhead']:.1f} % fewer trials/min than "
            f"the in-process loop ({100 * s['ray_overhead_wall']:.1f} % over wall time); "
            f"target < 10 %: {'met' if s['meets_overhead_10pct'] else 'NOT met'}"
        )
    for backend in ("ray", "optuna"):
        if f"{backend}_per_core_scaling" in s:
            print(
                f"{backend}: 2 workers on 2 cores give {s[f'{backend}_per_core_scaling']:.2f}x "
                f"the trials per CPU-minute of 1 on 1; target >= 0.9: "
                f"{'met' if s[f'{backend}_meets_0.9_linear'] else 'NOT met'}"
            )
    if a.ceiling:
        with tempfile.TemporaryDirectory() as d:
            s["machine_ceiling"] = c = ceiling(a.ceiling, Path(d))
        print(
            f"this machine's own ceiling: {c['candidates']} candidates scored in "
            f"{c['alone_s']:.1f} s alone on one core, {c['together_s']} s each by two processes "
            f"at once: {c['per_core_scaling']:.2f}x per core"
        )
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "scaling.json").write_text(
        json.dumps({"cores": max_cores, "trials": a.trials, "rows": rows, **s}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
