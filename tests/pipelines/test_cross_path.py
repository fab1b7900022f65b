"""Any model with any sampler: the exact change of variables between the VP and the flow paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EDMEulerScheduler,
    FlowMatchEulerDiscreteScheduler,
)

from scratch_diffusion import (
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchDiffusionPipeline,
    ScratchDPMSolverScheduler,
    ScratchFlowMatchScheduler,
)
from scratch_schedulers import Parametrization
from scratch_schedulers.noise_path import parametrization_of, split_prediction
from scratch_schedulers.oracle import GaussianMixture, mixture_error, sampling_noise
from scratch_schedulers.path_change import (
    flow_to_vp,
    prediction_readout,
    vp_log_snr_table,
    vp_model_point,
    vp_point_of_log_snr,
    vp_timestep_at_log_snr,
    vp_to_flow,
)

from .helpers import CallCounter, ExactUNet, final_latents, template_distance, tiny_unet

VP_TABLE = vp_log_snr_table(ScratchDDPMScheduler().alphas_cumprod)

# ---- the change of variables ------------------------------------------------------------------


@pytest.mark.numerics
def test_vp_and_flow_points_of_equal_snr_hold_the_same_sample_up_to_scale():
    x0, eps = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # float64: ≤ 10 operations on values ≤ 4, dividing by a + b ≥ 1: ≤ 10·4·2⁻⁵³ ≈ 5e-15 < 1e-12
    for t in (0, 250, 999):
        a, b = vp_point_of_log_snr(float(VP_TABLE[t]))
        x_flow, sigma = vp_to_flow(a * x0 + b * eps, a, b)
        torch.testing.assert_close(x_flow, (1 - sigma) * x0 + sigma * eps, rtol=1e-12, atol=1e-12)
        x_vp, a_back, b_back = flow_to_vp(x_flow, sigma)
        torch.testing.assert_close(x_vp, a * x0 + b * eps, rtol=1e-12, atol=1e-12)
        assert (a_back, b_back) == pytest.approx((a, b), rel=1e-12)


def test_vp_clock_inverts_the_log_snr_table():
    """Integer timesteps come back exactly; between them t is monotone; outside it clamps to the trained ends."""
    knots = [0, 1, 500, 998, 999]
    assert [vp_timestep_at_log_snr(float(VP_TABLE[t]), VP_TABLE) for t in knots] == knots
    lams = np.linspace(VP_TABLE[0] + 1, VP_TABLE[-1] - 1, 500)
    times = [vp_timestep_at_log_snr(float(lam), VP_TABLE) for lam in lams]
    assert times[0] == 0 and times[-1] == 999 and np.all(np.diff(times) >= 0)
    # linear interpolation in float64 at a midpoint: exact to ≈ 10·2⁻⁵³ relative, inside approx's 1e-6
    assert vp_timestep_at_log_snr((VP_TABLE[10] + VP_TABLE[11]) / 2, VP_TABLE) == pytest.approx(10.5)
    assert vp_model_point(math.inf, VP_TABLE).timestep == 0 and vp_model_point(-math.inf, VP_TABLE).timestep == 999


def test_zero_terminal_snr_end_is_matched_exactly():
    table = vp_log_snr_table(ScratchDDPMScheduler(rescale_betas_zero_snr=True).alphas_cumprod)
    assert table[-1] == -math.inf
    point = vp_model_point(-math.inf, table)
    assert (point.timestep, point.a, point.b) == (999, 0.0, 1.0)
    inside = vp_timestep_at_log_snr(float(table[-2]) - 3, table)
    assert 998 < inside < 999


@pytest.mark.numerics
@pytest.mark.parametrize("model_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("target_type", ["flow_velocity", "epsilon", "sample"])
def test_readout_maps_the_exact_vp_model_onto_the_exact_flow_model(model_type, target_type):
    """Exactness: the converted output of a perfect VP model is the perfect flow model's output at that point."""
    mixture = GaussianMixture.example()
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    for sigma in (0.02, 0.3, 0.7, 0.97):
        lam = math.log((1 - sigma) / sigma)
        point = vp_model_point(lam, VP_TABLE)
        k = point.b / sigma
        output = mixture.model_output(k * x, point.a, point.b, model_type)
        p, q = prediction_readout(model_type, point.a, point.b, target_type, 1 - sigma, sigma)
        expected = mixture.model_output(x, 1 - sigma, sigma, target_type)
        # float64 through the exact denoiser (responsibilities by softmax over exponents ≤ 200): ≤ 200·2⁻⁵³ relative in
        # each weight, then a read-out with |p|, |q| ≤ 1/σ ≤ 50 at σ = 0.02: ≤ 50·200·10·2⁻⁵³ ≈ 1e-11 < 1e-9
        torch.testing.assert_close(p * output + q * (k * x), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.numerics
def test_readout_between_parametrisations_of_one_point_is_split_prediction():
    out, x = torch.randn(2, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a, b = vp_point_of_log_snr(0.3)
    p, q = prediction_readout("v_prediction", a, b, "epsilon", a, b)
    torch.testing.assert_close(p * out + q * x, split_prediction(out, x, a, b, "v_prediction")[1])
    assert prediction_readout("epsilon", a, b, "epsilon", a, b) == (1.0, 0.0)


# ---- which schedulers describe which path ----------------------------------------------------


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        (ScratchDDIMScheduler(prediction_type="v_prediction"), ("vp", "v_prediction")),
        (ScratchFlowMatchScheduler(), ("flow", "flow_velocity")),
        (ScratchDPMSolverScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"), ("flow", "flow_velocity")),
        (ScratchDPMSolverScheduler(use_flow_sigmas=True, prediction_type="sample"), ("flow", "sample")),
        (
            DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"),
            ("flow", "flow_velocity"),
        ),
        (DPMSolverMultistepScheduler(), ("vp", "epsilon")),
        (FlowMatchEulerDiscreteScheduler(), ("flow", "flow_velocity")),
    ],
)
def test_sampler_parametrization(scheduler, expected):
    assert parametrization_of(scheduler) == Parametrization(*expected)


# ---- the pipeline: exact denoiser -------------------------------------------------------------

N_SAMPLES = 4000


def exact_pipeline(path: str, prediction_type: str, scheduler, dtype=torch.float32) -> ScratchDiffusionPipeline:
    unet = ExactUNet(GaussianMixture.example(), path, prediction_type, dtype)
    trained = ScratchDDPMScheduler(prediction_type=prediction_type) if path == "vp" else ScratchFlowMatchScheduler()
    pipe = ScratchDiffusionPipeline(unet=unet, scheduler=trained)
    pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    return pipe


def exact_error(path, prediction_type, scheduler, steps) -> tuple[dict, int]:
    pipe = exact_pipeline(path, prediction_type, scheduler)
    samples = final_latents(pipe, batch_size=N_SAMPLES, num_inference_steps=steps, generator=torch.manual_seed(0))
    return mixture_error(samples, pipe.unet.mixture), pipe.unet.calls


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("path", "prediction_type", "native", "cross"),
    [
        (
            "vp",
            "epsilon",
            lambda: ScratchDDIMScheduler(clip_sample=False, timestep_spacing="trailing"),
            lambda: ScratchFlowMatchScheduler(solver="heun"),
        ),
        (
            "vp",
            "v_prediction",
            lambda: ScratchDDIMScheduler(
                clip_sample=False, timestep_spacing="trailing", prediction_type="v_prediction"
            ),
            lambda: ScratchDPMSolverScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"),
        ),
        (
            "flow",
            "flow_velocity",
            lambda: ScratchFlowMatchScheduler(),
            lambda: ScratchDDIMScheduler(clip_sample=False, timestep_spacing="trailing"),
        ),
        (
            "flow",
            "flow_velocity",
            lambda: ScratchFlowMatchScheduler(solver="heun"),
            lambda: DPMSolverMultistepScheduler(timestep_spacing="trailing"),
        ),
    ],
    ids=["vp-eps-by-flow-heun", "vp-v-by-flow-dpm", "flow-by-ddim", "flow-by-vp-dpm"],
)
def test_cross_path_sampler_reproduces_the_mixture_like_the_native_one(path, prediction_type, native, cross):
    """About the same model evaluations (50; Heun 26 steps = 51), same seed: both within the exact samples' noise."""
    floor = sampling_noise(GaussianMixture.example(), N_SAMPLES)
    results = {}
    for name, make in (("native", native), ("cross", cross)):
        scheduler = make()
        results[name] = exact_error(path, prediction_type, scheduler, 26 if scheduler.order == 2 else 50)
    (native_error, native_calls), (cross_error, cross_calls) = results["native"], results["cross"]
    assert abs(native_calls - cross_calls) <= 1, (native_calls, cross_calls)
    for key in ("sliced_wasserstein", "weight_error", "std_error"):  # C = 3 floors + ~1 sd, as test_exact_denoiser
        assert cross_error[key] <= 3 * floor[key] + 0.01, (key, cross_error, native_error, floor)
        assert native_error[key] <= 3 * floor[key] + 0.01, (key, native_error, floor)


