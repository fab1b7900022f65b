"""Parity with the installed diffusers schedulers, step by step over full sampling loops.

A denoiser-like stand-in model (bounded x̂0, consistent ε̂; helpers.denoiser_model) drives
both. For every shared config of a grid (β schedule × prediction type × variance type / η × spacing ×
clip/threshold × zero-terminal-SNR) both schedulers run the same loop from the same noise with
identically seeded generators, with identical timesteps; at every step prev_sample and pred_original_sample
may differ only by what float32 rounding allows given how far the step's inputs already differ
(rounding.py: x_next = c_x·x + c_0·x̂0 + noise, with c_x, c_0 and the noise term read off the scheduler;
most steps are bit-identical). Combinations where diffusers is not self-consistent are excluded and covered in
test_defects.py instead:
DDIM steps whose assumed previous timestep t − T//n is not the schedule's next one (#11347),
ε-prediction at a zero-SNR timestep (#3851), ``fixed_large_log`` (diffusers takes √log β), and
DDIM steps where diffusers returns NaN (at η = 1 it takes √ of 1 − ᾱ_next − σ² < 0 by rounding).
"""

from __future__ import annotations

import copy
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

from ..tolerances import gamma
from .helpers import denoiser_model, relative_error, smooth_model
from .rounding import one_step_bound, one_step_probe, x0_difference_bound

pytestmark = pytest.mark.numerics  # rerun by make test under ATEN_CPU_CAPABILITY=default

SHAPE = (2, 3, 8, 8)
X0_MODES = {"none": {"clip_sample": False}, "clip": {"clip_sample": True}, "threshold": {"thresholding": True}}


def twin_of(scheduler, num_inference_steps, set_kwargs):
    """The scheduler as a linear map of (x, m): VP with prediction_type='sample' and no clipping (m = x̂0; its
    steps are stateless), flow the scheduler itself (m = u; it counts its steps, so run_both copies it first)."""
    if not hasattr(scheduler, "alphas_cumprod"):
        return scheduler
    twin = type(scheduler).from_config(scheduler.config, prediction_type="sample", clip_sample=False,
                                       thresholding=False)
    if num_inference_steps is not None:
        twin.set_timesteps(num_inference_steps, **set_kwargs)
    return twin


