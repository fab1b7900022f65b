"""ScratchDPMSolverScheduler's stochastic and noise-form algorithm types (``sde-dpmsolver++``, ``dpmsolver``,
``sde-dpmsolver``): parity with diffusers' DPMSolverMultistepScheduler under the same generator seed, the 3M SDE
difference, exactness for a point mass, the noise fraction η of the update rules, per-example generators, refusals."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from scratch_schedulers import ScratchDPMSolverScheduler
from scratch_schedulers.oracle import ExactDenoiser, GaussianMixture
from scratch_schedulers.samplers import (
    dpm_noise_sde_step,
    dpmpp_first_order_step,
    dpmpp_second_order_step,
    dpmpp_third_order_step,
)

from ..tolerances import gamma
from .helpers import denoiser_model, smooth_model
from .rounding import grid_lam_errors, within_rounding, x0_difference_bound

SDE_TYPES = ("sde-dpmsolver++", "sde-dpmsolver")
NOISE_FORM = ("dpmsolver", "sde-dpmsolver")
# ε̂ = α·x + β·m from a model output m (diffusers' noise-form conversions)
EPS_CONVERSIONS = {"epsilon": lambda a, b: (0.0, 1.0), "v_prediction": lambda a, b: (b, a),
                   "sample": lambda a, b: (1 / b, -a / b)}


def parity_configs():
    """sde-dpmsolver++ orders 1–2, sde-dpmsolver orders 1–2 (diffusers has no order 3 for either: its 3M SDE is
    the difference tested below, its sde-dpmsolver 3M crashes) and dpmsolver orders 1–3; VP with three
    prediction types, flow with the velocity (++) or ε (noise form: diffusers' noise form has no velocity)."""
    for algorithm, order, solver_type in itertools.product(("sde-dpmsolver++", "sde-dpmsolver", "dpmsolver"), (1, 2, 3),
                                                           ("midpoint", "heun")):
        if (algorithm in SDE_TYPES and order == 3) or (order == 1 and solver_type == "heun"):
            continue
        final = {} if algorithm == "sde-dpmsolver++" else {"final_sigmas_type": "sigma_min"}
        for prediction in ("epsilon", "v_prediction", "sample"):
            yield {"algorithm_type": algorithm, "solver_order": order, "solver_type": solver_type,
                   "prediction_type": prediction, **final}
        flow_prediction = "flow_prediction" if algorithm == "sde-dpmsolver++" else "epsilon"
        yield {"algorithm_type": algorithm, "solver_order": order, "solver_type": solver_type,
               "use_flow_sigmas": True, "prediction_type": flow_prediction, **final}


PARITY_CONFIGS = list(parity_configs())


def update_rule(config: dict, order: int, a, a_next, b_next):
    """Our update of a step as a function f([x, D_0, D_1, ..., z], [..., λ, λ_next]) of diffusers' operands (D: x̂0
    for sde-dpmsolver++, ε̂ for the noise forms; z the step's noise), for the rounding bound of rounding.py."""
    algorithm, solver_type = config["algorithm_type"], config["solver_type"]
    sde = algorithm in SDE_TYPES

    def update(operands, lams):
        x, *ds = operands
        z = ds.pop() if sde else None
        lams = list(lams)
        if algorithm == "sde-dpmsolver++":
            b_ratio = b_next * torch.exp(lams[-2]) / a  # b_next/b, b = a·e^{−λ}
            if order == 1:
                return dpmpp_first_order_step(x, ds[0], lams[-2], lams[-1], a_next, b_ratio, 1.0, z)
            return dpmpp_second_order_step(x, ds[0], ds[1], *lams[-3:], a_next, b_ratio, solver_type, 1.0, z)
        neg = [-lam for lam in lams]  # the noise form: (a, x0) ↔ (b, ε)
        if order == 1:
            x_ode = dpmpp_first_order_step(x, ds[0], neg[-2], neg[-1], b_next, a_next / a)
        elif order == 2:
            x_ode = dpmpp_second_order_step(x, ds[0], ds[1], *neg[-3:], b_next, a_next / a, solver_type)
        else:
            x_ode = dpmpp_third_order_step(x, *ds, *neg[-4:], b_next, a_next / a, halve_d2=True)
        if algorithm == "sde-dpmsolver":
            return dpm_noise_sde_step(x_ode, x, a_next / a, b_next, lams[-1] - lams[-2], z)
        return x_ode
    return update


def eps_difference_bound(prediction_type: str, a: float, b: float, x_difference, x, model_output):
    """|Δε̂| of ε̂ = α·x + β·m between two float32 implementations: as rounding.x0_difference_bound, with
    |dε̂/dx| = |1 − a·dx̂0/dx|/b ≤ (1 + a)/b for the stand-in models (|dx̂0/dx| ≤ 1 there)."""
    alpha, beta = EPS_CONVERSIONS[prediction_type](a, b)
    condition = abs(alpha) * x.abs() + abs(beta) * model_output.abs() + 1
    return (1 + a) / b * x_difference.abs().double() + 2 * gamma(8) * condition.double()


@pytest.mark.numerics
@pytest.mark.parametrize("config", PARITY_CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_parity_with_diffusers_under_the_same_generator_seed(config):
    """8 steps, the same generator seed for both: every step within float32 rounding of diffusers' (rounding.py).

    Bound per step (rounding.py's linear_update_bound): the update is linear in (x, D_0, D_1, ..., z) with weights
    from the λ grid; ours and diffusers' may differ by Σ|w_k|·|Δv_k| (their inputs' differences, measured) +
    2·γ_n·Σ|w_k|·|v_k| (each one's rounding) + the λ rounding of diffusers' float32 logarithms. The noise z is the
    same draw in both (randn_tensor, same seed: Δz = 0; test_the_noise_is_diffusers_draw... checks our draw bit for
    bit). Our first-order noise-form step is computed in the data form (x̂0 = (x − b·ε̂)/a, then (b_next/b)·x +
    a_next·φ1·x̂0): x̂0's rounding 2·u·(|x| + b·|ε̂|)/a, times a_next·φ1, is 2·u·(φ1·(a_next/a)·|x| +
    b_next·(e^h − 1)·|ε̂|) ≤ 2·u·Σ|w_k|·|v_k| (w: the noise-form weights a_next/a, b_next·(e^h − 1)), inside the
    bound's 2·γ_{4n}·Σ|w_k|·|v_k|. The operands themselves (x̂0 or ε̂) are checked against their own conversion
    bounds, so a wrong conversion cannot hide in Σ|w_k|·|Δv_k|; scaling the noise term by 1.001 fails every SDE
    config. On the flow path with the noise forms the last step is not compared: diffusers' ``sigma_min`` ends a
    flow grid at the VP value (a deliberate difference tested in test_dpmsolver.py).
    """
    algorithm, order = config["algorithm_type"], config["solver_order"]
    flow, noise_form, sde = config.get("use_flow_sigmas", False), algorithm in NOISE_FORM, algorithm in SDE_TYPES
    ours = ScratchDPMSolverScheduler(**config, third_order="diffusers")
    theirs = DPMSolverMultistepScheduler(**config)
    n = 8
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    x_ours = x_theirs = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.5
    g_ours, g_theirs, g_z = (torch.Generator().manual_seed(7) for _ in range(3))
    a, b, lam = [float(v) for v in ours._a], [float(v) for v in ours._b], ours._lam
    ds = ([], [])
    last = n - 1 if flow and noise_form else n
    for i, t in enumerate(theirs.timesteps[:last]):
        def model(x, t=t):
            return smooth_model(x, t) if flow else denoiser_model(theirs, x, t)

        out_ours, out_theirs = model(x_ours), model(x_theirs)
        next_ours = ours.step(out_ours, t, x_ours, generator=g_ours).prev_sample
        next_theirs = theirs.step(out_theirs, t, x_theirs, generator=g_theirs).prev_sample
        z = randn_tensor(x_ours.shape, generator=g_z, dtype=torch.float32) if sde else None
        ds[0].append(ours._history[-1][6] if noise_form else ours._history[-1][5])
        ds[1].append(theirs.model_outputs[-1])
        prediction = config["prediction_type"]
        if noise_form:
            bound = eps_difference_bound(prediction, a[i], b[i], x_ours - x_theirs, x_theirs, out_theirs)
        else:
            bound = x0_difference_bound(prediction, a[i], b[i], x_ours - x_theirs, x_theirs, out_theirs)
        assert bool(((ds[0][-1] - ds[1][-1]).abs() <= bound).all()), (config, i)
        step_order = ours._history[-1][3]
        assert step_order == min(order, i + 1, 1 if i == n - 1 else 2 if i == n - 2 else 3), (config, i)
        update = update_rule(config, step_order, ours._a[i], ours._a[i + 1], ours._b[i + 1])
        operands = [[x, *d[: -step_order - 1: -1], *([z] if sde else [])]
                    for x, d in zip((x_ours, x_theirs), ds, strict=True)]
        points = range(i + 1 - step_order, i + 2)
        ratio = within_rounding(update, *operands, [lam[j] for j in points],
                                grid_lam_errors(a, b, lam, points, [i + 1]), next_ours, next_theirs)
        assert ratio <= 1, (config, i, ratio)
        x_ours, x_theirs = next_ours, next_theirs


def zero_noise_solve(make_scheduler, mixture: GaussianMixture, n: int, dtype=torch.float64) -> torch.Tensor:
    """The SDE solvers with z = 0 (variance_noise): a deterministic scheme for dx = [f·x − g²·∇log p] dt, whose
    solutions the step counts n can be compared on. Timesteps 999 → 39 uniform in t (960/n apart), stopping at
    t = 39 so that every step shrinks as n grows (a final step to σ = 0 would not)."""
    scheduler = make_scheduler()
    scheduler.set_timesteps(timesteps=[999 - 960 * k // n for k in range(n + 1)])
    model = ExactDenoiser(mixture, scheduler)
    x = torch.randn(200, mixture.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    for t in scheduler.timesteps[:n]:
        x = scheduler.step(model(x, t), t, x, variance_noise=torch.zeros_like(x)).prev_sample
    return x.double()


@pytest.mark.numerics
def test_3m_sde_uses_the_taylor_weight_where_diffusers_has_a_sign_error():
    """Deliberate difference: diffusers' sde-dpmsolver++ 3M weighs D2 with −a_next·(1/2 + (ĥ − φ1)/ĥ²) ≈ −a_next
    (samplers/dpm.py, dpmpp_third_order_step); the Taylor weight is 2·a_next·φ3(ĥ) ≈ a_next·ĥ/3.

    Measured on the example mixture (exact denoiser, z = 0, errors against our 3M at n = 960, itself ~1e-7 off):
    n = 30 / 60 / 120 / 240: diffusers' 3M 8.0e-2 / 1.7e-2 / 5.5e-3 / 2.3e-3 (its ratios 4.8, 3.0, 2.4 fall towards
    2: first order), ours 6.1e-3 / 6.9e-4 / 6.8e-5 / 7.4e-6 (ratios ≈ 9–10: third order), both 2M heun 1.6e-3 at
    60: diffusers' 3M is 10× worse than its own 2M. Asserted at 60 and 120 with margins: diffusers' ratio < 4.5
    (an O(h³) method gives ≥ 6), ours > 6, and ours ≥ 20× more accurate at 120 (measured 81×).
    """
    mixture = GaussianMixture.example()
    config = {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "lower_order_final": False,
              "final_sigmas_type": "sigma_min"}
    reference = zero_noise_solve(lambda: ScratchDPMSolverScheduler(**config), mixture, 960)
    errors = {}
    for name, make, dtype in (("ours", lambda: ScratchDPMSolverScheduler(**config), torch.float64),
                              ("diffusers", lambda: DPMSolverMultistepScheduler(**config), torch.float32)):
        for n in (60, 120):
            errors[name, n] = float((zero_noise_solve(make, mixture, n, dtype) - reference).abs().max())
    assert errors["diffusers", 60] / errors["diffusers", 120] < 4.5, errors
    assert errors["ours", 60] / errors["ours", 120] > 6, errors
    assert errors["ours", 120] < errors["diffusers", 120] / 20, errors


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("flow", [False, True])
def test_point_mass_is_sampled_exactly(order, flow):
    """For data x0 = c (a point mass; x̂0 = c at every step, so D1 = D2 = 0 and every order is the first-order
    step) the sde-dpmsolver++ step maps N(a·c, b²) onto N(a_next·c, b_next²) exactly (samplers/dpm.py): with the
    initial ε and each step's z as unit vectors e_0, e_1, ... of one example, x_i = a_i·c + b_i·w_i with ‖w_i‖ = 1
    (w_i holds the weights of the K + 1 independent N(0, 1) draws), and x = a·c at σ = 0. float64: ‖w‖² is a sum
    of ≤ 12 products, so |‖w‖² − 1| ≤ 12·2⁻⁵³·(a few, the amplification of the b_i division) < 1e-13."""
    steps = 10
    c = 0.37
    config = {"algorithm_type": "sde-dpmsolver++", "solver_order": order, "prediction_type": "sample"}
    scheduler = ScratchDPMSolverScheduler(**config, **({"use_flow_sigmas": True} if flow else {}))
    scheduler.set_timesteps(steps)
    basis = torch.eye(steps + 1, dtype=torch.float64).reshape(steps + 1, 1, steps + 1)
    x = scheduler._a[0] * c + scheduler._b[0] * basis[0]
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(torch.full_like(x, c), t, x, variance_noise=basis[i + 1]).prev_sample
        a_next, b_next = float(scheduler._a[i + 1]), float(scheduler._b[i + 1])
        if b_next > 0:
            w = (x - a_next * c) / b_next
            assert abs(float((w**2).sum()) - 1) < 1e-13, (i, float((w**2).sum()))
    assert torch.equal(x, torch.full_like(x, float(scheduler._a[-1]) * c))  # σ = 0: exactly a·c, no noise left


def test_eta_zero_is_the_ode_and_small_eta_is_continuous():
    """η = 0 ignores the noise (the ODE, also from λ = −∞ where e^{−η·h} would be e^{−0·∞}); η → 0 tends to it."""
    gen = torch.Generator().manual_seed(3)
    x, d0, d1, d2, z = (torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(5))
    lams = [torch.tensor(v, dtype=torch.float64) for v in (-1.3, -0.6, 0.1, 0.8)]
    a_next = torch.sigmoid(2 * lams[3]) ** 0.5  # VP: a² = sigmoid(2λ), b² = sigmoid(−2λ)
    b_ratio = (torch.sigmoid(-2 * lams[3]) / torch.sigmoid(-2 * lams[2])) ** 0.5
    steps = {
        1: lambda eta, noise: dpmpp_first_order_step(x, d0, lams[2], lams[3], a_next, b_ratio, eta, noise),
        2: lambda eta, noise: dpmpp_second_order_step(x, d0, d1, *lams[1:], a_next, b_ratio, "heun", eta, noise),
        3: lambda eta, noise: dpmpp_third_order_step(x, d0, d1, d2, *lams, a_next, b_ratio, False, eta, noise),
    }
    for step in steps.values():
        assert torch.equal(step(0.0, z), step(0.0, None))
        # η = 1e-9: every coefficient moves by O(η·h) ≤ 1e-8 and the noise by b_next·√(2ηh) ≈ 4e-5·|z|
        torch.testing.assert_close(step(1e-9, torch.zeros_like(z)), step(0.0, None), rtol=0, atol=1e-7)
    inf = torch.tensor(math.inf, dtype=torch.float64)
    start_at_a_zero = dpmpp_first_order_step(x, d0, -inf, lams[3], a_next, 0.5)
    assert torch.equal(start_at_a_zero, 0.5 * x + a_next * d0)
    with pytest.raises(ValueError, match=r"eta=1\.0 needs noise"):
        steps[1](1.0, None)


def test_noise_form_sde_is_twice_the_ode_minus_the_signal_term():
    """sde-dpmsolver = 2·dpmsolver − (a_next/a)·x + b_next·√(e^{2h} − 1)·z, step by step at orders 1–3 (samplers/dpm.py;
    float64, two schedulers fed the same inputs: a few roundings of O(1) values, assert_close's default 1e-7)."""
    common = {"solver_order": 3, "final_sigmas_type": "sigma_min", "lower_order_final": False}
    ode = ScratchDPMSolverScheduler(algorithm_type="dpmsolver", **common)
    sde = ScratchDPMSolverScheduler(algorithm_type="sde-dpmsolver", **common)
    for scheduler in (ode, sde):
        scheduler.set_timesteps(6)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for i, t in enumerate(ode.timesteps):
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + i), dtype=torch.float64)
        out = denoiser_model(ode, x, t).double()
        x_ode = ode.step(out, t, x).prev_sample
        x_sde = sde.step(out, t, x, variance_noise=z).prev_sample
        a_ratio, h = ode._a[i + 1] / ode._a[i], ode._lam[i + 1] - ode._lam[i]
        torch.testing.assert_close(x_sde, 2 * x_ode - a_ratio * x + ode._b[i + 1] * torch.expm1(2 * h) ** 0.5 * z)
        assert sde._history[-1][3] == min(3, i + 1)
        x = x_ode


@pytest.mark.parametrize("algorithm", ["sde-dpmsolver++", "sde-dpmsolver"])
def test_a_generator_list_draws_each_example_as_alone(algorithm):
    """A list of B generators: example i's noise from the i-th (randn_tensor), so each example's loop is the one it
    would run alone with its own generator; also with one timestep per example (noise drawn once, indexed by
    rows). Same elementwise float32 arithmetic per row: bit-identical."""
    config = {"algorithm_type": algorithm, "final_sigmas_type": "sigma_min", "solver_order": 2}
    seeds = (11, 12, 13)
    batch = ScratchDPMSolverScheduler(**config)
    batch.set_timesteps(6)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    alone = [x[k:k + 1] for k in range(3)]
    alone_generators = [[torch.Generator().manual_seed(s)] for s in seeds]
    loops = [ScratchDPMSolverScheduler(**config) for _ in seeds]
    for loop in loops:
        loop.set_timesteps(6)
    for j, t in enumerate(batch.timesteps):
        per_example = torch.full((3,), int(t)) if j % 2 else t  # alternate the shared and per-example paths
        x = batch.step(denoiser_model(batch, x, t), per_example, x, generator=generators).prev_sample
        for k in range(3):
            out = denoiser_model(loops[k], alone[k], t)
            alone[k] = loops[k].step(out, t, alone[k], generator=alone_generators[k]).prev_sample
    assert torch.equal(x, torch.cat(alone))
    assert not torch.equal(alone[0], alone[1])  # different seeds: different noise


def test_the_noise_is_diffusers_draw_and_variance_noise_overrides_the_generator():
    scheduler = ScratchDPMSolverScheduler(algorithm_type="sde-dpmsolver++")
    scheduler.set_timesteps(4)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    t = scheduler.timesteps[0]
    z = randn_tensor(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    drawn = scheduler.step(0.1 * x, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
    scheduler.set_begin_index(0)
    given = scheduler.step(0.1 * x, t, x, generator=torch.Generator().manual_seed(99), variance_noise=z).prev_sample
    assert torch.equal(drawn, given)
    with pytest.raises(ValueError, match="variance_noise"):
        scheduler.set_begin_index(0)
        scheduler.step(0.1 * x, t, x, variance_noise=z[:1])


@pytest.mark.parametrize("config", [{"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
                                    {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min",
                                     "solver_order": 3},
                                    {"algorithm_type": "dpmsolver", "use_flow_sigmas": True,
                                     "prediction_type": "flow_prediction", "solver_order": 3}])
def test_meta_device_sde_loop_never_reads_back_to_host(config):
    """On the meta device every host read raises: the noise draw and the noise-form steps add no sync."""
    scheduler = ScratchDPMSolverScheduler(**config)
    scheduler.set_timesteps(6, device="meta")
    x = torch.empty(2, 3, 8, 8, device="meta")
    for t in scheduler.timesteps:
        x = scheduler.step(torch.empty(2, 3, 8, 8, device="meta"), t, x).prev_sample
    assert x.device.type == "meta"


def test_dpmsolver_accepts_a_final_step_to_sigma_zero_and_zero_terminal_snr():
    """Deliberate difference: diffusers refuses final_sigmas_type='zero' for dpmsolver; ours takes the last step
    with order 1 in the data form, which returns x̂0 exactly, and starts exactly at a = 0 (λ = −∞)."""
    scheduler = ScratchDPMSolverScheduler(algorithm_type="dpmsolver", solver_order=3, prediction_type="v_prediction",
                                          rescale_betas_zero_snr=True, timestep_spacing="trailing")
    scheduler.set_timesteps(6)
    assert float(scheduler._a[0]) == 0
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    for t in scheduler.timesteps:
        out = scheduler.step(denoiser_model(scheduler, x, t), t, x)
        assert torch.isfinite(out.prev_sample).all()
        x = out.prev_sample
    assert torch.equal(out.prev_sample, out.pred_original_sample)
    sde = ScratchDPMSolverScheduler(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min",
                                    prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                    timestep_spacing="trailing")
    with pytest.raises(ValueError, match="a = 0"):
        sde.set_timesteps(6)


@pytest.mark.parametrize(("config", "named"), [
    ({"algorithm_type": "sde-dpmsolver++", "corrector": "unic_bh2"}, "corrector='unic_bh2'"),
    ({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "corrector": "unic_bh1"}, "corrector"),
    ({"algorithm_type": "sde-dpmsolver++", "final_step": "sigma_squared"}, "final_step='sigma_squared'"),
    ({"algorithm_type": "sde-dpmsolver++", "solver_type": "bh2"}, "solver_type='bh2'"),
    ({"algorithm_type": "dpmsolver", "solver_type": "bh1"}, "solver_type='bh1'"),
    ({"algorithm_type": "sde-dpmsolver"}, "final_sigmas_type='zero'"),
    ({"algorithm_type": "sde-dpmsolver+"}, "algorithm_type='sde-dpmsolver\\+'"),
])
def test_options_that_assume_the_data_form_ode_are_refused_at_construction(config, named):
    with pytest.raises(ValueError, match=named) as err:
        ScratchDPMSolverScheduler(**config)
    assert "choose" in str(err.value)
