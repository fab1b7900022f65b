"""EDM's stochastic churn (Karras et al., 2022, Alg. 2) as an option of the flow Euler/Heun scheduler.

The reference is written independently in float64, in EDM's own coordinates: Alg. 2 in VE coordinates
x/a with the level s = σ/(1 − σ) and the exact mixture denoiser D(x; s) (Euler: the flow-path Euler step
is the VE one, both being DDIM), and for Heun EDM's general Alg. 1 with s(t) = 1 − t, σ(t) = t/(1 − t)
(t = flow σ), whose ODE is dx/dt = (x − D(x/(1 − t); t/(1 − t)))/t, with Alg. 2's churn in VE coordinates.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from scratch_diffusion import ScratchDDPMScheduler, ScratchDiffusionPipeline
from scratch_schedulers import ScratchFlowMatchScheduler
from scratch_schedulers.oracle import ExactDenoiser, GaussianMixture
from scratch_schedulers.samplers import churn_gamma, raise_noise

from ..pipelines.helpers import CallCounter, ExactUNet, final_latents, tiny_unet
from ..tolerances import U64, gamma

pytestmark = pytest.mark.numerics

T = 1000
MIXTURE = GaussianMixture.example()
GRID = np.linspace(1.0, 0.02, 8)  # custom sigmas: the reference reads the very same float64 grid
CHURN = {"s_churn": 20.0, "s_tmin": 0.05, "s_tmax": 10.0, "s_noise": 1.007}  # the window leaves out both ends


# ---- the float64 reference -----------------------------------------------------------------------


def reference_levels(grid: np.ndarray, s_churn: float, s_tmin: float, s_tmax: float) -> tuple[list, list, list]:
    """(s_i, ŝ_i, γ_i) of Alg. 2 for the flow grid σ_i (s = σ/(1 − σ), ∞ at σ = 1), and s_n = 0 appended to s."""
    n = len(grid)
    levels = [float(g / (1 - g)) if g < 1 else math.inf for g in grid]
    gammas = [min(s_churn / n, 2**0.5 - 1) if s_tmin <= s <= s_tmax and math.isfinite(s) else 0.0 for s in levels]
    return [*levels, 0.0], [(1 + g) * s for g, s in zip(gammas, levels, strict=True)], gammas


def flow_sigma(level: float) -> float:
    return level / (1 + level)


def ve_derivative(x_flow: torch.Tensor, level: float) -> torch.Tensor:
    """EDM's d = (x − D(x; t))/t in VE coordinates for the flow sample ``x_flow`` at level s (x_VE = x·(1 + s))."""
    x_ve = x_flow.double() * (1 + level)
    return (x_ve - MIXTURE.denoise(x_ve, 1.0, level)) / level


def flow_derivative(x_flow: torch.Tensor, sigma: float) -> torch.Tensor:
    """EDM Alg. 1's dx/dt for s(t) = 1 − t, σ(t) = t/(1 − t) at t = σ: (x − D(x/(1 − t); t/(1 − t)))/t."""
    x = x_flow.double()
    return (x - MIXTURE.denoise(x / (1 - sigma), 1.0, sigma / (1 - sigma))) / sigma


def ve_churn(x_ve: torch.Tensor, level: float, level_hat: float, s_noise: float, z: torch.Tensor) -> torch.Tensor:
    """Alg. 2, line 5: x̂ = x + √(ŝ² − s²)·S_noise·z."""
    return x_ve + math.sqrt(level_hat**2 - level**2) * s_noise * z.double()


def exact_velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return MIXTURE.model_output(x.double(), 1 - sigma, sigma, "flow_velocity")


def run_recorded(scheduler, x: torch.Tensor, generator) -> list[dict]:
    """A diffusers loop with the exact denoiser; per entry its timestep, input, model output and output."""
    model, records = ExactDenoiser(MIXTURE, scheduler), []
    for t in scheduler.timesteps:
        u = model(x, t)
        out = scheduler.step(u, t, x, generator=generator).prev_sample
        records.append({"t": float(t), "x": x, "u": u, "out": out})
        x = out
    return records


