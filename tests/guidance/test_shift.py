"""The shift every gradient rule applies (``shift_output``), on hand-made tensors and on ancestral DDPM steps.

x̂0′ = x̂0 + (b²/a)·g and ε̂′ = ε̂ − b·g in every parametrisation; its ε form is Dhariwal & Nichol's, and on an
ancestral step it moves the mean by (β_t/√α_t)·g, their Σ·g = β̃_t·g to first order in β_t. Rounding bounds as in
``test_rules.py``: n roundings of operands bounded by W, ≤ n·u·W.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from scratch_diffusion.guidance import shift_output
from scratch_schedulers import Parametrization, ScratchDDPMScheduler
from scratch_schedulers.noise_path import signal_noise_at, split_prediction

from ..tolerances import U32, U64
from .hand_made import hand_made, largest, point

# --- the one shift every gradient rule applies -----------------------------------------------------------

VP_POINT, FLOW_POINT = point(0.6, 0.8), point(0.3, 0.7)
PARAMETRISATIONS = [("vp", "epsilon"), ("vp", "sample"), ("vp", "v_prediction"), ("flow", "flow_velocity")]


@pytest.mark.numerics
@pytest.mark.parametrize(("path", "prediction_type"), PARAMETRISATIONS)
def test_shift_output_moves_x0_by_b2_over_a_and_eps_by_minus_b(path: str, prediction_type: str):
    evaluation = VP_POINT if path == "vp" else FLOW_POINT
    a, b = evaluation.a, evaluation.b
    x, output, g = hand_made(0)
    shifted = shift_output(output, g, evaluation, Parametrization(path, prediction_type))
    x0, eps = split_prediction(output, x, a, b, prediction_type)
    x0_shifted, eps_shifted = split_prediction(shifted, x, a, b, prediction_type)
    # ≤ 16 roundings (the shift's target: 4, its sum: 1, two read-outs of ≤ 3 each, the differences) of terms
    # ≤ W = (|x| + |output| + (b²/a + b + 1)·|g|)/min(a, b): the read-out divides by a or b.
    terms = largest(x) + largest(output) + (b * b / a + b + 1) * largest(g)
    tolerance = 16 * U64 * terms / min(a, b)
    torch.testing.assert_close(x0_shifted - x0, (b * b / a) * g, rtol=0, atol=tolerance)
    torch.testing.assert_close(eps_shifted - eps, -b * g, rtol=0, atol=tolerance)
    assert torch.equal(shift_output(output, g, point(0.0, 1.0), Parametrization(path, prediction_type)), output)


def test_the_eps_form_is_dhariwal_and_nichol():
    """ε̂′ = ε̂ − √(1 − ᾱ)·s·∇log p(y | x) (Dhariwal & Nichol, 2021, Algorithm 2), with the same roundings."""
    _, eps, gradient = hand_made(1)
    scale = 2.5
    shifted = shift_output(eps, scale * gradient, VP_POINT, Parametrization("vp", "epsilon"))
    assert torch.equal(shifted, eps - VP_POINT.b * (scale * gradient))  # (−b)·g = −(b·g) exactly


TIMESTEPS = (999, 750, 500, 250, 100, 1)


def float32_coefficient_error(beta: float) -> float:
    """Relative error of a step coefficient both schedulers keep in float32 (ours: "as in diffusers").

    β_t = 1 − ᾱ_t/ᾱ_{t−1} from float32 ᾱ is off by ≤ 2·u32 absolute, 2·u32/β_t relative (≈ 1e-3 at t = 1), and
    the coefficient's own ≤ 8 float32 roundings add 8·u32.
    """
    return 2 * U32 / beta + 8 * U32


def ancestral_mean_shift(scheduler, t: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(guided − plain step, g, rounding bound) of one ancestral step from t, both drawing the same noise."""
    x, eps, g = hand_made(t, dtype=dtype)
    a, b = (float(v) for v in signal_noise_at(scheduler, torch.tensor(t)))
    shifted = shift_output(eps, g, point(a, b), Parametrization("vp", "epsilon"))
    timestep = torch.tensor(t)
    plain = scheduler.step(eps, timestep, x, generator=torch.Generator().manual_seed(t)).prev_sample
    guided = scheduler.step(shifted, timestep, x, generator=torch.Generator().manual_seed(t)).prev_sample
    # Each step is ≤ 16 roundings of terms ≤ W = |x| + |ε̂| + |ε̂′| + |x_prev| (x̂0's 1/a is cancelled by the mean's
    # √ᾱ_prev·β/(1 − ᾱ) — ours forms the mean from x̂0, diffusers too), two steps subtracted.
    unit = U64 if dtype == torch.float64 else U32
    return guided - plain, g, 32 * unit * largest(x, eps, shifted, plain, guided)