def run_both(ours, theirs, num_inference_steps, step_kwargs=None, variance=None, set_kwargs=None):
    """Run the two loops side by side, every step within float32 rounding of diffusers' (module docstring);
    return the worst relative difference of prev/x0 over all steps (None where diffusers returns NaN)."""
    step_kwargs = step_kwargs or {}
    set_kwargs = set_kwargs or {}
    if num_inference_steps is not None:
        ours.set_timesteps(num_inference_steps, **set_kwargs)
        theirs.set_timesteps(num_inference_steps, **set_kwargs)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    x_ours = x_theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * 1.5
    gen_ours, gen_theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    vp = hasattr(theirs, "alphas_cumprod")
    twins = None  # built when a step first differs from diffusers'
    worst = 0.0
    def model(x, t):
        if vp:  # VP: a denoiser-like model in the right parametrisation
            return denoiser_model(theirs, x, t, variance)
        return smooth_model(x, t)  # flow: any smooth velocity field

    for t in theirs.timesteps:
        states = gen_ours.get_state(), gen_theirs.get_state()
        frozen = None if vp else [copy.copy(s) for s in (ours, theirs)]  # a flow step advances the step count
        m_ours, m_theirs = model(x_ours, t), model(x_theirs, t)
        out_o = ours.step(m_ours, t, x_ours, generator=gen_ours, **step_kwargs)
        out_t = theirs.step(m_theirs, t, x_theirs, generator=gen_theirs, **step_kwargs)
        if not torch.isfinite(out_t.prev_sample).all():
            return None  # diffusers broke down (DDIM at η = 1 takes √ of a rounding-negative number)
        assert torch.isfinite(out_o.prev_sample).all()
        if torch.equal(out_o.prev_sample, out_t.prev_sample):  # most steps: the same float32 operations, bit for bit
            x_ours, x_theirs = out_o.prev_sample, out_t.prev_sample
            continue
        if vp:
            twins = twins or [twin_of(s, num_inference_steps, set_kwargs) for s in (ours, theirs)]
            frozen = twins
        blocks = [m[:, SHAPE[1]:] if variance else None for m in (m_ours, m_theirs)]
        (c_x, c_m, noise_o), (_, _, noise_t) = (
            one_step_probe(lambda twin=twin: twin if vp else copy.copy(twin), t, SHAPE, step_kwargs, state, block)
            for twin, state, block in zip(frozen, states, blocks, strict=True))
        # the noise term σ·z: √σ² against exp(½·log σ²) (fixed_small_log, learned): |½·log σ²| ≤ 10 at σ² ≥ 2e-9
        # amplifies exp's argument rounding to ≤ 10·u, plus ≤ 6 operations each side
        assert bool(((noise_o - noise_t).abs() <= 2 * gamma(16) * noise_t.abs()).all()), t
        if vp:  # operands x, x̂0 (rounding.py), and the noise term
            a, b = (float(v) ** 0.5 for v in (theirs.alphas_cumprod[int(t)], 1 - theirs.alphas_cumprod[int(t)]))
            x0_ours, x0_theirs = out_o.pred_original_sample, out_t.pred_original_sample
            prediction = theirs.config.prediction_type
            x0_bound = x0_difference_bound(prediction, a, b, x_ours - x_theirs, x_theirs, m_theirs[:, : SHAPE[1]])
            assert bool(((x0_ours - x0_theirs).abs() <= x0_bound).all()), t
            operands, differences = (x_ours, x0_ours, noise_o), (x_ours - x_theirs, x0_ours - x0_theirs,
                                                                  noise_o - noise_t)
        else:  # flow: operands x, u, and the noise term
            operands, differences = (x_ours, m_ours, noise_o), (x_ours - x_theirs, m_ours - m_theirs,
                                                                 noise_o - noise_t)
        bound = one_step_bound((c_x, c_m, 1.0), operands, differences)
        assert bool(((out_o.prev_sample - out_t.prev_sample).abs() <= bound).all()), t
        worst = max(worst, relative_error(out_o.prev_sample, out_t.prev_sample))
        if getattr(out_t, "pred_original_sample", None) is not None:
            worst = max(worst, relative_error(out_o.pred_original_sample, out_t.pred_original_sample))
        x_ours, x_theirs = out_o.prev_sample, out_t.prev_sample
    return worst