# ---- the schedule ------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_timesteps_and_sigmas_are_the_levels_the_model_sees(solver):
    scheduler = ScratchFlowMatchScheduler(solver=solver, **CHURN)
    scheduler.set_timesteps(sigmas=GRID)
    _, levels_hat, gammas = reference_levels(GRID, CHURN["s_churn"], CHURN["s_tmin"], CHURN["s_tmax"])
    churned = [flow_sigma(s) if math.isfinite(s) else 1.0 for s in levels_hat]
    assert 0 < sum(g > 0 for g in gammas) < len(GRID) and gammas[0] == 0.0  # partial window, none at σ = 1
    if solver == "euler":
        expected = [*churned, 0.0]
    else:  # predictor at σ̂_i, corrector at σ_{i+1}
        expected = [churned[0], *(v for i in range(1, len(GRID)) for v in (GRID[i], churned[i])), 0.0]
    assert len(scheduler.timesteps) == (len(GRID) if solver == "euler" else 2 * len(GRID) - 1)
    # float32 storage of a float64 level: one rounding (u); timesteps σ·T: a second one (γ_2)
    torch.testing.assert_close(scheduler.sigmas.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=gamma(1), atol=0)
    torch.testing.assert_close(scheduler.timesteps.double(), torch.tensor(expected[:-1], dtype=torch.float64) * T,
                               rtol=gamma(2), atol=0)


def test_gamma_is_clipped_and_windowed():
    cap = 2**0.5 - 1
    assert churn_gamma(1.0, 10, 2.0, 0.0, math.inf) == pytest.approx(0.2, rel=U64 * 4)  # S_churn/N below the cap
    assert churn_gamma(1.0, 10, 80.0, 0.0, math.inf) == cap
    assert churn_gamma(0.5, 10, 80.0, 0.5, 2.0) == churn_gamma(2.0, 10, 80.0, 0.5, 2.0) == cap  # inclusive ends
    assert churn_gamma(0.49, 10, 80.0, 0.5, 2.0) == churn_gamma(2.01, 10, 80.0, 0.5, 2.0) == 0.0
    assert churn_gamma(math.inf, 10, 80.0, 0.0, math.inf) == 0.0  # σ = 1: no finite level to raise


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_evaluation_count(solver):
    scheduler = ScratchFlowMatchScheduler(solver=solver, s_churn=40.0)
    scheduler.set_timesteps(10)
    model = ExactDenoiser(MIXTURE, scheduler)
    x, generator = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample
    assert model.nfe == (10 if solver == "euler" else 19) and torch.isfinite(x).all()


# ---- off: bit for bit today's sampler ---------------------------------------------------------------


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("off", [{"s_churn": 0.0, "s_noise": 1.3, "s_tmin": 0.1}, {"s_churn": 40.0, "s_tmin": 1e6}])
def test_no_churned_step_is_the_deterministic_sampler_bit_for_bit(solver, off):
    """s_churn = 0, or a window that holds no level of the schedule: the same timesteps, sigmas and samples."""
    runs = []
    for config in ({}, off):
        scheduler = ScratchFlowMatchScheduler(solver=solver, shift=3.0, **config)
        scheduler.set_timesteps(12)
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
        records = run_recorded(scheduler, x, torch.Generator().manual_seed(1))
        runs.append((scheduler.timesteps, scheduler.sigmas, records[-1]["out"]))
    for today, churned in zip(*runs, strict=True):
        assert torch.equal(today, churned)


# ---- against Algorithm 2 ----------------------------------------------------------------------------