@pytest.mark.numerics
@pytest.mark.parametrize("implementation", ["ours", "diffusers"])
def test_a_guided_ancestral_step_moves_the_mean_by_beta_over_sqrt_alpha(implementation: str):
    if implementation == "ours":
        scheduler, dtype = ScratchDDPMScheduler(clip_sample=False), torch.float64
    else:
        scheduler, dtype = DDPMScheduler(clip_sample=False), torch.float32  # it steps in its tables' float32
    scheduler.set_timesteps(1000)
    alpha_bar = scheduler.alphas_cumprod.double()
    for t in TIMESTEPS:
        moved, g, rounding = ancestral_mean_shift(scheduler, t, dtype)
        # DDPM's mean μ̃ = c₀·x̂0 + c_x·x, c₀ = √ᾱ_{t−1}·β_t/(1 − ᾱ_t) (Eq. 7), with β_t = 1 − α_t, α_t = ᾱ_t/ᾱ_{t−1}
        # as both schedulers form it from their ᾱ table; x̂0 moves by (b²/a)·g = ((1 − ᾱ_t)/√ᾱ_t)·g, so the mean
        # moves by c₀·(b²/a)·g = (β_t/√α_t)·g and the added noise is the same draw.
        alpha = alpha_bar[t] / alpha_bar[t - 1]
        coefficient = float((1 - alpha) / alpha.sqrt())
        tolerance = rounding + float32_coefficient_error(float(1 - alpha)) * coefficient * largest(g)
        torch.testing.assert_close(moved, (coefficient * g).to(dtype), rtol=0, atol=tolerance)


@pytest.mark.numerics
@pytest.mark.parametrize("num_train_timesteps", [1000, 4000])
def test_the_ancestral_shift_is_dhariwal_and_nichols_sigma_g_to_first_order(num_train_timesteps: int):
    """c₀·(b²/a) = β_t/√α_t against their Σ·g = β̃_t·g, β̃_t = β_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t).

    With S = ᾱ_{t−1}/(1 − ᾱ_{t−1}), 1 − ᾱ_t = (1 − ᾱ_{t−1}) + β_t·ᾱ_{t−1}, so the ratio is exactly
    r = (1 + β_t·S)/√(1 − β_t) and, from 1 + β/2 ≤ 1/√(1 − β) ≤ 1 + β/2 + β² (β ≤ ½),
    β_t·(S + ½) ≤ r − 1 ≤ β_t·(S + ½) + β_t²·(S/2 + 1) + β_t³·S:
    r → 1 as β_t → 0 at a fixed noise level (measured r − 1: 0.006–0.019 at T = 1000, 0.0015–0.005 at T = 4000),
    but not where β_t·S is not small: at t = 1, S = ᾱ_0/(1 − ᾱ_0) ≈ 1/β_0 grows with T as β_1 shrinks, and
    r ≈ 2.2 (T = 1000) or 2.05 (T = 4000): their Σ·g is about half the exact shift at the last step.
    """
    scale = 1000 / num_train_timesteps  # the same β(t/T) curve on a finer grid: β_t shrinks by `scale`
    scheduler = ScratchDDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=1e-4 * scale, beta_end=0.02 * scale, clip_sample=False
    )
    scheduler.set_timesteps(num_train_timesteps)
    alpha_bar = scheduler.alphas_cumprod.double()
    for t in [round(fraction * num_train_timesteps) for fraction in (0.999, 0.75, 0.5, 0.25, 0.1)] + [1]:
        moved, g, rounding = ancestral_mean_shift(scheduler, t, torch.float64)
        beta = float(1 - alpha_bar[t] / alpha_bar[t - 1])
        beta_tilde = beta * float((1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]))
        ratio = float((moved / g).mean()) / beta_tilde
        # the measured mean shift is the float32 coefficient, up to rounding/|g|min
        slack = float32_coefficient_error(beta) * ratio + rounding / float(g.abs().min()) / beta_tilde
        snr = float(alpha_bar[t - 1] / (1 - alpha_bar[t - 1]))
        first_order = beta * (snr + 0.5)
        assert first_order - slack <= ratio - 1 <= first_order + beta**2 * (snr / 2 + 1) + beta**3 * snr + slack
