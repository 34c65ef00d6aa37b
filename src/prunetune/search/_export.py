"""Export the best under-budget configuration (or the whole front) with pruned weights."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import optuna

from .._io import atomic_dir
from ..config import PruningConfig
from ..errors import PrunetuneError
from ..pruners import compute_scores, prune
from ._record import TrialRecord, final_of, study_entry
from ._select import best_trial, pareto_front
from ._settings import SearchSettings, settings_of
from ._study import trial_counts

__all__ = ["export", "study_status"]


def study_status(study: optuna.Study) -> dict:
    """How far a study has come: trials finished and running, and the Pareto stage's state.

    ``complete`` holds when the trial total is reached, nothing runs and the Pareto stage
    has fine-tuned every member it chose.
    """
    settings = settings_of(study)
    done, running = trial_counts(study)
    stage = study_entry(study, "pareto_stage") or {}
    members = stage.get("members", [])
    tuned = [n for n in members if final_of(study, n)]
    complete = (
        done >= settings.n_trials
        and running == 0
        and stage.get("state") == "done"
        and len(tuned) == len(members)
    )
    return {
        "finished": done,
        "running": running,
        "n_trials": settings.n_trials,
        "pareto": stage.get("state"),
        "members": members,
        "tuned": tuned,
        "complete": complete,
    }


def _incomplete_reason(status: dict) -> str:
    parts = []
    if status["finished"] < status["n_trials"] or status["running"]:
        parts.append(
            f"{status['finished']} of {status['n_trials']} trials finished, {status['running']} "
            f"running"
        )
    if status["pareto"] is None:
        parts.append("the Pareto stage has not run")
    elif status["pareto"] != "done" or len(status["tuned"]) < len(status["members"]):
        parts.append(
            f"the Pareto stage was interrupted: {len(status['tuned'])} of {len(status['members'])} "
            f"front members tuned"
        )
    return "; ".join(parts)


def _export_one(
    study: optuna.Study,
    t: optuna.trial.FrozenTrial,
    settings: SearchSettings,
    dest: Path,
    final_dir: Path,
    untuned: bool,
    evaluator=None,
) -> dict:
    """Writes one member into ``dest`` (a temporary folder that becomes ``final_dir``)."""
    from .._pruned import CONFIG_FILE, WEIGHTS_FILE, save_pruned

    final = final_of(study, t.number)
    art = settings.artifacts_dir() / f"trial_{t.number}"
    rec = TrialRecord.of(t)
    config = PruningConfig.from_dict(rec.config)
    info = {
        "trial": t.number,
        "study": study.study_name,
        "macs": rec.macs,
        "flops": rec.flops,
        "params": rec.params,
        "tiers": {r.tier: r.to_dict() for r in rec.tiers},
        "proxy_accuracy": t.values[0],
        "final": final,
        "budget": study_entry(study, "budget"),
        "dense": study_entry(study, "dense"),
    }
    if final and (art / WEIGHTS_FILE).is_file():
        shutil.copyfile(art / WEIGHTS_FILE, dest / WEIGHTS_FILE)
        (dest / CONFIG_FILE).write_text(config.to_json())
        info["weights"] = (
            f"fine-tuned for {final['epochs']:g} epochs with distillation (Pareto stage)"
        )
        info["tuned"] = True
    else:
        if final and not untuned:
            raise PrunetuneError(
                f"the Pareto-stage weights of trial {t.number} are missing "
                f"({art / WEIGHTS_FILE}); copy the "
                f"artifacts folder there, or pass --untuned to export pruned weights without "
                f"fine-tuning"
            )
        dense, scores = _dense_and_scores(settings, config.criterion, evaluator)
        model = prune(dense, config, scores=scores)
        save_pruned(model, dest, config)
        info["final"] = None  # its fine-tuned accuracy belongs to other weights
        info["weights"] = "pruned, not fine-tuned" + (
            " (--untuned: its Pareto-stage weights are missing)"
            if final
            else " (no Pareto-stage result)"
        )
        info["tuned"] = False
    config_path = shlex.quote(str((final_dir / CONFIG_FILE).resolve()))
    info["reproduce"] = _reproduce(settings, config_path) if info["tuned"] else None
    return info


def _dense_and_scores(settings: SearchSettings, criterion: str, evaluator=None):
    """The dense model and its saliency scores by ``criterion``, as the search computed them."""
    if evaluator is not None:
        return evaluator.base.model, evaluator.scores(criterion)
    from ._evaluate import load_base_for

    s = settings
    base = load_base_for(s, check_dense=False)
    calib = base.calibration(s.calib_samples, s.batch_size, s.seed)
    return base.model, compute_scores(base.model, criterion, calib)


def _reproduce(s: SearchSettings, config_path: str) -> str:
    parts = ["prunetune prune", f"--config {config_path}", "--out DIR"]
    for flag, val in (("--model", s.model), ("--checkpoint", s.checkpoint), ("--data", s.data)):
        if val:
            parts.append(f"{flag} {shlex.quote(str(val))}")
    parts += [
        f"--finetune-epochs {s.final_epochs:g}",
        f"--lr {s.lr:g}",
        f"--batch-size {s.batch_size}",
        f"--calib-samples {s.calib_samples}",
        f"--seed {s.seed}",
    ]
    return " ".join(parts)


def export(
    study: optuna.Study,
    out: str | Path,
    whole_front: bool = False,
    evaluator=None,
    partial: bool = False,
    untuned: bool = False,
) -> list[dict]:
    """Writes the best under-budget trial (and with ``whole_front`` every front member) to ``out``.

    ``out/config.json`` + ``out/model.safetensors`` + ``out/export.json`` for the best; with
    ``whole_front``, also ``out/front/trial_<n>/`` for each member. Atomic: all or nothing.

    Args:
        partial: Export a study that is still running or was interrupted (labelled so in
            ``export.json``); refused otherwise.
        untuned: Export pruned, untuned weights for a member whose Pareto-stage weights are
            missing (labelled); refused otherwise.
    """
    settings = settings_of(study)
    status = study_status(study)
    if not status["complete"] and not partial:
        raise PrunetuneError(
            f"study {study.study_name!r} is not finished ({_incomplete_reason(status)}); run the "
            f"same "
            f"`prunetune search` again to finish it, or pass --partial to export what is there"
        )
    best, _ = best_trial(study)
    if best is None:
        raise PrunetuneError(
            f"study {study.study_name!r} has no completed under-budget trial to export yet"
        )
    out = Path(out)
    infos = []
    with atomic_dir(out) as tmp:
        members = [(best, tmp)]
        if whole_front:
            members += [(t, tmp / "front" / f"trial_{t.number}") for t in pareto_front(study)]
        for t, dest in members:
            dest.mkdir(parents=True, exist_ok=True)
            info = _export_one(
                study, t, settings, dest, out / dest.relative_to(tmp), untuned, evaluator
            )
            if not status["complete"]:
                info["partial"] = f"exported from an unfinished study: {_incomplete_reason(status)}"
            (dest / "export.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
            infos.append(info)
    return infos