# Per model evaluation, from the scheduler's own float32 input: the reference step in float64 must explain
# ours up to (1) the model seeing t = float32(σ̂·T), i.e. σ' ≠ σ̂ by ≤ 2u relative: |h|·|u(x, σ') − u(x, σ̂)|,
# computed exactly from the mixture, and (2) ours' float32 rounding: every operand of x + h·u (Heun:
# x + h·(u1 + u2)/2) goes through ≤ 4 roundings (model output, coefficient, product, sum) and the raise
# (â/a)·x + std·S_noise·z through ≤ 3 more (coefficient, product, sum): γ_8·(|x| + |h|·Σ|u| + std·|z|)
# (the reference's own float64 rounding is ≈ 2⁻²⁹ times that). A wrong level, factor or order is ≥ 1e-3.


def rounding_bound(x, h, velocities, std, z) -> torch.Tensor:
    return gamma(8) * (x.double().abs() + abs(h) * sum(u.double().abs() for u in velocities) + std * z.double().abs())


def level_error(x, h, t, sigma) -> torch.Tensor:
    """|h|·|u(x, σ') − u(x, σ)|: ours evaluates the model at σ' = t/T, the reference at its exact σ."""
    return abs(h) * (exact_velocity(x, t / T) - exact_velocity(x, sigma)).abs()


@pytest.mark.parametrize("churn", [CHURN, {"s_churn": 80.0, "s_noise": 1.0}])
def test_churned_euler_is_algorithm_2_in_ve_coordinates(churn):
    scheduler = ScratchFlowMatchScheduler(**churn)
    scheduler.set_timesteps(sigmas=GRID)
    levels, levels_hat, gammas = reference_levels(GRID, churn["s_churn"], churn.get("s_tmin", 0), churn.get("s_tmax",
                                                                                                          math.inf))
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    records = run_recorded(scheduler, x, torch.Generator().manual_seed(1))
    twin = torch.Generator().manual_seed(1)  # the scheduler's draws, in order: one per churned step
    for i, record in enumerate(records):
        level_hat, level_next = levels_hat[i], levels[i + 1]
        if math.isinf(level_hat):  # σ̂ = 1: the VE form has no finite x_VE; the step is x + (σ_1 − 1)·u exactly
            derivative_flow, h = exact_velocity(record["x"], 1.0), GRID[1] - 1.0
            x_ve = (record["x"].double() + h * derivative_flow) * (1 + level_next)
        else:
            x_ve = record["x"].double() * (1 + level_hat)
            x_ve = x_ve + (level_next - level_hat) * ve_derivative(record["x"], level_hat)
            h = flow_sigma(level_next) - flow_sigma(level_hat)
        z, std = torch.zeros_like(record["x"]), 0.0
        if i + 1 < len(GRID) and gammas[i + 1] > 0:
            z = torch.randn(record["x"].shape, generator=twin)
            x_ve = ve_churn(x_ve, level_next, levels_hat[i + 1], churn["s_noise"], z)
            level_next = levels_hat[i + 1]
            std = flow_sigma(level_next) * math.sqrt(1 - (levels[i + 1] / level_next) ** 2) * churn["s_noise"]
        expected = x_ve / (1 + level_next)
        sigma_hat = 1.0 if math.isinf(level_hat) else flow_sigma(level_hat)
        bound = rounding_bound(record["x"], h, [record["u"]], std, z) + level_error(record["x"], h, record["t"],
                                                                                   sigma_hat)
        assert bool(((record["out"].double() - expected).abs() <= bound).all()), i


