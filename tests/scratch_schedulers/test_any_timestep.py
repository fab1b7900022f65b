"""Any timestep, one timestep per example (issue 10 §4).

The rule: ``step`` at any t in the path's range uses the coefficients of the exact t and steps to the
largest scheduled timestep strictly below it (the end below the last), so a loop continues with
``timesteps[timesteps < t]``. A (B,) timestep steps each example as it would alone.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from scratch_schedulers import (
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchDPMSolverScheduler,
    ScratchFlowMatchScheduler,
)
from scratch_schedulers.scheduling_dpmsolver import FEW_STEP_CONFIG

from ..tolerances import gamma
from .helpers import denoiser_model
from .rounding import one_step_bound, one_step_probe, x0_difference_bound

pytestmark = pytest.mark.numerics  # rerun by make test under ATEN_CPU_CAPABILITY=default

T = 1000
FLOW_DPM = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}


def ready(cls, steps=10, **config):
    scheduler = cls(**config)
    scheduler.set_timesteps(steps)
    return scheduler


def velocity_model(x: torch.Tensor) -> torch.Tensor:
    """A timestep-free stand-in for a flow model (so loops that evaluate at rounded t agree)."""
    return 0.4 * torch.tanh(x) + 0.1


def step_kwargs(cls, generator):
    return {"eta": 0.7, "generator": generator} if cls is ScratchDDIMScheduler else {"generator": generator}


# ---- the rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ScratchDDPMScheduler, ScratchDDIMScheduler])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_vp_previous_timestep_is_the_largest_scheduled_one_below(cls, spacing):
    scheduler = ready(cls, 7, timestep_spacing=spacing)
    grid = scheduler.timesteps.tolist()
    expected = [max([g for g in grid if g < t], default=-1) for t in range(T)]
    assert scheduler.previous_timestep(torch.arange(T)).tolist() == expected


def diffusers_stepping_to(cls, t: int, target: int):
    """A diffusers scheduler whose step from t lands on ``target``: DDIM steps to t − T//n (pick n), DDPM
    to the next timestep of its schedule (custom timesteps [t, target]; it raises IndexError off-schedule)."""
    reference = cls(clip_sample=False)
    if cls is DDPMScheduler:
        reference.set_timesteps(timesteps=[t, target] if target >= 0 else [t])
    else:
        stride = t - target if target >= 0 else T
        reference.set_timesteps(next(n for n in range(1, T + 1) if T // n == stride))
    return reference


@pytest.mark.parametrize(("ours_cls", "theirs_cls"), [(ScratchDDPMScheduler, DDPMScheduler),
                                                     (ScratchDDIMScheduler, DDIMScheduler)])
@pytest.mark.parametrize("t", [850, 437, 55, 3, 983])
def test_off_schedule_vp_step_equals_diffusers_where_its_target_is_ours(ours_cls, theirs_cls, t):
    """Our off-schedule step (from ᾱ_t to the largest scheduled timestep below t, here of a leading 10-step
    grid) equals diffusers' step between the same two timesteps, noise included. (Off its schedule
    diffusers' DDIM goes to t − T//n instead, and its DDPM raises IndexError.)"""
    ours = ready(ours_cls, 10, clip_sample=False)
    target = max([g for g in ours.timesteps.tolist() if g < t], default=-1)
    theirs = diffusers_stepping_to(theirs_cls, t, target)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(t))
    model_output = denoiser_model(ours, x, t)
    mine = ours.step(model_output, t, x, generator=torch.Generator().manual_seed(1))
    reference = theirs.step(model_output, t, x, generator=torch.Generator().manual_seed(1))
    # Same inputs, so only rounding differs (rounding.py): x̂0 = (x − b·ε)/a by 2·γ_8 of (|x| + b·|ε|)/a, and
    # x_next = c_x·x + c_0·x̂0 + σ·z by c_0·Δx̂0 plus 2·γ_6 of its terms and 2·γ_16 of σ·z (√ vs exp(½·log));
    # c_x, c_0 and σ·z come from a twin predicting x̂0 itself. Measured: bit-identical (0).
    a, b = (float(v) ** 0.5 for v in (ours.alphas_cumprod[t], 1 - ours.alphas_cumprod[t]))
    x0_difference = mine.pred_original_sample - reference.pred_original_sample
    assert bool((x0_difference.abs() <= x0_difference_bound("epsilon", a, b, 0 * x, x, model_output)).all())
    twin = ready(ours_cls, 10, clip_sample=False, prediction_type="sample")
    c_x, c_0, noise = one_step_probe(lambda: twin, t, tuple(x.shape), {}, torch.Generator().manual_seed(1).get_state())
    bound = one_step_bound((c_x, c_0), (x, mine.pred_original_sample), (0 * x, x0_difference))
    bound = bound + 2 * gamma(16) * noise.abs()
    assert bool(((mine.prev_sample - reference.prev_sample).abs() <= bound).all())


