"""Known diffusers defects that must be absent here (each deliberate difference is in the README)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from scratch_schedulers import ScratchDDIMScheduler, ScratchDDPMScheduler, ScratchFlowMatchScheduler

from .helpers import denoiser_model

pytestmark = pytest.mark.numerics  # rerun by make test under ATEN_CPU_CAPABILITY=default


def exact_x0_step_lands_on_path(scheduler, t_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic DDIM step with the true x0 from x_t = a_t·x0 + b_t·ε must land on the path
    point of the schedule's next timestep: a_next·x0 + b_next·ε."""
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = scheduler.timesteps[t_index]
    next_t = scheduler.timesteps[t_index + 1]
    x_t = scheduler.add_noise(x0, eps, t.reshape(1))
    out = scheduler.step(x0, t, x_t).prev_sample
    return out, scheduler.add_noise(x0, eps, next_t.reshape(1))


def test_ddim_linspace_steps_to_the_schedules_next_timestep_issue_11347():
    config = {"timestep_spacing": "linspace", "prediction_type": "sample", "clip_sample": False}
    ours = ScratchDDIMScheduler(**config)
    ours.set_timesteps(10)  # 999, 888, 777, ...: diffusers assumes t − 100 instead
    for i in range(len(ours.timesteps) - 1):
        got, expected = exact_x0_step_lands_on_path(ours, i)
        # float32: ε̂ = (x_t − a·x0)/b carries add_noise's and its own rounding, ≤ γ_4·(|a·x0| + |b·ε| ≤ 8)/b with
        # b ≥ 0.34 (t ≥ 111), times b_next ≤ b, plus the expected add_noise's γ_2·8: ≤ 4·8·u + 2·8·u ≈ 3e-6 < 1e-5;
        # diffusers' missed timestep (below) is off by > 1e-3
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    theirs = DDIMScheduler(**config)
    theirs.set_timesteps(10)
    got, expected = exact_x0_step_lands_on_path(theirs, 0)
    assert not torch.allclose(got, expected, atol=1e-3)  # the defect is real in diffusers: 11 steps off, O(0.1)


@pytest.mark.parametrize("scheduler_class", [ScratchDDPMScheduler, ScratchDDIMScheduler])
def test_steps_offset_with_as_many_steps_as_training_issue_10003(scheduler_class):
    scheduler = scheduler_class(steps_offset=1, timestep_spacing="leading")
    scheduler.set_timesteps(1000)
    assert scheduler.timesteps[0] == 999 and scheduler.timesteps[-1] == 0
    x = torch.randn(1, 1, 4, 4)
    for t in scheduler.timesteps[:3].tolist() + scheduler.timesteps[-3:].tolist():
        x = scheduler.step(denoiser_model(scheduler, x, t), t, x).prev_sample
    assert torch.isfinite(x).all()
    reference = DDPMScheduler(steps_offset=1)
    reference.set_timesteps(1000)
    with pytest.raises(IndexError):  # the diffusers failure we fix
        reference.step(torch.zeros(1, 1, 4, 4), reference.timesteps[0], torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("scheduler_class", [ScratchDDPMScheduler, ScratchDDIMScheduler])
def test_zero_terminal_snr_with_epsilon_fails_fast_issue_3851(scheduler_class):
    scheduler = scheduler_class(rescale_betas_zero_snr=True, prediction_type="epsilon", timestep_spacing="trailing")
    with pytest.raises(ValueError, match="v_prediction"):
        scheduler.set_timesteps(10)
    if scheduler_class is ScratchDDPMScheduler:  # the default all-steps loop is caught at the step
        fresh = scheduler_class(rescale_betas_zero_snr=True)
        with pytest.raises(ValueError, match="ᾱ=0 at timestep 999"):
            fresh.step(torch.zeros(1, 1, 2, 2), 999, torch.zeros(1, 1, 2, 2))
    # 'leading' never visits the terminal timestep, and v-prediction handles it: both stay finite.
    for config in ({"prediction_type": "epsilon", "timestep_spacing": "leading"},
                   {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}):
        ok = scheduler_class(rescale_betas_zero_snr=True, **config)
        ok.set_timesteps(10)
        x = torch.randn(2, 1, 4, 4)
        for t in ok.timesteps:
            x = ok.step(denoiser_model(ok, x, t), t, x).prev_sample
            assert torch.isfinite(x).all()


def test_flow_custom_timesteps_are_honoured_as_given():
    timesteps = [1000.0, 750.0, 500.0, 250.0]
    ours = ScratchFlowMatchScheduler(shift=3.0)
    ours.set_timesteps(timesteps=timesteps)
    assert ours.timesteps.tolist() == timesteps
    assert torch.allclose(ours.sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))  # t/T exact in float32: any rtol
    # The exact velocity of a point mass moves x exactly along the path between the given times.
    x0, eps = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    x = eps.clone()
    for t in ours.timesteps:
        x = ours.step(eps - x0, t, x).prev_sample
    # 4 float32 Euler steps x + Δσ·(ε − x0), each rounding ≤ 2 times on |x| + |Δσ·u| ≤ 8: ≤ 4·2·8·u ≈ 4e-6 < 1e-5
    torch.testing.assert_close(x, x0, rtol=1e-5, atol=1e-5)
    theirs = FlowMatchEulerDiscreteScheduler(shift=3.0)
    theirs.set_timesteps(timesteps=timesteps)
    assert not torch.allclose(theirs.sigmas[:-1] * 1000, theirs.timesteps)  # model time ≠ state time there


