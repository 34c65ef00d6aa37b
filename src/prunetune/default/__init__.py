"""The embedded default: a small VisionTransformer trained on scikit-learn's digits.

``digits_vit.safetensors`` ships in this folder; ``python -m prunetune.default.train``
(or ``prunetune train-default``) retrains it from scratch.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_WEIGHTS", "DEFAULT_METRICS"]

DEFAULT_WEIGHTS = Path(__file__).with_name("digits_vit.safetensors")
DEFAULT_METRICS = Path(__file__).with_name("digits_vit.json")