def test_diffusers_ddpm_refuses_an_off_schedule_timestep_that_ours_steps():
    theirs = DDPMScheduler()
    theirs.set_timesteps(10)
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(IndexError):
        theirs.step(x, 437, x)
    assert torch.isfinite(ready(ScratchDDPMScheduler).step(x, 437, x).prev_sample).all()


def test_off_schedule_start_then_the_schedule_below_is_a_custom_schedule_from_t():
    """DDIM from t = 437 then ``timesteps[timesteps < t]`` equals DDIM on the custom schedule [437, 400, …]."""
    ours = ready(ScratchDDIMScheduler, 10)
    custom = ScratchDDIMScheduler()
    custom.set_timesteps(timesteps=[437, *[t for t in ours.timesteps.tolist() if t < 437]])
    x = y = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    loop = [437, *ours.timesteps[ours.timesteps < 437].tolist()]
    assert loop == custom.timesteps.tolist()
    for t in loop:
        x = ours.step(denoiser_model(ours, x, t), t, x).prev_sample
        y = custom.step(denoiser_model(custom, y, t), t, y).prev_sample
    assert torch.equal(x, y)


@pytest.mark.parametrize("t", [1000.0, 950.0, 437.5, 33.0, 0.0])
def test_off_schedule_flow_euler_steps_from_sigma_t_over_T_to_the_next_scheduled_sigma(t):
    scheduler = ready(ScratchFlowMatchScheduler, 10, shift=3.0)
    sigmas = scheduler.sigmas.tolist()
    sigma = torch.tensor(t, dtype=torch.float32) / T
    # "strictly below": t/T and an equal grid σ agree to a few float32 ulps (≤ 1e-7); grid σs are ≥ 1e-3 apart
    sigma_next = max([s for s in sigmas if s < float(sigma) - 1e-6], default=0.0)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    u = velocity_model(x)
    out = scheduler.step(u, t, x)
    # float32 on both sides: x + Δσ·u and x − σ·u round ≤ 3 times each relative to |x| + |σ·u|, and Δσ = σ_next − σ
    # formed from float32 σs is off by ≤ u·σ, times |u|
    rounding = 2 * gamma(3) * (x.abs() + u.abs()) + gamma(1) * u.abs()
    assert bool(((out.prev_sample - (x + (sigma_next - sigma) * u)).abs() <= rounding).all())
    assert bool(((out.pred_original_sample - (x - sigma * u)).abs() <= rounding).all())


