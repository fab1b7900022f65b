"""Parity with the installed diffusers schedulers, step by step over full sampling loops.

A denoiser-like stand-in model (bounded x̂0, consistent ε̂; helpers.denoiser_model) drives
both. For every shared config of a grid (β schedule × prediction type × variance type / η × spacing ×
clip/threshold × zero-terminal-SNR) both schedulers run the same loop from the same noise with
identically seeded generators; prev_sample and pred_original_sample must agree to 1e-5 relative
(max|Δ| / max|ref|, float32) at every step, with identical timesteps. Combinations where
diffusers is not self-consistent are excluded and covered in test_defects.py instead:
DDIM steps whose assumed previous timestep t − T//n is not the schedule's next one (#11347),
ε-prediction at a zero-SNR timestep (#3851), ``fixed_large_log`` (diffusers takes √log β), and
DDIM steps where diffusers returns NaN (at η = 1 it takes √ of 1 − ᾱ_next − σ² < 0 by rounding).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
)

from scratch_schedulers import ScratchDDIMScheduler, ScratchDDPMScheduler, ScratchFlowMatchScheduler

from .helpers import denoiser_model, relative_error, smooth_model

TOL = 1e-5
SHAPE = (2, 3, 8, 8)
X0_MODES = {"none": {"clip_sample": False}, "clip": {"clip_sample": True}, "threshold": {"thresholding": True}}


def run_both(ours, theirs, num_inference_steps, step_kwargs=None, variance=None, set_kwargs=None):
    """Run the two loops side by side; return the worst relative error of prev/x0 over all steps."""
    step_kwargs = step_kwargs or {}
    set_kwargs = set_kwargs or {}
    if num_inference_steps is not None:
        ours.set_timesteps(num_inference_steps, **set_kwargs)
        theirs.set_timesteps(num_inference_steps, **set_kwargs)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    x_ours = x_theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * 1.5
    gen_ours, gen_theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    worst = 0.0
    def model(x, t):
        if hasattr(theirs, "alphas_cumprod"):  # VP: a denoiser-like model in the right parametrisation
            return denoiser_model(theirs, x, t, variance)
        return smooth_model(x, t)  # flow: any smooth velocity field

    for t in theirs.timesteps:
        out_o = ours.step(model(x_ours, t), t, x_ours, generator=gen_ours, **step_kwargs)
        out_t = theirs.step(model(x_theirs, t), t, x_theirs, generator=gen_theirs, **step_kwargs)
        if not torch.isfinite(out_t.prev_sample).all():
            return None  # diffusers broke down (DDIM at η = 1 takes √ of a rounding-negative number)
        assert torch.isfinite(out_o.prev_sample).all()
        worst = max(worst, relative_error(out_o.prev_sample, out_t.prev_sample))
        if getattr(out_t, "pred_original_sample", None) is not None:
            worst = max(worst, relative_error(out_o.pred_original_sample, out_t.pred_original_sample))
        x_ours, x_theirs = out_o.prev_sample, out_t.prev_sample
    return worst


def ddim_self_consistent(timesteps: torch.Tensor, T: int, n: int) -> bool:
    """diffusers' DDIM steps from t to t − T//n; it is right only if that is the schedule's next timestep."""
    ts = timesteps.tolist()
    return all(b == a - T // n for a, b in itertools.pairwise(ts)) and ts[-1] - T // n < 0


def vp_grid(schedules):
    for schedule, prediction, spacing, x0_mode, zero_snr in itertools.product(
        schedules, ("epsilon", "sample", "v_prediction"), ("leading", "trailing", "linspace"), X0_MODES, (False, True)
    ):
        if zero_snr and prediction == "epsilon" and spacing != "leading":
            continue  # diffusers returns inf/NaN here (#3851); ours raises — see test_defects.py
        yield {"beta_schedule": schedule, "prediction_type": prediction, "timestep_spacing": spacing,
               "rescale_betas_zero_snr": zero_snr, **X0_MODES[x0_mode]}


VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range")


@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
def test_ddpm_matches_diffusers_over_config_grid(variance_type):
    variance = variance_type if variance_type.startswith("learned") else None
    checked = 0
    for config in vp_grid(("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")):
        config = {**config, "variance_type": variance_type}
        err = run_both(ScratchDDPMScheduler(**config), DDPMScheduler(**config), 12, variance=variance)
        assert err is not None and err <= TOL, (config, err)
        checked += 1
    assert checked > 100


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddpm_full_1000_step_loop_without_set_timesteps(prediction_type):
    """The classic loop over all T steps, without set_timesteps (as diffusers' own DDPM test)."""
    err = run_both(ScratchDDPMScheduler(prediction_type=prediction_type),
                   DDPMScheduler(prediction_type=prediction_type), None)
    assert err <= TOL


@pytest.mark.parametrize(("eta", "use_clipped_model_output"), [(0.0, False), (0.5, False), (0.5, True), (1.0, True)])
def test_ddim_matches_diffusers_where_diffusers_is_consistent(eta, use_clipped_model_output):
    checked = skipped = 0
    for config, (T, n), (set_alpha_to_one, offset) in itertools.product(
        vp_grid(("linear", "scaled_linear", "squaredcos_cap_v2")), ((1000, 10), (500, 25)), ((True, 0), (False, 1))
    ):
        config = {**config, "num_train_timesteps": T, "set_alpha_to_one": set_alpha_to_one, "steps_offset": offset}
        theirs = DDIMScheduler(**config)
        theirs.set_timesteps(n)
        if not ddim_self_consistent(theirs.timesteps, T, n):
            skipped += 1
            continue
        kwargs = {"eta": eta, "use_clipped_model_output": use_clipped_model_output}
        err = run_both(ScratchDDIMScheduler(**config), DDIMScheduler(**config), n, step_kwargs=kwargs)
        if err is None:
            skipped += 1
            continue
        assert err <= TOL, (config, n, err)
        checked += 1
    assert checked > 50 and skipped > 0


FLOW_CONFIGS = [
    {},
    {"shift": 3.0},
    {"shift": 3.0, "shift_terminal": 0.1},
    {"use_dynamic_shifting": True, "time_shift_type": "exponential"},
    {"use_dynamic_shifting": True, "time_shift_type": "linear"},
    {"stochastic_sampling": True},
    {"shift": 2.0, "stochastic_sampling": True},
]


# diffusers returns NaN sigmas for one step with shift_terminal (1 − σ = 0): covered in test_defects.
FLOW_CASES = [(c, n) for c in FLOW_CONFIGS for n in (1, 4, 28, 100) if not (n == 1 and "shift_terminal" in c)]


@pytest.mark.parametrize(("config", "steps"), FLOW_CASES,
                         ids=["-".join(f"{k}={v}" for k, v in c.items()) + f"-{n}" for c, n in FLOW_CASES])
def test_flow_euler_matches_diffusers(config, steps):
    set_kwargs = {"mu": 0.8 if config.get("time_shift_type") == "linear" else 1.1} if config.get(
        "use_dynamic_shifting") else {}
    err = run_both(ScratchFlowMatchScheduler(**config), FlowMatchEulerDiscreteScheduler(**config), steps,
                   set_kwargs=set_kwargs)
    assert err <= TOL


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [6, 30])
def test_flow_heun_matches_diffusers_flow_heun(shift, steps):
    """diffusers' Heun re-derives u through x̂0 ((x − (x − u·σ))/σ), a round trip that alone costs
    ~1e-5 at two steps; ours uses u directly, so parity is checked from six steps on."""
    ours = ScratchFlowMatchScheduler(shift=shift, solver="heun")
    err = run_both(ours, FlowMatchHeunDiscreteScheduler(shift=shift), steps)
    assert err <= TOL
    assert len(ours.timesteps) == 2 * steps - 1 and ours.order == 2


