"""`prunetune report`: Optuna's interactive Pareto plot, per-block tables, the budget constraint.

One tiny search (random sampler, tier b replaced by a deterministic score) with the budget
repair switched off, so trials complete on both sides of the budget: the report must grey the
ones over it. Its first trial is enqueued with a known shape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import prunetune.search._evaluate as search_mod
from _helpers import TINY, assert_usage_error, run, sqlite_url
from prunetune.config import PruningConfig
from prunetune.evaluators import BLOCK_TABLE_HEADER, ShortKDProxy, estimate_cost
from prunetune.models import ModelSpec, ViTArch
from prunetune.search import load_study, make_storage, search

SPEC = ModelSpec("digits_vit")
ARCH = ViTArch.from_spec(SPEC)
BUDGET = "flops=40%"
N_TRIALS = 7
#: The enqueued first trial: block 0 keeps 2 heads, block 2 half its tokens, block 5 dropped.
KNOWN = {
    "criterion": "magnitude_l1",
    **{f"heads_{i}": h for i, h in enumerate((2, 6, 3, 4, 1, 6))},
    **{f"mlp_{i}": m for i, m in enumerate((0.5, 1.0, 0.25, 0.5, 0.75, 1.0))},
    "drop_3": False,
    "drop_4": False,
    "drop_5": True,
    "token_keep_2": 0.5,
    "token_keep_3": 1.0,
    "token_keep_4": 1.0,
    "token_mode": "merge",
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _score(self, model) -> float:
    """A deterministic stand-in for tier b that is not monotonic in size (a real front)."""
    n = sum(p.numel() for p in model.parameters())
    return 0.5 + 0.4 * ((n * 2654435761) % 997) / 997


@pytest.fixture(scope="module")
def unrepaired(tmp_path_factory):
    """A search whose candidates keep their sampled shape, over the budget or not."""
    d = tmp_path_factory.mktemp("report-study")
    url = sqlite_url(d / "s.db")
    optuna.create_study(
        storage=url, study_name="rep", directions=["maximize", "minimize"]
    ).enqueue_trial(KNOWN)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search_mod, "repair", lambda config, *a, **kw: (config, False))
        mp.setattr(ShortKDProxy, "score", _score)
        search(
            BUDGET,
            progress=False,
            **{**TINY, "n_trials": N_TRIALS},
            sampler="random",
            seed=0,
            run_final=False,
            storage=url,
            study="rep",
            artifacts=str(d / "art"),
        )
    return {"dir": d, "url": url, "study": load_study(url, "rep")}


def _report(url: str, study: str, out: Path, capsys) -> tuple[str, str]:
    code, stdout, err = run(
        ["report", "--storage", url, "--study", study, "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "pareto.html" in stdout and not err
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    return (out / "pareto.html").read_text(), (out / "report.md").read_text()


def _figure(page: str) -> list[dict]:
    """The traces of the page's plotly figure (the arguments of its ``Plotly.newPlot`` call)."""
    start = page.index("Plotly.newPlot(")
    dec = json.JSONDecoder()
    i = page.index(",", start) + 1  # after the div id
    while page[i].isspace():
        i += 1
    traces, _ = dec.raw_decode(page, i)
    return traces


def _optuna_points(traces: list[dict]) -> dict[str, set[int]]:
    """Trial numbers per Optuna category (Infeasible / Feasible / Best Trial, or Trial)."""
    out: dict[str, set[int]] = {}
    for t in traces:
        m = re.search(r"<extra>([A-Za-z ]+)</extra>", t.get("hovertemplate", ""))
        if m and "Trial" in m.group(1):
            out.setdefault(m.group(1), set()).update(t.get("customdata", []))
            assert len(t.get("customdata", [])) == len(t.get("x", []))
    return out


def _md_section(md: str, number: int) -> list[list[str]]:
    """The per-block table rows under ``### Trial <number>`` in report.md."""
    lines = md.split(f"### Trial {number}\n", 1)[1].split("\n### ", 1)[0].splitlines()
    table = [ln for ln in lines if ln.startswith("| ")]
    assert table[0] == "| " + " | ".join(BLOCK_TABLE_HEADER) + " |"
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in table[1:]]


def _limit(study) -> float:
    return study.user_attrs["budget"]["limit"]


