"""The Pareto stage: fine-tune the chosen front members, evaluate them, keep their weights."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import optuna
from tqdm import tqdm

from .._faults import fault_point
from .._pruned import WEIGHTS_FILE, save_pruned
from ..config import PruningConfig
from ..data import make_loader
from ..evaluators import evaluate_accuracy
from ._artifacts import open_store, stored_weights, upload_weights
from ._record import TrialRecord, final_of, set_final
from ._select import pareto_front, pick_members

__all__ = ["run_pareto_stage"]


def _kendall(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or any(x is None for x in xs):
        return None
    from scipy.stats import kendalltau

    tau = kendalltau(xs, ys).statistic
    return None if tau != tau else float(tau)


def run_pareto_stage(study: optuna.Study, ev, progress: bool = True) -> dict[int, dict]:
    """Fine-tunes the chosen front members with KD, evaluates them, stores results with the study.

    Each member's weights go to the settings' Optuna artifact store (:mod:`._artifacts`), its
    result (with the weights' ``artifact_id``) to the study's ``final_<n>``. Members already
    fine-tuned (result stored and its weights in the store) are kept, so an interrupted stage
    resumes where it stopped; weights of a study made before the store (``trial_<n>/`` in the
    artifacts folder) are uploaded instead of tuned again.
    """
    s = ev.settings
    front = pick_members(pareto_front(study), s.front_max)
    finals: dict[int, dict] = {}
    spec = s.store_spec()
    store = open_store(spec, create=True)
    members = [t.number for t in front]
    stage = {"members": members, "artifact_store": spec}
    study.set_user_attr("pareto_stage", {"state": "running", **stage})
    for t in tqdm(front, desc="Pareto stage (fine-tune)", unit="model", disable=not progress):
        old = final_of(study, t.number)
        if old and stored_weights(study, store, spec, t.number) is not None:
            finals[t.number] = old
            continue
        legacy = s.artifacts_dir() / f"trial_{t.number}" / WEIGHTS_FILE
        if old and "artifact_id" not in old and legacy.is_file():
            with tempfile.TemporaryDirectory(prefix="prunetune-weights-") as tmp:
                copy = Path(shutil.copyfile(legacy, Path(tmp) / WEIGHTS_FILE))
                old = {**old, "artifact_id": upload_weights(study, store, spec, t.number, copy)}
            set_final(study, t.number, old)
            finals[t.number] = old
            continue
        rec = TrialRecord.of(t)
        config = PruningConfig.from_dict(rec.config)
        model = ev.final_model(
            config, progress, desc=f"fine-tune trial {t.number} ({s.final_epochs:g} epochs)"
        )
        res = {
            "trial": t.number,
            "val_accuracy": evaluate_accuracy(model, ev.val).accuracy,
            "macs": rec.macs,
            "params": rec.params,
            "epochs": s.final_epochs,
            "tiers": {r.tier: r.score for r in rec.tiers},
        }
        if ev.base.data.test is not None:
            res["test_accuracy"] = evaluate_accuracy(
                model, make_loader(ev.base.data.test, 256)
            ).accuracy
        with tempfile.TemporaryDirectory(prefix="prunetune-weights-") as tmp:
            folder = save_pruned(model, Path(tmp) / "model", config, res)
            res["artifact_id"] = upload_weights(study, store, spec, t.number, folder / WEIGHTS_FILE)
        fault_point("pareto")
        set_final(study, t.number, res)
        finals[t.number] = res
    study.set_user_attr("pareto_stage", {"state": "done", **stage})
    if finals:
        rows = list(finals.values())
        final = [r["val_accuracy"] for r in rows]
        labels = sorted({k for r in rows for k in r.get("tiers", {})})
        study.set_user_attr(
            "proxy_kendall_tau",
            {
                **{
                    f"tier_{k}": _kendall([r.get("tiers", {}).get(k) for r in rows], final)
                    for k in labels
                },
                "n": len(rows),
            },
        )
    return finals