def test_flow_custom_sigmas_match_diffusers_when_unshifted():
    sigmas = [1.0, 0.8, 0.55, 0.3, 0.1]
    ours, theirs = ScratchFlowMatchScheduler(), FlowMatchEulerDiscreteScheduler()
    ours.set_timesteps(sigmas=sigmas)
    theirs.set_timesteps(sigmas=sigmas)
    assert torch.allclose(ours.sigmas, theirs.sigmas) and torch.allclose(ours.timesteps, theirs.timesteps)
    assert run_both(ours, theirs, None) <= TOL


def test_noise_schedules_and_spacings_equal_diffusers():
    for schedule in ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"):
        for zero_snr in (False, True):
            ours = ScratchDDPMScheduler(beta_schedule=schedule, rescale_betas_zero_snr=zero_snr)
            theirs = DDPMScheduler(beta_schedule=schedule, rescale_betas_zero_snr=zero_snr)
            assert torch.equal(ours.betas, theirs.betas) and torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    for spacing, T, n, offset in itertools.product(("leading", "trailing", "linspace"), (1000, 999, 50),
                                                   (1, 3, 7, 10, 50), (0, 1)):
        ours = ScratchDDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
        theirs = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        if theirs.timesteps[0] >= T:  # diffusers #10003: the offset pushes past T − 1 (test_defects)
            continue
        assert torch.equal(ours.timesteps, theirs.timesteps), (spacing, T, n, offset)


def test_add_noise_and_velocity_equal_diffusers():
    x0 = torch.randn(8, 3, 4, 4)
    noise = torch.randn(8, 3, 4, 4)
    t = torch.randint(0, 1000, (8,))
    ours, theirs = ScratchDDPMScheduler(beta_schedule="squaredcos_cap_v2"), DDPMScheduler(
        beta_schedule="squaredcos_cap_v2")
    assert torch.allclose(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), atol=1e-6)
    assert torch.allclose(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), atol=1e-6)
    flow, ref = ScratchFlowMatchScheduler(shift=3.0), FlowMatchEulerDiscreteScheduler(shift=3.0)
    flow.set_timesteps(10)
    ref.set_timesteps(10)
    t = flow.timesteps[3]
    assert torch.allclose(flow.scale_noise(x0, t[None], noise), ref.scale_noise(x0, t[None], noise), atol=1e-6)
