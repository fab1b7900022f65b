"""Error statistics of samples against the Gaussian mixture they should follow.

:func:`mixture_error` compares samples with a :class:`~scratch_schedulers.oracle.mixture.GaussianMixture`
(component weights, spreads and means, and a sliced Wasserstein-1 distance to the exact projected
mixture); :func:`sampling_noise` gives the same statistics for *exact* samples of the same size,
the floor a perfect sampler reaches.
"""

from __future__ import annotations

import math

import torch

from .mixture import GaussianMixture


def _directions(dim: int, n_directions: int) -> torch.Tensor:
    """Fixed unit projection directions: evenly spaced half-circle angles in 2-D, seeded draws otherwise."""
    if dim == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if dim == 2:
        angles = torch.arange(n_directions, dtype=torch.float64) * math.pi / n_directions
        return torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(n_directions, dim, generator=g, dtype=torch.float64)
    return dirs / dirs.norm(dim=1, keepdim=True)


def _mixture_quantiles(
    locs: torch.Tensor, scales: torch.Tensor, weights: torch.Tensor, u: torch.Tensor, grid_size: int = 2049
) -> torch.Tensor:
    """Quantiles of the 1-D mixtures ``F_j = Σ_k w_k N(locs[j, k], scales[k]²)`` at the levels ``u``.

    The CDF is tabulated on a grid spanning ±10 spreads, inverted by linear interpolation, then
    polished by three Newton steps kept inside the bracketing grid cell (error ≪ 1e-9).

    Returns a tensor of shape ``(J, len(u))``.
    """

    def cdf(x: torch.Tensor) -> torch.Tensor:
        return (weights * torch.special.ndtr((x[..., None] - locs[:, None, :]) / scales)).sum(-1)

    def pdf(x: torch.Tensor) -> torch.Tensor:
        z = (x[..., None] - locs[:, None, :]) / scales
        return (weights / scales * torch.exp(-0.5 * z * z)).sum(-1) / math.sqrt(2.0 * math.pi)

    lo = (locs - 10 * scales).min(dim=1).values
    hi = (locs + 10 * scales).max(dim=1).values
    steps = torch.linspace(0.0, 1.0, grid_size, dtype=torch.float64)
    grid = lo[:, None] + (hi - lo)[:, None] * steps  # (J, G)
    table = cdf(grid)
    levels = u.expand(len(locs), -1).contiguous()
    right = torch.searchsorted(table, levels).clamp(1, grid_size - 1)
    x_lo, x_hi = grid.gather(1, right - 1), grid.gather(1, right)
    f_lo, f_hi = table.gather(1, right - 1), table.gather(1, right)
    x = x_lo + (x_hi - x_lo) * ((levels - f_lo) / (f_hi - f_lo).clamp_min(1e-300)).clamp(0, 1)
    for _ in range(3):
        x = (x - (cdf(x) - levels) / pdf(x).clamp_min(1e-300)).clamp(x_lo, x_hi)
    return x


def mixture_error(samples: torch.Tensor, mixture: GaussianMixture, n_directions: int = 16) -> dict[str, float]:
    """How far ``samples`` are from ``mixture``.

    Each sample is assigned to its most probable component under the mixture itself (the
    responsibilities at ``a = 1, b = 0``; for well separated components this is the nearest
    component, and the truncation it causes is negligible). From the assignment:

    * ``weight_error``: ``max_k |n_k / n − w_k|``;
    * ``std_error``: ``max_k |ŝ_k / s_k − 1|`` where ``ŝ_k² = mean over the component's samples and
      coordinates of (x − x̄_k)²``;
    * ``mean_error``: ``max_k |x̄_k − μ_k| / s_k`` (component mean offset in its own std units);
    * ``sliced_wasserstein``: the single scalar summary, ``mean_θ W1(θ·samples, θ·mixture)`` over
      fixed unit directions θ, each W1 computed against the *exact* projected mixture
      ``Σ_k w_k N(θ·μ_k, s_k²)`` as ``(1/n) Σ_i |x_(i) − F⁻¹((i − ½)/n)|`` (midpoint rule in
      quantile space). It is zero only for the right distribution and shrinks like ``1/√n``
      for exact samples, so compare it with ``sampling_noise``.

    A component that receives no sample gets ``std_error = mean_error = inf``.

    Args:
        samples: Samples, shape ``(n, d)``.
        mixture: The distribution they should follow.
        n_directions: Number of projection directions for the sliced Wasserstein distance.

    Returns:
        A dict with the four statistics above, as floats.
    """
    x = torch.as_tensor(samples).to(torch.float64).reshape(-1, mixture.dim)
    n = x.shape[0]
    if not bool(torch.isfinite(x).all()):
        inf = float("inf")
        return {"sliced_wasserstein": inf, "weight_error": inf, "std_error": inf, "mean_error": inf}
    assignment = mixture.responsibilities(x, 1.0, 0.0).argmax(dim=1)
    weight_error = std_error = mean_error = 0.0
    for k in range(len(mixture.weights)):
        members = x[assignment == k]
        weight_error = max(weight_error, abs(len(members) / n - float(mixture.weights[k])))
        if len(members) < 2:
            std_error = mean_error = float("inf")
            continue
        center = members.mean(dim=0)
        std_hat = float((members - center).square().mean().sqrt())
        std_error = max(std_error, abs(std_hat / float(mixture.stds[k]) - 1.0))
        mean_error = max(mean_error, float((center - mixture.means[k]).norm()) / float(mixture.stds[k]))

    dirs = _directions(mixture.dim, n_directions)
    projected = torch.sort(x @ dirs.T, dim=0).values.T  # (J, n)
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    quantiles = _mixture_quantiles(dirs @ mixture.means.T, mixture.stds, mixture.weights, u)
    sliced = float((projected - quantiles).abs().mean())
    return {
        "sliced_wasserstein": sliced,
        "weight_error": weight_error,
        "std_error": std_error,
        "mean_error": mean_error,
    }


def sampling_noise(mixture: GaussianMixture, n_samples: int, repeats: int = 8, seed: int = 12345) -> dict[str, float]:
    """The error statistics of *exact* samples of the same size, averaged over ``repeats`` draws.

    This is the floor a perfect sampler reaches: "within sampling noise" means
    ``mixture_error(samples)[key] <= C * sampling_noise(...)[key]`` (plus a small slack) for a
    modest factor ``C``. Averaging several draws makes the floor a stable yardstick.
    """
    generator = torch.Generator().manual_seed(seed)
    runs = [mixture_error(mixture.sample(n_samples, generator), mixture) for _ in range(repeats)]
    return {key: sum(run[key] for run in runs) / repeats for key in runs[0]}