@pytest.mark.parametrize("scheduler", [ScratchDDPMScheduler(), ScratchDDIMScheduler(), ScratchFlowMatchScheduler(),
                                       ScratchFlowMatchScheduler(solver="heun")], ids=["ddpm", "ddim", "flow", "heun"])
def test_add_noise_takes_a_batch_of_random_training_timesteps(scheduler):
    x0, eps = torch.randn(16, 3, 8, 8), torch.randn(16, 3, 8, 8)
    t = torch.randint(0, 1000, (16,))
    noisy = scheduler.add_noise(x0, eps, t)
    assert noisy.shape == x0.shape
    for i in (0, 7, 15):  # each sample uses its own timestep
        torch.testing.assert_close(noisy[i : i + 1], scheduler.add_noise(x0[i : i + 1], eps[i : i + 1], t[i : i + 1]))
    if isinstance(scheduler, ScratchFlowMatchScheduler):  # continuous times are allowed too
        t_float = torch.rand(16) * 1000
        sigma = (t_float / 1000).view(-1, 1, 1, 1)
        torch.testing.assert_close(scheduler.add_noise(x0, eps, t_float), (1 - sigma) * x0 + sigma * eps)


def ddpm_loop(scheduler, steps: int = 10) -> torch.Tensor:
    """A seeded DDPM sampling loop driven by the denoiser-like stand-in model."""
    scheduler.set_timesteps(steps)
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(0)
    for t in scheduler.timesteps:
        x = scheduler.step(denoiser_model(scheduler, x, t), t, x, generator=generator).prev_sample
    return x


def test_fixed_large_log_gives_finite_samples():
    """``fixed_large_log`` samples exactly as ``fixed_large`` (std √β), and that is diffusers' fixed_large;
    diffusers' own fixed_large_log takes √(log β) < 0 → NaN, the only difference."""
    x = ddpm_loop(ScratchDDPMScheduler(variance_type="fixed_large_log"))
    assert torch.isfinite(x).all()
    assert torch.equal(x, ddpm_loop(ScratchDDPMScheduler(variance_type="fixed_large")))
    # 10 DDPM steps, bit-identical to diffusers' today; a reassociated step may round differently by ≤ 2·γ_6 of
    # |c_x·x| + |c_0·x̂0| + |σ·z| ≤ 8, carried with |c_x| ≤ 1: ≤ 10·12·8·u ≈ 6e-5 (test_parity checks each step)
    torch.testing.assert_close(x, ddpm_loop(DDPMScheduler(variance_type="fixed_large")), rtol=0, atol=6e-5)
    assert torch.isnan(ddpm_loop(DDPMScheduler(variance_type="fixed_large_log"))).all()


def test_shift_terminal_with_a_single_step_is_finite():
    """One step has one σ, both the first and the last: it must be σ_max = 1, where the loop starts from pure
    noise, so the terminal σ cannot also be 0.1; the schedule is the unstretched one, σ = [1, 0] at t = 1000,
    and the step lands on x0. From two steps on the last σ is the terminal one (diffusers returns NaN at n = 1)."""
    scheduler = ScratchFlowMatchScheduler(shift=3.0, shift_terminal=0.1)
    scheduler.set_timesteps(1)
    assert torch.isfinite(scheduler.sigmas).all()
    assert scheduler.sigmas.tolist() == [1.0, 0.0] and scheduler.timesteps.tolist() == [1000.0]
    x0, eps = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    torch.testing.assert_close(scheduler.step(eps - x0, scheduler.timesteps[0], eps).prev_sample, x0)
    for steps in (2, 3, 10):
        scheduler.set_timesteps(steps)
        assert float(scheduler.sigmas[0]) == 1.0 and float(scheduler.sigmas[-1]) == 0.0
        # the stretched terminal σ in float32: a few roundings of 0.1 (ulp 7e-9); a wrong stretch is off by ≥ 1e-3
        assert float(scheduler.sigmas[-2]) == pytest.approx(0.1, abs=1e-6), (steps, scheduler.sigmas)
    theirs = FlowMatchEulerDiscreteScheduler(shift=3.0, shift_terminal=0.1)
    with pytest.warns(RuntimeWarning):
        theirs.set_timesteps(1)
    assert torch.isnan(theirs.sigmas[0])
