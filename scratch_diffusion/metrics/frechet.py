"""The Fréchet distance between Gaussians fitted to two feature sets, as in the FID of Heusel et al. (2017)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from scratch_diffusion.metrics.cache import load_digits_classifier


@runtime_checkable
class FeatureExtractor(Protocol):
    """Anything mapping images ``(N, C, H, W)`` in [-1, 1] to features ``(N, D)`` (tensor or array)."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor | np.ndarray: ...


def gaussian_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features, in float64."""
    f = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    f = f.astype(np.float64).reshape(len(f), -1)
    if len(f) < 2:
        raise ValueError(f"{len(f)} feature vector(s); the Fréchet distance needs at least 2 per set.")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance_from_statistics(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|μ1 − μ2|² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2})`` between two Gaussians.

    Computed stably without a non-symmetric matrix square root: Σ1Σ2 is similar to the symmetric
    PSD matrix ``S = Σ1^{1/2} Σ2 Σ1^{1/2}``, so ``Tr (Σ1Σ2)^{1/2} = Σ_i sqrt(λ_i(S))`` with ``S``'s
    eigenvalues from ``eigh`` (clipped at 0 against round-off). This holds for singular covariances
    too (fewer samples than dimensions, dead ReLU units), where ``scipy.linalg.sqrtm`` can return
    complex values or warn. The result is clipped at 0.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}.")
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt, 0.0))


def frechet_distance_from_features(
    features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray
) -> float:
    """Fréchet distance between the Gaussians fitted to two ``(N, D)`` feature sets."""
    return frechet_distance_from_statistics(*gaussian_statistics(features_a), *gaussian_statistics(features_b))


def frechet_distance(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    feature_extractor: FeatureExtractor | Callable[[torch.Tensor], torch.Tensor | np.ndarray] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> float:
    """Fréchet distance between two image sets ``(N, C, H, W)`` in [-1, 1].

    ``feature_extractor=None`` uses the digits classifier's penultimate features (loaded from the
    cache, trained on first use); pass any callable images → ``(N, D)`` features for another space,
    e.g. Inception pool features for a standard FID.
    """
    extractor = feature_extractor if feature_extractor is not None else load_digits_classifier(cache_dir)
    return frechet_distance_from_features(extractor(images_a), extractor(images_b))
