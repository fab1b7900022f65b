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
