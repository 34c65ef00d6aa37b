"""Pareto-stage weights in an Optuna artifact store: upload, resume, export, dashboard, S3.

One tiny search (the embedded digits_vit) runs with ``--artifact-store`` on a folder of its own;
its Pareto stage is interrupted after the second member's upload and resumed, so the same
study serves the resume test and the export, dashboard and store tests. The store is read
back through Optuna's artifact API, never by listing the folder.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta

import prunetune.search._pareto as pareto_mod
from _helpers import (
    assert_usage_error,
    cli,
    run,
    search_args,
    sqlite_url,
    stop,
    subprocess_env,
    wait_for,
)
from prunetune.cli import main
from prunetune.config import PruningConfig
from prunetune.search import (
    SearchSettings,
    TrialRecord,
    final_of,
    load_study,
    run_pareto_stage,
    settings_of,
    study_entry,
)
from prunetune.search._evaluate import Evaluator

STUDY = "art"


def _search_argv(url: str, store: str) -> list[str]:
    return search_args(url, STUDY, 3, "--artifact-store", store)


def _tuned_in(mp: pytest.MonkeyPatch) -> list[int]:
    """Records the trial number of every Pareto-stage fine-tune from now on."""
    tuned: list[int] = []
    real = Evaluator.final_model

    def spy(self, config, progress=True, desc="fine-tune"):
        tuned.append(int(re.search(r"trial (\d+)", desc).group(1)))
        return real(self, config, progress, desc)

    mp.setattr(Evaluator, "final_model", spy)
    return tuned


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A tiny search into ``<dir>/shared`` (given relative to ``<dir>``), its Pareto stage
    interrupted after the second member's upload (before its result is stored), then resumed."""
    d = tmp_path_factory.mktemp("artifacts")
    url = sqlite_url(d / "s.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        tuned_first = _tuned_in(mp)
        calls = []

        def interrupt_at_second(name):
            calls.append(name)
            if len(calls) == 2:
                raise KeyboardInterrupt

        mp.setattr(pareto_mod, "fault_point", interrupt_at_second)
        assert main(_search_argv(url, "shared")) == 130
    study = load_study(url, STUDY)
    before = {
        "finals": {n: final_of(study, n) for n in study_entry(study, "pareto_stage")["members"]},
        "artifacts": {m.artifact_id for m in get_all_artifact_meta(study)},
        "stage": study_entry(study, "pareto_stage"),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        tuned_again = _tuned_in(mp)
        assert main(_search_argv(url, "shared")) == 0
    return {
        "dir": d,
        "url": url,
        "store": d / "shared",
        "tuned_first": tuned_first,
        "tuned_again": tuned_again,
        "before": before,
    }


def _study(stage):
    return load_study(stage["url"], STUDY)


def _members(study) -> list[int]:
    return study_entry(study, "pareto_stage")["members"]


def _read(store: Path, artifact_id: str) -> bytes:
    with FileSystemArtifactStore(store).open_reader(artifact_id) as f:
        return f.read()


def _best(study) -> int:
    from prunetune.search import best_trial

    return best_trial(study)[0].number


# --- the store -----------------------------------------------------------------------------


def test_every_member_has_its_weights_in_the_store(stage):
    from safetensors import safe_open

    study = _study(stage)
    store = str(stage["store"])
    assert settings_of(study).artifact_store == store  # made absolute, stored with the study
    entry = study_entry(study, "pareto_stage")
    assert entry["state"] == "done" and entry["artifact_store"] == store
    members = _members(study)
    assert len(members) == 2
    metas = {m.artifact_id: m for m in get_all_artifact_meta(study)}
    for n in members:
        artifact_id = final_of(study, n)["artifact_id"]
        assert metas[artifact_id].filename == f"trial_{n}-model.safetensors"
        got = stage["dir"] / f"weights_{n}.safetensors"
        optuna.artifacts.download_artifact(
            artifact_store=FileSystemArtifactStore(store),
            file_path=str(got),
            artifact_id=artifact_id,
        )
        with safe_open(str(got), "pt") as f:  # the weights of this trial's configuration
            config = PruningConfig.from_json(f.metadata()["config"])
        assert config == PruningConfig.from_dict(TrialRecord.of(study.trials[n]).config)
    # nothing in the old layout (artifacts/trial_<n>/model.safetensors)
    assert not list(stage["dir"].rglob("trial_*"))


def test_resume_keeps_the_members_already_uploaded(stage):
    study = _study(stage)
    first, second = _members(study)
    before = stage["before"]
    assert before["stage"]["state"] == "running"
    # interrupted after the second upload, before its result was stored
    assert stage["tuned_first"] == [first, second]
    assert before["finals"][first] is not None and before["finals"][second] is None
    assert len(before["artifacts"]) == 2
    # the resumed stage tunes only the member without a stored result
    assert stage["tuned_again"] == [second]
    assert final_of(study, first) == before["finals"][first]  # the same weights, untouched
    assert final_of(study, second)["artifact_id"] not in before["artifacts"]


# --- export --------------------------------------------------------------------------------


def test_export_from_another_folder_copies_the_stored_bytes(stage, tmp_path, monkeypatch, capsys):
    study = _study(stage)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(
        ["export", "--storage", stage["url"], "--study", STUDY, "--out", "out", "--front"], capsys
    )
    assert code == 0, err
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "export.json",
        "front",
        "model.safetensors",
    ]
    best = _best(study)
    folders = {best: out} | {n: out / "front" / f"trial_{n}" for n in _members(study)}
    for n, folder in folders.items():
        artifact_id = final_of(study, n)["artifact_id"]
        assert (folder / "model.safetensors").read_bytes() == _read(stage["store"], artifact_id)
        info = json.loads((folder / "export.json").read_text())
        assert info["tuned"] and info["trial"] == n
        assert info["artifact"] == {"store": str(stage["store"]), "artifact_id": artifact_id}
        assert "artifact_id" not in info["final"]


def test_export_from_a_copied_store_and_missing_weights(stage, tmp_path, capsys):
    study = _study(stage)
    best = _best(study)
    copy = tmp_path / "copy"
    shutil.copytree(stage["store"], copy)
    base = ["export", "--storage", stage["url"], "--study", STUDY, "--artifact-store", str(copy)]
    code, _, err = run([*base, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    artifact_id = final_of(study, best)["artifact_id"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == _read(copy, artifact_id)

    FileSystemArtifactStore(copy).remove(artifact_id)
    code, _, err = run([*base, "--out", str(tmp_path / "b")], capsys)
    assert_usage_error(
        code, err, f"trial {best} are missing from the artifact store {copy}", "--untuned"
    )
    assert not (tmp_path / "b").exists()  # nothing half-written
    code, _, err = run([*base, "--out", str(tmp_path / "c"), "--untuned"], capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "c" / "export.json").read_text())
    assert not info["tuned"] and info["final"] is None and "--untuned" in info["weights"]

    code, _, err = run(
        [*base[:-1], str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")], capsys
    )
    assert_usage_error(code, err, f"artifact store {tmp_path / 'nowhere'} does not exist")


def test_study_from_before_the_store_is_read_and_migrated(stage, tmp_path, capsys):
    """Weights under ``<artifacts>/trial_<n>/model.safetensors`` and results without an
    ``artifact_id`` (studies made before the store): export reads them there, and the Pareto
    stage uploads them instead of tuning again."""
    db = tmp_path / "old.db"
    shutil.copyfile(stage["dir"] / "s.db", db)
    url = sqlite_url(db)
    study = load_study(url, STUDY)
    legacy = tmp_path / "old-art"
    settings = {**study.user_attrs["settings"], "artifacts": str(legacy)}
    settings.pop("artifact_store")  # the old settings had no store
    study.set_user_attr("settings", settings)
    study.set_user_attr("pareto_stage", {"state": "done", "members": _members(study)})
    weights = {}
    for n in _members(study):
        final = dict(final_of(study, n))
        weights[n] = _read(stage["store"], final.pop("artifact_id"))
        study.set_user_attr(f"final_{n}", final)
        (legacy / f"trial_{n}").mkdir(parents=True)
        (legacy / f"trial_{n}" / "model.safetensors").write_bytes(weights[n])

    code, _, err = run(["export", "--storage", url, "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    best = _best(study)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == weights[best]

    def no_tuning(*args, **kwargs):
        raise AssertionError("a member with weights was tuned again")

    ev = SimpleNamespace(
        settings=SearchSettings.from_dict(settings).resolved(), final_model=no_tuning
    )
    run_pareto_stage(study, ev, progress=False)
    study = load_study(url, STUDY)
    store = legacy / "optuna-artifacts"  # the default store of these settings
    metas = {m.artifact_id: m for m in get_all_artifact_meta(study)}
    for n in _members(study):
        artifact_id = final_of(study, n)["artifact_id"]
        assert metas[artifact_id].filename == f"trial_{n}-model.safetensors"
        assert _read(store, artifact_id) == weights[n]


# --- dashboard -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_weights(stage):
    study = _study(stage)
    port = _free_port()
    proc = subprocess.Popen(
        cli("dashboard", "--storage", stage["url"], "--study", STUDY, "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        cwd=stage["dir"].parent,  # not where the search ran
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    base = f"http://127.0.0.1:{port}"

    def get(path):
        try:
            with opener.open(base + path, timeout=10) as r:
                return r.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    try:
        wait_for(lambda: get("/api/studies"), 90, "the dashboard to answer", proc)
        detail = json.loads(get(f"/api/studies/{study._study_id}?after=0"))
        listed = {a["artifact_id"]: a["filename"] for a in detail["artifacts"]}
        for n in _members(study):
            artifact_id = final_of(study, n)["artifact_id"]
            assert listed[artifact_id] == f"trial_{n}-model.safetensors"
            served = get(f"/artifacts/{study._study_id}/{artifact_id}")
            assert served == _read(stage["store"], artifact_id)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            stop(proc)


# --- settings and bad stores ---------------------------------------------------------------


def test_store_setting_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    art = tmp_path / "art"
    s = SearchSettings(artifacts=str(art)).resolved()
    assert s.artifact_store == str(art / "optuna-artifacts")
    assert SearchSettings(artifact_store="rel/store").resolved().artifact_store == str(
        tmp_path / "rel" / "store"
    )
    s3 = "s3://prunetune-weights/runs/a"
    assert SearchSettings(artifact_store=s3).resolved().artifact_store == s3
    assert SearchSettings.from_dict(s.to_dict()) == s  # stored and read back


@pytest.mark.parametrize(
    ("store", "needle"),
    [
        ("{d}/afile", "afile is a file; give a folder"),
        ("{d}/afile/sub", "lies under"),
        ("s3://", "names no bucket; use s3://bucket"),
        ("s3:///prefix", "names no bucket"),
        ("s3://Bad_Bucket", "is not an S3 bucket name"),
        ("gs://bucket", "unknown scheme 'gs://'"),
        ("", "names nothing"),
    ],
)
def test_bad_artifact_store_is_a_one_line_error(tmp_path, capsys, store, needle):
    (tmp_path / "afile").write_text("not a folder")
    url = sqlite_url(tmp_path / "s.db")
    code, _, err = run(_search_argv(url, store.format(d=tmp_path)), capsys)
    assert_usage_error(code, err, needle)
    assert not (tmp_path / "s.db").exists()  # refused before anything was made


def test_s3_store_needs_boto3(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` raises ImportError
    url = sqlite_url(tmp_path / "s.db")
    code, _, err = run(_search_argv(url, "s3://prunetune-weights"), capsys)
    assert_usage_error(code, err, "needs boto3", "pip install boto3")
    assert not (tmp_path / "s.db").exists()


# --- S3 (moto's in-process mock of the S3 API) ---------------------------------------------


@pytest.fixture
def mock_s3(monkeypatch):
    pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket="prunetune-weights")
        yield client


def test_s3_store(stage, tmp_path, capsys, mock_s3):
    """The same study's Pareto stage rerun into an S3 bucket (a new store: every member is
    tuned and uploaded there), then exported from it."""
    db = tmp_path / "s.db"
    shutil.copyfile(stage["dir"] / "s.db", db)
    url = sqlite_url(db)
    code, _, err = run(_search_argv(url, "s3://no-such-bucket"), capsys)
    assert_usage_error(code, err, "cannot reach artifact store s3://no-such-bucket")

    spec = "s3://prunetune-weights/runs/a"
    code, _, err = run(_search_argv(url, spec), capsys)
    assert code == 0, err
    study = load_study(url, STUDY)
    assert study_entry(study, "pareto_stage")["artifact_store"] == spec
    ids = {final_of(study, n)["artifact_id"] for n in _members(study)}
    keys = {o["Key"] for o in mock_s3.list_objects_v2(Bucket="prunetune-weights")["Contents"]}
    assert keys == {f"runs/a/{i}" for i in ids}

    code, _, err = run(["export", "--storage", url, "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    artifact_id = final_of(study, _best(study))["artifact_id"]
    body = mock_s3.get_object(Bucket="prunetune-weights", Key=f"runs/a/{artifact_id}")["Body"]
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == body.read()
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["artifact"] == {"store": spec, "artifact_id": artifact_id}

    mock_s3.delete_object(Bucket="prunetune-weights", Key=f"runs/a/{artifact_id}")
    code, _, err = run(["export", "--storage", url, "--out", str(tmp_path / "gone")], capsys)
    assert_usage_error(code, err, f"missing from the artifact store {spec}")