@pytest.mark.parametrize(("t", "euler_to"), [(650.0, None), (900.0, 0.8), (20.0, 0.0)])
def test_off_schedule_heun_start_equals_a_custom_heun_schedule_from_t(t, euler_to):
    """Heun from an off-schedule t: predictor to the next scheduled σ, corrector there, then on — the
    loop ``[t] + timesteps[timesteps < t]`` equals Heun on custom sigmas [t/T, σ_j, …]; above the first
    σ it is one Euler step to it (then the whole schedule), below the last one Euler step to 0."""
    sigmas = [0.8, 0.5, 0.2, 0.05]
    ours = ScratchFlowMatchScheduler(solver="heun")
    ours.set_timesteps(sigmas=sigmas)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    for s in [t, *ours.timesteps[ours.timesteps < t].tolist()]:
        x = ours.step(velocity_model(x), s, x).prev_sample
    below = [s for s in sigmas if s < t / T]
    if euler_to is not None:
        y = y + (euler_to - t / T) * velocity_model(y)
    custom = ScratchFlowMatchScheduler(solver="heun")
    if below:
        custom.set_timesteps(sigmas=below if euler_to is not None else [t / T, *below])
        for s in custom.timesteps:
            y = custom.step(velocity_model(y), s, y).prev_sample
    # the same float32 Heun arithmetic, except σ = t/T formed two ways (≤ 1 ulp, u·σ ≤ 6e-8) and the test's own
    # Euler step (≤ 2·γ_3·(|x| + |Δσ·u|) ≈ 2e-6 at |x| ≤ 5): carried by ≤ 7 stages of factor ≤ 1 + 0.4·|Δσ| ≤ 1.4
    # (0.4-Lipschitz field) ≤ 2e-5; a wrong σ or a missed corrector moves x by ≥ 1e-2. Measured: bit-identical.
    torch.testing.assert_close(x, y, rtol=0, atol=2e-5)


@pytest.mark.parametrize("config", [{}, {"solver_order": 3}, {**FLOW_DPM, "time_grid": "flow_uniform"},
                                    {**FEW_STEP_CONFIG, "time_grid": None}, {**FLOW_DPM, **FEW_STEP_CONFIG}])
def test_off_schedule_dpm_start_equals_a_custom_schedule_from_t(config):
    """DPM-Solver from off-schedule t: first order to the next grid point, which then uses t's x̂0 as its
    history — the same as the custom schedule [t, grid below t]."""
    ours = ready(ScratchDPMSolverScheduler, 10, **config)
    t = 437
    below = [s for s in ours.timesteps.tolist() if s < t]
    custom = ScratchDPMSolverScheduler(**config)
    custom.set_timesteps(timesteps=[t, *below])
    x = y = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for s in [t, *below]:
        x = ours.step(denoiser_model(ours, x, s), s, x).prev_sample
        y = custom.step(denoiser_model(custom, y, s), s, y).prev_sample
    # the same float32 updates, except t's path point (a, b) formed from the level table two ways (≤ 1 ulp each):
    # x̂0 = (x − b·ε)/a then moves by ≤ 2u·(|x| + b·|ε|)/a ≤ 2u·10/0.55 ≈ 2e-6 at t = 437 (|x| ≤ 5), weighted
    # ≤ a_next·φ1 < 0.4 by the first step and ≤ 1 by the 8 after it (Σ|w_k| ≤ 3, b_next/b < 1 on this grid):
    # ≤ 1e-5. Measured 0–4e-7; a wrong history or order moves x by ≥ 1e-2.
    torch.testing.assert_close(x, y, rtol=0, atol=1e-5)


# ---- out of range ------------------------------------------------------------------------------------

OUT_OF_RANGE = [
    (lambda: ready(ScratchDDPMScheduler), 1000, ["timestep 1000", "[0, 999]"]),
    (lambda: ready(ScratchDDIMScheduler), -1, ["timestep -1", "[0, 999]"]),
    (lambda: ready(ScratchDDIMScheduler), 10.5, ["timestep 10.5", "integer"]),
    (lambda: ready(ScratchDDPMScheduler), torch.tensor([5, 2000]), ["timestep 2000", "[0, 999]"]),
    (lambda: ready(ScratchFlowMatchScheduler), 1000.5, ["timestep 1000.5", "[0, 1000]"]),
    (lambda: ready(ScratchFlowMatchScheduler), float("nan"), ["timestep nan", "[0, 1000]"]),
    (lambda: ready(ScratchFlowMatchScheduler, solver="heun"), -3.0, ["timestep -3", "[0, 1000]"]),
    (lambda: ready(ScratchDPMSolverScheduler), 1000, ["timestep 1000", "[0, 999]"]),
    (lambda: ready(ScratchDPMSolverScheduler, **FLOW_DPM), torch.tensor([500.0, -1.0]), ["timestep -1", "[0, 1000]"]),
]


