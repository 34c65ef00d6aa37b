from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_base():
    """The embedded default with its shipped weights and the digits data (loaded once)."""
    from prunetune._session import load_base
    from prunetune.models import ModelSpec

    return load_base(ModelSpec("digits_vit"), device="cpu")