@pytest.mark.numerics
def test_the_sampler_not_the_training_path_decides_the_samples():
    """One sampler, the exact VP ε-model and the exact flow model of one mixture, the same noise: the same samples.

    DDIM visits only points inside the VP model's range, so they agree to float32 rounding. A flow sampler also
    visits σ = 1 and σ < σ(t = 0), where the VP model is evaluated at its nearest trained end: close, not equal.
    """

    def samples(path, prediction_type, scheduler, steps):
        pipe = exact_pipeline(path, prediction_type, scheduler)
        return final_latents(pipe, batch_size=2000, num_inference_steps=steps, generator=torch.manual_seed(0))

    ddim = lambda: ScratchDDIMScheduler(clip_sample=False, timestep_spacing="trailing")  # noqa: E731
    diff = (samples("vp", "epsilon", ddim(), 20) - samples("flow", "flow_velocity", ddim(), 20)).abs()
    # float32 DDIM, 20 steps, the same timesteps: the two exact models differ by their float32 conversions
    # (≤ γ_4·(|x| + b·|ε|)/a), weighed by a_next: Σ_k 4u·8·a_{k+1}/a_k ≤ 4u·8·30 ≈ 6e-5 over the trailing grid < 1e-4
    assert diff.max() < 1e-4, diff.max()
    heun = lambda: ScratchFlowMatchScheduler(solver="heun")  # noqa: E731
    diff = (samples("vp", "epsilon", heun(), 10) - samples("flow", "flow_velocity", heun(), 10)).abs()
    # not rounding: at σ = 1 and below σ(t = 0) the VP model answers for its nearest trained end, a model error of
    # O(1 − a(t = 999)) ≈ 6e-3 at the start carried with weight ≈ Δσ ≈ 0.1 → median ~1e-3; 99 % below 1e-2
    assert diff.median() < 2e-3 and diff.quantile(0.99) < 1e-2, (diff.median(), diff.quantile(0.99))