@pytest.mark.parametrize("churn", [CHURN, {"s_churn": 80.0, "s_noise": 1.0}])
def test_churned_heun_is_edm_algorithm_2_on_the_flow_clock(churn):
    scheduler = ScratchFlowMatchScheduler(solver="heun", **churn)
    scheduler.set_timesteps(sigmas=GRID)
    levels, levels_hat, gammas = reference_levels(GRID, churn["s_churn"], churn.get("s_tmin", 0), churn.get("s_tmax",
                                                                                                          math.inf))
    sigmas_hat = [1.0 if math.isinf(s) else flow_sigma(s) for s in levels_hat]
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    records = run_recorded(scheduler, x, torch.Generator().manual_seed(1))
    twin = torch.Generator().manual_seed(1)
    for i in range(len(GRID)):
        predictor = records[2 * i]
        start, sigma_hat, sigma_next = predictor["x"], sigmas_hat[i], float(np.append(GRID, 0.0)[i + 1])
        h = sigma_next - sigma_hat
        d = flow_derivative(start, sigma_hat) if sigma_hat < 1 else exact_velocity(start, 1.0)
        euler = start.double() + h * d
        bound = rounding_bound(start, h, [predictor["u"]], 0.0, start)
        bound = bound + level_error(start, h, predictor["t"], sigma_hat)
        assert bool(((predictor["out"].double() - euler).abs() <= bound).all()), (i, "predictor")
        if i == len(GRID) - 1:  # the last step is Euler, to σ = 0
            break
        corrector = records[2 * i + 1]
        d_next = flow_derivative(predictor["out"], sigma_next)
        x_next = start.double() + h * (d + d_next) / 2
        z, std = torch.zeros_like(start), 0.0
        if gammas[i + 1] > 0:
            z = torch.randn(start.shape, generator=twin)
            x_ve = ve_churn(x_next / (1 - sigma_next), levels[i + 1], levels_hat[i + 1], churn["s_noise"], z)
            x_next = x_ve * (1 - sigmas_hat[i + 1])
            std = sigmas_hat[i + 1] * math.sqrt(1 - (levels[i + 1] / levels_hat[i + 1]) ** 2) * churn["s_noise"]
        bound = (rounding_bound(start, h, [predictor["u"], corrector["u"]], std, z)
                 + level_error(start, h / 2, predictor["t"], sigma_hat)
                 + level_error(predictor["out"], h / 2, corrector["t"], sigma_next))
        assert bool(((corrector["out"].double() - x_next).abs() <= bound).all()), (i, "corrector")


# ---- the noise raise ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "a_hat", "b_hat"), [
    (0.8, 0.2, 0.7, 0.3),  # flow path σ 0.2 → 0.3
    (0.95**0.5, 0.05**0.5, 0.6**0.5, 0.4**0.5),  # VP path ᾱ 0.95 → 0.6
    (0.9, 0.1, 0.9, 0.1),  # the same level: the identity
])
def test_raise_noise_has_the_exact_path_marginal(a, b, a_hat, b_hat):
    """x̂ is linear in (x, z): its scale r and noise std q are read off on unit operands. For data N(μ, s²) the
    path marginal N(a·μ, a²s² + b²) goes to N(r·a·μ, r²(a²s² + b²) + q²), which must be N(â·μ, â²s² + b̂²) for
    every μ and s (a point mass is s = 0): r·a = â and r²b² + q² = b̂², in float64 (≤ 10 roundings of O(1))."""
    one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    r, q = raise_noise(one, a, b, a_hat, b_hat, zero), raise_noise(zero, a, b, a_hat, b_hat, one)
    assert float(r) * a == pytest.approx(a_hat, rel=10 * U64, abs=0)
    assert float(r) ** 2 * b**2 + float(q) ** 2 == pytest.approx(b_hat**2, rel=10 * U64, abs=10 * U64)
    # EDM's form in VE coordinates: x̂/â = x/a + √(ŝ² − s²)·z
    assert float(q) / a_hat == pytest.approx(math.sqrt(max((b_hat / a_hat) ** 2 - (b / a) ** 2, 0.0)), abs=1e-7)
    assert float(raise_noise(zero, a, b, a_hat, b_hat, one, s_noise=1.5)) == pytest.approx(1.5 * float(q), rel=4 * U64)
    tensors = [torch.tensor(v, dtype=torch.float64) for v in (a, b, a_hat, b_hat)]
    assert float(raise_noise(zero, *tensors, one)) == pytest.approx(float(q), rel=10 * U64, abs=10 * U64)


