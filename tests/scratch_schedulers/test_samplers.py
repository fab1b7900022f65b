"""The identities the ``samplers`` module docstring claims, checked in float64 at several path points.

Each update rule is written once; these tests tie the forms together: DDPM's posterior mean is
DDIM's update at η = 1, the flow Euler step is DDIM's update with s = 0 on the flow path, and
with s = b_next it is the stochastic re-noising sampler.
"""

from __future__ import annotations

import pytest
import torch

from scratch_schedulers.noise_path import velocity_to_eps, velocity_to_x0, x0_to_eps
from scratch_schedulers.samplers import (
    ddim_noise_std,
    ddpm_posterior_coefficients,
    dynamic_threshold,
    euler_step,
    heun_step,
    nonneg_sqrt,
    posterior_mean,
    reverse_step,
)

pytestmark = pytest.mark.numerics  # rerun by make test under ATEN_CPU_CAPABILITY=default

F64 = torch.float64
# float64 identities, u = 2⁻⁵³: ≤ 30 operations on O(1) draws, each error amplified by at most 1/(1 − ᾱ_t) ≤ 1e4
# (the coefficients divide by 1 − ᾱ_t, rounded to u/(1 − ᾱ_t) relative at ᾱ_t = 0.9999): 30·1e4·u ≈ 3e-11 < 1e-10.
# The 1e-12 checks share their cancelling sub-expressions (1 − ᾱ, 1 − ᾱ_t/ᾱ_next) or divide by none, so what
# differs is amplified ≤ 10: 30·10·u ≈ 3e-14. A wrong formula errs by ≥ 1e-4.
# (ᾱ_t, ᾱ_next) with ᾱ_t < ᾱ_next: one training step near either end, strided steps, the terminal step.
ALPHA_BAR_PAIRS = [(0.9999, 0.99995), (0.95, 0.99), (0.5, 0.9), (0.3, 0.7), (0.02, 0.3), (1e-4, 0.01), (0.2, 1.0)]
# (σ, σ_next) of the flow path, from pure noise (σ = 1) to data (σ_next = 0) included.
SIGMA_PAIRS = [(1.0, 0.9), (1.0, 0.0), (0.75, 0.5), (0.3, 0.29), (0.1, 0.0), (0.5, 0.5)]


def draws(n: int, seed: int, shape=(4, 3)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=F64) for _ in range(n)]


def t64(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=F64)


@pytest.mark.parametrize(("alpha_bar_t", "alpha_bar_next"), ALPHA_BAR_PAIRS)
def test_posterior_mean_is_reverse_step_at_eta_one_with_eps_from_x0(alpha_bar_t, alpha_bar_next):
    """μ̃_t (DDPM Eq. 7) = a_next·x̂0 + √(b_next² − σ_t(1)²)·ε̂ with ε̂ = (x_t − a_t·x̂0)/b_t (DDIM Eq. 12)."""
    abt, abn = t64(alpha_bar_t), t64(alpha_bar_next)
    x0, x_t = draws(2, seed=int(alpha_bar_t * 1e4))
    coef_x0, coef_xt, _ = ddpm_posterior_coefficients(abt, abn)
    eps = x0_to_eps(x0, x_t, abt.sqrt(), (1 - abt).sqrt())
    ddim = reverse_step(x0, eps, abn.sqrt(), 1 - abn, noise_std=ddim_noise_std(abt, abn, eta=1.0))
    torch.testing.assert_close(posterior_mean(x0, x_t, coef_x0, coef_xt), ddim, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("alpha_bar_t", "alpha_bar_next"), ALPHA_BAR_PAIRS)
def test_ddim_noise_std_at_eta_one_is_the_posterior_std(alpha_bar_t, alpha_bar_next):
    """σ_t(η = 1) (DDIM Eq. 16) = √β̃_t, β̃_t = (1 − ᾱ_next)/(1 − ᾱ_t)·β_t (DDPM Eq. 7), β_t = 1 − ᾱ_t/ᾱ_next."""
    abt, abn = t64(alpha_bar_t), t64(alpha_bar_next)
    _, _, posterior_var = ddpm_posterior_coefficients(abt, abn)
    beta = 1 - abt / abn
    torch.testing.assert_close(posterior_var, (1 - abn) / (1 - abt) * beta, rtol=1e-12, atol=0)
    torch.testing.assert_close(ddim_noise_std(abt, abn, eta=1.0), posterior_var.sqrt(), rtol=1e-12, atol=0)
    for eta in (0.0, 0.3, 2.0):  # η only scales it
        torch.testing.assert_close(ddim_noise_std(abt, abn, eta), eta * posterior_var.sqrt(), rtol=1e-12, atol=0)


