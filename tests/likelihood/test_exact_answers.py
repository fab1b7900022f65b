"""The likelihoods against the closed-form density of a Gaussian mixture, driven by its exact denoiser.

Measured (d = 2, the example mixture, 64 examples, exact divergence): flow path, adaptive RK45 at
rtol = atol = 1e-8: max error 2.3e-8 nats (236 evaluations); Heun, 200 uniform steps: 3.2e-4. VP path
(β from 1e-6 to 0.004, ᾱ_{T−1} = 0.135), Heun on 250 integer timesteps, exact marginal as the prior at
t = T − 1: 9.7e-5; with N(0, I) instead the mean offset is −0.057 ± 0.037 nats = −KL(p_T ‖ N(0, I)),
KL = 0.030 ± 0.002 by direct Monte Carlo. With the default linear β (β_0 = 1e-4) the path-change extension
below t = 0 costs 1.6e-3 nats (max), as the ODE module's docstring estimates (D·β_0/(2s²)).
"""

from __future__ import annotations

import math

import pytest
import torch

from scratch_diffusion.likelihood import ode_log_likelihood, variational_bound
from scratch_diffusion.likelihood.probability_flow import rademacher_probes, velocity_and_divergence, velocity_field
from scratch_schedulers import ScratchDDPMScheduler, ScratchFlowMatchScheduler
from scratch_schedulers.oracle import ExactDenoiser, GaussianMixture

pytestmark = pytest.mark.numerics  # rerun by make test under ATEN_CPU_CAPABILITY=default

MIXTURE = GaussianMixture.example()
# The ODE solvers' errors are truncation errors in float64 (rounding: ≤ 1e-12 nats, the same on every CPU). A fixed-step
# solver of order p is checked against 2× its Richardson estimate |LL(h) − LL(2h)|/(2^p − 1) (max over examples; the
# factor 2 covers examples not yet in the asymptotic regime, measured ≤ 1.3× on the flow path): a wrong velocity or
# divergence converges to another answer, which no Richardson estimate covers.
RICHARDSON_SAFETY = 2.0


def richardson_bound(coarse: torch.Tensor, fine: torch.Tensor, order: int = 2) -> float:
    """RICHARDSON_SAFETY × max |coarse − fine|/(2^order − 1): the fine run's error, step halved from the coarse one."""
    return RICHARDSON_SAFETY * float((coarse - fine).abs().max()) / (2**order - 1)


def _data(n: int, seed: int = 0) -> torch.Tensor:
    return MIXTURE.sample(n, torch.Generator().manual_seed(seed))


