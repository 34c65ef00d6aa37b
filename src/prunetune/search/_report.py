"""The report of a study: interactive Pareto HTML, static PNG, and a Markdown table.

``pareto.html`` is Optuna's own :func:`optuna.visualization.plot_pareto_front` (plotly, its
JavaScript embedded so the page works offline), with over-budget trials greyed as Optuna greys
infeasible ones, and every trial's configuration as a per-block table (the table
``prunetune info`` prints). ``report.md`` holds the same tables; ``pareto.png`` is a static
matplotlib plot.
"""

from __future__ import annotations

import base64
import html
import json
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna

from .._io import atomic_dir
from ..config import PruningConfig
from ..errors import PrunetuneError
from ..evaluators import BLOCK_TABLE_HEADER, block_table
from ..models import ViTArch
from ..registry import BUDGET_METRICS
from ._record import TrialRecord, final_of, finals, study_entry
from ._select import best_trial, pareto_front

__all__ = ["write_report", "report_rows", "pareto_figure"]

_COMPLETE = optuna.trial.TrialState.COMPLETE


def _constraint(trial: optuna.trial.FrozenTrial, rec: TrialRecord, limit: float | None):
    """Cost minus budget limit (<= 0: feasible), or None when the study never recorded it.

    Optuna's constraints come first; studies written before they were recorded still have the
    record's ``constraint``, or its ``budget_value`` against the study's limit.
    """
    if trial.constraints:
        return max(trial.constraints.values())
    if rec.constraint is not None:
        return rec.constraint
    if rec.budget_value is not None and limit is not None:
        return rec.budget_value - limit
    return None


def report_rows(study: optuna.Study) -> list[dict]:
    """One row per trial with a configuration: cost, budget feasibility, tier scores, finals."""
    rows = []
    front = {t.number for t in pareto_front(study)}
    limit = study_entry(study, "budget", {}).get("limit")
    for t in study.get_trials(deepcopy=False):
        rec = TrialRecord.of(t)
        if rec.macs is None:
            continue
        final = final_of(study, t.number) or {}
        first = rec.tiers[0] if rec.tiers else None
        constraint = _constraint(t, rec, limit)
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "front": t.number in front,
                "mmacs": rec.macs / 1e6,
                "mparams": rec.params / 1e6,
                "constraint": constraint,
                "feasible": None if constraint is None else constraint <= 0,
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


def _yes_no(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "no")


# --- per-trial configurations --------------------------------------------------------------


@dataclass(frozen=True)
class _TrialView:
    """What the report shows of one trial with a configuration."""

    row: dict
    config: PruningConfig | None
    blocks: list[tuple[str, ...]]
    note: str  # why the per-block table is partial or missing ("" when complete)


