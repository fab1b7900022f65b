"""The one-step rules in (a, b) and σ: DDIM/DDPM, Euler/Heun, EDM churn, dynamic thresholding.

Each function is one update of the overview in :mod:`scratch_schedulers.samplers` (the package docstring), written
next to its equation. Coefficients are 0-d or broadcastable tensors (or Python numbers).
"""

from __future__ import annotations

import math

import torch


def nonneg_sqrt(x) -> torch.Tensor:
    """√max(x, 0) as a tensor op, in ``x``'s dtype (a Python number becomes a float32 CPU tensor).

    Uses torch's ``** 0.5`` on purpose: for 0-d tensors it differs from a correctly rounded
    square root in the last bit, and diffusers' schedulers use it.
    """
    return torch.as_tensor(x).clamp(min=0) ** 0.5


def reverse_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    a_next,
    var_next,
    noise_std=0.0,
    noise: torch.Tensor | None = None,
    direction=None,
) -> torch.Tensor:
    """x_next = a_next·x̂0 + √(b_next² − s²)·ε̂ + s·z  (DDIM Eq. 12, written for any path).

    Args:
        x0: predicted clean sample x̂0, shape (B, ...).
        eps: predicted noise ε̂, same shape.
        a_next: signal scale of the target path point.
        var_next: its noise variance b_next² (1 − ᾱ_next on the VP path, σ_next² on the flow path).
        noise_std: s, the standard deviation of fresh noise injected at this step (0 = deterministic).
        noise: z ~ N(0, I) of the sample's shape; required when ``noise_std`` is not 0.
        direction: √(b_next² − s²) when the caller has it precomputed (e.g. b_next at s = 0).
    """
    if direction is None:
        direction = nonneg_sqrt(var_next - noise_std**2)
    x_next = a_next * x0 + direction * eps
    if noise is not None:
        x_next = x_next + noise_std * noise
    return x_next


def posterior_mean(x0: torch.Tensor, x_t: torch.Tensor, coef_x0, coef_xt) -> torch.Tensor:
    """μ̃_t = (√ᾱ_next·β_t / (1 − ᾱ_t))·x̂0 + (√α_t·(1 − ᾱ_next) / (1 − ᾱ_t))·x_t  (DDPM Eq. 7).

    Algebraically this is :func:`reverse_step` at η = 1 with ε̂ re-derived from x̂0
    (``tests/scratch_schedulers/test_samplers.py`` checks the identity); written in this form
    because it avoids the cancellation in ε̂ = (x_t − a_t·x̂0)/b_t as t → 0. With
    α_t = ᾱ_t/ᾱ_next and β_t = 1 − α_t the step may span several training timesteps.
    """
    return coef_x0 * x0 + coef_xt * x_t


def ddpm_posterior_coefficients(alpha_bar_t, alpha_bar_next):
    """(coef_x0, coef_xt, β̃_t) of :func:`posterior_mean` and the posterior variance (DDPM Eqs. 6–7)."""
    alpha = alpha_bar_t / alpha_bar_next
    beta = 1 - alpha
    coef_x0 = (alpha_bar_next**0.5 * beta) / (1 - alpha_bar_t)
    coef_xt = alpha**0.5 * (1 - alpha_bar_next) / (1 - alpha_bar_t)
    return coef_x0, coef_xt, (1 - alpha_bar_next) / (1 - alpha_bar_t) * beta


def ddim_noise_std(alpha_bar_t: torch.Tensor, alpha_bar_next: torch.Tensor, eta: float) -> torch.Tensor:
    """σ_t(η) = η·√((1 − ᾱ_next)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_next)  (DDIM Eq. 16).

    At η = 1 this is √β̃_t, the std of DDPM's posterior q(x_{t−1} | x_t, x0) (DDPM Eq. 7).
    """
    return eta * ((1 - alpha_bar_next) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_next)) ** 0.5


def euler_step(x: torch.Tensor, derivative: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """x_next = x + (σ_next − σ)·dx/dσ: one Euler step of the probability-flow ODE."""
    return x + (sigma_next - sigma) * derivative


def heun_step(
    x: torch.Tensor, derivative: torch.Tensor, derivative_next: torch.Tensor, sigma, sigma_next
) -> torch.Tensor:
    """x_next = x + (σ_next − σ)·(d + d′)/2, the trapezoidal corrector of Karras et al. (2022), Alg. 1.

    ``derivative`` is dx/dσ at (x, σ); ``derivative_next`` at the Euler predictor's (x̃, σ_next).
    """
    return x + (derivative + derivative_next) / 2 * (sigma_next - sigma)


def churn_gamma(level: float, num_steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """γ = min(S_churn/N, √2 − 1) if S_tmin ≤ s ≤ S_tmax (s finite) else 0  (Karras et al., 2022, Alg. 2).

    ``level`` is EDM's noise level s = b/a of the path point (σ/(1 − σ) on the flow path); N the number
    of steps. The churned level is ŝ = (1 + γ)·s; the cap √2 − 1 keeps the added variance ŝ² − s² ≤ s².
    """
    if not (math.isfinite(level) and s_tmin <= level <= s_tmax):
        return 0.0
    return min(s_churn / num_steps, math.sqrt(2) - 1)


def raise_noise(x: torch.Tensor, a, b, a_hat, b_hat, noise: torch.Tensor, s_noise: float = 1.0) -> torch.Tensor:
    """x̂ = (â/a)·x + √(b̂² − (â·b/a)²)·S_noise·z: a sample at path point (a, b) moved to the noisier (â, b̂).

    If x = a·x0 + b·ε then x̂ = â·x0 + b̂·ε' in distribution (at S_noise = 1), for any Gaussian path: the
    forward transition between two levels (on the VP path DDPM's q(x_t | x_s), Ho et al., 2020). In EDM's
    VE coordinates x/a with s = b/a it is Alg. 2's x̂ = x + √(ŝ² − s²)·S_noise·z, scaled by â (Karras et al.,
    2022); on the flow path a = 1 − σ, b = σ. Needs b̂/â ≥ b/a (the variance is clamped at 0 against rounding).
    Coefficients: Python floats (computed on the host, nothing created) or broadcastable tensors.
    """
    ratio = a_hat / a
    variance = b_hat**2 - (ratio * b) ** 2
    std = math.sqrt(max(variance, 0.0)) if isinstance(variance, float) else nonneg_sqrt(variance)
    return ratio * x + (std * s_noise) * noise


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al., 2022, §2.3) of a predicted x̂0.

    s = clamp(quantile_ratio(|x̂0|), 1, max_value) per sample; x̂0 ← clamp(x̂0, −s, s) / s.
    """
    flat = x0.reshape(x0.shape[0], -1)
    flat = flat.float() if flat.dtype not in (torch.float32, torch.float64) else flat
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape).to(x0.dtype)