@pytest.mark.numerics
def test_same_path_other_parametrisation_matches_the_native_sampler():
    """A v-model sampled by an ε-DDIM equals the v-DDIM run (same timesteps: only the read-out changes).

    In float64 samples; what remains is the scheduler's float32 path coefficients, amplified by 1/a ≈ 100 at t = 950.
    """
    v_ddim = ScratchDDIMScheduler(prediction_type="v_prediction", clip_sample=False)
    native = exact_pipeline("vp", "v_prediction", v_ddim, torch.float64)
    converted = exact_pipeline("vp", "v_prediction", ScratchDDIMScheduler(clip_sample=False), torch.float64)
    expected = final_latents(native, batch_size=500, num_inference_steps=20, generator=torch.manual_seed(0))
    got = final_latents(converted, batch_size=500, num_inference_steps=20, generator=torch.manual_seed(0))
    # float64 samples, but DDIM's path coefficients are float32: the two read-outs of x̂0 differ by ≤ 2u·|x|/a,
    # weighed by a_next: Σ_k 2u·3·a_{k+1}/a_k ≈ 2u·3·25 ≈ 9e-6 over the 20 steps (|x| ≤ 3) < 2e-5
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)
    assert converted.unet.calls == native.unet.calls == 20


# ---- the pipeline: call count, timesteps, refusals -----------------------------------------


@pytest.mark.parametrize(
    "scheduler",
    [
        lambda: ScratchFlowMatchScheduler(solver="heun"),
        FlowMatchEulerDiscreteScheduler,
        lambda: ScratchDPMSolverScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"),
    ],
)
def test_vp_unet_on_a_flow_sampler_keeps_the_native_call_count(scheduler):
    pipe = ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = scheduler()
    counter = CallCounter(pipe.unet)
    images = pipe(batch_size=2, num_inference_steps=4, output_type="pt").images
    assert len(counter.calls) == len(pipe.scheduler.timesteps) and torch.isfinite(images).all()
    model_timesteps = torch.stack([t for _, t in counter.calls])
    assert model_timesteps.dtype == torch.float32
    assert bool((model_timesteps >= 0).all() & (model_timesteps <= 999).all())
    assert torch.all(model_timesteps[1:] <= model_timesteps[:-1])  # the flow grid, mapped monotonically to VP time


