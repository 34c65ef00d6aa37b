"""Resolve what the user passed (model, weights, data, device) into ready objects.

Shared by the CLI and the Python API so both behave the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .data import (
    BUILTIN_DATA,
    DataSplits,
    calibration_batches,
    image_transform,
    load_data,
    make_loader,
)
from .errors import CheckpointError, PrunetuneError
from .families import family_for
from .families.hf_vit import PREFIX as HF_PREFIX
from .models import BUILTIN_MODELS, ModelSpec, ViTArch, build_model, input_shape, load_weights

__all__ = ["resolve_device", "Loaded", "load_base", "Preprocessing", "resolve_preprocessing"]


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when available, else CPU; anything else is used as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise PrunetuneError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise PrunetuneError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PrunetuneError(
            f"device {device!r} requested but CUDA is not available; use --device cpu"
        )
    return dev


@dataclass
class Loaded:
    spec: ModelSpec
    model: nn.Module
    arch: ViTArch
    data: DataSplits | None
    device: torch.device
    preprocessing: Preprocessing | None = None
    #: the dense model's val accuracy (None without data)
    dense_accuracy: float | None = None
    _val: dict = field(default_factory=dict, repr=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return input_shape(self.model)

    def calibration(self, num_samples: int = 256, batch_size: int = 64, seed: int = 0) -> list:
        if self.data is None:
            raise PrunetuneError(
                "this needs data: pass --data (an ImageFolder directory or a torchvision name)"
            )
        return calibration_batches(self.data.train, num_samples, batch_size, seed)

    def val_batches(self, batch_size: int = 256) -> list:
        """The validation split as batches, read and transformed once per batch size."""
        if self.data is None:
            raise PrunetuneError(
                "this needs data: pass --data (an ImageFolder directory or a torchvision name)"
            )
        if batch_size not in self._val:
            self._val[batch_size] = list(make_loader(self.data.val, batch_size))
        return self._val[batch_size]


@dataclass(frozen=True)
class Preprocessing:
    """The eval preprocessing in force (timm's data config) and where it came from."""

    data_config: dict
    in_chans: int
    source: str

    def describe(self) -> str:
        c = self.data_config
        if c.get("builtin"):
            return f"preprocessing: {c['builtin']} ({self.source})"
        side = c["input_size"][-1]
        crop = (
            f"centre crop {side} of a resize to {int(side / c['crop_pct'])}"
            if c["crop_pct"] < 1
            else f"resize to {side}"
        )
        fmt = lambda v: "(" + ", ".join(f"{x:g}" for x in v) + ")"  # noqa: E731
        return (
            f"preprocessing: {crop} ({c['interpolation']}), "
            f"{'grey, ' if self.in_chans == 1 else ''}"
            f"mean {fmt(c['mean'])}, std {fmt(c['std'])} ({self.source})"
        )


def resolve_preprocessing(
    model: nn.Module,
    spec: ModelSpec,
    in_chans: int,
    mean=None,
    std=None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> Preprocessing:
    """The model's eval preprocessing: flags over its ``pretrained_cfg`` (a model file's or timm's).

    Raises:
        PrunetuneError: No normalisation is known for the model and none was given, or the
            mean/std do not fit the model's channels.
    """
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    known = "mean" in cfg and "std" in cfg
    if (mean is None) != (std is None):
        raise PrunetuneError("--mean and --std go together; pass both")
    if mean is None and not known and spec.name.startswith(HF_PREFIX):
        raise PrunetuneError(
            f"model {spec.name} has no known normalisation: pass --mean and --std, or save "
            f"its image processor (preprocessor_config.json with image_mean and image_std) "
            f"into the folder"
        )
    if mean is None and not known:
        raise PrunetuneError(
            f"model {spec.name} has no known normalisation: pass --mean and --std (e.g. --mean "
            f"0.5 --std 0.5 "
            f'for (x - 0.5) / 0.5), or add "pretrained_cfg": {{"mean": [...], "std": [...]}} to '
            f"its model file"
        )
    args = {
        k: v
        for k, v in {
            "mean": mean,
            "std": std,
            "interpolation": interpolation,
            "crop_pct": crop_pct,
        }.items()
        if v is not None
    }
    if "crop_pct" not in cfg and "crop_pct" not in args:
        args["crop_pct"] = 1.0  # no pretrained recipe: resize to the input size, crop nothing
    args["input_size"] = (in_chans, *input_shape(model)[1:])
    from timm.data import resolve_data_config

    data_config = resolve_data_config(args, model=model)
    for key in ("mean", "std"):
        v = tuple(float(x) for x in data_config[key])
        if len(v) == 1 and in_chans > 1:
            v = v * in_chans
        if len(v) != in_chans:
            raise PrunetuneError(
                f"--{key} has {len(v)} values but model {spec.name} takes {in_chans} channels; "
                f"give {in_chans} values (or one for all)"
            )
        data_config[key] = v
    if mean is not None:
        source = "flags"
    elif spec.pretrained_cfg.get("mean"):
        source = "model file"
    elif spec.name.startswith(HF_PREFIX):
        source = "the folder's preprocessor_config.json"
    else:
        source = f"{spec.name}'s pretrained_cfg"
    return Preprocessing(data_config, in_chans, source)


_BUILTIN_SOURCES = {
    "digits": "scikit-learn digits, 8x8 upsampled",
    "photos": "scikit-image photographs, 32x32 patches",
}


def preprocessing_for(
    model: nn.Module,
    spec: ModelSpec,
    data: str,
    mean=None,
    std=None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> Preprocessing:
    """The preprocessing of ``data`` for ``model``: the built-in data's fixed scaling (it ships
    as tensors in [0, 1]), else :func:`resolve_preprocessing`."""
    in_chans = family_for(spec.name).stem(model).in_chans  # the model may be pruned
    if data in BUILTIN_DATA:
        return Preprocessing(
            {"builtin": f"{_BUILTIN_SOURCES[data]}, (x - 0.5) / 0.5", "source": data},
            in_chans,
            "built in",
        )
    return resolve_preprocessing(model, spec, in_chans, mean, std, interpolation, crop_pct)


def deployment_preprocessing(
    model: nn.Module,
    spec: ModelSpec,
    data: str | None = None,
    mean=None,
    std=None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> dict:
    """What a deployment does to an image before the model, in timm's keys.

    ``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct`` (and ``crop_mode``); for
    the built-in data, which ships as tensors, the scaling (x - 0.5) / 0.5 and where the
    images came from.
    """
    if data is None and spec.name in BUILTIN_MODELS:
        data = BUILTIN_MODELS[spec.name][1]
    pre = preprocessing_for(model, spec, data, mean, std, interpolation, crop_pct)
    c = pre.data_config
    if c.get("builtin"):
        return {
            "input_size": list(input_shape(model)),
            "mean": [0.5] * pre.in_chans,
            "std": [0.5] * pre.in_chans,
            "source": _BUILTIN_SOURCES[c["source"]] + ", in [0, 1]",
        }
    keep = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
    return {k: list(c[k]) if isinstance(c[k], tuple) else c[k] for k in keep if k in c}


def load_base(
    spec: ModelSpec,
    checkpoint: str | Path | None = None,
    data: str | None = None,
    download: bool = False,
    data_root: str | None = None,
    device: str | None = None,
    mean=None,
    std=None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    announce: Callable[[str], None] | None = None,
    check_dense: bool = True,
) -> Loaded:
    """Builds the base model, loads its weights and its data, and scores the dense model.

    The embedded default loads its shipped weights and the digits; any other model needs a
    ``checkpoint`` (prunetune never downloads weights). Images are preprocessed the model's
    way (:func:`resolve_preprocessing`). ``announce`` receives one line with the
    preprocessing and the dense model's val accuracy, before any other work.

    Raises:
        PrunetuneError: among others, when the dense model scores within 5 points of chance
            on val (wrong normalisation, channels or class order), unless ``check_dense`` is off.
    """
    dev = resolve_device(device)
    model = build_model(spec)
    builtin = spec.name in BUILTIN_MODELS
    family = family_for(spec.name)
    if checkpoint is None and builtin and not spec.kwargs:
        from .default import weights_of

        checkpoint = weights_of(spec.name)
    if checkpoint is None and family.default_checkpoint(spec.name) is not None:
        family.load_pretrained(model, spec.name)  # the model folder's own weights
    elif checkpoint is None:
        raise CheckpointError(
            f"--checkpoint is required for model {spec.name} (prunetune never downloads weights)"
        )
    else:
        load_weights(model, checkpoint)
    model.to(dev).eval()
    arch = ViTArch.from_model(model)
    if data is None and not builtin:
        raise PrunetuneError(
            f"--data is required for model {spec.name}; the built-in data sets fit only "
            f"the built-in models ({', '.join(BUILTIN_MODELS)})"
        )
    if data is None:
        data = BUILTIN_MODELS[spec.name][1]
    # the data's own checks (missing folders, classes) come first, then the preprocessing
    splits = load_data(
        data,
        img_size=input_shape(model)[1],
        in_chans=arch.in_chans,
        download=download,
        root=data_root,
    )
    pre = preprocessing_for(model, spec, data, mean, std, interpolation, crop_pct)
    if data not in BUILTIN_DATA:
        transform = image_transform(pre.data_config, arch.in_chans)
        for ds in (splits.train, splits.val, splits.test):
            if ds is not None:
                ds.transform = transform
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise PrunetuneError(f"data set {splits.name} is empty")
    if splits.num_classes and splits.num_classes != arch.num_classes:
        raise PrunetuneError(
            f"data set {splits.name} has {splits.num_classes} classes but the model's head has "
            f"{arch.num_classes}; pass a checkpoint trained on this data"
        )
    from .evaluators import evaluate_accuracy

    loaded = Loaded(spec, model, arch, splits, dev, pre)
    loaded.dense_accuracy = dense = evaluate_accuracy(model, loaded.val_batches()).accuracy
    classes = splits.num_classes or arch.num_classes
    if announce is not None:
        test = "" if splits.test is not None else "; no test split"
        announce(
            f"{pre.describe()}; dense val accuracy {100 * dense:.2f} % on {len(splits.val)} images "
            f"(chance {100 / classes:.1f} %){test}"
        )
    if check_dense and classes > 1 and dense <= 1 / classes + 0.05:
        raise PrunetuneError(
            f"the dense model scores {100 * dense:.2f} % on val, within 5 points of chance "
            f"({100 / classes:.1f} %): "
            f"check the normalisation ({pre.describe().removeprefix('preprocessing: ')}), the "
            f"channels and "
            f"the class order (class folders are read in sorted order); --skip-dense-check runs "
            f"anyway"
        )
    return loaded
