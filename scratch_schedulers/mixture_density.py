"""The closed-form density of a Gaussian mixture along a noise path: the exact answer for likelihood checks.

For data ``x0 ~ Σ_k w_k N(μ_k, s_k² I)`` and ``x = a·x0 + b·ε`` with ``ε ~ N(0, I)`` independent,
``x ~ Σ_k w_k N(a μ_k, (a² s_k² + b²) I)``; at ``a = 1, b = 0`` this is the data density itself.
The log-density is computed in float64 with a log-sum-exp over components.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .exact_denoiser import GaussianMixture


def mixture_log_density(mixture: GaussianMixture, x: torch.Tensor, a: float = 1.0, b: float = 0.0) -> torch.Tensor:
    """``log Σ_k w_k N(x; a μ_k, (a² s_k² + b²) I)`` in nats, float64, shape ``x.shape[:-1]``.

    Args:
        mixture: The data distribution.
        x: Points of the path, shape ``(..., d)``.
        a: Signal scale of the path point (1 for the data).
        b: Noise scale of the path point (0 for the data).
    """
    x = torch.as_tensor(x).to(torch.float64)
    if x.ndim == 0 or x.shape[-1] != mixture.dim:
        raise ValueError(f"expected points with last dimension {mixture.dim}, got shape {tuple(x.shape)}")
    variances = float(a) ** 2 * mixture.stds**2 + float(b) ** 2  # (K,)
    if bool((variances <= 0).any()):
        raise ValueError(f"a={a} and b={b} cannot both be zero.")
    sq_dist = (x[..., None, :] - float(a) * mixture.means).square().sum(-1)  # (..., K)
    log_norm = mixture.weights.log() - 0.5 * mixture.dim * torch.log(2.0 * math.pi * variances)
    return torch.logsumexp(log_norm - 0.5 * sq_dist / variances, dim=-1)
