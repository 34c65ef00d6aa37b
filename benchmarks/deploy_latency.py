"""Deployment speed: onnxruntime latency of pruned models against their dense model.

"FLOPs went down, speed did not" is the most common complaint about pruning tools. For each
model and configuration the pruned model is exported to ONNX exactly as ``prunetune export
--format onnx`` does (:func:`prunetune.deploy.export_onnx`, checked against PyTorch), and the
dense model likewise; both are timed in onnxruntime (CPU provider, ``--threads`` intra-op
threads) at batch 1 and 64: warm-up, then ``--repeats`` timed runs per pass, ``--rounds``
passes interleaving every model so drift on a shared machine hits all alike; the figure is the
median of the pass medians. PyTorch eager latency of the same models is measured the same way,
for reference. speedup = dense ms / pruned ms; the MACs cut = dense MACs / pruned MACs; the
ratio speedup / MACs cut says how much of the cut reaches the clock (target: >= 0.8).

Configurations (per model): heads and MLP halved in every block; ToMe merging and EViT-style
attentive keep of 50 % of the patch tokens from the middle block on; a hybrid (heads 2/3, MLP
1/2, last quarter of the blocks dropped, attentive keep 0.7 from the first quarter on). Exported
folders (``prunetune export --format onnx``) can be added with ``--folders``: their dense model
is the base model named in their config.json.

Usage: python benchmarks/deploy_latency.py [--models digits_vit,deit_small_224]
[--folders DIR,...] [--threads 2] [--repeats 10] [--rounds 3] [--out benchmarks/results]
Run it alone on the machine. Writes deploy_latency.json in --out; rows of models (and folders)
not measured in this run are kept from the file, each row naming its run (``run``, the date
under ``runs`` with that run's settings).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import interleaved_latency
from prunetune import (
    BlockConfig,
    ModelSpec,
    PruningConfig,
    build_model,
    estimate_cost,
    load_pruned,
    prune,
)
from prunetune.deploy import ONNX_FILE, export_onnx, onnx_session
from prunetune.models import ViTArch, input_shape

MODELS = {
    "digits_vit": "digits_vit",
    "deit_tiny_224": "deit_tiny_patch16_224",
    "deit_small_224": "deit_small_patch16_224",
}
BATCHES = (1, 64)


def configs(spec: ModelSpec) -> dict[str, PruningConfig]:
    arch = ViTArch.from_spec(spec)
    depth, heads, mlp = arch.depth, arch.num_heads, arch.mlp_hidden
    mid = depth // 2
    out = {"dense": PruningConfig.dense(spec)}
    out["widths 1/2"] = PruningConfig(
        spec, tuple(BlockConfig(heads=heads // 2, mlp=mlp // 2) for _ in range(depth))
    )
    for mode, label in (("merge", "ToMe merge 0.5"), ("attentive", "EViT keep 0.5")):
        out[label] = (
            PruningConfig.dense(spec).replace(token_mode=mode).with_block(mid, token_keep=0.5)
        )
    hybrid = [BlockConfig(heads=max(1, 2 * heads // 3), mlp=mlp // 2) for _ in range(depth)]
    for i in range(depth - depth // 4, depth):
        hybrid[i] = BlockConfig(keep=False)
    hybrid[depth // 4] = BlockConfig(heads=max(1, 2 * heads // 3), mlp=mlp // 2, token_keep=0.7)
    out["hybrid"] = PruningConfig(spec, tuple(hybrid), token_mode="attentive")
    return out


def ort_times(sessions: dict, inputs: dict, repeats: int, rounds: int) -> dict[str, list[float]]:
    """Per-pass median ms per batch of each session, passes interleaved over the sessions."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, sess in sessions.items():
            name, x = sess.get_inputs()[0].name, inputs[k]
            for _ in range(2):
                sess.run(None, {name: x})
            runs = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                sess.run(None, {name: x})
                runs.append(1000 * (time.perf_counter() - t0))
            times[k].append(statistics.median(runs))
    return times