def test_every_trial_carries_the_budget_constraint(unrepaired):
    from optuna_dashboard._serializer import serialize_frozen_trial

    study = unrepaired["study"]
    study_id = make_storage(unrepaired["url"], heartbeat=False).get_study_id_from_name("rep")
    limit = _limit(study)
    signs = set()
    with_config = [t for t in study.trials if "config" in t.user_attrs]
    assert len(with_config) == len(study.trials) == N_TRIALS
    for t in with_config:
        expected = t.user_attrs["macs"] - limit  # the budget is on MACs (flops=40% of dense)
        # Optuna's view (samplers, plot_pareto_front): every value is cost - limit
        assert t.constraints and all(
            v == pytest.approx(expected) for v in t.constraints.values()
        ), t.constraints
        # optuna-dashboard's view: the list under "constraints"
        shown = serialize_frozen_trial(study_id, t, {})["constraints"]
        assert shown == [pytest.approx(expected)]
        signs.add(expected <= 0)
        assert (expected <= 0) == (t.user_attrs["macs"] <= limit)
    assert signs == {True, False}  # trials on both sides of the budget


def test_html_is_optunas_plot_of_every_completed_trial_with_the_over_budget_greyed(
    unrepaired, tmp_path, capsys
):
    study = unrepaired["study"]
    page, md = _report(unrepaired["url"], "rep", tmp_path / "r", capsys)
    size = (tmp_path / "r" / "pareto.html").stat().st_size
    assert 3e6 < size < 8e6, size  # plotly.js is embedded: the page works offline
    assert not re.search(r"<script[^>]*\bsrc=", page)  # no script fetched from a CDN
    traces = _figure(page)
    points = _optuna_points(traces)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    over = {t.number for t in complete if t.user_attrs["macs"] > _limit(study)}
    assert over and over != {t.number for t in complete}
    assert points["Infeasible Trial"] == over
    assert set().union(*points.values()) == {t.number for t in complete}
    assert sum(len(v) for v in points.values()) == len(complete)  # one point each
    grey = next(t for t in traces if "Infeasible Trial" in t.get("hovertemplate", ""))
    assert grey["marker"]["color"] == "#cccccc"
    # x is the cost in MMACs, y the accuracy in %; the hover names the per-block shape
    for t in traces:
        for n, x, y, text in zip(t.get("customdata", []), t["x"], t["y"], t.get("text", [])):
            trial = study.trials[n]
            assert x == pytest.approx(trial.values[1] / 1e6, rel=1e-4)
            assert y == pytest.approx(100 * trial.values[0], abs=1e-3)
            assert f'"number": {n},' in text and "block 0:" in text
    known = next(t for t in traces if 0 in t.get("customdata", []))
    text = known["text"][known["customdata"].index(0)]
    assert "block 0: 2 heads, MLP 192" in text and "block 5: dropped" in text
    zero_over = study.trials[0].user_attrs["macs"] > _limit(study)
    assert ("over budget by" if zero_over else "feasible: ") in text
    # every trial with a config has a section; front members come first and are open
    sections = re.findall(r"<section id='trial-(\d+)'><details( open)?>", page)
    assert {int(n) for n, _ in sections} == {t.number for t in study.trials}
    opened = [n for n, o in sections if o]
    assert opened and [n for n, _ in sections[: len(opened)]] == opened
    assert "| under budget |" in md


def test_per_block_table_of_a_known_trial_matches_its_config(unrepaired, tmp_path, capsys):
    study = unrepaired["study"]
    page, md = _report(unrepaired["url"], "rep", tmp_path / "r", capsys)
    trial = study.trials[0]
    assert {k: trial.params[k] for k in KNOWN} == KNOWN  # the enqueued shape ran as trial 0
    config = PruningConfig.from_dict(trial.user_attrs["config"])
    rows = _md_section(md, 0)
    col = {h: i for i, h in enumerate(BLOCK_TABLE_HEADER)}
    assert [r[col["heads"]] for r in rows] == ["2", "6", "3", "4", "1", "0"]
    assert [r[col["kept"]] for r in rows] == ["yes"] * 5 + ["dropped"]
    assert [r[col["mlp"]] for r in rows[:5]] == [
        str(b.mlp or ARCH.mlp_hidden) for b in config.blocks[:5]
    ]
    assert rows[0][col["mlp"]] == "192" and rows[1][col["mlp"]] == str(ARCH.mlp_hidden)
    assert [r[col["token keep"]] for r in rows] == ["1", "1", "0.5", "1", "1", "-"]
    cost = estimate_cost(config, ARCH)
    assert [r[col["tokens"]] for r in rows[:5]] == [str(b.tokens) for b in cost.blocks[:5]]
    assert int(rows[3][col["tokens"]]) < int(rows[1][col["tokens"]]) == ARCH.num_tokens
    assert sum(float(r[col["MMACs"]]) for r in rows[:5]) <= cost.macs / 1e6
    # the HTML shows the same table, and `prunetune info` prints it for the same config
    section = page.split("<section id='trial-0'>", 1)[1].split("</section>", 1)[0]
    html_rows = re.findall(r"<tr(?: class=\"dropped\")?>((?:<td>[^<]*</td>)+)</tr>", section)
    assert [re.findall(r"<td>([^<]*)</td>", r) for r in html_rows] == rows
    assert 'class="dropped"' in section and "budget: " in section
    cfg = tmp_path / "trial0.json"
    cfg.write_text(json.dumps(trial.user_attrs["config"]))
    code, out, err = run(["info", "--config", str(cfg)], capsys)
    assert code == 0, err
    info_rows = [ln.split() for ln in out.splitlines() if re.match(r"\d+\s", ln)]
    assert info_rows == rows


