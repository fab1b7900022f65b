"""A Gaussian mixture and its closed forms: samples, posterior, exact denoiser and density along a noise path.

If the data are a Gaussian mixture, every quantity a diffusion model learns is known in closed form,
which makes the mixture the *oracle* the rest of :mod:`scratch_schedulers.oracle` is built on.

Math. Let the data be ``x0 ~ Σ_k w_k N(μ_k, s_k² I)`` in ``d`` dimensions and let a scheduler
corrupt them as ``x_t = a_t·x0 + b_t·ε`` with ``ε ~ N(0, I)``. Then, with ``v_k = a² s_k² + b²``,

* ``x_t | k ~ N(a μ_k, v_k I)``, so ``log p(x_t) = log Σ_k w_k N(x_t; a μ_k, v_k I)``
  (:func:`mixture_log_density`; at ``a = 1, b = 0`` the data density itself) and the posterior
  responsibilities are ``r_k(x_t) ∝ w_k N(x_t; a μ_k, v_k I)`` (float64, log-sum-exp);
* ``E[x0 | x_t, k] = μ_k + (a s_k² / v_k)(x_t − a μ_k)`` (Gaussian conditioning), hence
  ``x̂0 = E[x0 | x_t] = Σ_k r_k (μ_k + (a s_k² / v_k)(x_t − a μ_k))``;
* ``ε̂ = E[ε | x_t] = (x_t − a x̂0) / b = Σ_k r_k (b / v_k)(x_t − a μ_k)``. The right-hand form is
  used: it is finite at ``b = 0`` (where ``ε̂ = 0`` and ``x̂0 = x_t / a``) and at ``a = 0`` (where
  ``r_k = w_k``, ``x̂0 = Σ_k w_k μ_k`` and ``ε̂ = x_t / b``), so no special cases are needed.

A network trained with the squared error on its output converges to the posterior mean of its
target, so the exact model outputs are ``epsilon → ε̂``, ``sample → x̂0``,
``v_prediction → a ε̂ − b x̂0`` and, for flow matching on the path ``x_t = (1 − σ) x0 + σ ε``,
``flow_velocity → ε̂ − x̂0`` (:meth:`GaussianMixture.model_output`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..noise_path import PREDICTION_TYPES, PredictionType


def mixture_log_density(mixture: GaussianMixture, x: torch.Tensor, a: float = 1.0, b: float = 0.0) -> torch.Tensor:
    """``log Σ_k w_k N(x; a μ_k, (a² s_k² + b²) I)`` in nats, float64, shape ``x.shape[:-1]``.

    Args:
        mixture: The data distribution.
        x: Points of the path, shape ``(..., d)``.
        a: Signal scale of the path point (1 for the data).
        b: Noise scale of the path point (0 for the data).
    """
    return torch.logsumexp(component_log_densities(mixture, x, a, b), dim=-1)


def component_log_densities(mixture: GaussianMixture, x: torch.Tensor, a: float = 1.0, b: float = 0.0) -> torch.Tensor:
    """``log w_k N(x; a μ_k, (a² s_k² + b²) I)`` for every component k: float64, shape ``(..., K)``, differentiable."""
    x = torch.as_tensor(x).to(torch.float64)
    if x.ndim == 0 or x.shape[-1] != mixture.dim:
        raise ValueError(f"expected points with last dimension {mixture.dim}, got shape {tuple(x.shape)}")
    variances = float(a) ** 2 * mixture.stds**2 + float(b) ** 2  # (K,)
    if bool((variances <= 0).any()):
        raise ValueError(f"a={a} and b={b} cannot both be zero.")
    sq_dist = (x[..., None, :] - float(a) * mixture.means).square().sum(-1)  # (..., K)
    log_norm = mixture.weights.log() - 0.5 * mixture.dim * torch.log(2.0 * math.pi * variances)
    return log_norm - 0.5 * sq_dist / variances


@dataclass(frozen=True)
class GaussianMixture:
    """An isotropic Gaussian mixture ``Σ_k w_k N(μ_k, s_k² I)`` with its exact denoiser.

    Attributes:
        weights: Mixture weights ``w_k``, shape ``(K,)``, positive, summing to one (up to 1e-6;
            they are renormalised exactly).
        means: Component means ``μ_k``, shape ``(K, d)``.
        stds: Component standard deviations ``s_k``, shape ``(K,)``, positive.

    All three are stored as float64 tensors.
    """

    weights: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor

    def __post_init__(self) -> None:
        weights = torch.as_tensor(self.weights, dtype=torch.float64)
        means = torch.as_tensor(self.means, dtype=torch.float64)
        stds = torch.as_tensor(self.stds, dtype=torch.float64)
        if weights.ndim != 1 or means.ndim != 2 or stds.shape != weights.shape:
            raise ValueError("expected weights (K,), means (K, d) and stds (K,)")
        if means.shape[0] != weights.shape[0]:
            raise ValueError(f"{weights.shape[0]} weights but {means.shape[0]} means")
        if bool((weights <= 0).any()) or abs(float(weights.sum()) - 1.0) > 1e-6:
            raise ValueError("weights must be positive and sum to 1")
        if bool((stds <= 0).any()):
            raise ValueError("stds must be positive")
        object.__setattr__(self, "weights", weights / weights.sum())
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "stds", stds)

    @classmethod
    def example(cls) -> GaussianMixture:
        """The reference 2-D mixture: three well separated components of unequal weight and spread.

        Weights 0.5, 0.3, 0.2 and spreads 0.5, 0.4, 0.3 around means on a circle of radius 2
        (pairwise distance 2√3 ≈ 3.46), so every point of a common boundary is at least 3.8 standard
        deviations from both components and nearest-component assignment is essentially exact.
        The spreads are wide enough that the discretisation bias of the usual settings (DDPM 1000
        steps, DDIM / flow Euler 100 steps) stays below the sampling noise of 4000 samples;
        narrower components (s ≲ 0.2) expose the coarse low-noise end of the linear β schedule.
        """
        angles = torch.tensor([90.0, 210.0, 330.0], dtype=torch.float64) * math.pi / 180.0
        means = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        return cls(
            weights=torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
            means=means,
            stds=torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64),
        )

    @property
    def dim(self) -> int:
        """The data dimension ``d``."""
        return self.means.shape[1]

    @property
    def mean(self) -> torch.Tensor:
        """The mixture mean ``Σ_k w_k μ_k``, shape ``(d,)``."""
        return self.weights @ self.means

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws ``n`` exact samples (float64, shape ``(n, d)``)."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[component] + self.stds[component, None] * noise

    def responsibilities(self, x_t: torch.Tensor, a: float, b: float) -> torch.Tensor:
        """Posterior component probabilities ``r_k(x_t) ∝ w_k N(x_t; a μ_k, (a² s_k² + b²) I)``.

        Args:
            x_t: Noisy samples, shape ``(..., d)``.
            a: Signal coefficient ``a_t``.
            b: Noise coefficient ``b_t``.

        Returns:
            Float64 tensor of shape ``(..., K)`` whose last axis sums to one.
        """
        x_t = torch.as_tensor(x_t)
        return self._posterior(x_t, a, b)[1].T.reshape(*x_t.shape[:-1], len(self.weights))

    def log_density(self, x: torch.Tensor, a: float = 1.0, b: float = 0.0) -> torch.Tensor:
        """``log p(x)`` of ``x = a·x0 + b·ε`` in nats (:func:`mixture_log_density`)."""
        return mixture_log_density(self, x, a, b)

    def denoise(self, x_t: torch.Tensor, a: float, b: float) -> torch.Tensor:
        """The exact denoiser ``x̂0 = E[x0 | x_t] = Σ_k r_k (μ_k + a s_k²/(a² s_k² + b²)(x_t − a μ_k))``.

        Args:
            x_t: Noisy samples ``a·x0 + b·ε``, shape ``(..., d)``.
            a: Signal coefficient ``a_t`` (``a = 0`` gives the mixture mean).
            b: Noise coefficient ``b_t`` (``b = 0`` gives ``x_t / a``).

        Returns:
            ``x̂0`` in float64, same shape as ``x_t``.
        """
        return self._posterior_means(x_t, a, b)[0]

    def model_output(self, x_t: torch.Tensor, a: float, b: float, prediction_type: PredictionType) -> torch.Tensor:
        """What a perfectly trained network of the given parametrisation returns at ``x_t``.

        Args:
            x_t: Noisy samples, shape ``(..., d)``.
            a: Signal coefficient ``a_t``.
            b: Noise coefficient ``b_t``.
            prediction_type: ``"epsilon"`` (ε̂), ``"sample"`` (x̂0), ``"v_prediction"``
                (``a ε̂ − b x̂0``) or ``"flow_velocity"`` (``ε̂ − x̂0``, the velocity
                ``d x_σ / dσ`` of the flow-matching path ``x_σ = (1 − σ) x0 + σ ε``).

        Returns:
            The model output in float64, same shape as ``x_t``.
        """
        x0_hat, eps_hat = self._posterior_means(x_t, a, b)
        if prediction_type == "epsilon":
            return eps_hat
        if prediction_type == "sample":
            return x0_hat
        if prediction_type == "v_prediction":
            return a * eps_hat - b * x0_hat
        if prediction_type == "flow_velocity":
            return eps_hat - x0_hat
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {list(PREDICTION_TYPES)}")

    def _posterior(self, x_t: torch.Tensor, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the flattened samples ``(n, d)``, responsibilities ``(K, n)`` and variances ``(K,)``.

        ``|x − a μ_k|² = |x|² − 2a μ_k·x + a²|μ_k|²`` keeps every intermediate at ``(K, n)``; the
        component axis comes first because reductions over a short trailing axis are slow in torch.
        """
        a, b = float(a), float(b)
        var = a * a * self.stds**2 + b * b
        if bool((var <= 0).any()):
            raise ValueError("a and b cannot both be zero")
        x = torch.as_tensor(x_t).to(torch.float64)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"expected samples with last dimension {self.dim}, got shape {tuple(x.shape)}")
        x = x.reshape(-1, self.dim)
        x_sq = x.T.square().sum(0)
        mu_sq = self.means.square().sum(1)
        sq_dist = (x_sq - 2 * a * (self.means @ x.T) + (a * a * mu_sq)[:, None]).clamp_min(0)
        log_norm = self.weights.log() - 0.5 * self.dim * torch.log(2.0 * math.pi * var)
        log_p = log_norm[:, None] - 0.5 * sq_dist / var[:, None]
        return x, torch.softmax(log_p, dim=0), var

    def _posterior_means(self, x_t: torch.Tensor, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(x̂0, ε̂)`` in the forms that stay finite at ``a = 0`` and at ``b = 0``.

        With ``c_k = a s_k² / v_k`` and ``e_k = b / v_k``:
        ``x̂0 = Σ_k r_k μ_k + (Σ_k r_k c_k) x_t − a Σ_k r_k c_k μ_k`` and
        ``ε̂ = (Σ_k r_k e_k) x_t − a Σ_k r_k e_k μ_k``.
        """
        x, r, var = self._posterior(x_t, a, b)
        a, b = float(a), float(b)
        rc = r * (a * self.stds**2 / var)[:, None]
        re = r * (b / var)[:, None]
        x0_hat = (r - a * rc).T @ self.means + rc.sum(0)[:, None] * x
        eps_hat = re.sum(0)[:, None] * x - a * (re.T @ self.means)
        shape = torch.as_tensor(x_t).shape
        return x0_hat.reshape(shape), eps_hat.reshape(shape)