def measure(group: str, models: dict, costs: dict, tmp: Path, a) -> list[dict]:
    """``models``: label -> eval model; the label ``dense`` is the reference."""
    sessions, checks = {}, {}
    for label, m in models.items():
        path = tmp / f"{group}-{label}".replace(" ", "_").replace("/", "_") / ONNX_FILE
        path.parent.mkdir(parents=True)
        t0 = time.perf_counter()
        checks[label] = export_onnx(m, path)
        checks[label]["export_s"] = round(time.perf_counter() - t0, 1)
        sessions[label] = onnx_session(path, a.threads)
    rows = []
    for batch in BATCHES:
        shape = input_shape(models["dense"])
        x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
        ort = ort_times(sessions, dict.fromkeys(sessions, x), a.repeats, a.rounds)
        pt = interleaved_latency(models, shape, batch, a.repeats, a.rounds, a.threads)
        d_ort, d_pt = statistics.median(ort["dense"]), statistics.median(pt["dense"])
        for label in models:
            o, p = statistics.median(ort[label]), statistics.median(pt[label])
            cut = costs["dense"] / costs[label]
            rows.append(
                {
                    "model": group,
                    "config": label,
                    "batch": batch,
                    "macs": costs[label],
                    "macs_cut": cut,
                    "ort_ms": o,
                    "ort_speedup": d_ort / o,
                    "ort_ratio": d_ort / o / cut,
                    "torch_ms": p,
                    "torch_speedup": d_pt / p,
                    "max_abs_diff": checks[label]["max_abs_diff"],
                    "export_s": checks[label]["export_s"],
                }
            )
            r = rows[-1]
            print(
                f"{group:<16} {label:<16} {batch:>5} {cut:>7.2f}x {o:>9.2f} "
                f"{r['ort_speedup']:>7.2f}x {r['ort_ratio']:>6.2f} {p:>9.2f} "
                f"{r['torch_speedup']:>7.2f}x {r['max_abs_diff']:>9.1e}",
                flush=True,
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        type=lambda s: [m for m in s.split(",") if m],
        default=["digits_vit", "deit_small_224"],
    )
    p.add_argument("--folders", type=lambda s: [Path(f) for f in s.split(",") if f], default=[])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(
        f"{'model':<16} {'config':<16} {'batch':>5} {'MACs cut':>8} {'ORT ms':>9} "
        f"{'speedup':>8} {'ratio':>6} {'torch ms':>9} {'speedup':>8} {'max diff':>9}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            spec = ModelSpec(MODELS[name])
            dense = build_model(spec).eval()  # random init: latency does not depend on weights
            cfgs = configs(spec)
            models = {k: prune(dense, c).eval() for k, c in cfgs.items()}
            costs = {k: estimate_cost(c).macs for k, c in cfgs.items()}
            rows += measure(name, models, costs, Path(tmp), a)
        for folder in a.folders:
            pruned = load_pruned(folder).eval()
            config = pruned.pruning_config
            dense = build_model(config.model).eval()
            costs = {
                "dense": estimate_cost(PruningConfig.dense(config.model)).macs,
                "exported": estimate_cost(config).macs,
            }
            rows += measure(folder.name, {"dense": dense, "exported": pruned}, costs, Path(tmp), a)
    import onnxruntime

    a.out.mkdir(parents=True, exist_ok=True)
    out = a.out / "deploy_latency.json"
    meta = {
        "threads": a.threads,
        "repeats": a.repeats,
        "rounds": a.rounds,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    meta["date"] = time.strftime("%Y-%m-%d %H:%M")
    for r in rows:
        r["run"] = meta["date"]
    # rows of models this run did not measure stay, with the settings of the run that made them
    kept, runs = [], [meta]
    if out.is_file():
        old = json.loads(out.read_text())
        measured = {r["model"] for r in rows}
        kept = [r for r in old["rows"] if r["model"] not in measured]
        runs += [m for m in old["runs"] if m["date"] in {r["run"] for r in kept}]
    out.write_text(json.dumps({"runs": runs, "rows": kept + rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
