"""Adding a saliency criterion is one new file plus its registration.

The criterion below lives in a file the test writes outside the package; nothing of prunetune
is edited. It is loaded through ``PRUNETUNE_PLUGINS`` (in process and by the real CLI in a
subprocess), passes the shipped saliency contract and drives pruning. Further tests pin down
:func:`prunetune.plugins.load_plugins`: module names, entry points, idempotence, and the
one-line error of a plug-in that fails to import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from prunetune import BlockConfig, PrunetuneError, PruningConfig, list_saliencies, plugins, prune
from prunetune.plugins import load_plugins
from prunetune.pruners import get_saliency
from prunetune.registry import SALIENCIES
from prunetune.testing import check_saliency
from prunetune.testing.saliency import TINY_SPEC, calibration_batches, tiny_model

NAME = "tmp_grad_abs"

#: The whole plug-in: one file, one registration decorator.
PLUGIN = '''
"""Mean |dL/dw| over the calibration batches, summed per head, MLP neuron and block."""

import torch
import torch.nn.functional as F

from prunetune.pruners import group_scores
from prunetune.registry import SALIENCIES


@SALIENCIES.register("{name}")
class GradAbs:
    def scores(self, model, batches):
        params = {{n: p for n, p in model.named_parameters() if n.startswith("blocks.")}}
        flags, was = [p.requires_grad for p in params.values()], model.training
        acc = {{n: torch.zeros_like(p) for n, p in params.items()}}
        dev = next(model.parameters()).device
        model.eval()
        try:
            with torch.enable_grad():
                for p in params.values():
                    p.requires_grad_(True)
                for x, y in batches:
                    loss = F.cross_entropy(model(x.to(dev)), y.to(dev))
                    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                    for n, g in zip(params, grads):
                        if g is not None:
                            acc[n] += g.abs() / len(batches)
        finally:
            model.train(was)
            for p, f in zip(params.values(), flags):
                p.requires_grad_(f)
        return group_scores(model, acc, self.name)
'''


def cli(*args: str) -> list[str]:
    """The installed ``prunetune`` script beside this interpreter (else ``python -m``)."""
    exe = Path(sys.executable).with_name("prunetune")
    return [str(exe), *args] if exe.is_file() else [sys.executable, "-m", "prunetune.cli", *args]


def cli_env(plugins_var: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PRUNETUNE_PLUGINS": plugins_var}


@pytest.fixture
def fresh_plugins(monkeypatch):
    """An empty record of loaded plug-ins, and the registry and sys.modules restored after."""
    monkeypatch.setattr(plugins, "_LOADED", set())
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    names, modules = set(SALIENCIES.names()), set(sys.modules)
    yield monkeypatch
    for n in set(SALIENCIES.names()) - names:
        SALIENCIES.unregister(n)
    for m in set(sys.modules) - modules:
        if m.startswith(("_prunetune_plugin_", "tmp_plugin_")):
            del sys.modules[m]


def write_plugin(folder, name: str = NAME, filename: str = "grad_abs.py"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(PLUGIN.format(name=name))
    return path


def test_new_criterion_loaded_checked_and_pruning(tmp_path, fresh_plugins):
    path = write_plugin(tmp_path / "plugins")
    assert NAME not in SALIENCIES
    fresh_plugins.setenv("PRUNETUNE_PLUGINS", str(path))
    loaded = load_plugins()
    assert len(loaded) == 1 and loaded[0] in sys.modules
    assert NAME in SALIENCIES and NAME in list_saliencies()
    assert load_plugins() == []  # idempotent

    check_saliency(NAME)

    model = tiny_model()
    batches = calibration_batches(model)
    cfg = PruningConfig(
        TINY_SPEC,
        tuple(BlockConfig(head_threshold=0.7, mlp_threshold=0.7) for _ in range(len(model.blocks))),
        criterion=NAME,
        width_mode="threshold",
    )
    assert PruningConfig.from_json(cfg.to_json()) == cfg  # the name validates like a built-in
    pruned = prune(model, cfg, batches=batches)
    want = cfg.resolve(get_saliency(NAME).scores(model, batches))
    assert pruned.pruning_config == want
    kept = [blk.attn.num_heads for blk in pruned.blocks]
    neurons = [blk.mlp.fc1.out_features for blk in pruned.blocks]
    assert sum(kept) < 4 * len(kept) or sum(neurons) < 64 * len(neurons), (kept, neurons)
    assert kept == [b.heads for b in want.blocks] and neurons == [b.mlp for b in want.blocks]
    with torch.no_grad():
        assert torch.isfinite(pruned.eval()(batches[0][0])).all()


def test_new_criterion_from_the_cli(tmp_path):
    """``PRUNETUNE_PLUGINS=/path/plugin.py prunetune saliency --criterion <new>`` elsewhere."""
    path = write_plugin(tmp_path / "plugins")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run(
        cli(
            "saliency",
            "--criterion",
            NAME,
            "--calib-samples",
            "16",
            "--batch-size",
            "16",
            "--device",
            "cpu",
        ),
        cwd=elsewhere,
        env=cli_env(str(path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert f"criterion {NAME} on 16 calibration images" in r.stdout
    assert len([ln for ln in r.stdout.splitlines() if ln[:1].isdigit()]) == 6  # digits_vit depth
    assert NAME not in SALIENCIES  # the subprocess registered it, not this process


def test_broken_plugin_is_a_one_line_cli_error(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import prunetune_no_such_dependency\n")
    r = subprocess.run(
        cli("info"),
        cwd=tmp_path,
        env=cli_env(str(path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunetune: error: plug-in "), r.stderr
    assert str(path) in lines[0] and "prunetune_no_such_dependency" in lines[0]


def test_broken_plugin_raises_one_line(tmp_path, fresh_plugins):
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('the plug-in needs a GPU\\nsecond line')\n")
    fresh_plugins.setenv("PRUNETUNE_PLUGINS", f" {path} ")
    with pytest.raises(PrunetuneError) as info:
        load_plugins()
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    assert "RuntimeError: the plug-in needs a GPU" in msg and "second line" not in msg
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not any(m.startswith("_prunetune_plugin_broken") for m in sys.modules)

    fresh_plugins.setenv("PRUNETUNE_PLUGINS", str(tmp_path / "missing.py"))
    with pytest.raises(PrunetuneError, match="missing.py.*FileNotFoundError"):
        load_plugins()
    fresh_plugins.setenv("PRUNETUNE_PLUGINS", "tmp_plugin_not_installed")
    with pytest.raises(PrunetuneError, match="'tmp_plugin_not_installed'.*ModuleNotFoundError"):
        load_plugins()


def test_module_names_and_same_named_files(tmp_path, fresh_plugins):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "tmp_plugin_mod.py").write_text(PLUGIN.format(name="tmp_from_module"))
    fresh_plugins.syspath_prepend(str(tmp_path / "mods"))
    a = write_plugin(tmp_path / "a", "tmp_from_a", "plugin.py")
    b = write_plugin(tmp_path / "b", "tmp_from_b", "plugin.py")
    fresh_plugins.setenv("PRUNETUNE_PLUGINS", f"tmp_plugin_mod, {a},,{b} ")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second registration would warn
        loaded = load_plugins()
        assert loaded[0] == "tmp_plugin_mod" and len(set(loaded)) == 3
        assert {"tmp_from_module", "tmp_from_a", "tmp_from_b"} <= set(SALIENCIES.names())
        assert load_plugins() == []


def test_entry_points(tmp_path, fresh_plugins):
    site = tmp_path / "site"
    dist = site / "tmp_plugin_dist-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tmp-plugin-dist\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[prunetune.plugins]\ngrad = tmp_plugin_ep\n")
    (site / "tmp_plugin_ep.py").write_text(PLUGIN.format(name="tmp_from_entry_point"))
    fresh_plugins.syspath_prepend(str(site))
    assert "tmp_plugin_ep" in load_plugins()
    assert "tmp_from_entry_point" in SALIENCIES
    assert load_plugins() == []
