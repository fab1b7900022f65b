"""The metric's fixtures: the classifier is trained once per session into a temporary cache."""

from __future__ import annotations

import pytest

from scratch_diffusion import metrics

from .helpers import empty_classifier_cache


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    with empty_classifier_cache(tmp_path_factory) as directory:
        yield directory


@pytest.fixture(scope="session")
def classifier(cache_dir):
    """Trained here, in the session's cache (env var, no argument)."""
    return metrics.load_digits_classifier()


@pytest.fixture(scope="session")
def split():
    return metrics.digits_split()


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory):
    """A folder with a tiny random DINOv2 and its image processor config."""
    from .helpers import save_tiny_dinov2

    return save_tiny_dinov2(tmp_path_factory.mktemp("tiny-dinov2"))


@pytest.fixture
def offline_hub(monkeypatch):
    """The Hugging Face Hub offline (as in ``make test``), whatever the calling shell set."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
