"""Reverse-sampler update rules on the Gaussian path x_t = a_t·x0 + b_t·ε — each one once.

Every sampler here moves a sample from path point (a_t, b_t) to (a_next, b_next) given the
model's estimates (x̂0, ε̂). In the view of "Step-by-Step Diffusion" (Nakkiran et al., 2024):

* :func:`reverse_step` is DDIM's generalised update (Song et al., 2021, Eq. 12). With
  s = η·σ_t (:func:`ddim_noise_std`, Eq. 16) it is DDIM; with η = 1 its mean is exactly DDPM's
  posterior mean μ̃_t (Ho et al., 2020, Eq. 7, :func:`posterior_mean`) — the ancestral
  sampler is DDIM at η = 1.
* On the flow path a = 1 − σ, b = σ, :func:`reverse_step` with s = 0 equals the Euler step
  x + (σ_next − σ)·u of the probability-flow ODE dx/dσ = u = ε − x0 (:func:`euler_step`);
  with s = b_next it is the stochastic re-noising sampler x_next = (1−σ_next)·x̂0 + σ_next·z.
* :func:`heun_step` is the second-order trapezoidal correction (Karras et al., 2022, Alg. 1).

All coefficients are tensors (0-d or broadcastable) so the functions work unchanged on any
device and never read a value back to the host.
"""

from __future__ import annotations

import torch


def nonneg_sqrt(x) -> torch.Tensor:
    """√max(x, 0) as a tensor op (float32 for float32/NumPy scalars, on the CPU for host scalars).

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


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al., 2022, §2.3) of a predicted x̂0.

    s = clamp(quantile_ratio(|x̂0|), 1, max_value) per sample; x̂0 ← clamp(x̂0, −s, s) / s.
    """
    flat = x0.reshape(x0.shape[0], -1)
    flat = flat.float() if flat.dtype not in (torch.float32, torch.float64) else flat
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape).to(x0.dtype)