def test_cross_path_loop_never_reads_back_to_host():
    """On the meta device every host read raises: a whole converted sampling loop there proves no sync per step."""
    pipe = ScratchDiffusionPipeline(unet=tiny_unet().to("meta"), scheduler=ScratchDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    for scheduler in (
        ScratchFlowMatchScheduler(solver="heun"),
        ScratchDPMSolverScheduler(prediction_type="v_prediction"),
    ):
        pipe.scheduler = scheduler
        images = pipe(batch_size=2, num_inference_steps=3, output_type="pt").images
        assert images.device.type == "meta" and pipe.scheduler.timesteps.device.type == "meta"


def test_refusals_name_the_problem_before_any_model_evaluation():
    pipe = ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    counter = CallCounter(pipe.unet)
    pipe.scheduler = EDMEulerScheduler()
    with pytest.raises(ValueError, match="cannot describe the noise path of EDMEulerScheduler"):
        pipe(num_inference_steps=2)
    zero_snr = ScratchDiffusionPipeline(
        unet=tiny_unet(), scheduler=ScratchDDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="leading")
    )
    zero_snr.scheduler = ScratchFlowMatchScheduler()
    with pytest.raises(ValueError, match=r"cannot give \['flow_velocity'\] at sampler point 0"):
        zero_snr(num_inference_steps=2)
    unknown = ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler(), noise_schedule=None)
    unknown.register_to_config(noise_schedule=None)  # as a folder saved before the schedule was recorded
    unknown.scheduler = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="does not record the training noise_schedule"):
        unknown(num_inference_steps=2)
    assert counter.calls == []


def test_noise_schedule_is_saved_and_survives_a_swap(tmp_path):
    pipe = ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDPMScheduler(beta_schedule="squaredcos_cap_v2"))
    assert pipe.config.noise_schedule["beta_schedule"] == "squaredcos_cap_v2"
    pipe.scheduler = ScratchFlowMatchScheduler()
    pipe.save_pretrained(tmp_path)
    loaded = ScratchDiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is ScratchFlowMatchScheduler
    assert loaded.config.noise_schedule == pipe.config.noise_schedule
    loaded.set_progress_bar_config(disable=True)
    assert torch.isfinite(loaded(num_inference_steps=3, output_type="pt").images).all()


# ---- a trained tiny UNet ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "native", "cross"),
    [
        (
            "v_prediction",
            lambda: ScratchDDIMScheduler(timestep_spacing="trailing", prediction_type="v_prediction"),
            lambda: ScratchFlowMatchScheduler(),
        ),
        ("flow", lambda: ScratchFlowMatchScheduler(), lambda: ScratchDDIMScheduler(timestep_spacing="trailing")),
        (
            "flow",
            lambda: ScratchFlowMatchScheduler(solver="heun"),
            lambda: ScratchDPMSolverScheduler(prediction_type="v_prediction", timestep_spacing="trailing"),
        ),
    ],
    ids=["vp-v-model-by-flow-euler", "flow-model-by-ddim", "flow-model-by-vp-dpm"],
)
def test_trained_model_samples_as_well_cross_path_as_natively(trained_tiny_unets, objective, native, cross):
    """Equal evaluations (20; Heun 10 steps = 19), same noise: cross-path samples as close to the data as native ones.

    Metric: RMS distance of each sample to the nearer of the two training patterns (the data: 0.05; these
    briefly trained models: about 0.1–0.3). Tolerance: cross ≤ 1.15 × native + 0.01.
    """
    training_scheduler = (
        ScratchFlowMatchScheduler() if objective == "flow" else ScratchDDPMScheduler(prediction_type=objective)
    )
    pipe = ScratchDiffusionPipeline(unet=trained_tiny_unets[objective], scheduler=training_scheduler)
    pipe.set_progress_bar_config(disable=True)
    distances = {}
    for name, make in (("native", native), ("cross", cross)):
        pipe.scheduler = make()
        steps = 10 if pipe.scheduler.order == 2 else 20
        images = pipe(batch_size=64, num_inference_steps=steps, generator=torch.manual_seed(0), output_type="pt").images
        distances[name] = template_distance(images * 2 - 1)
    assert distances["native"] < 0.35, distances  # the model has learnt the patterns
    # trained models, 64 images: the distances' sampling spread is ≈ sd/√64 ≈ 0.1·(0.3)/8 ≈ 0.004 each, and the
    # cross-path grid's discretisation differs: 15 % + 0.01 (≈ 2.5 sd) admits that, not a broken path change (≥ 2×)
    assert distances["cross"] <= 1.15 * distances["native"] + 0.01, distances