def test_mixture_log_density_matches_a_direct_sum():
    x = _data(5)
    a, b = 0.6, 0.8
    direct = torch.zeros(5, dtype=torch.float64)
    for w, mu, s in zip(MIXTURE.weights, MIXTURE.means, MIXTURE.stds):
        var = a**2 * s**2 + b**2
        direct += w * torch.exp(-((x - a * mu) ** 2).sum(1) / (2 * var)) / (2 * math.pi * var)
    torch.testing.assert_close(MIXTURE.log_density(x, a, b), direct.log(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver, num_steps", [("adaptive", 1), ("heun", 200)])
def test_flow_ode_equals_the_analytic_density(solver, num_steps):
    scheduler = ScratchFlowMatchScheduler()
    x = _data(64)

    def log_likelihood(steps: int):
        return ode_log_likelihood(ExactDenoiser(MIXTURE, scheduler), x, scheduler, solver=solver, num_steps=steps,
                                  spacing="uniform", rtol=1e-8, atol=1e-8)

    result = log_likelihood(num_steps)
    error = (result.log_likelihood - MIXTURE.log_density(x)).abs().max()
    if solver == "adaptive":  # local error ≤ atol + rtol·|state| ≤ 1e-8·(1 + 10) per step, ≤ 50 steps (236 evaluations)
        allowed = 50 * 1e-8 * 11
    else:  # Heun, second order (measured 3.2e-4 at 200 steps)
        allowed = richardson_bound(log_likelihood(num_steps // 2).log_likelihood, result.log_likelihood)
    assert error < allowed, f"{solver}: max error {float(error):.2e} nats, allowed {allowed:.2e}"
    assert result.latents.shape == x.shape


def test_euler_converges_to_heun_first_order():
    scheduler = ScratchFlowMatchScheduler()
    x, truth = _data(32), MIXTURE.log_density(_data(32))
    model = ExactDenoiser(MIXTURE, scheduler)
    errors = []
    for n in (25, 50):
        result = ode_log_likelihood(model, x, scheduler, solver="euler", num_steps=n, spacing="uniform")
        errors.append(float((result.log_likelihood - truth).abs().mean()))
    # first order: halving the step halves the error up to O(h) = O(1/25) relative terms: 2 ± 20 %
    assert 1.6 < errors[0] / errors[1] < 2.4, errors


def test_vp_ode_equals_the_analytic_density_with_the_true_prior():
    """VP: the prior at t = T − 1 is the exact marginal of x_{T−1}; N(0, I) instead costs KL(p_T ‖ N(0, I)).

    β from 1e-6 (the path-change extension below t = 0 is then negligible) to 0.004, so that ᾱ_{T−1} = 0.13 and
    the KL at T is large enough to see (with the default β_end = 0.02 it is ≈ 6e-6 nats).
    """
    scheduler = ScratchDDPMScheduler(beta_start=1e-6, beta_end=0.004, clip_sample=False)
    alpha_bar = float(scheduler.alphas_cumprod[-1])
    a_T, b_T = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    x = _data(64)
    truth = MIXTURE.log_density(x)
    model = ExactDenoiser(MIXTURE, scheduler)
    exact_prior, coarse = (ode_log_likelihood(
        model, x, scheduler, num_steps=steps, prior_log_density=lambda z: MIXTURE.log_density(z, a_T, b_T)
    ) for steps in (250, 125))
    error = (exact_prior.log_likelihood - truth).abs().max()
    allowed = richardson_bound(coarse.log_likelihood, exact_prior.log_likelihood)  # Heun (measured 9.7e-5)
    assert error < allowed, f"max error {float(error):.2e} nats, allowed {allowed:.2e}"
    # The standard normal prior: per example the error is log N(x_T) − log p_T(x_T) exactly ...
    normal_prior = ode_log_likelihood(model, x, scheduler, num_steps=250)
    offset = normal_prior.log_likelihood - exact_prior.log_likelihood
    latents = normal_prior.latents
    expected = -0.5 * (latents**2).sum(1) - math.log(2 * math.pi) - MIXTURE.log_density(latents, a_T, b_T)
    # the same latents, both sides in float64: ≤ 20 operations on log-densities ≤ 50 → ≤ 20·50·2⁻⁵³ ≈ 1e-13 < 1e-9
    torch.testing.assert_close(offset, expected, rtol=0, atol=1e-9)
    # ... and on average −KL(p_T ‖ N(0, I)), estimated independently from exact samples of x_{T−1}.
    x_T = a_T * _data(20000, seed=1) + b_T * torch.randn(20000, 2, generator=torch.Generator().manual_seed(2))
    log_ratio = MIXTURE.log_density(x_T, a_T, b_T) + 0.5 * (x_T**2).sum(1) + math.log(2 * math.pi)
    kl, kl_error = float(log_ratio.mean()), float(log_ratio.std()) / math.sqrt(len(log_ratio))
    offset_error = float(offset.std()) / math.sqrt(len(offset))
    # the KL is resolved (> 10 standard errors) and the offset matches it within 3 combined standard errors
    assert kl > 10 * kl_error and abs(-float(offset.mean()) - kl) < 3 * math.hypot(kl_error, offset_error)


def test_hutchinson_averages_to_the_exact_divergence():
    """4096 Rademacher probes at 16 points of σ = 0.3: the mean is within 4 standard errors of the exact trace."""
    scheduler = ScratchFlowMatchScheduler()
    field = velocity_field(ExactDenoiser(MIXTURE, scheduler), scheduler, torch.float64)
    y = 0.7 * _data(16) + 0.3 * torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    _, exact = velocity_and_divergence(field, y, 0.3, None)
    probes = rademacher_probes(y.shape, 4096, torch.Generator().manual_seed(4))
    single = torch.stack([velocity_and_divergence(field, y, 0.3, z[None])[1] for z in probes[:256]])
    _, mean = velocity_and_divergence(field, y, 0.3, probes)
    spread = single.std(0) / math.sqrt(len(probes))  # standard error of the 4096-probe mean
    # 4 standard errors (two-sided P ≈ 6e-5 per point); + 1e-12 for float64 sums of 4096 traces (4096·2⁻⁵³·|tr| ≤ 1e-12)
    assert bool(((mean - exact).abs() <= 4 * spread + 1e-12).all()), (mean - exact, spread)
    assert float(single.std(0).max()) > 0.01  # the probes do vary: the test can fail


def _vp_chain(T: int) -> ScratchDDPMScheduler:
    """T steps of the continuous linear VP schedule β(s) = 0.1 + 19.9 s on [0, 1]: the same ᾱ_end for every T."""
    s = torch.linspace(0, 1, T + 1, dtype=torch.float64)
    integral = 0.1 * s + 0.5 * 19.9 * s**2
    betas = 1 - torch.exp(-(integral[1:] - integral[:-1]))
    return ScratchDDPMScheduler(
        num_train_timesteps=T, trained_betas=betas.tolist(), variance_type="fixed_large", clip_sample=False
    )


def test_bound_is_above_the_true_nll_and_tightens_with_more_steps():
    """Continuous data, so the bound uses the Gaussian decoder (a density); fixed_large with σ_0² = β_0.

    Measured (2000 examples): gap 0.48 ± 0.03 nats at T = 10, 0.04 ± 0.03 at T = 100, −0.04 ± 0.03 at T = 1000.
    """
    x = _data(2000)
    nll = -MIXTURE.log_density(x)
    gaps = {}
    for T in (10, 100, 1000):
        scheduler = _vp_chain(T)
        bound = variational_bound(
            ExactDenoiser(MIXTURE, scheduler), x, scheduler, decoder="gaussian", first_step_variance="beta",
            generator=torch.Generator().manual_seed(T),
        )  # fmt: skip
        gap = bound.total - nll
        gaps[T] = (float(gap.mean()), float(gap.std()) / math.sqrt(len(gap)))
        assert gaps[T][0] > -3 * gaps[T][1], gaps  # never below the NLL beyond its Monte-Carlo error
    (g10, e10), (g100, e100), (g1000, e1000) = gaps[10], gaps[100], gaps[1000]
    assert g10 - g100 > 3 * math.hypot(e10, e100), gaps  # 3 combined standard errors
    # the gap shrinks like 1/T (0.48 → 0.04 from T = 10 to 100), so at T = 1000 it is ≈ 0.004 + its noise; 0.05 also
    # covers g100's own ±0.03 carried into that extrapolation
    assert g1000 < g100 + 3 * math.hypot(e100, e1000) and abs(g1000) < 3 * e1000 + 0.05, gaps
