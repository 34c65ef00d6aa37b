"""The built-in models: small VisionTransformers trained on data that ships with a package.

``digits_vit`` (the embedded default, scikit-learn's digits) and ``photos_vit`` (32x32 patches
of scikit-image's colour photographs). ``<name>.safetensors`` and ``<name>.json`` (recipe and
measured accuracies) ship in this folder; ``prunetune train-default --model NAME`` retrains one
from scratch.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_WEIGHTS", "DEFAULT_METRICS", "weights_of", "metrics_of"]


def weights_of(name: str) -> Path:
    """Where the shipped weights of built-in model ``name`` live."""
    return Path(__file__).with_name(f"{name}.safetensors")


def metrics_of(name: str) -> Path:
    """Where the recipe and measured accuracies of built-in model ``name`` live."""
    return Path(__file__).with_name(f"{name}.json")


DEFAULT_WEIGHTS = weights_of("digits_vit")
DEFAULT_METRICS = metrics_of("digits_vit")