@pytest.mark.parametrize(("alpha_bar_t", "alpha_bar_next"), ALPHA_BAR_PAIRS)
def test_ancestral_step_is_ddim_at_eta_one_including_its_noise(alpha_bar_t, alpha_bar_next):
    """With one z, DDPM's x_{t−1} = μ̃_t + √β̃_t·z is DDIM's η = 1 step: the ancestral sampler is DDIM at η = 1."""
    abt, abn = t64(alpha_bar_t), t64(alpha_bar_next)
    x0, x_t, z = draws(3, seed=17)
    coef_x0, coef_xt, posterior_var = ddpm_posterior_coefficients(abt, abn)
    eps = x0_to_eps(x0, x_t, abt.sqrt(), (1 - abt).sqrt())
    ddim = reverse_step(x0, eps, abn.sqrt(), 1 - abn, ddim_noise_std(abt, abn, 1.0), noise=z)
    ddpm = posterior_mean(x0, x_t, coef_x0, coef_xt) + posterior_var.sqrt() * z
    torch.testing.assert_close(ddpm, ddim, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("alpha_bar_t", "alpha_bar_next"), ALPHA_BAR_PAIRS)
def test_deterministic_reverse_step_with_the_true_x0_and_eps_lands_on_the_path(alpha_bar_t, alpha_bar_next):
    """s = 0: x_next = a_next·x0 + b_next·ε, whether √(b_next² − 0) is computed or passed as ``direction``."""
    abn = t64(alpha_bar_next)
    x0, eps = draws(2, seed=3)
    on_path = abn.sqrt() * x0 + (1 - abn).sqrt() * eps
    torch.testing.assert_close(reverse_step(x0, eps, abn.sqrt(), 1 - abn), on_path, rtol=1e-12, atol=1e-12)
    given = reverse_step(x0, eps, abn.sqrt(), 1 - abn, direction=(1 - abn).sqrt())
    torch.testing.assert_close(given, on_path, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("sigma", "sigma_next"), SIGMA_PAIRS)
def test_flow_reverse_step_without_noise_is_the_euler_step(sigma, sigma_next):
    """On a = 1 − σ, b = σ: reverse_step(x̂0, ε̂, 1 − σ_next, σ_next², s = 0) = x + (σ_next − σ)·u."""
    x, u = draws(2, seed=5)
    s, s_next = t64(sigma), t64(sigma_next)
    x0, eps = velocity_to_x0(u, x, s), velocity_to_eps(u, x, s)
    ddim = reverse_step(x0, eps, 1 - s_next, s_next**2)
    torch.testing.assert_close(ddim, euler_step(x, u, s, s_next), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("sigma", "sigma_next"), SIGMA_PAIRS)
def test_flow_reverse_step_with_full_noise_is_the_stochastic_re_noising_sampler(sigma, sigma_next):
    """s = b_next = σ_next: x_next = (1 − σ_next)·x̂0 + σ_next·z (the ε̂ term vanishes)."""
    x, u, z = draws(3, seed=11)
    s, s_next = t64(sigma), t64(sigma_next)
    x0, eps = velocity_to_x0(u, x, s), velocity_to_eps(u, x, s)
    renoised = reverse_step(x0, eps, 1 - s_next, s_next**2, noise_std=s_next, noise=z)
    torch.testing.assert_close(renoised, (1 - s_next) * x0 + s_next * z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("sigma", "sigma_next"), SIGMA_PAIRS)
def test_heun_step_is_the_trapezoidal_rule(sigma, sigma_next):
    """Exact for a derivative linear in σ (the trapezoid rule's order), and Euler when both slopes agree."""
    x, alpha, beta = draws(3, seed=13)
    h = sigma_next - sigma
    exact = x + alpha * h + beta * (sigma_next**2 - sigma**2) / 2  # x + ∫ (α + β·σ) dσ
    heun = heun_step(x, alpha + beta * sigma, alpha + beta * sigma_next, sigma, sigma_next)
    torch.testing.assert_close(heun, exact, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(heun_step(x, alpha, alpha, sigma, sigma_next), euler_step(x, alpha, sigma, sigma_next))


def test_nonneg_sqrt_clamps_rounding_negatives_to_zero():
    values = torch.tensor([-1e-9, 0.0, 0.25, 4.0], dtype=F64)
    torch.testing.assert_close(nonneg_sqrt(values), torch.tensor([0.0, 0.0, 0.5, 2.0], dtype=F64))
    assert nonneg_sqrt(0.25).dtype == torch.float32 and float(nonneg_sqrt(-0.5)) == 0.0


def test_dynamic_threshold_rescales_only_samples_whose_quantile_exceeds_one():
    """Imagen §2.3: s = clamp(quantile(|x̂0|), 1, max); x̂0 ← clamp(x̂0, −s, s)/s, per sample."""
    inside = torch.linspace(-0.9, 0.9, 50, dtype=F64).reshape(1, 50)
    wide = 3 * torch.linspace(-1, 1, 50, dtype=F64).reshape(1, 50)
    out = dynamic_threshold(torch.cat([inside, wide]), ratio=0.9, max_value=2.0)
    torch.testing.assert_close(out[0], inside[0])  # quantile < 1: s = 1, nothing changes
    s = min(max(float(torch.quantile(wide.abs(), 0.9)), 1.0), 2.0)
    torch.testing.assert_close(out[1], wide[0].clamp(-s, s) / s)
    assert s == 2.0 and float(out[1].abs().max()) == 1.0