# ---- generators, img2img, refusals -------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_a_generator_list_draws_each_examples_noise_as_alone(solver):
    def run(x, generator):
        scheduler = ScratchFlowMatchScheduler(solver=solver, s_churn=40.0)
        scheduler.set_timesteps(6)
        return run_recorded(scheduler, x, generator)[-1]["out"]

    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    batch = run(x, [torch.Generator().manual_seed(10 + i) for i in range(3)])
    for i in range(3):
        assert torch.equal(batch[i : i + 1], run(x[i : i + 1], torch.Generator().manual_seed(10 + i)))
    assert not torch.equal(batch[0], batch[1])  # the noise differs between examples


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_a_loop_started_later_with_set_begin_index_continues_the_full_loop(solver):
    """Image-to-image: step m begins at entry m·order; from there, with the same state and noise, the same end."""
    full = ScratchFlowMatchScheduler(solver=solver, s_churn=40.0)
    full.set_timesteps(6)
    entry = 3 * full.order
    model = ExactDenoiser(MIXTURE, full)
    x, generator = torch.randn(32, 2, generator=torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1)
    for k, t in enumerate(full.timesteps):
        if k == entry:
            x_at, generator_at = x.clone(), copy.deepcopy(generator)
        x = full.step(model(x, t), t, x, generator=generator).prev_sample
    later = ScratchFlowMatchScheduler(solver=solver, s_churn=40.0)
    later.set_timesteps(6)
    later.set_begin_index(entry)
    y = x_at
    for t in later.timesteps[entry:]:
        y = later.step(model(y, t), t, y, generator=generator_at).prev_sample
    assert torch.equal(x, y)


