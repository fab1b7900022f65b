"""The UniP/UniC update (samplers.unipc_update), the corrected-sample x̂0 and the σ² final step, as pure maths
and in ScratchDPMSolverScheduler (parity with diffusers' UniPC: test_dpmsolver.py; accuracy: test_few_step.py)."""

from __future__ import annotations

import math

import pytest
import torch

from scratch_schedulers import ScratchDPMSolverScheduler
from scratch_schedulers.oracle import GaussianMixture
from scratch_schedulers.samplers import (
    clean_endpoint_step,
    corrected_prediction_shift,
    dpmpp_second_order_step,
    dpmpp_third_order_step,
    unipc_update,
)

from .helpers import smooth_model

pytestmark = pytest.mark.numerics  # rerun by make test under ATEN_CPU_CAPABILITY=default

F64 = torch.float64


def vp_scales(lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) on the VP path at log-SNR λ: a = sigmoid(2λ)^½, b = sigmoid(−2λ)^½."""
    lam = torch.tensor(2 * lam, dtype=F64)
    return torch.sigmoid(lam) ** 0.5, torch.sigmoid(-lam) ** 0.5


def exact_step(data, lam: float, h: float, x: torch.Tensor) -> torch.Tensor:
    """x_next = (b_next/b)·x + b_next·∫ e^ℓ·D(ℓ) dℓ for a data prediction D(ℓ), by fine trapezoids."""
    (_, b), (_, b_next) = vp_scales(lam), vp_scales(lam + h)
    grid = torch.linspace(lam, lam + h, 200001, dtype=F64)
    return b_next / b * x + b_next * torch.trapezoid(torch.exp(grid) * data(grid), grid)


@pytest.mark.parametrize("offsets", [[-0.6, 1.0], [-0.5, -1.1, 1.0], [-0.4, -0.9, -1.5]])
def test_p_points_integrate_a_degree_p_data_prediction_exactly(offsets):
    """With p ≥ 2 points (r_m = offsets, 1 = the corrector's new point) the step is exact for D of degree p."""
    lam, h, x = 0.3, 0.8, torch.tensor(0.4, dtype=F64)
    degree = len(offsets)
    def data(ell):
        return sum((0.5 - 0.2 * k) * (ell - 0.1) ** k for k in range(degree + 1))
    a_next, b_next = vp_scales(lam + h)
    b = vp_scales(lam)[1]
    points = [(torch.tensor(lam + r * h, dtype=F64), data(torch.tensor(lam + r * h, dtype=F64))) for r in offsets]
    step = unipc_update(x, data(torch.tensor(lam, dtype=F64)), torch.tensor(lam, dtype=F64), points,
                        torch.tensor(lam + h, dtype=F64), a_next, b_next / b)
    # the trapezoid reference errs by h·Δ²·max|f''|/12 ≈ 1e-11 (Δ = h/200000, f = e^ℓ·D(ℓ), |f''| ≤ 20) plus n·u ≈ 2e-11
    # summing n = 2e5 terms in float64; a step not exact for degree p misses by the next Taylor term, ≥ 1e-4 here
    assert float((step - exact_step(data, lam, h, x)).abs()) < 1e-9


def test_unip_is_dpm_solver_pp_where_the_conditions_coincide():
    """UniP-2 bh2 = 2M midpoint (UniPC's a_1 = 1/2); UniP-3 solves the Taylor 3M's two conditions."""
    lams = [torch.tensor(v, dtype=F64) for v in (-0.9, -0.2, 0.4, 1.1)]  # λ_prev2, λ_prev, λ, λ_next
    d = [torch.randn(5, generator=torch.Generator().manual_seed(k), dtype=F64) for k in range(3)]
    x, a_next, b_ratio = torch.randn(5, dtype=F64), torch.tensor(0.8, dtype=F64), torch.tensor(0.7, dtype=F64)
    # float64: ≤ 40 operations including a 2×2 solve with condition ≤ 10 on O(1) λ spacings: 40·10·2⁻⁵³ ≈ 4e-14 < 1e-12
    two = unipc_update(x, d[0], lams[2], [(lams[1], d[1])], lams[3], a_next, b_ratio, "bh2")
    torch.testing.assert_close(two, dpmpp_second_order_step(x, d[0], d[1], lams[1], lams[2], lams[3], a_next,
                                                            b_ratio, "midpoint"), rtol=1e-12, atol=1e-12)
    three = unipc_update(x, d[0], lams[2], [(lams[1], d[1]), (lams[0], d[2])], lams[3], a_next, b_ratio, "bh1")
    torch.testing.assert_close(three, dpmpp_third_order_step(x, d[0], d[1], d[2], lams[0], lams[1], lams[2],
                                                             lams[3], a_next, b_ratio), rtol=1e-12, atol=1e-12)


def test_path_ends_are_exact():
    """λ_m = −∞ drops out (the limit of its weight is 0); a step from λ = −∞ with bh2 weighs the new point ½."""
    inf = torch.tensor(math.inf, dtype=F64)
    lam, lam_next = torch.tensor(0.2, dtype=F64), torch.tensor(0.9, dtype=F64)
    x0, new, x = torch.tensor(0.3, dtype=F64), torch.tensor(-0.4, dtype=F64), torch.tensor(1.2, dtype=F64)
    with_end = unipc_update(x, x0, lam, [(-inf, torch.tensor(7.0, dtype=F64)), (lam_next, new)], lam_next, 0.8, 0.5)
    alone = unipc_update(x, x0, lam, [(lam_next, new)], lam_next, 0.8, 0.5, "bh1")  # one point: no B(h) rule
    exact_one = x * 0.5 + 0.8 * (-torch.expm1(lam - lam_next)) * x0 + 0.8 * (1 + torch.expm1(lam - lam_next) / (
        lam_next - lam)) * (new - x0)  # float64, ≤ 20 operations on O(1) values: ≤ 20·2⁻⁵³ ≈ 2e-15 < 1e-12 below
    torch.testing.assert_close(with_end, exact_one, rtol=1e-12, atol=1e-12)
    assert not torch.equal(alone, with_end)  # UniPC's a_1 = 1/2 for a single configured point
    from_minus_inf = unipc_update(x, x0, -inf, [(lam_next, new)], lam_next, 0.8, 0.5, "bh2")
    torch.testing.assert_close(from_minus_inf, 0.5 * x + 0.8 * x0 + 0.4 * (new - x0), rtol=1e-12, atol=1e-12)


def test_clean_endpoint_step_removes_the_sigma_squared_term():
    """x̂0 = x(0) − s²·x''(0)/2 + O(s³) along an ODE solution (s = sigmoid(−λ)): two points give x(0) exactly
    when the O(s³) term is 0."""
    lam, lam_prev = torch.tensor(2.5, dtype=F64), torch.tensor(1.6, dtype=F64)
    s, s_prev = torch.sigmoid(-lam), torch.sigmoid(-lam_prev)
    end = torch.tensor([0.7, -1.1], dtype=F64)
    step = clean_endpoint_step(end + 3 * s**2, end + 3 * s_prev**2, lam, lam_prev)
    torch.testing.assert_close(step, end, rtol=0, atol=1e-14)  # float64: 8 operations on values ≤ 2 → 8·2·2⁻⁵³ ≈ 2e-15


def test_gaussian_shift_is_the_exact_denoiser_jacobian_for_unit_variance_data():
    mixture = GaussianMixture(weights=torch.tensor([1.0]), means=torch.tensor([[0.3, -0.2]]), stds=torch.tensor([1.0]))
    x, dx = torch.tensor([[0.5, 0.1]], dtype=F64), torch.tensor([[1e-3, -2e-3]], dtype=F64)
    for a, b in ((0.95, 0.3), (0.2, 0.98), (0.6, 0.4)):  # VP points and a flow point (a + b = 1)
        shift = mixture.model_output(x + dx, a, b, "sample") - mixture.model_output(x, a, b, "sample")
        # the denoiser is affine here, so the difference is exact but for rounding of outputs ≈ 1 over a shift ≈ 1e-3:
        # ≤ 10·2⁻⁵³/1e-3 ≈ 1e-12 relative < 1e-9; the wrong shift (ε or x0 reuse) is off by O(1)
        torch.testing.assert_close(shift, corrected_prediction_shift("gaussian", a, b) * dx, rtol=1e-9, atol=0)
    assert corrected_prediction_shift("epsilon", 0.5, 0.8) == 2.0 and corrected_prediction_shift("x0", 0.5, 0.8) == 0


@pytest.mark.parametrize("corrector", ["unic_bh1", "unic_bh2"])
def test_corrector_from_zero_snr_start_is_finite(corrector):
    """The first step starts at ᾱ = 0 (λ = −∞): bh2 corrects the next sample with weight ½, bh1 (B = ∞) skips it."""
    config = {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
    plain, corrected = ScratchDPMSolverScheduler(**config), ScratchDPMSolverScheduler(**config, corrector=corrector)
    x = y = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for scheduler in (plain, corrected):
        scheduler.set_timesteps(6)
    for k, t in enumerate(plain.timesteps):
        x = plain.step(smooth_model(x, t), t, x).prev_sample
        y = corrected.step(smooth_model(y, t), t, y).prev_sample
        assert torch.isfinite(y).all()
        if k == 1:  # the second step is the first with a corrector, the one from λ = −∞
            assert torch.equal(x, y) == (corrector == "unic_bh1")

