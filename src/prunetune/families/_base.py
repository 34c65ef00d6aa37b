"""The model-family protocol: everything prunetune needs to know about one kind of ViT.

A family adapter is one module with a :class:`ModelFamily` subclass registered in
:data:`prunetune.registry.FAMILIES`. The pruners, saliency criteria, token modes, cost model,
latency table and session loading reach a model only through these methods, so a new family
(another library's ViT) is one adapter file; the contract suites in ``prunetune.testing`` run
over every family in the tests' family list.

What varies between families is *where* things are (module paths, attribute names) and how a
model is built and called; what a head, an MLP neuron or a block is does not. A head's
channels (``head_dim`` of them, in every projection that reads or writes heads) and an MLP
neuron's are described as :class:`Part` s, from which the generic code slices weights, groups
element scores into unit scores and counts parameters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ModelFamily", "Part", "Stem"]


@dataclass(frozen=True)
class Part:
    """One module of a block whose channels follow a unit (an attention head, an MLP neuron).

    Attributes:
        path: The module's path inside the block (``"attn.qkv"``, ``"mlp.fc1"``).
        axis: 0 when the units are the module's outputs (a Linear's rows and bias, a norm's
            channels), 1 when they are its inputs (a Linear's columns).
        repeat: How many times the units' channels repeat along ``axis``, one copy after the
            other (3 for a fused q/k/v projection).
    """

    path: str
    axis: int
    repeat: int = 1


@dataclass(frozen=True)
class Stem:
    """What a model has outside its blocks, as the cost model and the token surgery see it.

    Attributes:
        embed_dim: Residual width.
        img_size: (height, width) the model takes.
        in_chans: Input channels.
        patch_area: Pixels per patch (the patch embedding's kernel area).
        num_patches: Patch tokens after embedding.
        num_prefix_tokens: Class, distillation and register tokens.
        has_class_token: The first prefix token is a class token.
        num_classes: Classifier outputs.
        num_heads_out: Classifier heads applied (2 for a distilled DeiT with both heads).
    """

    embed_dim: int
    img_size: tuple[int, int]
    in_chans: int
    patch_area: int
    num_patches: int
    num_prefix_tokens: int
    has_class_token: bool
    num_classes: int
    num_heads_out: int


class ModelFamily(ABC):
    """One family of Vision Transformers: how to find, build, call and cut its parts.

    Registered instances live in :data:`prunetune.registry.FAMILIES`; :func:`family_of`
    returns the one that owns a model and :func:`family_for` the one a model name belongs to.
    """

    name: str

    # --- naming and building -------------------------------------------------------------

    @abstractmethod
    def owns_name(self, name: str) -> bool:
        """A model name (``--model``) this family builds."""

    @abstractmethod
    def check_name(self, name: str, kwargs: dict[str, Any]) -> None:
        """Raises UnsupportedModelError with a one-line reason when ``name`` cannot be built."""

    @abstractmethod
    def build(self, name: str, kwargs: dict[str, Any]) -> nn.Module:
        """A model with random weights (never downloads), whose forward returns logits."""

    def preprocessing(self, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The family's own record of the eval preprocessing (timm's data-config keys)."""
        return {}

    def default_checkpoint(self, name: str) -> str | None:
        """The weights file a model name comes with, if any (a local model folder's)."""
        return None

    def load_pretrained(self, model: nn.Module, name: str) -> None:
        """Loads the weights :meth:`default_checkpoint` names into ``model``."""
        raise NotImplementedError(f"model family {self.name!r} has no weights of its own")

    # --- the model -------------------------------------------------------------------------

    @abstractmethod
    def owns(self, model: nn.Module) -> bool:
        """``model`` is one of this family's."""

    @abstractmethod
    def check(self, model: nn.Module) -> None:
        """Raises UnsupportedModelError unless every part of ``model`` is one we can cut."""

    @abstractmethod
    def stem(self, model: nn.Module) -> Stem:
        """What the model has outside its blocks."""

    @abstractmethod
    def blocks_path(self, model: nn.Module) -> str:
        """Where the blocks are (``"blocks"``); block ``i``'s parameters are under
        ``f"{blocks_path}.{i}."``."""

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The transformer blocks, in order."""
        return list(model.get_submodule(self.blocks_path(model)))

    @abstractmethod
    def set_blocks(self, model: nn.Module, blocks: list[nn.Module]) -> None:
        """Replaces the blocks (depth pruning)."""

    @abstractmethod
    def embedding(self, model: nn.Module) -> nn.Module:
        """A module that runs once at the start of every forward, before any block."""

    # --- one block -------------------------------------------------------------------------

    @abstractmethod
    def heads(self, block: nn.Module) -> tuple[int, int]:
        """(number of heads, head dim) of the block's attention."""

    @abstractmethod
    def set_heads(self, block: nn.Module, num_heads: int) -> None:
        """Updates the attention's own record of its head count after the parts were cut."""

    @abstractmethod
    def head_parts(self, block: nn.Module) -> list[Part]:
        """The modules whose channels follow the heads (only those the block has)."""

    @abstractmethod
    def mlp_width(self, block: nn.Module) -> int:
        """Hidden neurons of the block's MLP."""

    @abstractmethod
    def mlp_parts(self, block: nn.Module) -> list[Part]:
        """The modules whose channels follow the MLP neurons."""

    @abstractmethod
    def attn_out_path(self, block: nn.Module) -> str:
        """Path of the Linear that reads the concatenated head outputs (its input is the
        heads' activations)."""

    @abstractmethod
    def mlp_out_path(self, block: nn.Module) -> str:
        """Path of the Linear that reads the MLP's hidden neurons."""

    @abstractmethod
    def input_norm(self, block: nn.Module) -> nn.Module:
        """The norm the block applies first: its input is the block's input after any token
        reduction, and its width is the residual width."""

    # --- attention paths and token surgery ------------------------------------------------

    @abstractmethod
    def attention_state(self, model: nn.Module) -> Any:
        """A value that changes when the model's attention path is switched (for checks that
        a criterion leaves the model as it found it)."""

    @abstractmethod
    def restore_attention(self, model: nn.Module, state: Any) -> None:
        """Puts back the attention paths :meth:`attention_state` returned."""

    @abstractmethod
    def set_explicit_attention(self, model: nn.Module, explicit: bool) -> None:
        """Switches every block to the explicit (matmul-softmax-matmul) attention path, needed
        for double backward and ``vmap``, or back to the fused kernel."""

    def explicit_attention(self, model: nn.Module) -> AbstractContextManager:
        """Context manager: the explicit path inside, the previous state restored after."""
        return _Explicit(self, model)

    @abstractmethod
    def capture(
        self,
        block: nn.Module,
        which: str,
        store: Callable[[torch.Tensor, float], None],
    ) -> None:
        """Calls ``store(t, scale)`` on every forward of ``block`` with its ``which`` ("q" or
        "k") as (B, heads, N, head_dim) and its attention scale."""

    @abstractmethod
    def token_class(self, cls: type, prepare: Callable[[nn.Module, torch.Tensor], tuple]) -> type:
        """A subclass of block class ``cls`` whose forward first calls
        ``prepare(block, x) -> (x, attn_bias)`` and then runs ``cls``'s own forward on the
        returned tokens, with ``attn_bias`` (an additive attention mask or None) passed as the
        block's attention mask. One class per (``cls``, ``prepare``)."""

    def token_support_problem(self) -> str | None:
        """What the token surgery needs and the installed library lacks, or None."""
        return None


class _Explicit:
    def __init__(self, family: ModelFamily, model: nn.Module):
        self.family, self.model = family, model

    def __enter__(self) -> nn.Module:
        self.before = self.family.attention_state(self.model)
        self.family.set_explicit_attention(self.model, True)
        return self.model

    def __exit__(self, *exc) -> None:
        self.family.restore_attention(self.model, self.before)


def part_channels(part: Part, units: torch.Tensor, unit_size: int, total: int) -> torch.Tensor:
    """Channel indices of ``units`` (each ``unit_size`` wide) in every copy of ``part``;
    ``total`` is one copy's width."""
    ch = (units[:, None] * unit_size + torch.arange(unit_size)[None, :]).reshape(-1)
    return torch.cat([ch + r * total for r in range(part.repeat)])