def test_an_off_schedule_euler_step_lands_on_the_next_churned_level():
    """From t between entries j − 1 and j: the ODE to σ_j, then the raise to σ̂_j where the loop goes on."""
    scheduler = ScratchFlowMatchScheduler(s_churn=80.0)
    scheduler.set_timesteps(sigmas=GRID)
    plain = ScratchFlowMatchScheduler()
    plain.set_timesteps(sigmas=GRID)
    j = 3
    t = float(scheduler.timesteps[j] + plain.timesteps[j - 1]) / 2
    x, u = torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), torch.randn(8, 2)
    got = scheduler.step(u, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
    sigma, sigma_hat = float(GRID[j]), float(scheduler.sigmas[j])
    ode = x + (sigma - t / T) * u
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    expected = raise_noise(ode, 1 - sigma, sigma, 1 - sigma_hat, sigma_hat, z)
    # σ̂_j read back from float32 sigmas (u relative) moves the raise's coefficients by ≤ 4u·(|ode| + |z|)
    assert bool(((got - expected).abs() <= gamma(12) * (x.abs() + u.abs() + z.abs())).all())


@pytest.mark.parametrize(("config", "message"), [
    ({"s_churn": -1.0}, "s_churn=-1.0"),
    ({"s_churn": float("nan")}, "s_churn=nan"),
    ({"s_tmin": 2.0, "s_tmax": 1.0}, "s_tmin=2.0, s_tmax=1.0"),
    ({"s_tmin": -0.5}, "s_tmin=-0.5"),
    ({"s_noise": 0.0}, "s_noise=0.0"),
    ({"s_noise": float("inf")}, "s_noise=inf"),
    ({"s_churn": 10.0, "stochastic_sampling": True}, "stochastic_sampling=True and s_churn=10.0"),
])
def test_bad_churn_configs_are_refused(config, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ScratchFlowMatchScheduler(**config)


def test_per_example_and_out_of_order_timesteps_are_refused_with_churn():
    x = torch.randn(2, 3)
    euler = ScratchFlowMatchScheduler(s_churn=40.0)
    euler.set_timesteps(5)
    with pytest.raises(ValueError, match=r"s_churn > 0 takes one timestep for the whole batch, got \(2,\)"):
        euler.step(x, euler.timesteps[:2], x)
    heun = ScratchFlowMatchScheduler(solver="heun", s_churn=40.0)
    heun.set_timesteps(5)
    heun.step(x, heun.timesteps[0], x)
    with pytest.raises(ValueError, match="runs its entries in order"):
        heun.step(x, 123.0, x)


def test_config_round_trips_with_an_infinite_s_tmax(tmp_path):
    ScratchFlowMatchScheduler(s_churn=5.0, s_tmin=0.1).save_pretrained(tmp_path)
    loaded = ScratchFlowMatchScheduler.from_pretrained(tmp_path)
    assert (loaded.config.s_churn, loaded.config.s_tmin, loaded.config.s_tmax) == (5.0, 0.1, math.inf)


# ---- through the pipeline on a VP model --------------------------------------------------------------


def test_a_vp_unet_samples_with_the_churned_flow_scheduler_at_the_churned_levels():
    pipe = ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = ScratchFlowMatchScheduler(solver="heun", s_churn=40.0)
    counter = CallCounter(pipe.unet)
    images = pipe(batch_size=2, num_inference_steps=4, output_type="pt", generator=torch.manual_seed(0)).images
    assert len(counter.calls) == 7 and torch.isfinite(images).all()
    # the VP model is called at the VP timestep of equal SNR to each churned flow level (its λ = log((1 − σ̂)/σ̂))
    model_t = torch.stack([t for _, t in counter.calls]).double()
    reference = ScratchFlowMatchScheduler(solver="heun", s_churn=40.0)
    reference.set_timesteps(4)
    alpha_bar = ScratchDDPMScheduler().alphas_cumprod.double()
    lam_table = 0.5 * torch.log(alpha_bar / (1 - alpha_bar))
    for t, sigma in zip(model_t.tolist(), reference.sigmas[:-1].double().tolist(), strict=True):
        if sigma >= 1 or t <= 0:  # σ = 1 is beyond the VP range: the model is asked at its end, t = 999
            assert t == pytest.approx(999, abs=1e-3) if sigma >= 1 else True
            continue
        lam = math.log((1 - sigma) / sigma)
        lo = int(t)
        lam_t = float(lam_table[lo] + (t - lo) * (lam_table[min(lo + 1, 999)] - lam_table[lo]))
        assert lam_t == pytest.approx(lam, abs=1e-3)  # float32 timesteps: t within ~1e-4, λ slope ≤ 10 per unit t


def test_the_vp_model_through_the_change_of_variables_samples_like_the_flow_model():
    """The exact VP ε-model and the exact flow model of one mixture, the churned flow Heun, the same seed."""

    def samples(path, prediction_type):
        unet = ExactUNet(MIXTURE, path, prediction_type)
        trained = ScratchDDPMScheduler(prediction_type=prediction_type) if path == "vp" else ScratchFlowMatchScheduler()
        pipe = ScratchDiffusionPipeline(unet=unet, scheduler=trained)
        pipe.scheduler = ScratchFlowMatchScheduler(solver="heun", s_churn=40.0)
        pipe.set_progress_bar_config(disable=True)
        return final_latents(pipe, batch_size=2000, num_inference_steps=10, generator=torch.manual_seed(0))

    diff = (samples("vp", "epsilon") - samples("flow", "flow_velocity")).abs()
    # as test_cross_path's unchurned Heun: at σ = 1 (and below σ(t = 0)) the VP model answers for its nearest
    # trained end, a model error of O(1 − a(t = 999)) ≈ 6e-3 weighed by Δσ ≈ 0.1 → median ~1e-3; the churn
    # noise is the same in both runs (the same generator, drawn in the same order) and adds no difference
    assert diff.median() < 2e-3 and diff.quantile(0.99) < 1e-2, (diff.median(), diff.quantile(0.99))