@pytest.mark.parametrize(("make", "timestep", "needles"), OUT_OF_RANGE)
def test_out_of_range_timestep_is_a_clear_value_error(make, timestep, needles):
    batch = 2 if isinstance(timestep, torch.Tensor) else 1
    x = torch.zeros(batch, 3, 4, 4)
    with pytest.raises(ValueError) as info:
        make().step(x, timestep, x)
    for needle in needles:
        assert needle in str(info.value)


# ---- one timestep per example -----------------------------------------------------------------------

SINGLE_STEP = [
    (ScratchDDPMScheduler, {}), (ScratchDDPMScheduler, {"variance_type": "fixed_large"}),
    (ScratchDDPMScheduler, {"variance_type": "learned_range"}), (ScratchDDIMScheduler, {}),
    (ScratchDDIMScheduler, {"set_alpha_to_one": False, "prediction_type": "v_prediction"}),
    (ScratchFlowMatchScheduler, {"shift": 3.0}), (ScratchFlowMatchScheduler, {"stochastic_sampling": True}),
]


def per_example_timesteps(scheduler) -> torch.Tensor:
    """Four timesteps: scheduled (first, last), off-schedule, and the path's clean end."""
    grid = scheduler.timesteps
    if isinstance(scheduler, ScratchFlowMatchScheduler):
        return torch.stack([grid[0], torch.tensor(437.5), grid[-1], torch.tensor(0.0)])
    return torch.stack([grid[0], torch.tensor(437), grid[-1], torch.tensor(0)])


def model_for(scheduler, x, t, config):
    if isinstance(scheduler, ScratchFlowMatchScheduler):
        return velocity_model(x)
    channels = config.get("variance_type") if config.get("variance_type", "").startswith("learned") else None
    return denoiser_model(scheduler, x, t.reshape(-1, *([1] * (x.ndim - 1))).float(), channels)


