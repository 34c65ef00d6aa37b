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
from ._artifacts import fetch_weights, open_store, stored_weights
from ._record import TrialRecord, final_of, study_entry
from ._select import best_trial, pareto_front
from ._settings import SearchSettings, settings_of
from ._study import trial_counts

__all__ = ["export", "study_status", "study_store"]


def study_store(study: optuna.Study) -> str:
    """The artifact store holding a study's Pareto-stage weights: the one its Pareto stage
    wrote to, else the one its settings name."""
    stage = study_entry(study, "pareto_stage") or {}
    return stage.get("artifact_store") or settings_of(study).store_spec()


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
    store: tuple,
    evaluator=None,
) -> dict:
    """Writes one member into ``dest`` (a temporary folder that becomes ``final_dir``).

    ``store`` is ``(spec, artifact store)``, where the member's Pareto-stage weights are.
    """
    from .._pruned import CONFIG_FILE, WEIGHTS_FILE, save_pruned

    spec, artifact_store = store
    final = final_of(study, t.number)
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
        "final": final and {k: v for k, v in final.items() if k != "artifact_id"},
        "budget": study_entry(study, "budget"),
        "dense": study_entry(study, "dense"),
    }
    meta = stored_weights(study, artifact_store, spec, t.number) if final else None
    # a study made before the artifact store kept its weights in the artifacts folder
    legacy = settings.artifacts_dir() / f"trial_{t.number}" / WEIGHTS_FILE
    if meta is not None or (final and "artifact_id" not in final and legacy.is_file()):
        if meta is not None:
            fetch_weights(artifact_store, spec, meta.artifact_id, dest / WEIGHTS_FILE)
            info["artifact"] = {"store": spec, "artifact_id": meta.artifact_id}
        else:
            shutil.copyfile(legacy, dest / WEIGHTS_FILE)
            info["artifact"] = {"file": str(legacy)}
        (dest / CONFIG_FILE).write_text(config.to_json())
        info["weights"] = (
            f"fine-tuned for {final['epochs']:g} epochs with distillation (Pareto stage)"
        )
        info["tuned"] = True
    else:
        if final and not untuned:
            raise PrunetuneError(
                f"the Pareto-stage weights of trial {t.number} are missing from the artifact "
                f"store {spec} (artifact {final.get('artifact_id')}); pass --artifact-store "
                f"with where the store is now, or --untuned to export pruned weights without "
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


def _deployment_files(dest: Path, settings: SearchSettings, formats: tuple[str, ...]) -> dict:
    """Adds the model card to ``dest/config.json`` and writes the deployment ``formats``."""
    from .._pruned import CONFIG_FILE, load_pruned
    from .._session import deployment_preprocessing
    from ..deploy import model_card, write_deploy
    from ..models import ViTArch

    model = load_pruned(dest).eval()
    config = model.pruning_config
    pre = deployment_preprocessing(
        model,
        config.model,
        settings.data,
        settings.mean,
        settings.std,
        settings.interpolation,
        settings.crop_pct,
    )
    card = model_card(config, pre, ViTArch.from_spec(config.model))
    (dest / CONFIG_FILE).write_text(json.dumps({**config.to_dict(), **card}, indent=2) + "\n")
    return write_deploy(model, dest, formats)


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
    artifact_store: str | None = None,
    formats: tuple[str, ...] = (),
) -> list[dict]:
    """Writes the best under-budget trial (and with ``whole_front`` every front member) to ``out``.

    ``out/config.json`` + ``out/model.safetensors`` + ``out/export.json`` for the best; with
    ``whole_front``, also ``out/front/trial_<n>/`` for each member. Atomic: all or nothing.

    Args:
        partial: Export a study that is still running or was interrupted (labelled so in
            ``export.json``); refused otherwise.
        untuned: Export pruned, untuned weights for a member whose Pareto-stage weights are
            missing (labelled); refused otherwise.
        artifact_store: Read the weights from this store (a folder or ``s3://bucket/prefix``)
            instead of the one the study records (:func:`study_store`), e.g. a copied folder.
        formats: Deployment formats written beside the weights (``onnx``, ``pt2``; see
            :mod:`prunetune.deploy`), each checked against PyTorch. Every export's
            ``config.json`` also carries a timm-style model card (preprocessing, per-block
            shapes).
    """
    from ..deploy import check_formats

    check_formats(formats)
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
    spec = artifact_store or study_store(study)
    store = (spec, open_store(spec, must_exist=artifact_store is not None))
    out = Path(out)
    infos = []
    with atomic_dir(out) as tmp:
        members = [(best, tmp)]
        if whole_front:
            members += [(t, tmp / "front" / f"trial_{t.number}") for t in pareto_front(study)]
        for t, dest in members:
            dest.mkdir(parents=True, exist_ok=True)
            info = _export_one(
                study, t, settings, dest, out / dest.relative_to(tmp), untuned, store, evaluator
            )
            info["deploy"] = _deployment_files(dest, settings, formats)
            if not status["complete"]:
                info["partial"] = f"exported from an unfinished study: {_incomplete_reason(status)}"
            (dest / "export.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
            infos.append(info)
    return infos
