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


def save_tiny_dinov2(folder, with_processor=True):
    """A randomly initialised DINOv2 (hidden 32, 2 layers, patch 4, 32×32 input) saved to ``folder``.

    With ``with_processor`` its image processor says: resize the short side to 36 (bicubic), centre
    crop 32×32, ImageNet mean/std; without, the backbone falls back on the config's ``image_size``.
    """
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=4, image_size=32
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        Dinov2Model(config).save_pretrained(folder)
    if with_processor:
        processor = BitImageProcessor(
            size={"shortest_edge": 36},
            crop_size={"height": 32, "width": 32},
            resample=3,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )
        processor.save_pretrained(folder)
    return folder
