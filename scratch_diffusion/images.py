"""Image files: the one list of extensions that the trainer's folder loader and the metrics CLI read."""

from __future__ import annotations

import os
from pathlib import Path

# Everything PIL decodes that people keep datasets in; a folder is scanned for these suffixes (any case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_image_file(name: str | os.PathLike) -> bool:
    """Whether ``name`` ends in one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return os.fspath(name).lower().endswith(IMAGE_EXTENSIONS)


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder``, recursively, sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_file(p.name))
