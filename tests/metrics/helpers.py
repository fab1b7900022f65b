"""Sample sets of known quality for the metric's tests: real digits, blurred ones, PNG folders."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scratch_diffusion import metrics

N = 300  # sample size of the ranking tests


@contextlib.contextmanager
def empty_classifier_cache(tmp_path_factory) -> Iterator[Path]:
    """A new, empty classifier cache folder, set as ``$SCRATCH_DIFFUSION_CACHE`` inside the block."""
    directory = tmp_path_factory.mktemp("classifier-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(metrics.CACHE_ENV_VAR, str(directory))
        yield directory


def real_sample(split, n=N, seed=123):
    """``n`` real training-split digits (a seeded random subset) and their labels."""
    order = torch.randperm(len(split.train_images), generator=torch.Generator().manual_seed(seed))[:n]
    return split.train_images[order], split.train_labels[order]


def gaussian_blur(images, sigma=1.0):
    """A separable 7-tap Gaussian blur (background −1 padding): real digits, visibly degraded."""
    radius = 3
    k = torch.exp(-(torch.arange(-radius, radius + 1.0) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(images, (radius,) * 4, value=-1.0)
    return F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))


def write_pngs(folder, images, labels=None):
    """8-bit grayscale PNGs, in subfolders named by class when ``labels`` is given."""
    for i, image in enumerate(images):
        pixels = ((image[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        target = folder / str(int(labels[i])) if labels is not None else folder
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(target / f"{i:04d}.png")