def _copy_as_old(study: optuna.Study, url: str, drop_user: tuple[str, ...] = ()) -> None:
    """``study`` as a study written before trials had Optuna constraints."""
    old = optuna.create_study(storage=url, study_name="old", directions=study.directions)
    for k, v in study.user_attrs.items():
        old.set_user_attr(k, v)
    for t in study.trials:
        old.add_trial(
            optuna.trial.create_trial(
                state=t.state,
                values=t.values,
                params=t.params,
                distributions=t.distributions,
                user_attrs={k: v for k, v in t.user_attrs.items() if k not in drop_user},
            )
        )


@pytest.mark.parametrize("drop_user", [(), ("constraint", "budget_value")])
def test_report_of_an_old_study_without_constraints(unrepaired, tmp_path, capsys, drop_user):
    study = unrepaired["study"]
    url = sqlite_url(tmp_path / "old.db")
    _copy_as_old(study, url, drop_user)
    assert not any(t.constraints for t in load_study(url, "old").trials)
    page, md = _report(url, "old", tmp_path / "r", capsys)
    points = _optuna_points(_figure(page))
    complete = {t.number for t in study.trials if t.state == TrialState.COMPLETE}
    assert set().union(*points.values()) == complete
    over = {t.number for t in study.trials if t.user_attrs["macs"] > _limit(study)}
    if not drop_user:  # the record's own constraint still tells the over-budget trials
        assert points["Infeasible Trial"] == over & complete
    else:  # nothing says: no trial is greyed, the table says it is not known
        assert "Infeasible Trial" not in points and set(points) <= {"Trial", "Best Trial"}
        assert "budget: not recorded" in md
    assert md.count("### Trial ") == len(study.trials)


@pytest.mark.parametrize(
    "out, needle",
    [("", "--out is empty"), ("  ", "--out is empty"), ("FILE", "is a file"), ("FILE/r", "file")],
)
def test_bad_out_is_one_line(unrepaired, tmp_path, capsys, out, needle):
    (tmp_path / "FILE").write_text("x")
    target = out.replace("FILE", str(tmp_path / "FILE")) if "FILE" in out else out
    code, _, err = run(["report", "--storage", unrepaired["url"], "--out", target], capsys)
    assert_usage_error(code, err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]  # nothing written


def test_report_without_the_base_model_shows_the_config_alone(
    unrepaired, tmp_path, capsys, monkeypatch
):
    from prunetune.errors import UnsupportedModelError

    def unavailable(spec):
        raise UnsupportedModelError(f"model folder of {spec} is gone")

    monkeypatch.setattr(ViTArch, "from_spec", unavailable)
    page, md = _report(unrepaired["url"], "rep", tmp_path / "r", capsys)
    col = {h: i for i, h in enumerate(BLOCK_TABLE_HEADER)}
    rows = _md_section(md, 0)
    assert [r[col["heads"]] for r in rows] == ["2", "6", "3", "4", "1", "0"]
    assert [r[col["token keep"]] for r in rows] == ["1", "1", "0.5", "1", "1", "-"]
    assert {r[col["MMACs"]] for r in rows} == {r[col["tokens"]] for r in rows} == {"-"}
    assert "base model not available here (model folder of" in md
    assert set().union(*_optuna_points(_figure(page)).values())  # the plot still has its points
