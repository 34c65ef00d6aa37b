"""The token-mode protocol: what one way of reducing tokens supplies to the generic machinery."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import nn

from ...errors import ConfigError
from ...registry import TOKEN_MODES
from .._tokens import ReductionStep, TokenContext, register_token_pruner

if TYPE_CHECKING:
    from ...config import PruningConfig
    from ...models import ViTArch

__all__ = ["TokenMode"]


class TokenMode(ABC):
    """One token-reduction mode: its config rules, its analytic cost and its runtime.

    A mode is one module with a subclass registered in :data:`prunetune.registry.TOKEN_MODES`
    (which stores one instance)::

        @TOKEN_MODES.register("l2norm")
        class L2NormMode(TokenMode):
            def extra_macs(self, arch, step):
                return step.p_in * arch.embed_dim
            def reduce(self, block, ctx, x):
                ...

    Registering it also registers the generic token pruner for it as ``tokens_<name>``; the
    pruner swaps each block from the first reducing one on to the model family's token class
    (see :func:`~prunetune.pruners._tokens.prepare_tokens`), calls :meth:`install` for every
    reducing block, and the blocks call :meth:`reduce` and :meth:`attn_bias` on every
    forward. To
    remove a mode (a test's temporary one), unregister ``name`` from ``TOKEN_MODES`` and
    ``tokens_<name>`` from ``prunetune.registry.PRUNERS``.
    :func:`prunetune.testing.token_modes.check_token_mode` is the contract every mode passes.

    Attributes:
        captures: Which of the previous kept block's ``"q"``/``"k"`` the mode reads (stored in
            ``ctx.q``/``ctx.k``, with that block's ``ctx.scale``). A mode that captures any
            needs a previous block, so the first kept block must have ``token_keep=1``.
        needs_class_token: The mode needs a class token (e.g. it ranks by class attention).
    """

    name: str
    captures: tuple[str, ...] = ()
    needs_class_token: bool = False

    def __init__(self) -> None:
        if getattr(type(self), "name", None) is not None:
            register_token_pruner(self.name)

    def __copy__(self) -> TokenMode:
        return self  # a registered mode is stateless (per-forward state lives in the context)

    def __deepcopy__(self, memo: dict) -> TokenMode:
        return self

    # --- configuration --------------------------------------------------------------------

    def validate(self, config: PruningConfig) -> None:
        """Mode-level rules that need no model (``PruningConfig`` calls this).

        Raises:
            ConfigError: A rule does not hold; the message says what must hold and what came.
        """
        if not self.captures:
            return
        first = next(i for i, b in enumerate(config.blocks) if b.keep)
        if config.blocks[first].token_keep < 1.0:
            raise ConfigError(
                f"token_mode={self.name!r} reduces tokens using the previous block's attention, "
                f"so the first kept block ({first}) must have token_keep=1, but got "
                f"token_keep={config.blocks[first].token_keep}"
            )

    # --- analytic cost --------------------------------------------------------------------

    def tokens_out(self, p_in: int, kept: int) -> int:
        """Patch tokens leaving a reducing block that keeps ``kept`` of ``p_in``."""
        return kept

    def extra_macs(self, arch: ViTArch, step: ReductionStep) -> int:
        """MACs the reduction itself adds at one reducing block (scorer, matching, ...)."""
        return 0

    def extra_params(self, arch: ViTArch) -> int:
        """Parameters the mode adds per reducing block (e.g. a keep predictor)."""
        return 0

    # --- runtime --------------------------------------------------------------------------

    def install(
        self, model: nn.Module, block: nn.Module, prev_block: nn.Module | None, ctx: TokenContext
    ) -> None:
        """Prepares reducing ``block`` (hooks, modules); may refuse the model.

        ``prev_block`` is the previous kept block (None at the first kept block);
        ``block.token_keep`` and ``block.token_kept`` are set. The default captures
        :attr:`captures` from ``prev_block``.

        Raises:
            ConfigError: The model lacks what the mode needs.
        """
        if self.needs_class_token and not ctx.has_class_token:
            others = [n for n, m in TOKEN_MODES.items() if not m.needs_class_token]
            raise ConfigError(
                f"token_mode={self.name!r} needs a class token, but this model has no class "
                f"token; use a token_mode of {', '.join(map(repr, others))}"
            )
        if self.captures:
            if prev_block is None:
                raise ConfigError(
                    f"token_mode={self.name!r} needs a kept block before the first reducing one"
                )
            ctx.capture(prev_block, self.captures)

    def reset(self, ctx: TokenContext) -> None:
        """Sets the mode's per-forward state on ``ctx`` (called before every forward)."""
        return None

    @abstractmethod
    def reduce(self, block: nn.Module, ctx: TokenContext, x: torch.Tensor) -> torch.Tensor:
        """The tokens ``block`` runs on: ``x`` (B, prefix + P, C) reduced at
        ``block.token_keep``, prefix tokens first and unchanged."""

    def attn_bias(self, ctx: TokenContext, x: torch.Tensor) -> torch.Tensor | None:
        """An additive attention mask for the block about to run on ``x``, or None."""
        return None

    def aux_loss(self, ctx: TokenContext) -> torch.Tensor | None:
        """An auxiliary training loss from the last forward (added in fine-tuning), or None."""
        return None
