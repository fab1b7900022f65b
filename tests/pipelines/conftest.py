"""Fixtures of the pipeline tests: tiny UNets trained in the session (a few seconds each)."""

from __future__ import annotations

import pytest

from .helpers import train_tiny_unet


@pytest.fixture(scope="session")
def trained_tiny_unets() -> dict:
    """A VP v-model and a flow model, each a tiny UNet trained on two 8×8 patterns (``helpers.train_tiny_unet``)."""
    return {objective: train_tiny_unet(objective) for objective in ("v_prediction", "flow")}
