"""The metric's real data: scikit-learn's digits as the trainer sees them, its fixed split, image layouts."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

RESOLUTION = 16  # the classifier's input size; other sizes are resized (bilinear, antialiased)
NUM_CLASSES = 10


def digits_images(resolution: int = RESOLUTION) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits as the trainer sees them: ``(N, 1, R, R)`` float in [-1, 1], labels.

    Reuses the trainer's loader (``training.data.load_digits``: x/16, bilinear upsampling with
    ``align_corners=False``, stored as uint8) and its scaling ``u8 / 127.5 − 1``, so the metric's real
    data is exactly the demo's training data.
    """
    images, labels = _digits_uint8(resolution)
    return images.to(torch.float32) / 127.5 - 1, labels.clone()


@functools.lru_cache(maxsize=4)
def _digits_uint8(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    from scratch_diffusion.training.data import load_digits

    data = load_digits(resolution, with_labels=True)
    return data.dataset.images, data.dataset.labels


class DigitsSplit(NamedTuple):
    """A stratified train / held-out split of :func:`digits_images`."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    holdout_images: torch.Tensor
    holdout_labels: torch.Tensor
    train_indices: torch.Tensor  # into digits_images()
    holdout_indices: torch.Tensor


def digits_split(seed: int = 0, holdout_fraction: float = 0.3, resolution: int = RESOLUTION) -> DigitsSplit:
    """Deterministic stratified split: ``round(holdout_fraction · n_c)`` images of each class held out."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction={holdout_fraction!r}; allowed: 0 < holdout_fraction < 1.")
    images, labels = digits_images(resolution)
    generator = torch.Generator().manual_seed(seed)
    train, holdout = [], []
    for c in range(NUM_CLASSES):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        k = round(holdout_fraction * len(members))
        holdout.append(members[:k])
        train.append(members[k:])
    train_idx, holdout_idx = torch.cat(train).sort().values, torch.cat(holdout).sort().values
    return DigitsSplit(
        images[train_idx], labels[train_idx], images[holdout_idx], labels[holdout_idx], train_idx, holdout_idx
    )


def to_classifier_input(images: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` in [-1, 1] → ``(N, 1, 16, 16)`` float32: channel mean, antialiased resize."""
    images = torch.as_tensor(images)
    if images.ndim != 4:
        raise ValueError(f"images of shape {tuple(images.shape)}; expected (N, C, H, W) in [-1, 1].")
    x = images.detach().to(torch.float32)
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (RESOLUTION, RESOLUTION):
        x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False, antialias=True)
    return x


def images_from_numpy(images: np.ndarray) -> torch.Tensor:
    """A pipeline's ``output_type="np"`` images ``(N, H, W, C)`` in [0, 1] → ``(N, C, H, W)`` in [-1, 1]."""
    array = np.asarray(images, dtype=np.float32)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(f"images of shape {array.shape}; expected (N, H, W, C) in [0, 1].")
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous() * 2 - 1