def run_heun_both(ours, theirs, num_inference_steps: int) -> float:
    """Heun side by side; each call within a running float32 bound E of diffusers' (max over elements).

    diffusers recovers the derivative as (x − x̂0)/σ with x̂0 = x − σ·u, off by δd ≤ γ_3·(|x| + σ·|u|)/σ; ours uses
    u. A stage x_new = x + Δσ·d then moves the difference by |Δσ|·(0.4·E + δd) (the stand-in field 0.4·tanh(x) +
    0.05·sin(t/97) is 0.4-Lipschitz in x) plus its own rounding 2·γ_3·(|x| + |Δσ|·|d|); the corrector stage averages
    the two derivatives, so it moves the start's difference by |Δσ|·(0.4·max E + max δd).
    """
    ours.set_timesteps(num_inference_steps)
    theirs.set_timesteps(num_inference_steps)
    x_ours = x_theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * 1.5
    bound, start, worst = 0.0, None, 0.0
    for t in theirs.timesteps:
        first, index = theirs.state_in_first_order, theirs.step_index or 0
        sigma, sigma_next = (float(v) for v in theirs.sigmas[index - (not first): index + 2 - (not first)])
        u_ours, u_theirs = smooth_model(x_ours, t), smooth_model(x_theirs, t)
        size = float(torch.maximum(x_ours.abs(), x_theirs.abs()).max())
        u_size = float(torch.maximum(u_ours.abs(), u_theirs.abs()).max())
        evaluated_at = sigma if first else sigma_next
        recovered = gamma(3) * (size + evaluated_at * u_size) / evaluated_at  # δd
        rounding = 2 * gamma(3) * (size + abs(sigma_next - sigma) * u_size)
        if first:
            start = (bound, recovered, size)
            bound = bound + abs(sigma_next - sigma) * (0.4 * bound + recovered) + rounding
        else:
            start_bound, start_recovered, start_size = start
            bound = start_bound + abs(sigma_next - sigma) * (0.4 * max(bound, start_bound) + max(
                recovered, start_recovered)) + 2 * gamma(3) * (start_size + abs(sigma_next - sigma) * u_size)
        x_ours = ours.step(u_ours, t, x_ours).prev_sample
        x_theirs = theirs.step(u_theirs, t, x_theirs).prev_sample
        assert float((x_ours - x_theirs).abs().max()) <= bound, (t, bound)
        worst = max(worst, relative_error(x_ours, x_theirs))
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
        assert err is not None, config
        checked += 1
    assert checked > 100


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddpm_full_1000_step_loop_without_set_timesteps(prediction_type):
    """The classic loop over all T steps, without set_timesteps (as diffusers' own DDPM test)."""
    run_both(ScratchDDPMScheduler(prediction_type=prediction_type), DDPMScheduler(prediction_type=prediction_type),
             None)


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
    run_both(ScratchFlowMatchScheduler(**config), FlowMatchEulerDiscreteScheduler(**config), steps,
             set_kwargs=set_kwargs)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [6, 30])
def test_flow_heun_matches_diffusers_flow_heun(shift, steps):
    """diffusers' Heun re-derives u through x̂0 ((x − (x − u·σ))/σ), a round trip that costs γ_3·|x|/σ per
    stage; ours uses u directly (run_heun_both bounds the difference). Measured ≤ 2.1e-6 relative."""
    ours = ScratchFlowMatchScheduler(shift=shift, solver="heun")
    run_heun_both(ours, FlowMatchHeunDiscreteScheduler(shift=shift), steps)
    assert len(ours.timesteps) == 2 * steps - 1 and ours.order == 2


def test_flow_custom_sigmas_match_diffusers_when_unshifted():
    sigmas = [1.0, 0.8, 0.55, 0.3, 0.1]
    ours, theirs = ScratchFlowMatchScheduler(), FlowMatchEulerDiscreteScheduler()
    ours.set_timesteps(sigmas=sigmas)
    theirs.set_timesteps(sigmas=sigmas)
    # the same float32 σ list, timesteps σ·T: ≤ 2 roundings apart, inside allclose's rtol = 1e-5 ≈ 168·u
    assert torch.allclose(ours.sigmas, theirs.sigmas) and torch.allclose(ours.timesteps, theirs.timesteps)
    run_both(ours, theirs, None)


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
    # a·x0 + b·ε (and a·ε − b·x0) from the same float32 ᾱ, a and b ≤ 1: each side rounds ≤ 3 times (γ_3 of the terms)
    allowed = 2 * gamma(3) * (x0.abs() + noise.abs())
    assert bool(((ours.add_noise(x0, noise, t) - theirs.add_noise(x0, noise, t)).abs() <= allowed).all())
    assert bool(((ours.get_velocity(x0, noise, t) - theirs.get_velocity(x0, noise, t)).abs() <= allowed).all())
    flow, ref = ScratchFlowMatchScheduler(shift=3.0), FlowMatchEulerDiscreteScheduler(shift=3.0)
    flow.set_timesteps(10)
    ref.set_timesteps(10)
    t = flow.timesteps[3]
    assert bool(((flow.scale_noise(x0, t[None], noise) - ref.scale_noise(x0, t[None], noise)).abs() <= allowed).all())
