"""Search vs baselines on the embedded default: uniform pruning, random search, prunetune's search.

For each budget (default 50 % and 30 % of dense MACs) and seed (default 0, 1, 2):

- **uniform-l2 / uniform-taylor**: the same head count and MLP width in every block (the largest
  pair that fits the budget, with the head and MLP kept ratios as close as the head granularity
  allows), channels ranked by L2 magnitude or by first-order Taylor saliency, as Torch-Pruning's
  ViT example prunes; no depth or token pruning.
- **random**: ``prunetune search --sampler random`` with the same trial count, the same tiers and
  the same Pareto stage as prunetune's search; only the sampler differs.
- **prunetune**: ``prunetune search`` with its defaults (NSGA-II, hybrid space) and ``--trials N``.

Every method's chosen model gets the same recovery fine-tune (the Pareto-stage recipe: KD from the
dense model, 8 epochs, AdamW, cosine). Selection uses the validation split; the table reports the
held-out test split. At ``--hv-budget`` the random study is continued to ``--random-trials`` to
compare hypervolumes: prunetune after ``--trials`` vs random after ``--random-trials``.
Hypervolume is over (tier-b accuracy, MACs / dense MACs) of the feasible completed trials, with
reference point (0.1 accuracy = chance on 10 classes, the budget fraction).

The fine-tuned front members of every search also give (tier a, tier b, final) triples: the
proxy-fidelity table (Kendall tau of each tier against final fine-tuned validation accuracy).

Runs are appended to ``runs.jsonl`` in ``--work`` and skipped when rerun, so an interrupted
benchmark resumes. Writes baselines.json, baselines.csv, baselines.png and proxy_fidelity.json in
--out.

Usage: python benchmarks/baselines.py [--budgets 50,30] [--seeds 0,1,2] [--trials 30]
       [--random-trials 90] [--hv-budget 30] [--work /tmp/prunetune-baselines]
       [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import optuna

from _common import hypervolume
from prunetune import PruningConfig, estimate_cost, evaluate_accuracy
from prunetune.data import make_loader
from prunetune.search import (
    Evaluator,
    SearchSettings,
    TrialRecord,
    best_trial,
    load_study,
    search,
    study_entry,
)

CHANCE = 0.1  # digits: 10 classes


def hv_history(study: optuna.Study, dense_macs: float, fraction: float) -> list[float]:
    """Hypervolume after each finished trial (complete or stopped early), in trial order."""
    finished = [
        t
        for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL
    ]
    pts, out = [], []
    for t in finished:
        rec = TrialRecord.of(t)
        if t.state == optuna.trial.TrialState.COMPLETE and rec.feasible:
            pts.append((t.values[0], rec.macs / dense_macs))
        out.append(hypervolume(pts, CHANCE, fraction))
    return out


def uniform_config(spec, arch, limit: float, criterion: str) -> PruningConfig:
    """The largest same-in-every-block (heads, MLP) pair under ``limit`` MACs with near-equal kept
    ratios."""
    best = None
    for h in range(1, arch.num_heads + 1):
        lo, hi = 0, arch.mlp_hidden  # largest MLP width fitting the budget with h heads
        while lo < hi:
            m = (lo + hi + 1) // 2
            cfg = PruningConfig.uniform(spec, h / arch.num_heads, m / arch.mlp_hidden)
            if estimate_cost(cfg, arch).macs <= limit:
                lo = m
            else:
                hi = m - 1
        if lo == 0:
            continue
        gap = abs(h / arch.num_heads - lo / arch.mlp_hidden)
        if best is None or gap < best[0]:
            best = (gap, h, lo)
    if best is None:
        raise SystemExit(f"no uniform configuration fits {limit:,.0f} MACs")
    _, h, m = best
    return PruningConfig.uniform(spec, h / arch.num_heads, m / arch.mlp_hidden, criterion=criterion)


def run_uniform(budget: int, criterion: str, seed: int) -> dict:
    ev = Evaluator(SearchSettings(budget=f"flops={budget}%", seed=seed))
    cfg = uniform_config(ev.space.model, ev.arch, ev.budget.limit, criterion)
    model = ev.final_model(cfg, progress=False)
    test = make_loader(ev.base.data.test, 256)
    b = cfg.blocks[0]
    return {
        "macs_ratio": estimate_cost(cfg, ev.arch).macs / ev.dense_cost.macs,
        "val": evaluate_accuracy(model, ev.val).accuracy,
        "test": evaluate_accuracy(model, test).accuracy,
        "shape": f"{b.heads}/{ev.arch.num_heads} heads, {b.mlp}/{ev.arch.mlp_hidden} MLP",
    }


def run_search(
    budget: int, sampler: str, seed: int, trials: int, work: Path, more: int | None
) -> dict:
    storage = f"sqlite:///{work}/studies.db"
    name = f"{sampler}_b{budget}_s{seed}"
    res = search(
        f"flops={budget}%",
        progress=False,
        sampler=sampler,
        seed=seed,
        n_trials=trials,
        storage=storage,
        study=name,
        artifacts=str(work / "artifacts" / name),
    )
    dense = study_entry(res.study, "dense")
    best, final = best_trial(res.study)
    row = {
        "macs_ratio": TrialRecord.of(best).macs / dense["macs"],
        "val": final["val_accuracy"],
        "test": final["test_accuracy"],
        "best_trial": best.number,
        "hv": hv_history(res.study, dense["macs"], budget / 100),
        "finals": [dict(r, budget=budget, sampler=sampler, seed=seed) for r in res.finals.values()],
    }
    if more:
        t0 = time.perf_counter()
        search(
            f"flops={budget}%",
            progress=False,
            sampler=sampler,
            seed=seed,
            n_trials=more,
            storage=storage,
            study=name,
            run_final=False,
        )
        row["hv"] = hv_history(load_study(storage, name), dense["macs"], budget / 100)
        row["extra_seconds"] = time.perf_counter() - t0
    return row


def _ms(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):6.2f} ± {100 * sd:4.2f}"


def _kendall(xs, ys):
    from scipy.stats import kendalltau

    r = kendalltau(xs, ys)
    return float(r.statistic), float(r.pvalue)


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, e.g. 50,30; got {text!r}"
        ) from None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--budgets", type=_ints, default=[50, 30], help="percent of dense MACs, e.g. 50,30"
    )
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--random-trials", type=int, default=90)
    p.add_argument("--hv-budget", type=int, default=30)
    p.add_argument("--work", type=Path, default=Path("/tmp/prunetune-baselines"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args()
    budgets, seeds = a.budgets, a.seeds
    if not all(0 < b <= 100 for b in budgets):
        p.error(f"--budgets are percentages in (0, 100], got {budgets}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    a.work.mkdir(parents=True, exist_ok=True)
    log = a.work / "runs.jsonl"
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            done[(r["method"], r["budget"], r["seed"])] = r
    for seed in seeds:
        for budget in budgets:
            hv_more = a.random_trials if budget == a.hv_budget else None
            jobs = [
                ("uniform-l2", run_uniform, (budget, "magnitude_l2", seed)),
                ("uniform-taylor", run_uniform, (budget, "taylor", seed)),
                ("prunetune", run_search, (budget, "nsga2", seed, a.trials, a.work, None)),
                ("random", run_search, (budget, "random", seed, a.trials, a.work, hv_more)),
            ]
            for method, fn, args in jobs:
                if (method, budget, seed) in done:
                    continue
                t0 = time.perf_counter()
                r = dict(fn(*args), method=method, budget=budget, seed=seed)
                r["seconds"] = time.perf_counter() - t0 - r.get("extra_seconds", 0.0)
                done[(method, budget, seed)] = r
                with log.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(
                    f"[{time.strftime('%H:%M:%S')}] {method:15} budget {budget}% seed {seed}: test "
                    f"{100 * r['test']:.2f} at {r['macs_ratio']:.3f}x MACs ({r['seconds']:.0f} s)",
                    flush=True,
                )
    report([r for r in done.values() if r["budget"] in budgets and r["seed"] in seeds], budgets, a)


def report(runs: list[dict], budgets: list[int], a) -> None:
    methods = ["uniform-l2", "uniform-taylor", "random", "prunetune"]
    summary = []
    print(
        f"\n{'budget':>6} {'method':15} {'n':>2} {'x MACs':>7} {'val % (mean ± sd)':>18} "
        f"{'test % (mean ± sd)':>19} {'s/run':>6}"
    )
    for budget in budgets:
        for m in methods:
            rs = [r for r in runs if r["budget"] == budget and r["method"] == m]
            if not rs:
                continue
            row = {
                "budget": budget,
                "method": m,
                "n": len(rs),
                "macs_ratio": statistics.mean(r["macs_ratio"] for r in rs),
                "val_mean": statistics.mean(r["val"] for r in rs),
                "test_mean": statistics.mean(r["test"] for r in rs),
                "test_sd": statistics.stdev([r["test"] for r in rs]) if len(rs) > 1 else 0.0,
                "seconds": statistics.mean(r["seconds"] for r in rs),
            }
            summary.append(row)
            print(
                f"{budget:5}% {m:15} {len(rs):2} {row['macs_ratio']:7.3f} "
                f"{_ms([r['val'] for r in rs]):>18} "
                f"{_ms([r['test'] for r in rs]):>19} {row['seconds']:6.0f}"
            )
    targets = {}
    for budget in budgets:
        pt = [r["test"] for r in runs if r["budget"] == budget and r["method"] == "prunetune"]
        uni = [
            max(
                r["test"]
                for r in runs
                if r["budget"] == budget and r["seed"] == s and r["method"].startswith("uniform")
            )
            for s in sorted(
                {
                    r["seed"]
                    for r in runs
                    if r["budget"] == budget and r["method"].startswith("uniform")
                }
            )
        ]
        if pt and uni:
            margin = 100 * (statistics.mean(pt) - statistics.mean(uni))
            targets[f"prunetune_minus_best_uniform_points_{budget}"] = round(margin, 2)
    hv = {}
    for m in ("prunetune", "random"):
        hs = [r["hv"] for r in runs if r["budget"] == a.hv_budget and r["method"] == m]
        if hs:
            hv[m] = {
                "at_trials": {
                    n: statistics.mean(h[n - 1] for h in hs if len(h) >= n)
                    for n in (10, a.trials, a.random_trials)
                    if any(len(h) >= n for h in hs)
                },
                "per_seed": [h[-1] for h in hs],
                "history_mean": [
                    statistics.mean(h[i] for h in hs) for i in range(min(map(len, hs)))
                ],
            }
    print(
        f"\nhypervolume at {a.hv_budget}% (tier-b accuracy x MACs fraction, ref (0.1, "
        f"{a.hv_budget / 100})), mean over seeds:"
    )
    for m, h in hv.items():
        print(
            f"  {m:10} " + ", ".join(f"after {n} trials {v:.4f}" for n, v in h["at_trials"].items())
        )
    if "prunetune" in hv and "random" in hv:
        p30 = hv["prunetune"]["at_trials"].get(a.trials)
        r90 = hv["random"]["at_trials"].get(a.random_trials)
        if p30 is not None and r90 is not None:
            targets["hv_prunetune_30_ge_random_90"] = p30 >= r90
    for k, v in targets.items():
        print(f"target {k}: {v}")
    finals = [f for r in runs for f in r.get("finals", [])]
    proxy = {}
    if len(finals) >= 3:
        final = [f["val_accuracy"] for f in finals]
        for tier, key in (("tier_a", "a"), ("tier_b", "b")):
            tau, pv = _kendall([f["tiers"][key] for f in finals], final)
            proxy[tier] = {"tau": tau, "p": pv}
        for budget in budgets:
            fb = [f for f in finals if f["budget"] == budget]
            if len(fb) >= 3:
                proxy[f"tier_b_at_{budget}"] = dict(
                    zip(
                        ("tau", "p"),
                        _kendall([f["tiers"]["b"] for f in fb], [f["val_accuracy"] for f in fb]),
                    )
                )
                proxy[f"tier_a_at_{budget}"] = dict(
                    zip(
                        ("tau", "p"),
                        _kendall([f["tiers"]["a"] for f in fb], [f["val_accuracy"] for f in fb]),
                    )
                )
        proxy["n"] = len(finals)
        print(
            f"\nproxy fidelity over {len(finals)} fine-tuned configurations (Kendall tau vs final "
            f"val accuracy):"
        )
        for k, v in proxy.items():
            if k != "n":
                print(f"  {k:14} tau {v['tau']:+.3f}  (p {v['p']:.3g})")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "baselines.json").write_text(
        json.dumps(
            {
                "summary": summary,
                "targets": targets,
                "hypervolume": hv,
                "runs": [{k: v for k, v in r.items() if k not in ("hv", "finals")} for r in runs],
            },
            indent=2,
        )
        + "\n"
    )
    with (a.out / "baselines.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    (a.out / "proxy_fidelity.json").write_text(
        json.dumps({"kendall": proxy, "configs": finals}, indent=2) + "\n"
    )
    _plot(summary, hv, a)


def _plot(summary: list[dict], hv: dict, a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for m, mk in zip(["uniform-l2", "uniform-taylor", "random", "prunetune"], "sDv*"):
        rows = [r for r in summary if r["method"] == m]
        ax1.errorbar(
            [r["macs_ratio"] for r in rows],
            [100 * r["test_mean"] for r in rows],
            yerr=[100 * r["test_sd"] for r in rows],
            fmt=mk,
            capsize=3,
            label=m,
        )
    ax1.set_xlabel("MACs / dense MACs")
    ax1.set_ylabel("test accuracy % (mean ± sd over seeds)")
    ax1.set_title("digits_vit, same recovery fine-tune")
    ax1.legend()
    for m, h in hv.items():
        ax2.plot(range(1, len(h["history_mean"]) + 1), h["history_mean"], label=m)
    ax2.set_xlabel("finished trials")
    ax2.set_ylabel("hypervolume (mean over seeds)")
    ax2.set_title(f"budget {a.hv_budget}% of dense MACs")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(a.out / "baselines.png", dpi=120)


if __name__ == "__main__":
    main()
