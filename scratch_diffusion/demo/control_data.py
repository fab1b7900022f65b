"""The control and editing study's inputs and measures (issue 22, §4): held-out digits, masks, corruptions, scores.

Images here are ``(N, 1, 16, 16)`` tensors on the metric's scale [−1, 1] (``metrics.digits_images``) unless a
name says ``01`` (the pipeline's [0, 1] image scale: ``x01 = (x + 1) / 2``). Masks follow diffusers' convention:
1 (white) = regenerate, 0 (black) = keep.

* Inputs: the metric's held-out split (the FD reference digits, unseen by every model the study trains), cycled to n.
* Masks (:data:`MASKS`): the left half, the top half, the centre 6×6 square.
* Corruptions (:data:`CORRUPTIONS`): Gaussian noise of standard deviation σ = 0.5 on the [−1, 1] scale, clipped back
  to [−1, 1]; occlusion by a 6×6 mid-grey square (0 on [−1, 1]) at a random position inside the central 10×10.
* Measures: the known region's largest deviation, the mean-filled masked input (the inpainting baseline), the gap
  closed, L2 distances, the low-resolution consistency (4×4 average pooling, as the low-resolution control), and
  nearest-neighbour distances to the training and held-out digits (the copying check).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from scratch_diffusion import metrics

RESOLUTION = metrics.RESOLUTION  # 16
CENTRE_SQUARE = 6  # the inpainting mask's side (issue 22: "a centre 6×6 square")
NOISE_SIGMA = 0.5  # the noise corruption's standard deviation on the [−1, 1] scale
OCCLUSION_SIDE = 6  # the occluding square's side
OCCLUSION_VALUE = 0.0  # mid-grey on [−1, 1] (0.5 on the [0, 1] image scale)
OCCLUSION_REGION = (2, 8)  # the square's top-left corner is drawn uniformly from rows and columns 2 … 8
POOL = 4  # the low-resolution control and consistency: 4×4 average pooling (a 16×16 digit → 4×4)


class Inputs(NamedTuple):
    """``n`` held-out digits (cycled), their labels and their indices into the held-out split."""

    images: torch.Tensor  # (n, 1, 16, 16) in [−1, 1]
    labels: torch.Tensor  # (n,)
    indices: torch.Tensor  # (n,) into the held-out split


def held_out_split() -> metrics.DigitsSplit:
    """The metric's fixed split (``metrics.CLASSIFIER_RECIPE``): the held-out part is the FD reference."""
    recipe = metrics.CLASSIFIER_RECIPE
    return metrics.digits_split(recipe["split_seed"], recipe["holdout_fraction"])


def held_out_inputs(n: int) -> Inputs:
    """The first ``n`` of the held-out digits repeated in their order (539 of them: n = 1000 uses 461 twice)."""
    if n < 1:
        raise ValueError(f"n={n!r}; allowed: at least 1 input image.")
    split = held_out_split()
    indices = torch.arange(n) % len(split.holdout_images)
    return Inputs(split.holdout_images[indices], split.holdout_labels[indices], indices)


def training_inputs(n: int) -> Inputs:
    """The first ``n`` of the metric's training digits (the real baseline's pool), cycled; indices into that split.

    Outputs made from them stand to the FD reference as the baseline's real digits do, so their FD ratio is not
    lowered by sharing the reference's own digits (as held-out inputs' outputs are)."""
    if n < 1:
        raise ValueError(f"n={n!r}; allowed: at least 1 input image.")
    split = held_out_split()
    indices = torch.arange(n) % len(split.train_images)
    return Inputs(split.train_images[indices], split.train_labels[indices], indices)


INPUT_SETS = {"held-out": held_out_inputs, "training": training_inputs}


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[−1, 1] → the pipeline's [0, 1] image scale (``image`` / ``mask_image`` / ``control_image`` inputs)."""
    return (images + 1) / 2


# ---- masks ---------------------------------------------------------------------------------------------------------