@pytest.mark.parametrize(("cls", "config"), SINGLE_STEP)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_one_timestep_per_example_step_equals_the_per_example_loop(cls, config, dtype):
    scheduler = ready(cls, 10, **config)
    t = per_example_timesteps(scheduler)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    out = model_for(scheduler, x.float(), t, config).to(dtype)
    seeds = [torch.Generator().manual_seed(10 + b) for b in range(4)]
    batched = scheduler.step(out, t, x, **step_kwargs(cls, seeds))
    assert batched.prev_sample.dtype == dtype
    for b in range(4):
        alone = ready(cls, 10, **config).step(out[b:b + 1], t[b], x[b:b + 1],
                                              **step_kwargs(cls, torch.Generator().manual_seed(10 + b)))
        for mine, reference in ((batched.prev_sample, alone.prev_sample),
                                (batched.pred_original_sample, alone.pred_original_sample)):
            # one row of the same elementwise arithmetic as alone: bit-identical; 1e-6 is ≤ 4 float32 ulps at
            # |x| ≥ 2 and below one float16/bfloat16 ulp, so a different formula fails
            torch.testing.assert_close(mine[b:b + 1].double(), reference.double(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("config", [{}, {"solver_order": 3}, {"solver_type": "heun", **FLOW_DPM}, FEW_STEP_CONFIG,
                                    {"solver_order": 3, "solver_type": "bh1", "corrector": "unic_bh1", **FLOW_DPM}])
def test_dpm_per_example_lock_step_loop_equals_the_per_example_loops(config):
    """Examples at different grid positions (and one off-schedule start) advance one step per call; each
    keeps its own history and order, exactly as stepped alone."""
    scheduler = ready(ScratchDPMSolverScheduler, 8, **config)
    grid = scheduler.timesteps.tolist()
    paths = [grid, grid[2:], [437, *[s for s in grid if s < 437]], grid[1:]]
    steps = min(len(p) for p in paths)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    alone = [x[b:b + 1] for b in range(4)]
    loops = [ready(ScratchDPMSolverScheduler, 8, **config) for _ in range(4)]
    for k in range(steps):
        t = torch.tensor([p[k] for p in paths])
        x = scheduler.step(denoiser_model(scheduler, x, t.reshape(-1, 1, 1, 1).float()), t, x).prev_sample
        for b in range(4):
            s = paths[b][k]
            alone[b] = loops[b].step(denoiser_model(loops[b], alone[b], s), s, alone[b]).prev_sample
    # each row runs the same elementwise float32 updates as alone: bit-identical (1e-6 ≤ 4 ulps at |x| ≥ 2)
    torch.testing.assert_close(x, torch.cat(alone), rtol=0, atol=1e-6)


def test_heun_refuses_different_timesteps_per_example_and_says_what_to_use():
    scheduler = ready(ScratchFlowMatchScheduler, 4, solver="heun")
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="solver='euler'"):
        scheduler.step(x, torch.tensor([1000.0, 500.0]), x)
    same = scheduler.step(x + 1, scheduler.timesteps[0].repeat(2), x)  # one value for all examples: accepted
    fresh = ready(ScratchFlowMatchScheduler, 4, solver="heun")
    assert torch.equal(same.prev_sample, fresh.step(x + 1, fresh.timesteps[0], x).prev_sample)


@pytest.mark.parametrize("scheduler", [ready(ScratchDDPMScheduler), ready(ScratchDDIMScheduler),
                                       ready(ScratchFlowMatchScheduler), ready(ScratchDPMSolverScheduler),
                                       ready(ScratchDPMSolverScheduler, **FLOW_DPM)],
                         ids=["ddpm", "ddim", "flow", "dpm-vp", "dpm-flow"])
def test_add_noise_per_example_equals_the_per_example_loop(scheduler):
    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([999, 437, 1, 0])
    batched = scheduler.add_noise(x0, noise, t)
    for b in range(4):
        torch.testing.assert_close(batched[b:b + 1], scheduler.add_noise(x0[b:b + 1], noise[b:b + 1], t[b:b + 1]),
                                   rtol=0, atol=0)


# ---- device timesteps are never read back -------------------------------------------------------------


@pytest.mark.parametrize(("cls", "config"), [
    (ScratchDDPMScheduler, {}), (ScratchDDPMScheduler, {"variance_type": "learned_range"}),
    (ScratchDDIMScheduler, {}), (ScratchFlowMatchScheduler, {}), (ScratchFlowMatchScheduler,
                                                                  {"stochastic_sampling": True})])
def test_meta_device_off_schedule_and_per_example_steps_never_read_back(cls, config):
    """On ``meta`` every read of a value raises: off-schedule timesteps (fresh tensors, not views of the
    schedule) and (B,) timesteps on the device step without a host–device synchronisation."""
    scheduler = cls(**config)
    scheduler.set_timesteps(5, device="meta")
    channels = 6 if "variance_type" in config else 3
    x = torch.empty(4, 3, 8, 8, device="meta")
    dtype = torch.float32 if cls is ScratchFlowMatchScheduler else torch.int64
    kwargs = {"eta": 0.5} if cls is ScratchDDIMScheduler else {}
    for t in (torch.empty((), dtype=dtype, device="meta"), torch.empty(4, dtype=dtype, device="meta"),
              scheduler.timesteps[1], scheduler.timesteps[:4].clone()):
        x = scheduler.step(torch.empty(4, channels, 8, 8, device="meta"), t, x, **kwargs).prev_sample
    assert x.device.type == "meta"
    x = scheduler.add_noise(x, x, torch.empty(4, dtype=dtype, device="meta"))
    assert x.device.type == "meta" and x.shape == (4, 3, 8, 8)


def test_meta_device_per_example_dpm_and_heun_are_refused_before_any_read():
    dpm = ScratchDPMSolverScheduler()
    dpm.set_timesteps(5, device="meta")
    x = torch.empty(2, 3, 8, 8, device="meta")
    with pytest.raises(ValueError, match="CPU tensor"):
        dpm.step(x, torch.empty(2, device="meta"), x)
    heun = ScratchFlowMatchScheduler(solver="heun")
    heun.set_timesteps(5, device="meta")
    with pytest.raises(ValueError, match="one timestep for the whole batch"):
        heun.step(x, torch.empty(2, device="meta"), x)