def _views(study: optuna.Study, rows: list[dict]) -> dict[int, _TrialView]:
    """Per-block tables of every trial in ``rows``: one base model is built (on the meta
    device) per study; without it the tables come from the configs alone."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    arches: dict = {}
    out = {}
    for r in rows:
        raw = TrialRecord.of(trials[r["trial"]]).config
        try:
            config = PruningConfig.from_dict(raw)
        except PrunetuneError as e:
            out[r["trial"]] = _TrialView(r, None, [], f"stored configuration unreadable: {e}")
            continue
        if config.model not in arches:
            try:
                arches[config.model] = ViTArch.from_spec(config.model), ""
            except (PrunetuneError, OSError) as e:
                arches[config.model] = None, f"base model not available here ({e})"
        arch, note = arches[config.model]
        try:
            blocks = block_table(config, arch)
        except PrunetuneError as e:
            blocks, note = block_table(config, None), f"cost not computable ({e})"
        if arch is None or note:
            note = f"{note}: tokens, MACs and params per block left out"
        out[r["trial"]] = _TrialView(r, config, blocks, note)
    return out


def _ordered(views: dict[int, _TrialView]) -> list[_TrialView]:
    """Front members first (cheapest first), then every other trial by number."""
    front = sorted((v for v in views.values() if v.row["front"]), key=lambda v: v.row["mmacs"])
    rest = sorted((v for v in views.values() if not v.row["front"]), key=lambda v: v.row["trial"])
    return front + rest


def _shape(blocks: list[tuple[str, ...]]) -> list[str]:
    """One short line per block (the plot's hover text)."""
    col = {name: i for i, name in enumerate(BLOCK_TABLE_HEADER)}
    lines = []
    for b in blocks:
        if b[col["kept"]] != "yes":
            lines.append(f"block {b[col['block']]}: dropped")
            continue
        text = f"block {b[col['block']]}: {b[col['heads']]} heads, MLP {b[col['mlp']]}"
        if b[col["tokens"]] != "-":
            text += f", {b[col['tokens']]} tokens"
        if b[col["token keep"]] not in ("1", "-"):
            text += f" (keep {b[col['token keep']]})"
        if b[col["sparsity"]] != "0":
            text += f", sparsity {b[col['sparsity']]}"
        if b[col["MMACs"]] != "-":
            text += f", {b[col['MMACs']]} MMACs"
        lines.append(text)
    return lines


def _metric(study: optuna.Study):
    """The study's registered budget metric (None for one this install does not know)."""
    name = study_entry(study, "budget", {}).get("metric")
    return BUDGET_METRICS.get(name) if name in BUDGET_METRICS else None


def _budget_text(study: optuna.Study, constraint: float | None) -> str:
    if constraint is None:
        return "not recorded"
    metric = _metric(study)
    amount = metric.format(abs(constraint)) if metric is not None else f"{abs(constraint):g}"
    if constraint <= 0:
        return f"feasible: {amount} under the limit"
    return f"over budget by {amount}"


def _trial_summary(study: optuna.Study, v: _TrialView) -> list[tuple[str, str]]:
    r = v.row
    items = [
        (
            "cost",
            f"{r['mmacs']:.3f} MMACs ({2 * r['mmacs']:.3f} MFLOPs), {r['mparams']:.3f} M params",
        ),
        ("budget", _budget_text(study, r["constraint"])),
        ("state", r["state"] + (", Pareto front" if r["front"] else "")),
        ("criterion", r["criterion"]),
        ("token mode", r["token_mode"] or "-"),
        ("proxy accuracy", _fmt(r["proxy_acc"], True) + " %"),
    ]
    if r["final_val"] is not None:
        items.append(
            (
                "fine-tuned",
                f"val {_fmt(r['final_val'], True)} %, test {_fmt(r['final_test'], True)} %",
            )
        )
    return items


# --- Markdown --------------------------------------------------------------------------------


def _summary(study: optuna.Study) -> list[str]:
    """The report's opening lines (Markdown: `code` spans)."""
    dense = study_entry(study, "dense", {})
    budget = study_entry(study, "budget", {})
    tau = study_entry(study, "proxy_kendall_tau", {})
    best, final = best_trial(study)
    metric = _metric(study)
    limit = budget.get("limit")
    lines = [
        f"budget: `{budget.get('text')}` -> "
        + (metric.format(limit) if metric is not None and limit is not None else str(limit))
    ]
    if dense:
        lines.append(
            f"dense model: {dense['macs'] / 1e6:.3f} MMACs ({2 * dense['macs'] / 1e6:.3f} "
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
            f"best under budget: trial {best.number}, {TrialRecord.of(best).macs / 1e6:.3f} "
            f"MMACs, {acc}"
        )
    tuned = list(finals(study).values())
    if tuned and all(f.get("test_accuracy") is None for f in tuned):
        lines.append("no test split: final accuracies are on val, which also chose the front")
    if tau:
        taus = ", ".join(
            f"tier {k.removeprefix('tier_')} {_fmt(v)}"
            for k, v in tau.items()
            if k.startswith("tier_")
        )
        lines.append(
            f"proxy ranking of the fine-tuned front (Kendall tau, n={tau.get('n')}): {taus}"
        )
    return lines


_TRIAL_HEADER = [
    "trial",
    "state",
    "front",
    "under budget",
    "MMACs",
    "Mparams",
    "tier a KL",
    "tier a acc %",
    "proxy acc %",
    "final val %",
    "final test %",
    "criterion",
    "tokens",
]


def _trial_cells(r: dict) -> list[str]:
    return [
        str(r["trial"]),
        r["state"],
        _fmt(r["front"]),
        _yes_no(r["feasible"]),
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


def _md_table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def _markdown(study: optuna.Study, rows: list[dict], views: list[_TrialView]) -> str:
    lines = [f"# prunetune report: study `{study.study_name}`", ""]
    lines += [f"- {s}" for s in _summary(study)]
    lines += ["", "## Trials", ""]
    lines += _md_table(
        _TRIAL_HEADER, [_trial_cells(r) for r in sorted(rows, key=lambda r: r["mmacs"])]
    )
    lines += ["", "## Configurations", "", "Pareto-front members first, then every other trial."]
    for v in views:
        lines += ["", f"### Trial {v.row['trial']}", ""]
        lines += [f"- {k}: {val}" for k, val in _trial_summary(study, v)]
        if v.note:
            lines.append(f"- note: {v.note}")
        if v.blocks:
            lines += [""] + _md_table(BLOCK_TABLE_HEADER, v.blocks)
    return "\n".join(lines) + "\n"


# --- the interactive plot ------------------------------------------------------------------


@contextmanager
def _quiet_optuna():
    """Optuna logs a warning for a study without completed trials; the report says it itself."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def _cost_axis(study: optuna.Study) -> tuple[str, float]:
    """The cost objective's axis title and the divisor to its unit (MACs or latency)."""
    metric = _metric(study)
    if metric is not None and metric.time:
        return f"predicted latency ({metric.unit})", 1.0
    return "MMACs per image (FLOPs = 2 x MACs)", 1e6


def pareto_figure(study: optuna.Study, views: dict[int, _TrialView] | None = None):
    """Optuna's Pareto-front plot of ``study``: cost against last-tier accuracy.

    The plotted study is an in-memory copy whose trials keep their numbers and values (in
    % and MMACs or ms), carry their budget constraint (also for studies written before it
    was recorded) and, as user attributes, the per-block shape Optuna's hover text shows.
    Clicking a point leads to its configuration in the report (``customdata`` = trial number).
    """
    if views is None:
        views = _views(study, report_rows(study))
    title, div = _cost_axis(study)
    limit = study_entry(study, "budget", {}).get("limit")
    view = optuna.create_study(directions=study.directions)
    tuned = []  # (trial, cost, fine-tuned val accuracy %)
    trials = study.get_trials(deepcopy=False)
    with _quiet_optuna():
        for t in trials:
            v = views.get(t.number)
            if t.state != _COMPLETE or not t.values or v is None:
                view.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
                continue
            constraint = v.row["constraint"]
            attrs = {
                "cost": f"{v.row['mmacs']:.3f} MMACs, {v.row['mparams']:.3f} M params",
                "budget": _budget_text(study, constraint),
                "criterion": v.row["criterion"],
                "token mode": v.row["token_mode"] or "-",
                "blocks": _shape(v.blocks),
            }
            if v.row["final_val"] is not None:
                attrs["fine-tuned val %"] = round(100 * v.row["final_val"], 2)
                tuned.append((t.number, t.values[1] / div, 100 * v.row["final_val"]))
            view.add_trial(
                optuna.trial.create_trial(
                    state=_COMPLETE,
                    values=[round(100 * t.values[0], 3), round(t.values[1] / div, 4)],
                    user_attrs=attrs,
                    constraints=None if constraint is None else {"budget": constraint},
                )
            )
        numbers = [t.number for t in view.get_trials(deepcopy=False)]
        if numbers != [t.number for t in trials]:
            raise PrunetuneError(  # Optuna numbers a study's trials 0, 1, ...: never expected
                f"study {study.study_name} has gaps in its trial numbers; cannot plot it"
            )
        fig = optuna.visualization.plot_pareto_front(
            view,
            target_names=[title, "accuracy (%, last proxy tier)"],
            targets=lambda t: (t.values[1], t.values[0]),
        )
    for trace in fig.data:  # Optuna's hover text is its trial's JSON: the number is in it
        trace.customdata = [_number_in(text) for text in trace.text or ()]
    if tuned:
        fig.add_scatter(
            x=[x for _, x, _ in tuned],
            y=[y for _, _, y in tuned],
            customdata=[n for n, _, _ in tuned],
            mode="markers",
            marker={"symbol": "star", "size": 14, "color": "green"},
            name="front after fine-tuning (val)",
            hovertemplate="trial %{customdata}: fine-tuned val %{y:.2f} %<extra></extra>",
        )
    dense = study_entry(study, "dense")
    if dense and div != 1.0:
        fig.add_scatter(
            x=[dense["macs"] / div],
            y=[100 * dense["val_accuracy"]],
            mode="markers",
            marker={"symbol": "diamond", "size": 11, "color": "black"},
            name="dense model",
            hovertemplate="dense model: %{x:.3f} MMACs, val %{y:.2f} %<extra></extra>",
        )
    budget = study_entry(study, "budget", {})
    metric = _metric(study)
    if limit is not None and metric is not None and (budget["metric"] == "macs" or metric.time):
        fig.add_vline(
            x=limit / div,
            line_dash="dash",
            line_color="red",
            annotation_text=f"budget {budget.get('text')}",
        )
    fig.update_layout(
        title=f"prunetune study {study.study_name}: grey = over budget (infeasible)",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def _number_in(hover: str) -> int | None:
    try:
        return int(json.loads(hover.replace("<br>", "\n"))["number"])
    except (ValueError, KeyError, TypeError):
        return None


# --- HTML ----------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.dropped td { color: #999; }
details { margin: .3em 0; } summary { cursor: pointer; }
section:target summary { background: #fff3c4; }
"""

# Clicking a point opens and shows its trial's configuration (customdata = trial number).
_CLICK = """
document.getElementById('{plot_id}').on('plotly_click', function (e) {
  var n = e.points[0].customdata;
  var el = document.getElementById('trial-' + n);
  if (n === null || n === undefined || !el) return;
  el.querySelector('details').open = true;
  location.hash = 'trial-' + n;
});
"""


def _code(text: str) -> str:
    """Markdown `code` spans of a summary line as HTML."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def _html_table(header, rows, row_class=None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for cells in rows:
        cls = row_class(cells) if row_class else ""
        attr = f' class="{cls}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _html(study: optuna.Study, rows, views: list[_TrialView], figure: str, png: str) -> str:
    name = html.escape(study.study_name)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>prunetune report: {name}</title><style>{_CSS}</style></head><body>",
        f"<h1>prunetune report: study <code>{name}</code></h1>",
        "<ul>" + "".join(f"<li>{_code(s)}</li>" for s in _summary(study)) + "</ul>",
        figure,
        "<p>Optuna's Pareto-front plot of the completed trials (last proxy tier): red points "
        "are the front, blue the other trials under the budget, grey the trials over it. Hover "
        "a point for its per-block shape; click it for its configuration below.</p>",
        "<h2>Trials</h2>",
    ]
    cells = []
    for r in sorted(rows, key=lambda r: r["mmacs"]):
        c = [html.escape(x) for x in _trial_cells(r)]
        c[0] = f"<a href='#trial-{r['trial']}'>{c[0]}</a>"
        cells.append(c)
    parts.append(_html_table(_TRIAL_HEADER, cells))
    parts.append(
        "<h2>Configurations</h2><p>Pareto-front members (open) first, then every other trial.</p>"
    )
    kept = BLOCK_TABLE_HEADER.index("kept")
    for v in views:
        n, r = v.row["trial"], v.row
        head = f"Trial {n}: {r['mmacs']:.3f} MMACs, proxy accuracy {_fmt(r['proxy_acc'], True)} %"
        if r["front"]:
            head += ", Pareto front"
        if r["feasible"] is False:
            head += ", over budget"
        items = "".join(
            f"<li>{html.escape(k)}: {html.escape(val)}</li>" for k, val in _trial_summary(study, v)
        )
        if v.note:
            items += f"<li>note: {html.escape(v.note)}</li>"
        table = (
            _html_table(
                BLOCK_TABLE_HEADER,
                [[html.escape(c) for c in b] for b in v.blocks],
                row_class=lambda cells: "dropped" if cells[kept] == "dropped" else "",
            )
            if v.blocks
            else ""
        )
        parts.append(
            f"<section id='trial-{n}'><details{' open' if r['front'] else ''}>"
            f"<summary>{html.escape(head)}</summary><ul>{items}</ul>{table}</details></section>"
        )
    parts.append(
        "<h2>Static plot</h2><p>Also written as <code>pareto.png</code>, with the trials stopped "
        f"after tier a.</p><img src='data:image/png;base64,{png}' alt='Pareto plot'>"
    )
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --- the static PNG --------------------------------------------------------------------------


def _plot(study: optuna.Study, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    done = [r for r in rows if r["proxy_acc"] is not None]
    front = sorted([r for r in done if r["front"]], key=lambda r: r["mmacs"])
    layers = [  # (points, accuracy key, how they are drawn); empty groups are not drawn
        (
            [r for r in rows if r["proxy_acc"] is None and r["tier_a_acc"] is not None],
            "tier_a_acc",
            dict(marker="x", color="0.7", label="stopped after tier a (zero-shot acc)"),
        ),
        (
            [r for r in done if r["feasible"] is False],
            "proxy_acc",
            dict(color="0.6", label="over budget (infeasible)"),
        ),
        (
            [r for r in done if r["feasible"] is not False],
            "proxy_acc",
            dict(color="tab:blue", alpha=0.6, label="last proxy tier accuracy"),
        ),
        (front, "proxy_acc", dict(line=True, color="tab:orange", label="Pareto front (last tier)")),
        (
            [r for r in rows if r["final_val"] is not None],
            "final_val",
            dict(marker="*", s=160, color="tab:green", label="front after fine-tuning", zorder=5),
        ),
    ]
    for points, key, style in layers:
        if not points:
            continue
        xy = ([r["mmacs"] for r in points], [100 * r[key] for r in points])
        if style.pop("line", False):
            ax.plot(*xy, "-o", **style)
        else:
            ax.scatter(*xy, **style)
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
    """Writes ``pareto.html``, ``pareto.png`` and ``report.md`` into ``out`` (atomically).

    ``pareto.html`` embeds plotly's JavaScript (about 5 MB), so it opens without a network.
    """
    rows = report_rows(study)
    views = _views(study, rows)
    ordered = _ordered(views)
    md = _markdown(study, rows, ordered)
    figure = pareto_figure(study, views).to_html(
        full_html=False,
        include_plotlyjs=True,
        post_script=_CLICK,
        config={"displaylogo": False},
    )
    out = Path(out)
    with atomic_dir(out) as tmp:
        _plot(study, rows, tmp / "pareto.png")
        png = base64.b64encode((tmp / "pareto.png").read_bytes()).decode()
        (tmp / "report.md").write_text(md)
        (tmp / "pareto.html").write_text(_html(study, rows, ordered, figure, png))
    return out
