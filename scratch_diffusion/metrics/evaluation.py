"""Every quality number of a sample set, each beside its scale: the real-data baseline and the noise ceiling.

FD (Heusel et al., 2017) and KID (Bińkowski et al., 2018, :mod:`scratch_diffusion.metrics.kernel`) in
one feature space, against a held-out real reference, beside the same distances of real images
disjoint from it (what a perfect generator scores) and of clipped Gaussian noise (an untrained one).
Nothing here draws from torch's or numpy's global random streams: every draw uses a local generator
seeded by ``seed``, so evaluating inside a training loop leaves its random state untouched.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from scratch_diffusion.metrics.cache import load_digits_classifier
from scratch_diffusion.metrics.classifier import CLASSIFIER_RECIPE, DigitsClassifier
from scratch_diffusion.metrics.data import RESOLUTION, digits_split
from scratch_diffusion.metrics.frechet import FeatureExtractor, frechet_distance_from_statistics, gaussian_statistics
from scratch_diffusion.metrics.kernel import kernel_distance_from_features

DEFAULT_CONFIDENCE_THRESHOLD = 0.9
DEFAULT_REFERENCE_FRACTION = 0.3  # of ``reference_images`` held out as the reference (as the digits split)
REFERENCE_SPLIT_SEED = 0  # the reference split depends on the data only, not on ``seed``
KID_MAX_SUBSET_SIZE = 1000


def noise_images(n: int, shape: Sequence[int] = (1, RESOLUTION, RESOLUTION), seed: int = 0) -> torch.Tensor:
    """``n`` images of standard Gaussian noise clipped to [-1, 1]: an untrained generator's output."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=generator).clamp(-1, 1)


class ReferenceSplit(NamedTuple):
    """The held-out reference and the disjoint pool the real baseline draws come from."""

    reference: torch.Tensor
    pool: torch.Tensor
    description: str  # "digits held-out split" or "reference_images"


def reference_split(
    reference_images: torch.Tensor | None = None, reference_fraction: float = DEFAULT_REFERENCE_FRACTION
) -> ReferenceSplit:
    """The digits split (``None``), or ``reference_images`` split by a fixed permutation into reference and pool.

    ``round(reference_fraction · M)`` of the ``M`` images (at least 2, leaving at least 2) form the
    reference; the rest is the pool. The permutation is seeded by :data:`REFERENCE_SPLIT_SEED`, so
    one data set always gives the same reference, whatever the evaluation's ``seed``.
    """
    if reference_images is None:
        split = digits_split(CLASSIFIER_RECIPE["split_seed"], CLASSIFIER_RECIPE["holdout_fraction"])
        return ReferenceSplit(split.holdout_images, split.train_images, "digits held-out split")
    images = _as_images(reference_images, "reference_images")
    if len(images) < 4:
        raise ValueError(f"{len(images)} reference_images; pass at least 4 (2 for the reference, 2 for the baseline).")
    if not 0 < reference_fraction < 1:
        raise ValueError(f"reference_fraction={reference_fraction!r}; allowed: 0 < reference_fraction < 1.")
    k = min(max(round(reference_fraction * len(images)), 2), len(images) - 2)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(REFERENCE_SPLIT_SEED))
    return ReferenceSplit(images[order[:k].sort().values], images[order[k:].sort().values], "reference_images")


