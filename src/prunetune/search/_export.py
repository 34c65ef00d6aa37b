"""Export the best under-budget configuration (or the whole front) with pruned weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna

from .._io import atomic_dir
from ..config import PruningConfig
from ..errors import PrunetuneError
from ._search import SearchSettings, best_trial, pareto_front, settings_of

__all__ = ["export"]


def _export_one(study: optuna.Study, t: optuna.trial.FrozenTrial, settings: SearchSettings, dest: Path,
                evaluator=None) -> dict:
    from .._pruned import CONFIG_FILE, WEIGHTS_FILE, save_pruned

    final = study.user_attrs.get(f"final_{t.number}")
    art = settings.artifacts_dir() / f"trial_{t.number}"
    config = PruningConfig.from_dict(t.user_attrs["config"])
    info = {"trial": t.number, "study": study.study_name, "macs": t.user_attrs["macs"], "flops": 2 * t.user_attrs["macs"],
            "params": t.user_attrs["params"], "tier_a_kl": t.user_attrs.get("tier_a_kl"),
            "tier_b_accuracy": t.values[0], "final": final, "budget": study.user_attrs.get("budget"),
            "dense": study.user_attrs.get("dense")}
    if final and (art / WEIGHTS_FILE).is_file():
        shutil.copyfile(art / WEIGHTS_FILE, dest / WEIGHTS_FILE)
        (dest / CONFIG_FILE).write_text(config.to_json())
        info["weights"] = f"fine-tuned for {final['epochs']:g} epochs with distillation (Pareto stage)"
    else:
        if evaluator is None:
            from ._search import Evaluator

            evaluator = Evaluator(settings)
        from ..pruners import prune

        model = prune(evaluator.base.model, config, scores=evaluator.scores(config.criterion))
        save_pruned(model, dest, config)
        info["weights"] = "pruned, not fine-tuned (this trial has no Pareto-stage result)"
    info["reproduce"] = _reproduce(settings, "config.json") if final else None
    (dest / "export.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info


def _reproduce(s: SearchSettings, config_path: Path) -> str:
    parts = ["prunetune prune", f"--config {config_path}", "--out DIR"]
    for flag, val in (("--model", s.model), ("--checkpoint", s.checkpoint), ("--data", s.data)):
        if val:
            parts.append(f"{flag} {val}")
    parts += [f"--finetune-epochs {s.final_epochs:g}", f"--lr {s.lr:g}", f"--batch-size {s.batch_size}",
              f"--calib-samples {s.calib_samples}", f"--seed {s.seed}"]
    return " ".join(parts)


def export(study: optuna.Study, out: str | Path, whole_front: bool = False, evaluator=None) -> list[dict]:
    """Writes the best under-budget trial (and with ``whole_front`` every front member) to ``out``.

    ``out/config.json`` + ``out/model.safetensors`` + ``out/export.json`` for the best; with
    ``whole_front``, also ``out/front/trial_<n>/`` for each member. Atomic: all or nothing.
    """
    settings = settings_of(study)
    best, _ = best_trial(study)
    if best is None:
        raise PrunetuneError(f"study {study.study_name!r} has no completed under-budget trial to export yet")
    out = Path(out)
    infos = []
    with atomic_dir(out) as tmp:
        infos.append(_export_one(study, best, settings, tmp, evaluator))
        if whole_front:
            for t in pareto_front(study):
                d = tmp / "front" / f"trial_{t.number}"
                d.mkdir(parents=True)
                infos.append(_export_one(study, t, settings, d, evaluator))
    return infos
