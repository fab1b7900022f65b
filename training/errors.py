"""The error of a bad command line or input, found before any training step (``train.py``: exit status 2)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad command line or input, found before training starts."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