def _as_images(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    images = torch.as_tensor(images).detach().cpu().to(torch.float32)
    if images.ndim != 4:
        raise ValueError(f"{what} of shape {tuple(images.shape)}; expected (N, C, H, W) in [-1, 1].")
    return images


def _to_layout(images: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Real images in the samples' layout ``(C, H, W)``, so an extractor sees one image format."""
    c, h, w = shape
    if images.shape[-2:] != (h, w):
        images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
    if images.shape[1] != c:
        images = images.mean(dim=1, keepdim=True) if c == 1 else images[:, :1].expand(-1, c, -1, -1)
    return images


def _name(extractor: object) -> str:
    return getattr(extractor, "name", None) or getattr(extractor, "__name__", None) or type(extractor).__name__


def _confident(probabilities: torch.Tensor, threshold: float) -> float:
    return float((probabilities.max(dim=-1).values >= threshold).float().mean())


def _mean_and_std(values: list[float]) -> tuple[float, float | None]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def evaluate_samples(
    images: torch.Tensor,
    requested_labels: Sequence[int] | torch.Tensor | None = None,
    *,
    reference_images: torch.Tensor | None = None,
    feature_extractor: FeatureExtractor | Callable[[torch.Tensor], torch.Tensor | np.ndarray] | None = None,
    classifier: DigitsClassifier | None = None,
    cache_dir: str | os.PathLike | None = None,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    seed: int = 0,
    baseline_draws: int = 10,
    kid_subsets: int = 20,
    reference_fraction: float = DEFAULT_REFERENCE_FRACTION,
) -> dict:
    """Every quality number for ``images`` ``(N, C, H, W)`` in [-1, 1], each beside its scale (a JSON-able dict).

    Reference: the digits' held-out split, or, with ``reference_images`` (any real image set
    ``(M, C, H, W)`` in [-1, 1]), a fixed ``reference_fraction`` of them (:func:`reference_split`);
    the rest is the pool for the baseline. Baseline: the mean over ``baseline_draws`` random sets of
    ``min(N, pool)`` pool images (seeded by ``seed``), with the standard deviation beside it: at N = 500
    one draw scatters by about ±25 %, so compare ``fd_ratio`` with ``1 ± fd_real_baseline_std /
    fd_real_baseline``. Ceiling: ``N`` noise images of the samples' shape. Real images are resized to
    the samples' layout first.

    ``feature_extractor`` (default: the digits CNN) gives the space of FD and KID. KID is the unbiased
    MMD² over ``kid_subsets`` (20) subsets of ``min(1000, N)`` (``kid_std``: its std over subsets); each
    baseline draw and the noise use ``max(1, kid_subsets // baseline_draws)`` subsets, and
    ``kid_real_baseline_std`` is the spread over draws. A baseline KID near 0 (it can be negative) is
    the real-data level; KID has no ratio.

    The classification numbers (``confident_fraction*``, ``class_match``, ``classifier_accuracy``)
    use the digits classifier, so they are reported for the digits reference or when ``classifier``
    is passed, and are None for other ``reference_images``. ``requested_labels`` (one class per
    image) gives ``class_match``; without it, None.

    On any data set (as the trainer does): ``evaluate_samples(samples, reference_images=data,
    feature_extractor=feature_extractor("dinov2"), seed=seed)``; the same ``seed`` gives the same
    numbers, and no global random stream is drawn from.
    """
    images = _as_images(images)
    n = len(images)
    if baseline_draws < 1:
        raise ValueError(f"baseline_draws={baseline_draws!r}; allowed: at least 1.")
    if kid_subsets < 1:
        raise ValueError(f"kid_subsets={kid_subsets!r}; allowed: at least 1.")
    requested = None
    if requested_labels is not None:
        requested = torch.as_tensor(requested_labels, dtype=torch.long).flatten()
        if len(requested) != n:
            raise ValueError(f"{len(requested)} requested labels for {n} images; pass one per image.")
    digits_like = reference_images is None or classifier is not None
    if classifier is None and (digits_like or feature_extractor is None):
        classifier = load_digits_classifier(cache_dir)
    extractor = feature_extractor if feature_extractor is not None else classifier.features

    split = reference_split(reference_images, reference_fraction)
    reference, pool = _to_layout(split.reference, images.shape[1:]), _to_layout(split.pool, images.shape[1:])
    generator = torch.Generator().manual_seed(seed)
    n_baseline = min(n, len(pool))
    draws = [torch.randperm(len(pool), generator=generator)[:n_baseline] for _ in range(baseline_draws)]
    noise = noise_images(n, tuple(images.shape[1:]), seed=seed + 1)

    # Each image through the extractor once: the pool images of all draws together.
    drawn = torch.cat(draws).unique()  # sorted
    drawn_features = torch.as_tensor(extractor(pool[drawn]))
    real_features = [drawn_features[torch.searchsorted(drawn, d)] for d in draws]
    reference_features = extractor(reference)
    sample_features, noise_features = extractor(images), extractor(noise)

    reference_stats = gaussian_statistics(reference_features)
    subset_size = min(KID_MAX_SUBSET_SIZE, n)

    def fd(features: torch.Tensor) -> float:
        return frechet_distance_from_statistics(*gaussian_statistics(features), *reference_stats)

    def kid(features: torch.Tensor, subsets: int):
        if min(subset_size, len(reference)) == len(features) == len(reference):  # every subset: all of both sets
            subsets = 1
        return kernel_distance_from_features(features, reference_features, subsets, subset_size, seed=seed)

    few_subsets = max(1, kid_subsets // baseline_draws)
    fd_value, fd_noise = fd(sample_features), fd(noise_features)
    fd_real, fd_real_std = _mean_and_std([fd(f) for f in real_features])
    kid_value, kid_noise = kid(sample_features, kid_subsets), kid(noise_features, few_subsets)
    kid_real, kid_real_std = _mean_and_std([kid(f, few_subsets).mean for f in real_features])

    probabilities = classifier.probabilities(images) if digits_like else None
    class_numbers = {"confident_fraction": None, "confident_fraction_real_baseline": None,
                     "confident_fraction_noise": None, "class_match": None, "classifier_accuracy": None}  # fmt: skip
    if digits_like:
        class_numbers = {
            "confident_fraction": _confident(probabilities, confidence_threshold),
            "confident_fraction_real_baseline": _confident(
                classifier.probabilities(pool[draws[0]]), confidence_threshold
            ),
            "confident_fraction_noise": _confident(classifier.probabilities(noise), confidence_threshold),
            "class_match": None
            if requested is None
            else float((probabilities.argmax(dim=-1) == requested).float().mean()),
            "classifier_accuracy": classifier.holdout_accuracy,
        }
    return {
        "n": n,
        "fd": fd_value,
        "fd_real_baseline": fd_real,
        "fd_real_baseline_std": fd_real_std,
        "fd_noise_ceiling": fd_noise,
        "fd_ratio": fd_value / fd_real if fd_real > 0 else None,
        "kid": kid_value.mean,
        "kid_std": kid_value.std,
        "kid_real_baseline": kid_real,
        "kid_real_baseline_std": kid_real_std,
        "kid_noise_ceiling": kid_noise.mean,
        "kid_subsets": kid_value.num_subsets,
        "kid_subset_size": kid_value.subset_size,
        **class_numbers,
        "confidence_threshold": confidence_threshold,
        "reference": split.description,
        "n_reference": len(reference),
        "n_baseline": n_baseline,
        "baseline_draws": baseline_draws,
        "feature_space": "digits-classifier" if feature_extractor is None else _name(feature_extractor),
    }
