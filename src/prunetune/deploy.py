"""Deployment files of a pruned model: ONNX (checked with onnxruntime), a ``torch.export``
program, and a timm-style model card in ``config.json``.

Every pruned model has static shapes once its configuration is fixed: widths are sliced and the
token modes keep fixed counts, so the exported graph holds no data-dependent shapes. Only the
batch dimension stays dynamic. The token modes rank tokens with a stable descending sort, which
the ONNX exporter has no translation for; it is written as ONNX ``TopK`` over the whole axis,
whose specification orders equal values by index (the stable order), so the exported graph picks
exactly the tokens PyTorch picks.

Each written file is loaded back and run on two seeded batches (sizes 1 and 3, so the dynamic
batch is exercised) and compared with the PyTorch model; the largest absolute difference is
recorded and an export that differs by more than :data:`TOLERANCE` (relative to the logits'
scale) is refused.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import PrunetuneError

__all__ = [
    "FORMATS",
    "ONNX_FILE",
    "PT2_FILE",
    "TOLERANCE",
    "check_formats",
    "export_onnx",
    "export_pt2",
    "model_card",
    "onnx_session",
    "parse_formats",
    "write_deploy",
]

FORMATS = ("onnx", "pt2")
ONNX_FILE = "model.onnx"
PT2_FILE = "model.pt2"
#: The largest difference an export may show against PyTorch, times max(1, max |logit|).
TOLERANCE = 1e-4
ONNX_OPSET = 18
_CHECK_BATCHES = (1, 3)
_MAX_BATCH = 65536


def parse_formats(text: str | None) -> tuple[str, ...]:
    """``"onnx,pt2"`` -> ``("onnx", "pt2")``; ``safetensors`` (always written) is accepted."""
    if text is None:
        return ()
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in (*FORMATS, "safetensors")]
    if bad or not names:
        raise PrunetuneError(
            f"unknown export format {bad[0] if bad else text!r}; choose from safetensors (always "
            f"written), {', '.join(FORMATS)} (comma-separated, e.g. --format onnx,pt2)"
        )
    return tuple(dict.fromkeys(n for n in names if n != "safetensors"))


def check_formats(formats: tuple[str, ...]) -> None:
    """Fails before anything is written when a format's libraries are missing."""
    if "onnx" not in formats:
        return
    missing = []
    for mod in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise PrunetuneError(
            f"--format onnx needs {', '.join(missing)}: pip install 'prunetune[deploy]'"
        )


def _examples(model: nn.Module) -> list[torch.Tensor]:
    from .models import input_shape

    shape = input_shape(model)
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(b, *shape, generator=gen) for b in _CHECK_BATCHES]


def _dynamic_batch():
    return ({0: torch.export.Dim("batch", min=1, max=_MAX_BATCH)},)


def _compare(run, model: nn.Module, examples: list[torch.Tensor], what: str) -> float:
    """Largest |run(x) - model(x)| over ``examples``; refuses a mismatch beyond the tolerance."""
    worst, scale = 0.0, 1.0
    with torch.no_grad():
        for x in examples:
            ref = model(x)
            got = torch.as_tensor(run(x))
            if got.shape != ref.shape:
                raise PrunetuneError(
                    f"the {what} export gives outputs of shape {tuple(got.shape)} for batch "
                    f"{len(x)}, PyTorch {tuple(ref.shape)}; this model cannot be exported as {what}"
                )
            worst = max(worst, float((got.float() - ref.float()).abs().max()))
            scale = max(scale, float(ref.abs().max()))
    if not worst <= TOLERANCE * scale:  # NaN fails too
        raise PrunetuneError(
            f"the {what} export differs from PyTorch by {worst:.3g} (tolerance "
            f"{TOLERANCE * scale:.3g}); export without --format {what} and report the model"
        )
    return worst


