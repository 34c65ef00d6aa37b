"""Static report of a study: Pareto plot (PNG + HTML) and a Markdown table."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import optuna

from .._io import atomic_dir
from ._record import TrialRecord, final_of, finals, study_entry
from ._select import best_trial, pareto_front

__all__ = ["write_report", "report_rows"]


def report_rows(study: optuna.Study) -> list[dict]:
    rows = []
    front = {t.number for t in pareto_front(study)}
    for t in study.get_trials(deepcopy=False):
        rec = TrialRecord.of(t)
        if rec.macs is None:
            continue
        final = final_of(study, t.number) or {}
        first = rec.tiers[0] if rec.tiers else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "front": t.number in front,
                "mmacs": rec.macs / 1e6,
                "mparams": rec.params / 1e6,
                "tier_a_kl": first.details.get("kl") if first else None,
                "tier_a_acc": first.accuracy if first else None,
                "proxy_acc": t.values[0] if t.values else None,
                "final_val": final.get("val_accuracy"),
                "final_test": final.get("test_accuracy"),
                "criterion": rec.config["criterion"],
                "token_mode": rec.config.get("token_mode"),
            }
        )
    return rows


def _fmt(v, pct=False) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{100 * v:.2f}" if pct else f"{v:.3f}"
    return str(v)


def _markdown(study: optuna.Study, rows: list[dict]) -> str:
    dense = study_entry(study, "dense", {})
    budget = study_entry(study, "budget", {})
    tau = study_entry(study, "proxy_kendall_tau", {})
    best, final = best_trial(study)
    lines = [f"# prunetune report: study `{study.study_name}`", ""]
    lines.append(
        f"- budget: `{budget.get('text')}` -> {budget.get('limit', 0):,.0f} "
        f"{'MACs' if budget.get('metric') == 'macs' else budget.get('metric', '')}"
    )
    if dense:
        lines.append(
            f"- dense model: {dense['macs'] / 1e6:.3f} MMACs ({2 * dense['macs'] / 1e6:.3f} "
            f"MFLOPs), "
            f"{dense['params'] / 1e6:.3f} M params, val accuracy "
            f"{100 * dense['val_accuracy']:.2f} %"
        )
    if best is not None:
        acc = (
            f"final val {100 * final['val_accuracy']:.2f} %"
            if final
            else f"last tier {100 * best.values[0]:.2f} %"
        )
        lines.append(
            f"- best under budget: trial {best.number}, {TrialRecord.of(best).macs / 1e6:.3f} "
            f"MMACs, {acc}"
        )
    tuned = list(finals(study).values())
    if tuned and all(f.get("test_accuracy") is None for f in tuned):
        lines.append("- no test split: final accuracies are on val, which also chose the front")
    if tau:
        taus = ", ".join(
            f"tier {k.removeprefix('tier_')} {_fmt(v)}"
            for k, v in tau.items()
            if k.startswith("tier_")
        )
        lines.append(
            f"- proxy ranking of the fine-tuned front (Kendall tau, n={tau.get('n')}): {taus}"
        )
    lines += [
        "",
        "| trial | state | front | MMACs | Mparams | tier a KL | tier a acc % | proxy acc % "
        "| final val % | final test % | criterion | tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["mmacs"]):
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r["trial"]),
                    r["state"],
                    _fmt(r["front"]),
                    f"{r['mmacs']:.3f}",
                    f"{r['mparams']:.3f}",
                    _fmt(r["tier_a_kl"]),
                    _fmt(r["tier_a_acc"], True),
                    _fmt(r["proxy_acc"], True),
                    _fmt(r["final_val"], True),
                    _fmt(r["final_test"], True),
                    r["criterion"],
                    r["token_mode"] or "-",
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def _plot(study: optuna.Study, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    done = [r for r in rows if r["proxy_acc"] is not None]
    skipped = [r for r in rows if r["proxy_acc"] is None and r["tier_a_acc"] is not None]
    if skipped:
        ax.scatter(
            [r["mmacs"] for r in skipped],
            [100 * r["tier_a_acc"] for r in skipped],
            marker="x",
            color="0.7",
            label="stopped after tier a (zero-shot acc)",
        )
    ax.scatter(
        [r["mmacs"] for r in done],
        [100 * r["proxy_acc"] for r in done],
        color="tab:blue",
        alpha=0.6,
        label="last proxy tier accuracy",
    )
    front = sorted([r for r in done if r["front"]], key=lambda r: r["mmacs"])
    if front:
        ax.plot(
            [r["mmacs"] for r in front],
            [100 * r["proxy_acc"] for r in front],
            "-o",
            color="tab:orange",
            label="Pareto front (last tier)",
        )
    finals = [r for r in rows if r["final_val"] is not None]
    if finals:
        ax.scatter(
            [r["mmacs"] for r in finals],
            [100 * r["final_val"] for r in finals],
            marker="*",
            s=160,
            color="tab:green",
            label="front after fine-tuning",
            zorder=5,
        )
    dense = study_entry(study, "dense")
    if dense:
        ax.scatter(
            [dense["macs"] / 1e6],
            [100 * dense["val_accuracy"]],
            marker="D",
            color="black",
            label="dense",
            zorder=5,
        )
    budget = study_entry(study, "budget", {})
    if budget.get("metric") == "macs":
        ax.axvline(
            budget["limit"] / 1e6, color="tab:red", ls="--", label=f"budget ({budget['text']})"
        )
    ax.set_xlabel("MMACs per image (FLOPs = 2 x MACs)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"prunetune study {study.study_name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(study: optuna.Study, out: str | Path) -> Path:
    """Writes ``pareto.png``, ``pareto.html`` and ``report.md`` into ``out`` (atomically)."""
    rows = report_rows(study)
    md = _markdown(study, rows)
    out = Path(out)
    with atomic_dir(out) as tmp:
        _plot(study, rows, tmp / "pareto.png")
        png = base64.b64encode((tmp / "pareto.png").read_bytes()).decode()
        (tmp / "report.md").write_text(md)
        (tmp / "pareto.html").write_text(
            "<!doctype html><meta charset='utf-8'><title>prunetune report</title>"
            f"<img src='data:image/png;base64,{png}' alt='Pareto "
            f"plot'><pre>{html.escape(md)}</pre>\n"
        )
    return out
