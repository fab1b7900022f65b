"""Every quality number of a sample set, each beside its scale: the real-data baseline and the noise ceiling."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from scratch_diffusion.metrics.cache import load_digits_classifier
from scratch_diffusion.metrics.classifier import CLASSIFIER_RECIPE, DigitsClassifier
from scratch_diffusion.metrics.data import RESOLUTION, digits_split
from scratch_diffusion.metrics.frechet import FeatureExtractor, frechet_distance_from_statistics, gaussian_statistics

DEFAULT_CONFIDENCE_THRESHOLD = 0.9


def noise_images(n: int, shape: Sequence[int] = (1, RESOLUTION, RESOLUTION), seed: int = 0) -> torch.Tensor:
    """``n`` images of standard Gaussian noise clipped to [-1, 1]: an untrained generator's output."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=generator).clamp(-1, 1)


def _name(extractor: object) -> str:
    return getattr(extractor, "__name__", type(extractor).__name__)


def _confident(probabilities: torch.Tensor, threshold: float) -> float:
    return float((probabilities.max(dim=-1).values >= threshold).float().mean())


def evaluate_samples(
    images: torch.Tensor,
    requested_labels: Sequence[int] | torch.Tensor | None = None,
    *,
    feature_extractor: FeatureExtractor | Callable[[torch.Tensor], torch.Tensor | np.ndarray] | None = None,
    classifier: DigitsClassifier | None = None,
    cache_dir: str | os.PathLike | None = None,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    seed: int = 0,
    baseline_draws: int = 10,
) -> dict:
    """Every quality number for ``images`` ``(N, C, H, W)`` in [-1, 1], each beside its scale.

    The reference is the real held-out split. The baseline is the mean distance of
    ``baseline_draws`` random sets of ``min(N, n_train)`` real training-split images (disjoint from
    the reference; seeded by ``seed``), with its standard deviation beside it: at N = 500 a single
    real draw scatters by about ±25 %, so compare ``fd_ratio`` against ``1 ± fd_real_baseline_std /
    fd_real_baseline``, or use larger N. The ceiling is ``N`` noise images of the samples' shape.
    ``feature_extractor`` replaces the classifier's features for the distances only; the
    classification numbers always use the digits classifier.
    ``requested_labels`` (one class per image) gives ``class_match``; otherwise it is None.
    """
    images = torch.as_tensor(images).detach().cpu().to(torch.float32)
    if images.ndim != 4:
        raise ValueError(f"images of shape {tuple(images.shape)}; expected (N, C, H, W) in [-1, 1].")
    n = len(images)
    if baseline_draws < 1:
        raise ValueError(f"baseline_draws={baseline_draws!r}; allowed: at least 1.")
    classifier = classifier if classifier is not None else load_digits_classifier(cache_dir)
    extractor = feature_extractor if feature_extractor is not None else classifier.features
    split = digits_split(CLASSIFIER_RECIPE["split_seed"], CLASSIFIER_RECIPE["holdout_fraction"])

    generator = torch.Generator().manual_seed(seed)
    n_baseline = min(n, len(split.train_images))
    draws = [torch.randperm(len(split.train_images), generator=generator)[:n_baseline] for _ in range(baseline_draws)]
    reals = [split.train_images[d] for d in draws]
    noise = noise_images(n, tuple(images.shape[1:]), seed=seed + 1)
    # Feed the references in the samples' layout, so a custom extractor sees one image format.
    reference = split.holdout_images
    if images.shape[1:] != reference.shape[1:]:
        c, h, w = images.shape[1:]
        resize = lambda x: F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).expand(-1, c, -1, -1)  # noqa: E731
        reference, reals = resize(reference), [resize(real) for real in reals]

    reference_stats = gaussian_statistics(extractor(reference))

    def distance(x: torch.Tensor) -> float:
        return frechet_distance_from_statistics(*gaussian_statistics(extractor(x)), *reference_stats)

    fd, fd_noise = distance(images), distance(noise)
    fd_reals = np.array([distance(real) for real in reals])
    fd_real = float(fd_reals.mean())
    probabilities = classifier.probabilities(images)
    class_match = None
    if requested_labels is not None:
        requested = torch.as_tensor(requested_labels, dtype=torch.long).flatten()
        if len(requested) != n:
            raise ValueError(f"{len(requested)} requested labels for {n} images; pass one per image.")
        class_match = float((probabilities.argmax(dim=-1) == requested).float().mean())
    return {
        "n": n,
        "fd": fd,
        "fd_real_baseline": fd_real,
        "fd_real_baseline_std": float(fd_reals.std(ddof=1)) if baseline_draws > 1 else None,
        "fd_noise_ceiling": fd_noise,
        "fd_ratio": fd / fd_real if fd_real > 0 else None,
        "confident_fraction": _confident(probabilities, confidence_threshold),
        "confident_fraction_real_baseline": _confident(classifier.probabilities(reals[0]), confidence_threshold),
        "confident_fraction_noise": _confident(classifier.probabilities(noise), confidence_threshold),
        "class_match": class_match,
        "classifier_accuracy": classifier.holdout_accuracy,
        "confidence_threshold": confidence_threshold,
        "n_reference": len(reference),
        "n_baseline": n_baseline,
        "baseline_draws": baseline_draws,
        "feature_space": "digits-classifier" if feature_extractor is None else _name(feature_extractor),
    }
