"""Model families: one adapter per kind of Vision Transformer.

- ``timm``: timm's ``VisionTransformer`` (``vit_*``, ``deit_*``, ``deit3_*``, ``vit_custom``
  and the built-in models);
- ``hf``: Hugging Face ``transformers`` ``ViTForImageClassification`` and
  ``DeiTForImageClassification`` from a local folder (``hf:DIR``; optional extra
  ``pip install -e '.[hf]'``).

Everything that touches a model's modules goes through :func:`family_of`; see
:class:`ModelFamily` for what an adapter supplies.
"""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from ..registry import FAMILIES
from . import hf_vit, timm_vit  # noqa: F401  (registers the built-in families)
from ._base import ModelFamily, Part, Stem, part_channels

__all__ = ["ModelFamily", "Part", "Stem", "family_for", "family_of", "part_channels"]


def family_of(model: nn.Module) -> ModelFamily:
    """The family that owns ``model``.

    Raises:
        UnsupportedModelError: No registered family owns it.
    """
    for _, family in FAMILIES.items():
        if family.owns(model):
            return family
    raise UnsupportedModelError(
        f"{type(model).__name__} is not a supported Vision Transformer; supported: timm "
        "VisionTransformer (vit_*, deit_*, deit3_*, a custom VisionTransformer) and Hugging Face "
        "ViT/DeiT image classifiers (hf:DIR)"
    )


def family_for(name: str) -> ModelFamily | None:
    """The family that builds models named ``name``, or None."""
    for _, family in FAMILIES.items():
        if family.owns_name(name):
            return family
    return None