def left_half_mask(size: int = RESOLUTION) -> torch.Tensor:
    """(1, 1, size, size): 1 on the left half's columns (regenerated), 0 on the right half (kept)."""
    mask = torch.zeros(1, 1, size, size)
    mask[..., : size // 2] = 1
    return mask


def top_half_mask(size: int = RESOLUTION) -> torch.Tensor:
    """(1, 1, size, size): 1 on the top half's rows (regenerated), 0 on the bottom half (kept)."""
    mask = torch.zeros(1, 1, size, size)
    mask[..., : size // 2, :] = 1
    return mask


def centre_square_mask(side: int = CENTRE_SQUARE, size: int = RESOLUTION) -> torch.Tensor:
    """(1, 1, size, size): 1 on the centred ``side``×``side`` square (rows and columns (size − side)/2 …)."""
    if not 0 < side <= size or (size - side) % 2:
        raise ValueError(f"side={side!r}; allowed: 0 < side ≤ {size} with {size} − side even (a centred square).")
    mask = torch.zeros(1, 1, size, size)
    start = (size - side) // 2
    mask[..., start : start + side, start : start + side] = 1
    return mask


MASKS: dict[str, Callable[[], torch.Tensor]] = {
    "left half": left_half_mask,
    "top half": top_half_mask,
    "centre 6×6": centre_square_mask,
}


def mask_named(name: str, n: int) -> torch.Tensor:
    """The mask ``name`` of :data:`MASKS` for ``n`` images, (n, 1, 16, 16) in {0, 1}."""
    if name not in MASKS:
        raise ValueError(f"mask {name!r}; known: {list(MASKS)}.")
    return MASKS[name]().expand(n, -1, -1, -1).clone()


def mean_filled(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked input with its masked pixels set to the mean of its own known pixels (the inpainting baseline)."""
    known = 1 - mask
    mean = (images * known).sum(dim=(1, 2, 3), keepdim=True) / known.sum(dim=(1, 2, 3), keepdim=True)
    return images * known + mean * mask


def known_region_error(outputs: torch.Tensor, inputs: torch.Tensor, mask: torch.Tensor) -> float:
    """max |output − input| over the kept pixels (mask 0), on the scale the tensors are given in (0 when exact)."""
    kept = mask < 0.5
    return float((outputs - inputs).abs()[kept.expand_as(outputs)].max()) if kept.any() else 0.0


def gap_closed(completion: float, filled: float, real: float) -> float | None:
    """(completion − filled) / (real − filled): the share of the gap from the mean-filled input to the real digit
    that a completion closes (1: as good as the real digit; 0: no better than filling; None where real = filled)."""
    return None if real == filled else (completion - filled) / (real - filled)


# ---- corruptions ---------------------------------------------------------------------------------------------------


def gaussian_noise(images: torch.Tensor, seed: int, sigma: float = NOISE_SIGMA) -> torch.Tensor:
    """x + σ·ε on the [−1, 1] scale, clipped to [−1, 1] (ε from a generator seeded by ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=generator)).clamp(-1, 1)


def occlusion(images: torch.Tensor, seed: int, side: int = OCCLUSION_SIDE, value: float = OCCLUSION_VALUE):
    """Each image with a ``side``×``side`` square set to ``value``; its top-left corner drawn uniformly from
    :data:`OCCLUSION_REGION` (rows and columns alike, per image, from a generator seeded by ``seed``)."""
    low, high = OCCLUSION_REGION
    if high + side > images.shape[-1]:
        raise ValueError(f"side={side!r}: a square at {high} passes the {images.shape[-1]}-pixel edge.")
    generator = torch.Generator().manual_seed(seed)
    corners = torch.randint(low, high + 1, (len(images), 2), generator=generator)
    occluded = images.clone()
    for image, (top, left) in zip(occluded, corners.tolist(), strict=True):
        image[..., top : top + side, left : left + side] = value
    return occluded


CORRUPTIONS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "noise σ=0.5": gaussian_noise,
    "occlusion 6×6": occlusion,
}


def corrupt(name: str, images: torch.Tensor, seed: int) -> torch.Tensor:
    """The corruption ``name`` of :data:`CORRUPTIONS` applied to ``images`` with draws seeded by ``seed``."""
    if name not in CORRUPTIONS:
        raise ValueError(f"corruption {name!r}; known: {list(CORRUPTIONS)}.")
    return CORRUPTIONS[name](images, seed)


# ---- distances -----------------------------------------------------------------------------------------------------


def rms_distance(a01: torch.Tensor, b01: torch.Tensor) -> torch.Tensor:
    """Per image, the root-mean-square pixel difference of two [0, 1]-scale image sets: ‖a − b‖₂ / √D."""
    return (a01 - b01).flatten(1).pow(2).mean(dim=1).sqrt()


def pooled(images: torch.Tensor, factor: int = POOL) -> torch.Tensor:
    """``factor``×``factor`` average pooling on the [0, 1] scale: (N, 1, 16, 16) in [−1, 1] → (N, 1, 4, 4) in [0, 1]."""
    return F.avg_pool2d(to_unit(images), factor)


def consistency(outputs: torch.Tensor, sources: torch.Tensor, factor: int = POOL) -> torch.Tensor:
    """Per image, the MSE between the ``factor``×``factor`` average pools of output and control source, on the
    [0, 1] scale (the low-resolution control's own operator: what the control tells the model)."""
    return (pooled(outputs, factor) - pooled(sources, factor)).flatten(1).pow(2).mean(dim=1)


def nearest_distances(images: torch.Tensor, bank: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Per image, the Euclidean pixel distance ([−1, 1] scale) to its nearest image in ``bank``; ``exclude[i]`` (an
    index into ``bank``, or −1) is left out for image i — a held-out digit's own copy, say."""
    # direct differences, not ‖a‖² + ‖b‖² − 2a·b: an image's own copy is at distance 0 exactly, not ~1e-7
    distances = torch.cdist(images.flatten(1).double(), bank.flatten(1).double(),
                            compute_mode="donot_use_mm_for_euclid_dist")  # fmt: skip
    if exclude is not None:
        rows = torch.nonzero(exclude >= 0).flatten()
        distances[rows, exclude[rows]] = float("inf")
    return distances.min(dim=1).values.float()


def copying_check(outputs: torch.Tensor, source_indices: torch.Tensor | None = None) -> dict:
    """Are outputs closer to the training digits than real unseen digits are? (The check for a model that beats its
    baseline.) Per output: d_train, the distance to the nearest training digit, and d_held, to the nearest held-out
    digit other than its own source (``source_indices``, into the held-out split). The same two for the held-out
    digits themselves (each without itself) give the level of a model that copies nothing. Reports medians, the
    median ratio d_train / d_held (a copying model's is far below the real digits'), and the share of outputs closer
    to a training digit than the closest 1 % of real held-out digits are."""
    split = held_out_split()
    train, held = split.train_images, split.holdout_images
    own = torch.arange(len(held))
    real_train, real_held = nearest_distances(held, train), nearest_distances(held, held, own)
    exclude = None if source_indices is None else source_indices
    out_train, out_held = nearest_distances(outputs, train), nearest_distances(outputs, held, exclude)
    threshold = float(torch.quantile(real_train, 0.01))
    return {
        "median_distance_to_train": float(out_train.median()),
        "median_distance_to_held_out": float(out_held.median()),
        "median_ratio": float((out_train / out_held).median()),
        "real_median_distance_to_train": float(real_train.median()),
        "real_median_distance_to_held_out": float(real_held.median()),
        "real_median_ratio": float((real_train / real_held).median()),
        "closer_than_real_1st_percentile": float((out_train < threshold).float().mean()),
        "real_1st_percentile_distance": threshold,
        "n": len(outputs),
    }


def mean_and_spread(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation over draws (None for one draw)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None