@contextlib.contextmanager
def _quiet():
    """The exporters print progress lines and warnings meant for their developers."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield


def _sort_as_topk(self, *, stable=None, dim: int = -1, descending: bool = False):
    """``aten.sort.stable`` as ONNX TopK over the whole axis (ties keep index order)."""
    from onnxscript import opset18 as op

    k = op.Shape(self, start=dim) if dim == -1 else op.Shape(self, start=dim, end=dim + 1)
    return op.TopK(self, k, axis=dim, largest=1 if descending else 0, sorted=1)


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session on ``path`` (``threads`` intra-op threads, default all)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, path: str | Path) -> dict:
    """Writes ``model`` as ONNX (dynamic batch) to ``path`` and checks it with onnxruntime."""
    model = model.eval().cpu()
    examples = _examples(model)
    try:
        with _quiet():
            torch.onnx.export(
                model,
                (examples[-1],),
                str(path),
                input_names=["pixel_values"],
                output_names=["logits"],
                dynamo=True,
                opset_version=ONNX_OPSET,
                dynamic_shapes=_dynamic_batch(),
                custom_translation_table={torch.ops.aten.sort.stable: _sort_as_topk},
                external_data=False,
            )
    except Exception as e:  # the exporter's own errors are long reports
        raise PrunetuneError(
            f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None
    sess = onnx_session(path)
    name = sess.get_inputs()[0].name

    def run(x):
        return torch.from_numpy(sess.run(None, {name: x.numpy()})[0])

    import onnxruntime

    diff = _compare(run, model, examples, "onnx")
    return {
        "file": Path(path).name,
        "opset": ONNX_OPSET,
        "max_abs_diff": diff,
        "checked_with": f"onnxruntime {onnxruntime.__version__}, batches {list(_CHECK_BATCHES)}",
    }


def export_pt2(model: nn.Module, path: str | Path) -> dict:
    """Writes ``model`` as a ``torch.export`` program (dynamic batch) and checks it reloaded."""
    model = model.eval().cpu()
    examples = _examples(model)
    try:
        with _quiet():
            ep = torch.export.export(model, (examples[-1],), dynamic_shapes=_dynamic_batch())
            torch.export.save(ep, str(path))
    except Exception as e:
        raise PrunetuneError(
            f"torch.export failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None
    loaded = torch.export.load(str(path)).module()
    diff = _compare(loaded, model, examples, "pt2")
    return {
        "file": Path(path).name,
        "max_abs_diff": diff,
        "checked_with": f"torch.export.load, batches {list(_CHECK_BATCHES)}",
    }


def write_deploy(model: nn.Module, folder: str | Path, formats: tuple[str, ...]) -> dict:
    """Writes every format of ``formats`` into ``folder``; returns what each check measured."""
    folder = Path(folder)
    done = {}
    for fmt in formats:
        if fmt == "onnx":
            done[fmt] = export_onnx(model, folder / ONNX_FILE)
        elif fmt == "pt2":
            done[fmt] = export_pt2(model, folder / PT2_FILE)
        else:
            raise PrunetuneError(f"unknown export format {fmt!r}; choose from {FORMATS}")
    return done


def model_card(config, preprocessing: dict, arch) -> dict:
    """timm-style keys that go into an export's ``config.json`` beside the pruning config.

    ``architecture``, ``num_classes``, ``num_features`` and ``pretrained_cfg`` (``input_size``,
    ``mean``, ``std``, ``interpolation``, ``crop_pct``: what a deployment must do to an image)
    as in timm's hub configs, and ``block_shapes``: heads, MLP width and tokens per block.
    :meth:`PruningConfig.load` reads such a file and ignores these keys.
    """
    from .evaluators import estimate_cost

    card = {
        "architecture": config.model.name,
        "num_classes": arch.num_classes,
        "num_features": arch.embed_dim,
        "pretrained_cfg": preprocessing,
    }
    if config.width_mode == "count":
        card["block_shapes"] = [
            {"block": b.index, "kept": b.kept, "tokens": b.tokens, "heads": b.heads, "mlp": b.mlp}
            | ({"sparsity": config.blocks[b.index].sparsity} if b.kept else {})
            for b in estimate_cost(config, arch).blocks
        ]
    return card
