"""Every user mistake on the command line: one line on stderr, exit code 2, nothing left behind.

Each case runs ``prunetune.cli.main`` in-process from an empty working folder and checks:
exit code 2; exactly one non-empty stderr line, starting with ``prunetune``, without a
traceback, holding the case's words; no Python warning that a real run would print; no file
or folder new in the working folder or among the inputs; and no new study in any SQLite
database among the inputs. A few cases run the installed console script to show the entry
point behaves the same.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from prunetune.cli import main

#: Warning categories Python hides by default; any other warning would reach a user's stderr.
_HIDDEN = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
DEFAULT_WEIGHTS = (
    Path(__file__).resolve().parents[1] / "src/prunetune/default/digits_vit.safetensors"
)
#: A small model with three input channels (the digits default has one).
RGB_MODEL = {
    "name": "vit_custom",
    "kwargs": {
        "img_size": 16,
        "patch_size": 4,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "num_classes": 10,
    },
}


class NotATensor:
    """Stands for a user's own class inside a pickled checkpoint."""

    def __init__(self) -> None:
        self.epoch = 3


# --- inputs --------------------------------------------------------------------------------


def _png(path: Path, size: int = 16, mode: str = "L") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if mode == "L" else (size, size, 3)
    arr = (np.random.default_rng(len(str(path))).random(shape) * 255).astype("uint8")
    Image.fromarray(arr).save(path)


def _image_folder(root: Path, train: list[str], val: list[str], per_class: int = 2) -> None:
    for split, classes in (("train", train), ("val", val)):
        for c in classes:
            for i in range(per_class):
                _png(root / split / c / f"{i}.png")


def _write_config_files(d: Path) -> None:
    from prunetune import PruningConfig

    good = PruningConfig.uniform("digits_vit", 0.5, 0.5)
    good.save(d / "good.json")
    dense = good.to_dict()
    blocks6 = [{} for _ in range(6)]

    def cfg(name: str, **changes) -> None:
        (d / name).write_text(json.dumps({**dense, **changes}))

    cfg("unknown_key.json", colour="red")
    cfg("block_key.json", blocks=[{"heds": 2}] + blocks6[1:])
    cfg("heads_zero.json", blocks=[{"heads": 0}] + blocks6[1:])
    cfg("heads_nine.json", blocks=[{"heads": 9}] + blocks6[1:])
    cfg("heads_text.json", blocks=[{"heads": "2"}] + blocks6[1:])
    cfg("short.json", blocks=blocks6[:2])
    cfg("criterion.json", criterion="hessain")
    cfg("token_mode.json", token_mode="shuffle")
    cfg("threshold.json", width_mode="threshold", blocks=[{"head_threshold": 0.3}] * 6)
    cfg("schema.json", schema_version=99)
    cfg("all_dropped.json", blocks=[{"keep": False}] * 6)
    cfg("keep_text.json", blocks=[{"keep": "yes"}] + blocks6[1:])
    cfg("first_tokens.json", blocks=[{"token_keep": 0.5}] + blocks6[1:])
    cfg("blocks_text.json", blocks="six")
    cfg("blocks_ints.json", blocks=[1, 2, 3, 4, 5, 6])
    cfg("model_kwargs.json", model={"name": "digits_vit", "kwargs": {"depth": "six"}})
    cfg("deit.json", model={"name": "deit_tiny_patch16_224", "kwargs": {}}, blocks=[{}] * 12)
    cfg("resnet.json", model={"name": "resnet50", "kwargs": {}})
    (d / "nan.json").write_text(
        json.dumps({**dense, "blocks": [{"token_keep": 0.5}] * 6}).replace("0.5", "NaN")
    )
    (d / "missing_blocks.json").write_text(json.dumps({"model": "digits_vit"}))
    (d / "malformed.json").write_text('{"model": "digits_vit", "blocks": [')
    (d / "malformed.yaml").write_text("model: digits_vit\nblocks: [{heads: 2}\n")
    (d / "list.json").write_text("[1, 2, 3]")
    (d / "scalar.yaml").write_text("just some words\n")
    (d / "int_keys.yaml").write_text("model: digits_vit\n1: 2\n")
    (d / "empty.json").write_text("")
    (d / "blank.yaml").write_text("  \n\n")
    (d / "binary.json").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x80\x81")
    (d / "binary.yaml").write_bytes(bytes(range(128, 256)))
    (d / "folder.json").mkdir()
    (d / "folder").mkdir()
    (d / "notes.txt").write_text("heads: 3\n")


def _write_model_files(d: Path) -> None:
    (d / "rgb_model.json").write_text(json.dumps(RGB_MODEL))
    (d / "model_bad_kwarg.json").write_text(
        json.dumps({"name": "vit_custom", "kwargs": {"colour": "red"}})
    )
    (d / "model_heads.json").write_text(
        json.dumps({"name": "vit_custom", "kwargs": {"num_heads": 5}})
    )
    (d / "model_depth0.json").write_text(json.dumps({"name": "digits_vit", "kwargs": {"depth": 0}}))
    (d / "model_kwargs_list.json").write_text(json.dumps({"name": "vit_custom", "kwargs": [16, 4]}))
    (d / "model_name_int.json").write_text(json.dumps({"name": 5}))
    (d / "model_extra_key.json").write_text(json.dumps({"name": "digits_vit", "weights": "x.pth"}))
    (d / "model.yaml").write_text("name: [vit_custom\n")
    (d / "model_classes.json").write_text(
        json.dumps({"name": "digits_vit", "kwargs": {"num_classes": 5}})
    )


def _write_checkpoints(d: Path) -> None:
    from safetensors.torch import save_file

    from prunetune.models import ModelSpec, build_model

    digits = build_model(ModelSpec("digits_vit"))
    state = digits.state_dict()
    torch.save({"model": state, "extra": NotATensor()}, d / "pickled_class.pth")
    torch.save(digits, d / "whole_module.pth")
    torch.save({"mean": np.zeros(3)}, d / "numpy.pth")
    with open(d / "plain_pickle.pt", "wb") as f:  # protocol 4: torch warns about it on stderr
        pickle.dump({"weights": [1.0, 2.0]}, f, protocol=4)
    torch.save({"epoch": 3, "lr": 0.1}, d / "no_tensors.pth")
    torch.save({}, d / "empty_state.pth")
    torch.save({1: torch.zeros(2)}, d / "int_keys.pth")
    wrong_head = build_model(ModelSpec("digits_vit", {"num_classes": 5})).state_dict()
    save_file(wrong_head, str(d / "wrong_shape.safetensors"))
    other = build_model(
        ModelSpec(
            "vit_custom",
            {
                "img_size": 16,
                "patch_size": 2,
                "in_chans": 1,
                "embed_dim": 32,
                "depth": 2,
                "num_heads": 2,
                "num_classes": 10,
            },
        )
    )
    torch.save(other.state_dict(), d / "other_arch.pth")
    save_file(build_model(ModelSpec.from_obj(RGB_MODEL)).state_dict(), str(d / "rgb.safetensors"))
    raw = DEFAULT_WEIGHTS.read_bytes()
    (d / "truncated.safetensors").write_bytes(raw[: len(raw) // 3])
    (d / "garbage.safetensors").write_bytes(b"this is not a safetensors file")
    (d / "zip_truncated.pth").write_bytes((d / "other_arch.pth").read_bytes()[:4000])
    (d / "text.pth").write_text("hello, these are not weights\n")
    (d / "empty.pth").write_bytes(b"")
    (d / "ckpt_folder.pth").mkdir()


def _write_data(d: Path) -> None:
    digits = [f"c{i}" for i in range(10)]
    _image_folder(d / "imgs_corrupt", digits, digits)
    (d / "imgs_corrupt/train/c3/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    _image_folder(d / "imgs_truncated", digits, digits)
    whole = (d / "imgs_truncated/val/c0/0.png").read_bytes()
    (d / "imgs_truncated/val/c0/0.png").write_bytes(whole[: len(whole) // 2])
    _image_folder(d / "imgs_3classes", ["a", "b", "c"], ["a", "b", "c"])
    _image_folder(d / "imgs_chance", digits, digits)  # noise images: digits_vit scores at chance
    _image_folder(d / "imgs_diff", ["a", "b"], ["a", "z"])
    _image_folder(d / "imgs_notrain", [], ["a"])
    (d / "imgs_noclass/train").mkdir(parents=True)
    (d / "imgs_noclass/val").mkdir(parents=True)
    for split in ("train", "val"):
        (d / "imgs_noimages" / split / "a").mkdir(parents=True)
        (d / "imgs_noimages" / split / "a" / "readme.txt").write_text("no images here")
    (d / "tv_root").mkdir()


def _write_spaces(d: Path) -> None:
    spaces = {
        "drop_int": "drop_blocks: 5\n",
        "drop_out": "drop_blocks: [9]\n",
        "drop_dup": "drop_blocks: [3, 3]\n",
        "heads_text": "heads: {low: a}\n",
        "heads_float": "heads: {low: 1.5, high: 3}\n",
        "heads_high": "heads: {low: 2, high: 99}\n",
        "heads_list": "heads: [1, 3]\n",
        "criteria_str": "criteria: taylor\n",
        "criteria_empty": "criteria: []\n",
        "criteria_unknown": "criteria: [taylor, hessain]\n",
        "unknown_key": "preset: hybrid\ncolour: red\n",
        "preset": "preset: wide\n",
        "width_mode": "width_mode: percent\n",
        "mlp_step": "mlp_ratio: {low: 0.1, high: 1.0, step: 0.07}\n",
        "mlp_nan": "mlp_ratio: {low: .nan}\n",
        "step_zero": "token_keep: {low: 0.5, high: 0.9, step: 0}\n",
        "threshold": "width_mode: threshold\nthreshold: {low: -0.5}\n",
        "token_modes_str": "token_modes: merge\n",
        "token_modes_unknown": "token_modes: [merge, shuffle]\n",
        "token_blocks_zero": "token_blocks: [0]\n",
        "malformed": "heads: {low: 1, high: [\n",
        "list": "- heads\n- mlp\n",
    }
    for name, text in spaces.items():
        (d / f"space_{name}.yaml").write_text(text)


def _write_studies(d: Path) -> None:
    import optuna

    from prunetune.search import SearchSettings

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        url = f"sqlite:///{d / 'studies.db'}"
        optuna.create_study(study_name="plain", storage=url, directions=["maximize", "minimize"])
        started = optuna.create_study(
            study_name="started", storage=url, directions=["maximize", "minimize"]
        )
        started.set_user_attr("settings", SearchSettings(storage=url, study="started").to_dict())
        optuna.create_study(study_name="plain", storage=f"sqlite:///{d / 'readonly.db'}")
    finally:
        optuna.logging.set_verbosity(verbosity)
    (d / "not_a_db.db").write_text("this is not a database\n")


def _make_read_only(path: Path) -> bool:
    """Makes ``path`` unwritable for this user, if it can; root ignores mode bits, so use chattr."""
    path.chmod(0o444)
    if os.access(path, os.W_OK) and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    return not os.access(path, os.W_OK)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every input file of the suite, built once, in a folder apart from the working folder."""
    d = tmp_path_factory.mktemp("inputs")
    _write_config_files(d)
    _write_model_files(d)
    _write_checkpoints(d)
    _write_data(d)
    _write_spaces(d)
    _write_studies(d)
    read_only = _make_read_only(d / "readonly.db")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
    yield {
        "in": str(d),
        "busy_port": str(busy.getsockname()[1]),
        "free_port": str(free_port),
        "read_only": read_only,
    }
    busy.close()
    if shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(d / "readonly.db")], capture_output=True)


# --- the checks ------------------------------------------------------------------------------


def _tree(root: Path) -> set[str]:
    """Every file and folder under ``root``, hidden ones included."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _studies(root: Path) -> dict[str, list[str]]:
    """Study names in every SQLite database under ``root`` (read-only; files that are not
    databases are left out)."""
    found = {}
    for db in sorted(root.glob("*.db")):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                found[db.name] = sorted(
                    r[0] for r in conn.execute("SELECT study_name FROM studies")
                )
        except sqlite3.DatabaseError:
            continue
    return found


def _run(argv: list[str], capsys) -> tuple[int, str, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main(argv)
        except SystemExit as e:  # argparse usage errors
            code = e.code
    err = capsys.readouterr().err
    shown = [w for w in caught if not issubclass(w.category, _HIDDEN)]
    return code, err, shown


def _argv(cmd: str, inputs: dict) -> list[str]:
    return [a.format(**inputs) for a in shlex.split(cmd)]


def assert_one_line_error(code, err: str, needles: tuple[str, ...]) -> None:
    assert code == 2, f"exit code {code}; stderr: {err[-2000:]}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err[-3000:]}"
    line = lines[0]
    assert err.endswith("\n") and err.count("\n") == 1, repr(err[-500:])
    assert line.startswith("prunetune") and ": error: " in line, line
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in: {line}"


# --- the table -------------------------------------------------------------------------------

P = "prune --config {in}/good.json --out out"
S = "saliency --criterion taylor"
Q = "search --quiet --budget flops=50%"
DB = "--storage sqlite:///{in}/studies.db"
PG = "--storage postgresql://nobody@127.0.0.1:1/x"


def case(
    id_: str,
    cmd: str,
    *needles: str,
    xfail: str | None = None,
    skip_if: bool = False,
    reason: str = "",
):
    marks = []
    if xfail:
        marks.append(pytest.mark.xfail(reason=xfail, strict=True))
    if skip_if:
        marks.append(pytest.mark.skip(reason=reason))
    return pytest.param(cmd, needles, id=id_, marks=marks)


CASES = [
    # usage: commands and required flags
    case("no-command", "", "required: command"),
    case("unknown-command", "frobnicate", "invalid choice", "frobnicate"),
    case("unknown-flag", "info --colour red", "unrecognized arguments", "--colour"),
    case("flag-without-value", "info --config", "--config", "expected one argument"),
    case("prune-no-config", "prune --out out", "--config"),
    case("prune-no-out", "prune --config {in}/good.json", "--out"),
    case("saliency-no-criterion", "saliency", "--criterion"),
    case("search-no-budget", "search", "--budget"),
    case("export-no-out", "export", "--out"),
    case("search-sampler", f"{Q} --sampler bayes", "--sampler", "invalid choice"),
    case("search-backend", f"{Q} --backend dask", "--backend", "invalid choice"),
    # numbers: prune
    case("prune-batch-size-0", f"{P} --batch-size 0", "--batch-size", "integer >= 1", "'0'"),
    case("prune-batch-size-neg", f"{P} --batch-size -8", "--batch-size", "integer >= 1"),
    case("prune-batch-size-float", f"{P} --batch-size 1.5", "--batch-size", "'1.5'"),
    case("prune-batch-size-text", f"{P} --batch-size many", "--batch-size", "'many'"),
    case("prune-lr-0", f"{P} --lr 0", "--lr", "number > 0"),
    case("prune-lr-neg", f"{P} --lr=-1e-3", "--lr", "number > 0"),
    case("prune-lr-nan", f"{P} --lr nan", "--lr", "'nan'"),
    case("prune-lr-inf", f"{P} --lr inf", "--lr", "'inf'"),
    case("prune-lr-text", f"{P} --lr fast", "--lr", "'fast'"),
    case("prune-latency-batch-0", f"{P} --latency-batch 0", "--latency-batch", "integer >= 1"),
    case("prune-threads-0", f"{P} --threads 0", "--threads", "integer >= 1"),
    case("prune-threads-neg", f"{P} --threads -2", "--threads", "integer >= 1"),
    case("prune-calib-0", f"{P} --calib-samples 0", "--calib-samples", "integer >= 1"),
    case("prune-calib-neg", f"{P} --calib-samples -5", "--calib-samples", "integer >= 1"),
    case("prune-finetune-neg", f"{P} --finetune-epochs -1", "--finetune-epochs", "number >= 0"),
    case("prune-finetune-nan", f"{P} --finetune-epochs nan", "--finetune-epochs", "'nan'"),
    case("prune-seed-neg", f"{P} --seed -1", "--seed", "0..4294967295"),
    case("prune-seed-huge", f"{P} --seed 4294967296", "--seed", "0..4294967295"),
    case("prune-device", f"{P} --device tpu", "--device", "cuda:N"),
    case("prune-device-meta", f"{P} --device meta", "--device", "'meta'"),
    # numbers: saliency
    case("saliency-calib-0", f"{S} --calib-samples 0", "--calib-samples", "integer >= 1"),
    case("saliency-calib-neg", f"{S} --calib-samples -3", "--calib-samples", "integer >= 1"),
    case("saliency-batch-size-0", f"{S} --batch-size 0", "--batch-size", "integer >= 1"),
    case("saliency-seed-neg", f"{S} --seed -7", "--seed"),
    case("saliency-device", f"{S} --device cuda:first", "--device", "cuda:N"),
    # numbers: search
    case("search-n-trials-0", f"{Q} --n-trials 0", "--n-trials", "integer >= 1"),
    case("search-workers-no-ray", f"{Q} --workers 2", "--workers needs --backend ray"),
    case("search-address-no-ray", f"{Q} --address 127.0.0.1:1", "--address needs --backend ray"),
    case(
        "search-ray-unreachable",
        f"{Q} --backend ray --address 127.0.0.1:1",
        "cannot connect to the Ray cluster",
    ),
    case("search-ray-bad-address", f"{Q} --backend ray --address nohost", "is not host:port"),
    case("search-grace-short", f"{Q} --grace-period 5", "--grace-period", "integer >= 6"),
    case("export-untuned-missing-db", "export --untuned --out x", "prunetune.db"),
    case("search-n-trials-neg", f"{Q} --n-trials -4", "--n-trials", "integer >= 1"),
    case("search-n-trials-float", f"{Q} --n-trials 2.5", "--n-trials", "'2.5'"),
    case("search-workers-0", f"{Q} --workers 0", "--workers", "integer >= 1"),
    case("search-seed-neg", f"{Q} --seed -1", "--seed", "0..4294967295"),
    case("search-seed-huge", f"{Q} --seed 99999999999", "--seed", "0..4294967295"),
    case("search-tier-b-fraction-0", f"{Q} --tier-b-fraction 0", "--tier-b-fraction", "(0, 1]"),
    case("search-tier-b-fraction-big", f"{Q} --tier-b-fraction 1.5", "--tier-b-fraction", "(0, 1]"),
    case(
        "search-tier-b-fraction-neg", f"{Q} --tier-b-fraction -0.2", "--tier-b-fraction", "(0, 1]"
    ),
    case("search-tier-b-fraction-nan", f"{Q} --tier-b-fraction nan", "--tier-b-fraction", "'nan'"),
    case("search-tier-b-steps-neg", f"{Q} --tier-b-steps -1", "--tier-b-steps", "integer >= 0"),
    case("search-final-epochs-neg", f"{Q} --final-epochs -2", "--final-epochs", "number >= 0"),
    case("search-final-epochs-inf", f"{Q} --final-epochs inf", "--final-epochs", "'inf'"),
    case("search-front-max-0", f"{Q} --front-max 0", "--front-max", "integer >= 1"),
    case("search-latency-batch-0", f"{Q} --latency-batch 0", "--latency-batch", "integer >= 1"),
    case("search-batch-size-0", f"{Q} --batch-size 0", "--batch-size", "integer >= 1"),
    case("search-calib-0", f"{Q} --calib-samples 0", "--calib-samples", "integer >= 1"),
    case("search-lr-0", f"{Q} --lr 0", "--lr", "number > 0"),
    case("search-lr-nan", f"{Q} --lr NaN", "--lr", "'NaN'"),
    case("search-device", f"{Q} --device gpu", "--device", "cuda:N"),
    # numbers: dashboard, train-default
    case("dashboard-port-0", "dashboard --port 0", "--port", "1..65535"),
    case("dashboard-port-big", "dashboard --port 70000", "--port", "1..65535"),
    case("dashboard-port-neg", "dashboard --port -80", "--port", "1..65535"),
    case("dashboard-port-text", "dashboard --port http", "--port", "'http'"),
    case("train-epochs-0", "train-default --epochs 0 --out trained", "--epochs", "integer >= 1"),
    case("train-epochs-neg", "train-default --epochs -1 --out trained", "--epochs", "integer >= 1"),
    case("train-epochs-text", "train-default --epochs ten --out trained", "--epochs", "'ten'"),
    case("train-seed-neg", "train-default --seed -3 --out trained", "--seed"),
    case("train-out-file", "train-default --out {in}/good.json", "good.json", "is a file"),
    case("train-out-under-file", "train-default --out {in}/good.json/sub", "good.json", "file"),
    # config files
    case("config-missing", "info --config {in}/nope.json", "nope.json", "does not exist"),
    case("config-folder", "info --config {in}/folder.json", "folder.json", "is a directory"),
    case("config-binary-json", "info --config {in}/binary.json", "binary.json", "not UTF-8"),
    case("config-binary-yaml", "info --config {in}/binary.yaml", "binary.yaml", "not UTF-8"),
    case("config-empty-json", "info --config {in}/empty.json", "empty.json", "is empty"),
    case("config-blank-yaml", "info --config {in}/blank.yaml", "blank.yaml", "is empty"),
    case("config-list", "info --config {in}/list.json", "list.json", "must hold a mapping", "list"),
    case(
        "config-scalar-yaml", "info --config {in}/scalar.yaml", "scalar.yaml", "must hold a mapping"
    ),
    case("config-int-keys", "info --config {in}/int_keys.yaml", "int_keys.yaml", "text keys"),
    case("config-malformed-json", "info --config {in}/malformed.json", "malformed JSON"),
    case("config-malformed-yaml", "info --config {in}/malformed.yaml", "malformed YAML", "line"),
    case(
        "config-unknown-key", "info --config {in}/unknown_key.json", "unknown config keys", "colour"
    ),
    case("config-missing-blocks", "info --config {in}/missing_blocks.json", "'blocks'"),
    case("config-block-key", "info --config {in}/block_key.json", "heds", "block 0"),
    case("config-heads-0", "info --config {in}/heads_zero.json", "heads >= 1", "block 0"),
    case("config-heads-text", "info --config {in}/heads_text.json", "heads >= 1"),
    case("config-heads-too-many", "info --config {in}/heads_nine.json", "heads <= num_heads"),
    case("config-too-few-blocks", "info --config {in}/short.json", "len(blocks) == depth"),
    case("config-criterion", "info --config {in}/criterion.json", "unknown criterion 'hessain'"),
    case("config-token-mode", "info --config {in}/token_mode.json", "token_mode", "shuffle"),
    case("config-schema", "info --config {in}/schema.json", "schema_version"),
    case("config-all-dropped", "info --config {in}/all_dropped.json", "at least one block"),
    case("config-keep-text", "info --config {in}/keep_text.json", "`keep`"),
    case("config-first-tokens", "info --config {in}/first_tokens.json", "token_keep=1"),
    case("config-blocks-text", "info --config {in}/blocks_text.json", "`blocks`"),
    case("config-blocks-ints", "info --config {in}/blocks_ints.json", "block 0 must be a mapping"),
    case("config-nan", "info --config {in}/nan.json", "token_keep"),
    case(
        "config-bad-model-kwargs", "info --config {in}/model_kwargs.json", "cannot build digits_vit"
    ),
    case("config-unsupported-model", "info --config {in}/resnet.json", "resnet50", "not supported"),
    case("config-threshold-info", "info --config {in}/threshold.json", "count-mode"),
    case(
        "config-other-model",
        "info --config {in}/deit.json --model digits_vit",
        "made for model deit",
    ),
    case(
        "config-other-kwargs",
        "info --config {in}/good.json --model {in}/model_classes.json",
        "but --model is digits_vit {'num_classes': 5}",
    ),
    case("prune-config-binary", "prune --config {in}/binary.yaml --out out", "not UTF-8"),
    case("prune-config-folder", "prune --config {in}/folder --out out", "is a directory"),
    case(
        "prune-config-other-model",
        "prune --config {in}/deit.json --out out",
        "--checkpoint is required",
    ),
    case(
        "prune-config-too-many-heads",
        "prune --config {in}/heads_nine.json --out out",
        "heads <= num_heads",
    ),
    case("prune-out-file", "prune --config {in}/good.json --out {in}/good.json", "is a file"),
    # model names and model files
    case("model-unsupported", "info --model resnet50", "resnet50", "not supported"),
    case("model-unknown-timm", "info --model vit_nonexistent_patch99", "unknown timm model"),
    case(
        "model-other-class", "info --model vit_relpos_base_patch16_224", "VisionTransformerRelPos"
    ),
    case("model-attn-pool", "info --model vit_base_patch16_siglip_224", "global_pool='map'"),
    case("model-empty-name", "info --model ''", "non-empty"),
    case("model-file-missing", "info --model {in}/nope.yaml", "nope.yaml", "does not exist"),
    case("model-file-folder", "info --model {in}/folder", "is a directory"),
    case("model-file-binary", "info --model {in}/binary.json", "not UTF-8"),
    case("model-file-empty", "info --model {in}/empty.json", "is empty"),
    case("model-file-list", "info --model {in}/list.json", "must hold a mapping"),
    case("model-file-malformed", "info --model {in}/model.yaml", "malformed YAML"),
    case(
        "model-file-bad-kwarg",
        "info --model {in}/model_bad_kwarg.json",
        "cannot build vit_custom",
        "colour",
    ),
    case("model-file-heads", "info --model {in}/model_heads.json", "num_heads"),
    case("model-file-depth-0", "info --model {in}/model_depth0.json", "no transformer blocks"),
    case(
        "model-file-kwargs-list",
        "info --model {in}/model_kwargs_list.json",
        "kwargs must be a mapping",
    ),
    case("model-file-name-int", "info --model {in}/model_name_int.json", "non-empty string"),
    case("model-file-extra-key", "info --model {in}/model_extra_key.json", "weights"),
    case(
        "saliency-model-no-checkpoint",
        f"{S} --model deit_tiny_patch16_224",
        "--checkpoint is required",
    ),
    # checkpoints
    case("ckpt-missing", f"{S} --checkpoint {{in}}/nope.safetensors", "does not exist"),
    case("ckpt-folder", f"{S} --checkpoint {{in}}/ckpt_folder.pth", "is a directory"),
    case("ckpt-empty", f"{S} --checkpoint {{in}}/empty.pth", "is empty"),
    case("ckpt-text", f"{S} --checkpoint {{in}}/text.pth", "could not be read", "torch.save"),
    case(
        "ckpt-zip-truncated",
        f"{P} --checkpoint {{in}}/zip_truncated.pth",
        "zip_truncated.pth",
        "could not be read",
    ),
    case(
        "ckpt-safetensors-truncated",
        f"{P} --checkpoint {{in}}/truncated.safetensors",
        "could not be read",
        "truncated",
    ),
    case(
        "ckpt-safetensors-garbage",
        f"{S} --checkpoint {{in}}/garbage.safetensors",
        "could not be read",
    ),
    case(
        "ckpt-pickled-class",
        f"{P} --checkpoint {{in}}/pickled_class.pth",
        "pickle",
        "NotATensor",
        "state_dict",
    ),
    case(
        "ckpt-whole-module",
        f"{S} --checkpoint {{in}}/whole_module.pth",
        "pickle",
        "VisionTransformer",
    ),
    case("ckpt-numpy", f"{S} --checkpoint {{in}}/numpy.pth", "pickle"),
    case("ckpt-plain-pickle", f"{S} --checkpoint {{in}}/plain_pickle.pt", "pickle", "state_dict"),
    case("ckpt-no-tensors", f"{S} --checkpoint {{in}}/no_tensors.pth", "must hold a state dict"),
    case("ckpt-empty-state", f"{S} --checkpoint {{in}}/empty_state.pth", "empty mapping"),
    case("ckpt-int-keys", f"{S} --checkpoint {{in}}/int_keys.pth", "must hold a state dict"),
    case("ckpt-wrong-shape", f"{P} --checkpoint {{in}}/wrong_shape.safetensors", "head.", "(5"),
    case("ckpt-other-arch", f"{S} --checkpoint {{in}}/other_arch.pth", "does not match the model"),
    # data
    case("data-missing", f"{S} --data {{in}}/nowhere/", "does not exist"),
    case("data-file", f"{S} --data {{in}}/good.json", "is a file"),
    case("data-no-train", f"{S} --data {{in}}/imgs_notrain", "no train/ folder"),
    case("data-no-classes", f"{S} --data {{in}}/imgs_noclass", "holds no images"),
    case("data-no-images", f"{S} --data {{in}}/imgs_noimages", "holds no images"),
    case(
        "data-corrupt-image",
        f"{S} --data {{in}}/imgs_corrupt --skip-dense-check",
        "cannot read image",
        "broken.png",
        "remove or fix it",
    ),
    case(
        "data-dense-near-chance",
        f"{S} --data {{in}}/imgs_chance",
        "within 5 points of chance",
        "--skip-dense-check",
    ),
    case(
        "data-truncated-image",
        f"{P} --data {{in}}/imgs_truncated --no-latency",
        "cannot read image",
        "0.png",
    ),
    case("data-class-count", f"{S} --data {{in}}/imgs_3classes", "3 classes", "10"),
    case("data-class-folders-differ", f"{S} --data {{in}}/imgs_diff", "same class folders", "'z'"),
    case("data-unknown-name", f"{S} --data imagenet22k", "neither a directory nor"),
    case(
        "data-not-downloaded", f"{S} --data mnist --data-root {{in}}/tv_root", "MNIST", "--download"
    ),
    case(
        "data-digits-rgb-model",
        f"{S} --model {{in}}/rgb_model.json --checkpoint {{in}}/rgb.safetensors",
        "--data is required",
    ),
    case(
        "data-digits-channels",
        f"{S} --model {{in}}/rgb_model.json --checkpoint {{in}}/rgb.safetensors --data digits",
        "digits data set has 1 channel",
    ),
    case(
        "saliency-unknown-criterion", "saliency --criterion hessain", "unknown criterion 'hessain'"
    ),
    case("saliency-empty-criterion", "saliency --criterion ''", "unknown criterion ''"),
    case(
        "device-cuda-missing",
        f"{S} --device cuda",
        "CUDA is not available",
        skip_if=torch.cuda.is_available(),
        reason="this machine has CUDA",
    ),
    # search spaces
    case("space-preset", f"{Q} --space wide", "unknown preset 'wide'"),
    case("space-empty", f"{Q} --space ''", "unknown preset ''"),
    case("search-model-empty", f"{Q} --model ''", "non-empty"),
    case("space-missing", f"{Q} --space {{in}}/nope.yaml", "does not exist"),
    case("space-folder", f"{Q} --space {{in}}/folder", "is a directory"),
    case("space-binary", f"{Q} --space {{in}}/binary.yaml", "not UTF-8"),
    case("space-blank", f"{Q} --space {{in}}/blank.yaml", "is empty"),
    case("space-list", f"{Q} --space {{in}}/space_list.yaml", "must hold a mapping"),
    case("space-malformed", f"{Q} --space {{in}}/space_malformed.yaml", "malformed YAML"),
    case("space-suffix", f"{Q} --space {{in}}/notes.txt", "must end in .yaml"),
    case(
        "space-drop-int", f"{Q} --space {{in}}/space_drop_int.yaml", "drop_blocks", "list of block"
    ),
    case("space-drop-range", f"{Q} --space {{in}}/space_drop_out.yaml", "drop_blocks", "block 9"),
    case("space-drop-dup", f"{Q} --space {{in}}/space_drop_dup.yaml", "more than once"),
    case("space-heads-text", f"{Q} --space {{in}}/space_heads_text.yaml", "heads.low", "'a'"),
    case("space-heads-float", f"{Q} --space {{in}}/space_heads_float.yaml", "heads.low", "integer"),
    case("space-heads-high", f"{Q} --space {{in}}/space_heads_high.yaml", "heads.high"),
    case("space-heads-list", f"{Q} --space {{in}}/space_heads_list.yaml", "low/high/step"),
    case(
        "space-criteria-string",
        f"{Q} --space {{in}}/space_criteria_str.yaml",
        "must be a list",
        "'taylor'",
    ),
    case("space-criteria-empty", f"{Q} --space {{in}}/space_criteria_empty.yaml", "at least one"),
    case("space-criteria-unknown", f"{Q} --space {{in}}/space_criteria_unknown.yaml", "hessain"),
    case("space-unknown-key", f"{Q} --space {{in}}/space_unknown_key.yaml", "colour"),
    case("space-file-preset", f"{Q} --space {{in}}/space_preset.yaml", "unknown preset 'wide'"),
    case("space-width-mode", f"{Q} --space {{in}}/space_width_mode.yaml", "width_mode", "percent"),
    case("space-mlp-step", f"{Q} --space {{in}}/space_mlp_step.yaml", "multiple of step"),
    case("space-mlp-nan", f"{Q} --space {{in}}/space_mlp_nan.yaml", "mlp_ratio.low", "nan"),
    case("space-step-zero", f"{Q} --space {{in}}/space_step_zero.yaml", "step > 0"),
    case("space-threshold", f"{Q} --space {{in}}/space_threshold.yaml", "threshold.low"),
    case(
        "space-token-modes-string",
        f"{Q} --space {{in}}/space_token_modes_str.yaml",
        "token_modes",
        "must be a list",
    ),
    case(
        "space-token-modes-unknown", f"{Q} --space {{in}}/space_token_modes_unknown.yaml", "shuffle"
    ),
    case(
        "space-token-blocks-0", f"{Q} --space {{in}}/space_token_blocks_zero.yaml", "token_blocks"
    ),
    # budgets
    case("budget-malformed", "search --budget half", "malformed budget"),
    case("budget-empty", "search --budget ''", "malformed budget"),
    case("budget-no-number", "search --budget flops=", "malformed budget"),
    case("budget-zero", "search --budget flops=0%", "must be positive"),
    case("budget-over-100", "search --budget flops=150%", "above 100"),
    case("budget-latency-unit", "search --budget latency=4G", "latency"),
    case("budget-ms-for-macs", "search --budget macs=5ms", "'ms'"),
    case(
        "budget-unreachable",
        "search --quiet --budget flops=0.0001%",
        "below what any configuration",
    ),
    case("budget-unreachable-db", f"search --quiet --budget params=10 {DB} --study fresh", "below"),
    # storages
    case("search-storage-not-url", f"{Q} --storage prunetune.db", "not a URL"),
    case("search-storage-no-folder", f"{Q} --storage sqlite:///nowhere/x.db", "does not exist"),
    case("search-storage-folder", f"{Q} --storage sqlite:///{{in}}/folder", "directory"),
    case("search-storage-driver", f"{Q} --storage mysql://nobody@127.0.0.1:1/x", "driver"),
    case("search-storage-unreachable", f"{Q} {PG}", "cannot open storage", "refused"),
    case(
        "search-storage-not-a-db", f"{Q} --storage sqlite:///{{in}}/not_a_db.db", "not a database"
    ),
    case(
        "search-storage-read-only",
        f"{Q} --storage sqlite:///{{in}}/readonly.db --study fresh",
        "read-only",
    ),
    case(
        "search-storage-read-only-uri",
        f"{Q} --storage 'sqlite:///file:{{in}}/studies.db?mode=ro&uri=true' --study fresh",
        "read-only",
    ),
    case(
        "search-resume-other-settings",
        f"search --quiet --budget flops=40% {DB} --study started",
        "was started with",
        "budget",
    ),
    case(
        "search-checkpoint-bad",
        f"{Q} {DB} --study fresh --checkpoint {{in}}/truncated.safetensors",
        "could not be read",
    ),
    case("search-artifacts-file", f"{Q} --artifacts {{in}}/good.json", "--artifacts", "is a file"),
    case(
        "search-artifacts-under-file",
        f"{Q} --artifacts {{in}}/good.json/weights",
        "--artifacts",
        "which is a file",
    ),
    case(
        "search-rgb-no-data",
        f"{Q} {DB} --study fresh --model {{in}}/rgb_model.json --checkpoint {{in}}/rgb.safetensors",
        "--data is required",
    ),
    case(
        "search-data-corrupt",
        f"{Q} {DB} --study fresh --data {{in}}/imgs_corrupt --skip-dense-check",
        "cannot read image",
    ),
    case("search-model-unsupported", f"{Q} --model resnet50", "not supported"),
    case("export-missing-db", "export --out out", "prunetune.db", "run `prunetune search` first"),
    case("export-missing-db-path", "export --storage sqlite:///{in}/none.db --out out", "none.db"),
    case(
        "export-unknown-study",
        f"export {DB} --study nope --out out",
        "no study named 'nope'",
        "plain",
    ),
    case("export-not-prunetune", f"export {DB} --study plain --out out", "not made by prunetune"),
    case(
        "export-unfinished", f"export {DB} --study started --out out", "'started'", "not finished"
    ),
    case(
        "export-partial-no-trials",
        f"export {DB} --study started --out out --partial",
        "no completed under-budget trial",
    ),
    case("export-malformed-url", "export --storage sqlite:/x.db --out out", "sqlite:/x.db"),
    case("export-not-url", "export --storage studies --out out", "not a URL"),
    case("export-unreachable", f"export {PG} --out out", "refused"),
    case("export-out-file", f"export {DB} --study started --out {{in}}/good.json", "is a file"),
    case(
        "export-out-not-empty",
        f"export {DB} --study started --out {{in}}/imgs_3classes",
        "not empty",
    ),
    case("report-missing-db", "report", "prunetune.db", "run `prunetune search` first"),
    case("report-empty-out", f"report {DB} --study started --out ''", "--out is empty"),
    case("report-unknown-study", f"report {DB} --study nope", "no study named 'nope'"),
    case(
        "report-not-prunetune",
        f"report {DB} --study plain --out rep",
        "not made by prunetune",
    ),
    case("report-malformed-url", "report --storage postgres//host/db", "not a URL"),
    case("report-unreachable", f"report {PG}", "refused"),
    case("report-not-a-db", "report --storage sqlite:///{in}/not_a_db.db", "not a database"),
    case(
        "dashboard-missing-db",
        "dashboard --storage sqlite:///gone.db --port {free_port}",
        "gone.db",
    ),
    case(
        "dashboard-unknown-study",
        f"dashboard {DB} --study nope --port {{free_port}}",
        "no study named",
    ),
    case(
        "dashboard-malformed-url",
        "dashboard --storage localhost:5432 --port {free_port}",
        "not a URL",
    ),
    case("dashboard-unreachable", f"dashboard {PG} --port {{free_port}}", "refused"),
    case(
        "dashboard-port-busy",
        f"dashboard {DB} --study plain --port {{busy_port}}",
        "already in use",
        "--port",
    ),
    case(
        "dashboard-host-unknown",
        f"dashboard {DB} --study plain --host nonexistent.invalid",
        "nonexistent.invalid",
    ),
    case(
        "dashboard-host-foreign",
        f"dashboard {DB} --study plain --host 192.0.2.1 --port {{free_port}}",
        "not an address of this machine",
    ),
]


@pytest.mark.parametrize("cmd, needles", CASES)
def test_bad_input_is_one_line_exit_2_nothing_left(
    cmd, needles, inputs, tmp_path, monkeypatch, capsys
):
    if "readonly.db" in cmd and not inputs["read_only"]:
        pytest.skip("cannot make a file read-only for this user here")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    src = Path(inputs["in"])
    before = (_tree(work), _tree(src), _studies(src))
    code, err, shown = _run(_argv(cmd, inputs), capsys)
    assert_one_line_error(code, err, needles)
    assert not shown, (
        f"a real run would also print warnings: {[str(w.message)[:200] for w in shown]}"
    )
    assert _tree(work) == before[0], (
        f"left in the working folder: {sorted(_tree(work) - before[0])}"
    )
    assert _tree(src) == before[1], f"left beside the inputs: {sorted(_tree(src) ^ before[1])}"
    assert _studies(src) == before[2], f"studies changed: {before[2]} -> {_studies(src)}"


def test_the_table_covers_every_subcommand_and_is_large():
    commands = {shlex.split(p.values[0])[0] for p in CASES if p.values[0]}
    assert commands == {
        "info",
        "prune",
        "saliency",
        "search",
        "export",
        "report",
        "dashboard",
        "train-default",
        "frobnicate",
    }
    assert len(CASES) >= 130
    assert len({p.id for p in CASES}) == len(CASES)


# --- the installed entry point ------------------------------------------------------------------


def _console(*args: str) -> list[str]:
    """The ``prunetune`` console script beside this interpreter (else ``python -m``)."""
    exe = Path(sys.executable).with_name("prunetune")
    return [str(exe), *args] if exe.is_file() else [sys.executable, "-m", "prunetune.cli", *args]


@pytest.mark.parametrize(
    "cmd, needles",
    [
        pytest.param(
            "search --budget flops=50% --n-trials 0", ("--n-trials", "integer >= 1"), id="argparse"
        ),
        pytest.param(
            "prune --config {in}/binary.json --out out", ("not UTF-8",), id="binary-config"
        ),
        pytest.param(
            "saliency --criterion taylor --checkpoint {in}/plain_pickle.pt",
            ("pickle",),
            id="pickle-warning",
        ),
        pytest.param(
            "dashboard --storage sqlite:///{in}/studies.db --study plain --port {busy_port}",
            ("already in use",),
            id="port-busy",
        ),
    ],
)
def test_console_script_behaves_the_same(cmd, needles, inputs, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": ""}
    r = subprocess.run(
        _console(*_argv(cmd, inputs)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert_one_line_error(r.returncode, r.stderr, needles)
    assert r.stdout == ""
    assert not list(tmp_path.iterdir())
