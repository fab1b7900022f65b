"""ScratchFlowMapScheduler (issue 23): flow-map and multistep consistency sampling on the flow path, against
diffusers' FlowMapEulerDiscreteScheduler at run time and against our own flow-matching Euler step."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMapEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from scratch_schedulers import (
    Parametrization,
    ScratchFlowMapScheduler,
    ScratchFlowMatchScheduler,
    parametrization_of,
)

from ..pipelines.helpers import CallCounter, tiny_pipeline
from ..tolerances import U32, gamma
from .helpers import smooth_model

pytestmark = pytest.mark.numerics  # rerun by make test under ATEN_CPU_CAPABILITY=default

F64 = torch.float64
EXACT = {"rtol": 0, "atol": 0}
# timesteps = float32(σ·T) and sigmas = float32(σ) of diffusers' float64 values: one rounding, ≤ u relative.
ONE_ROUNDING = {"rtol": U32, "atol": 0}


def ready(steps: int = 4, **config) -> tuple[ScratchFlowMapScheduler, FlowMapEulerDiscreteScheduler]:
    ours, theirs = ScratchFlowMapScheduler(**config), FlowMapEulerDiscreteScheduler(**config)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    return ours, theirs


def velocity_model(x: torch.Tensor) -> torch.Tensor:
    """A timestep-free stand-in for a flow model (two schedulers holding t one ulp apart see one model)."""
    return 0.4 * torch.tanh(x) + 0.1


def parity_bound(x: torch.Tensor, v: torch.Tensor, sigma_t: float, sigma_r: float) -> torch.Tensor:
    """Elementwise bound on |ours − diffusers| of x_r = x + D·v, D = σ_r − σ_t.

    Each side gets σ from a float64 grid value rounded once to float32 or, off the grid, from t/T with t
    rounded to float32 and the quotient (diffusers: ``torch.tensor(t) / T``): ≤ 2u·σ per σ per side. Ours
    then rounds D (u·|D|), D·v (u·|D·v|) and the sum (u·|x_r|, |x_r| ≤ |x| + |D|·|v|); diffusers forms x_r
    in float64 and rounds once (u·|x_r|). First order: u·[2|x| + (4σ_t + 4σ_r + 4|D|)·|v|], below
    γ_5·(|x| + (σ_t + σ_r + |D|)·|v|), whose excess (3u·|x| + u·(σ_t + σ_r + |D|)·|v|) covers the second-order
    terms and diffusers' own float64 arithmetic (γ_3 at u = 2⁻⁵³).
    """
    increment = abs(sigma_r - sigma_t)
    return gamma(5) * (x.to(F64).abs() + (sigma_t + sigma_r + increment) * v.to(F64).abs())


def assert_within(ours: torch.Tensor, theirs: torch.Tensor, bound: torch.Tensor) -> None:
    excess = ((ours.to(F64) - theirs.to(F64)).abs() - bound).max()
    assert excess <= 0, f"differs by {float(excess):.3g} more than the derived bound"


# ---- parity with diffusers' FlowMapEulerDiscreteScheduler ------------------------------------------------


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 2, 4, 7])
def test_grid_and_steps_match_diffusers(steps, shift):
    ours, theirs = ready(steps, shift=shift)
    assert len(ours.timesteps) == steps and len(ours.sigmas) == steps + 1 and float(ours.sigmas[-1]) == 0
    torch.testing.assert_close(ours.timesteps.to(F64), theirs.timesteps, **ONE_ROUNDING)
    torch.testing.assert_close(ours.sigmas.to(F64), theirs.sigmas, **ONE_ROUNDING)
    torch.testing.assert_close(ours.r_timesteps.to(F64), theirs.sigmas[1:] * 1000, **ONE_ROUNDING)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(steps))
    for i, t in enumerate(ours.timesteps):
        v = smooth_model(x, t)
        out = ours.step(v, t, x)
        expected = theirs.step(v, theirs.timesteps[i], x).prev_sample
        sigma_t, sigma_r = float(theirs.sigmas[i]), float(theirs.sigmas[i + 1])
        assert_within(out.prev_sample, expected, parity_bound(x, v, sigma_t, sigma_r))
        # x̂0 = x − σ_t·v: one rounding of σ_t, the product and the difference (γ_3)
        assert_within(out.pred_original_sample, x.to(F64) - sigma_t * v.to(F64),
                      gamma(3) * (x.to(F64).abs() + sigma_t * v.to(F64).abs()))
        x = out.prev_sample


def test_explicit_r_timestep_matches_diffusers_and_the_default_target():
    ours, theirs = ready(4, shift=3.0)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    v = smooth_model(x, 900)
    t_ours, t_theirs = ours.timesteps[1], theirs.timesteps[1]
    targets = [(ours.timesteps[3], theirs.timesteps[3], float(theirs.sigmas[3])),  # skip an entry
               (0.0, 0.0, 0.0),  # one jump to the clean sample
               (375.0, 375.0, 0.375),  # off the grid, a Python number
               (torch.tensor(123.5), torch.tensor(123.5), 0.1235),  # off the grid, a tensor
               (t_ours, t_theirs, float(theirs.sigmas[1]))]  # r = t: the sample itself
    for r_ours, r_theirs, sigma_r in targets:
        got = ours.step(v, t_ours, x, r_timestep=r_ours).prev_sample
        expected = theirs.step(v, t_theirs, x, r_timestep=r_theirs).prev_sample
        assert_within(got, expected, parity_bound(x, v, float(theirs.sigmas[1]), sigma_r))
    assert torch.equal(ours.step(v, t_ours, x, r_timestep=t_ours).prev_sample, x)  # x + 0·v
    for i, t in enumerate(ours.timesteps):  # r = r_timesteps[i] is the default target: the same float32 operations
        default = ours.step(v, t, x).prev_sample
        torch.testing.assert_close(ours.step(v, t, x, r_timestep=ours.r_timesteps[i]).prev_sample, default, **EXACT)
        torch.testing.assert_close(ours.step(v, t, x, r_timestep=float(ours.r_timesteps[i])).prev_sample, default,
                                   **EXACT)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("custom", [{"sigmas": [1.0, 0.7, 0.3, 0.05]}, {"timesteps": [950.0, 600.0, 200.0]},
                                    {"sigmas": [0.6]}])
def test_custom_grids_are_shifted_as_diffusers(custom, shift):
    ours, theirs = ScratchFlowMapScheduler(shift=shift), FlowMapEulerDiscreteScheduler(shift=shift)
    ours.set_timesteps(**custom)
    theirs.set_timesteps(**custom)
    torch.testing.assert_close(ours.timesteps.to(F64), theirs.timesteps, **ONE_ROUNDING)
    torch.testing.assert_close(ours.sigmas.to(F64), theirs.sigmas, **ONE_ROUNDING)
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    for i, t in enumerate(ours.timesteps):
        v = smooth_model(x, t)
        got = ours.step(v, t, x).prev_sample
        expected = theirs.step(v, theirs.timesteps[i], x).prev_sample
        assert_within(got, expected, parity_bound(x, v, float(theirs.sigmas[i]), float(theirs.sigmas[i + 1])))
        x = got


def test_configs_load_both_ways_and_round_trip(tmp_path):
    ours = ScratchFlowMapScheduler(num_train_timesteps=500, shift=2.5, stochastic_sampling=True)
    into_theirs = FlowMapEulerDiscreteScheduler.from_config(ours.config)
    assert (into_theirs.config.num_train_timesteps, into_theirs.config.shift) == (500, 2.5)
    into_ours = ScratchFlowMapScheduler.from_config(FlowMapEulerDiscreteScheduler(shift=3.0).config)
    assert type(into_ours) is ScratchFlowMapScheduler
    assert (into_ours.config.shift, into_ours.config.stochastic_sampling) == (3.0, False)
    ours.save_pretrained(tmp_path / "ours")
    FlowMapEulerDiscreteScheduler(shift=1.5).save_pretrained(tmp_path / "theirs")
    assert FlowMapEulerDiscreteScheduler.from_pretrained(tmp_path / "ours").config.shift == 2.5
    assert ScratchFlowMapScheduler.from_pretrained(tmp_path / "theirs").config.shift == 1.5
    loaded = ScratchFlowMapScheduler.from_pretrained(tmp_path / "ours")
    assert dict(loaded.config) == dict(ours.config)

    def run(scheduler):  # the same class and config: the very same operations and draws
        scheduler.set_timesteps(3)
        x, generator = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(3)), torch.manual_seed(4)
        for t in scheduler.timesteps:
            x = scheduler.step(smooth_model(x, t), t, x, generator=generator).prev_sample
        return x

    torch.testing.assert_close(run(loaded), run(ours), **EXACT)
    names = {cls.__name__ for cls in ours.compatibles}
    assert {"FlowMapEulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler"} <= names
    for compatible in ours.compatibles:
        compatible.from_config(ours.config)


def test_both_describe_the_flow_path_and_velocity():
    expected = Parametrization("flow", "flow_velocity")
    for scheduler in (ScratchFlowMapScheduler(), ScratchFlowMapScheduler(stochastic_sampling=True),
                      FlowMapEulerDiscreteScheduler(shift=3.0)):
        assert parametrization_of(scheduler) == expected


# ---- the two rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [{}, {"shift": 3.0}, {"stochastic_sampling": True}])
def test_one_step_is_x_minus_sigma_v_exactly(config):
    """σ_0 = 1 at n = 1 whatever the shift (s·1/(1 + (s − 1)) = 1 exactly): x + (0 − 1)·v and x − 1·v are each
    one correctly rounded x − v, and re-noising to σ = 0 adds 0·z to 1·x̂0."""
    scheduler = ScratchFlowMapScheduler(**config)
    scheduler.set_timesteps(1)
    assert scheduler.sigmas.tolist() == [1.0, 0.0] and scheduler.r_timesteps.tolist() == [0.0]
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    v = smooth_model(x, 1000)
    out = scheduler.step(v, scheduler.timesteps[0], x, generator=torch.manual_seed(0))
    torch.testing.assert_close(out.prev_sample, x - v, **EXACT)
    torch.testing.assert_close(out.pred_original_sample, x - v, **EXACT)


def test_deterministic_steps_are_our_flow_matching_euler_on_the_same_grid():
    """Same float32 σ grid, same float32 operations (σ_next − σ, then x + (σ_next − σ)·v): the same bits."""
    ours = ScratchFlowMapScheduler(shift=3.0)
    ours.set_timesteps(5)
    euler = ScratchFlowMatchScheduler()
    euler.set_timesteps(sigmas=ours.sigmas[:-1].tolist())  # used as given (no shift)
    torch.testing.assert_close(euler.sigmas, ours.sigmas, **EXACT)
    x = y = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(6))
    for t_ours, t_euler in zip(ours.timesteps, euler.timesteps, strict=True):
        a, b = ours.step(velocity_model(x), t_ours, x), euler.step(velocity_model(y), t_euler, y)
        torch.testing.assert_close(a.prev_sample, b.prev_sample, **EXACT)
        torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, **EXACT)
        x, y = a.prev_sample, b.prev_sample


def test_renoising_draws_z_from_the_generator():
    """x_r = (1 − σ_r)·x̂0 + σ_r·z with z the generator's next draw (Song et al., 2023, Algorithm 1)."""
    scheduler = ScratchFlowMapScheduler(stochastic_sampling=True)
    scheduler.set_timesteps(3)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    v, t = smooth_model(x, 1000), scheduler.timesteps[1]
    sigma_t, sigma_r = float(scheduler.sigmas[1]), float(scheduler.sigmas[2])
    got = scheduler.step(v, t, x, generator=torch.Generator().manual_seed(8)).prev_sample
    z = randn_tensor(x.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float32).to(F64)
    x0 = x.to(F64) - sigma_t * v.to(F64)
    # x̂0: product and difference (γ_2 of |x| + σ_t|v|); 1 − σ_r, its product and the sum (2 more on that term);
    # σ_r·z: product and sum (γ_2). The reference is float64 (exact to 2⁻⁵³, inside γ_5's excess).
    bound = gamma(5) * ((1 - sigma_r) * (x.to(F64).abs() + sigma_t * v.to(F64).abs()) + sigma_r * z.abs())
    assert_within(got, (1 - sigma_r) * x0 + sigma_r * z, bound)
    again = scheduler.step(v, t, x, generator=torch.Generator().manual_seed(8)).prev_sample
    torch.testing.assert_close(again, got, **EXACT)
    assert not torch.equal(scheduler.step(v, t, x, generator=torch.Generator().manual_seed(9)).prev_sample, got)
    # a list of generators: example i draws from the i-th, exactly as alone
    generators = [torch.Generator().manual_seed(s) for s in (10, 11)]
    batch = scheduler.step(v, t, x, generator=generators).prev_sample
    for i, seed in enumerate((10, 11)):
        alone = scheduler.step(v[i:i + 1], t, x[i:i + 1], generator=torch.Generator().manual_seed(seed)).prev_sample
        torch.testing.assert_close(batch[i:i + 1], alone, **EXACT)
    last = scheduler.step(v, scheduler.timesteps[-1], x, generator=torch.manual_seed(0))  # σ_r = 0: x̂0 itself
    torch.testing.assert_close(last.prev_sample, last.pred_original_sample, **EXACT)


def test_any_timestep_steps_to_the_next_scheduled_sigma_below_it():
    """The scratch schedulers' rule (scheduling_common): a timestep within rounding of a scheduled one is that
    one; any other t steps from σ = t/T to the largest scheduled σ below it (0 below the last)."""
    scheduler = ScratchFlowMapScheduler(shift=3.0)
    scheduler.set_timesteps(4)  # 1000, 900, 750, 500
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(14))
    v = smooth_model(x, 800)
    for t in scheduler.timesteps:
        nearby = float(t) - 0.01  # a float64 rounding of σ·T elsewhere is off by far less
        torch.testing.assert_close(scheduler.step(v, nearby, x).prev_sample, scheduler.step(v, t, x).prev_sample,
                                   **EXACT)
    for t, sigma_r in [(820.0, 0.75), (300.0, 0.0), (999.0, 0.9)]:
        got = scheduler.step(v, t, x).prev_sample
        expected = x.to(F64) + (sigma_r - t / 1000) * v.to(F64)
        assert_within(got, expected, parity_bound(x, v, t / 1000, sigma_r))


def test_one_target_per_example_steps_each_as_alone():
    scheduler = ScratchFlowMapScheduler()
    scheduler.set_timesteps(4)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(12))
    v = smooth_model(x, 750)
    t = torch.tensor([1000.0, 750.0, 612.5])  # scheduled, scheduled, off the grid
    r = torch.tensor([250.0, 0.0, 300.0])
    batch = scheduler.step(v, t, x, r_timestep=r).prev_sample
    for i in range(3):
        alone = scheduler.step(v[i:i + 1], float(t[i]), x[i:i + 1], r_timestep=float(r[i])).prev_sample
        # the same σ and float32 σ_r − σ_t; the batch forms D·v and the sum (2 roundings), alone may fuse them (1)
        increment = float(r[i] - t[i]) / 1000
        assert_within(batch[i:i + 1], alone, gamma(2) * (x[i:i + 1].to(F64).abs() + abs(increment) * v[i:i + 1].abs()))


@pytest.mark.parametrize("stochastic", [False, True])
def test_device_timesteps_are_never_read_back(stochastic):
    """On the meta device every host read raises: a loop there (default and explicit r) has no sync."""
    scheduler = ScratchFlowMapScheduler(stochastic_sampling=stochastic)
    scheduler.set_timesteps(3, device="meta")
    assert scheduler.r_timesteps.device.type == "meta" and scheduler.sigmas.device.type == "meta"
    x = torch.empty(2, 3, 8, 8, device="meta")
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(torch.empty_like(x), t, x).prev_sample
        x = scheduler.step(torch.empty_like(x), t, x, r_timestep=scheduler.r_timesteps[i]).prev_sample
    assert x.device.type == "meta"


def test_add_noise_is_the_flow_path_as_our_flow_matching_and_diffusers():
    """(1 − σ)·x0 + σ·ε with σ = float32(t)/T on each side: the same float32 operations (a sum commutes exactly)."""
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([1000.0, 612.5, 3.0])
    ours = ScratchFlowMapScheduler().add_noise(x0, noise, t)
    torch.testing.assert_close(ours, ScratchFlowMatchScheduler().add_noise(x0, noise, t), **EXACT)
    torch.testing.assert_close(ours, FlowMapEulerDiscreteScheduler().scale_noise(x0, t, noise), **EXACT)
    torch.testing.assert_close(ScratchFlowMapScheduler().scale_noise(x0, t, noise), ours, **EXACT)
    with pytest.raises(ValueError, match="1001"):
        ScratchFlowMapScheduler().add_noise(x0, noise, torch.tensor([1001.0, 5.0, 5.0]))


# ---- errors, before anything changes -------------------------------------------------------------------


@pytest.mark.parametrize("config", [{"shift": 0.0}, {"shift": -1.0}, {"shift": math.nan}, {"shift": "3"},
                                    {"stochastic_sampling": "yes"}, {"num_train_timesteps": 0}])
def test_bad_config_is_refused_naming_the_value(config):
    (name, value), = config.items()
    with pytest.raises((ValueError, TypeError), match=f"{name}={value!r}" if name != "num_train_timesteps" else name):
        ScratchFlowMapScheduler(**config)


def test_bad_schedules_are_refused_and_leave_the_schedule_unchanged():
    scheduler = ScratchFlowMapScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    before = (scheduler.timesteps.clone(), scheduler.sigmas.clone(), scheduler.r_timesteps.clone())
    for kwargs, message in [({"num_inference_steps": 0}, "num_inference_steps=0"),
                            ({"num_inference_steps": 1001}, "num_inference_steps=1001"),
                            ({"sigmas": [0.5, 0.0]}, r"stay > 0"),
                            ({"sigmas": [0.3, 0.6]}, "strictly descending"),
                            ({"sigmas": [0.9, 0.5], "num_inference_steps": 3}, "num_inference_steps=3"),
                            ({"sigmas": [0.9, 0.5], "timesteps": [900.0, 400.0]}, "disagree"),
                            ({}, "needs num_inference_steps"),
                            ({"num_inference_steps": 2, "device": "gpu0"}, "device='gpu0'")]:
        with pytest.raises(ValueError, match=message):
            scheduler.set_timesteps(**kwargs)
        for now, then in zip((scheduler.timesteps, scheduler.sigmas, scheduler.r_timesteps), before, strict=True):
            torch.testing.assert_close(now, then, **EXACT)


def test_bad_step_targets_are_refused_before_any_draw():
    scheduler = ScratchFlowMapScheduler(stochastic_sampling=True)
    scheduler.set_timesteps(4)
    x = torch.randn(2, 3, 4, 4)
    generator = torch.Generator().manual_seed(13)
    state = generator.get_state()
    t = scheduler.timesteps[2]  # 500
    for r, message in [(600.0, "r_timestep 600 is above timestep 500"),
                       (torch.tensor([250.0, 750.0]), "r_timestep 750 is above timestep 500"),
                       (-1.0, "timestep -1 "), (math.nan, "timestep nan "),
                       (torch.tensor([1.0, 2.0, 3.0]), "got 3 timesteps")]:
        with pytest.raises(ValueError, match=message):
            scheduler.step(x, t, x, r_timestep=r, generator=generator)
        assert torch.equal(generator.get_state(), state)
    with pytest.raises(ValueError, match="timestep 1001"):
        scheduler.step(x, 1001.0, x, generator=generator)
    assert torch.equal(generator.get_state(), state)


# ---- the pipeline -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2])
def test_pipeline_samples_with_the_flow_map_scheduler(steps):
    pipe = tiny_pipeline(scheduler=ScratchFlowMapScheduler())
    counter = CallCounter(pipe.unet)
    seen = []

    def keep(_pipe, _i, _t, tensors):
        seen.append(tensors)
        return {}

    images = pipe(batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                  output_type="pt", callback_on_step_end=keep,
                  callback_on_step_end_tensor_inputs=["latents", "model_output"]).images
    assert images.shape == (2, 3, 8, 8) and bool(torch.isfinite(images).all())
    assert [float(t.reshape(-1)[0]) for _, t in counter.calls] == [1000.0, 500.0][:steps]
    if steps == 1:  # σ: 1 → 0, so the sample is x_T − v exactly
        noise = randn_tensor((2, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
        torch.testing.assert_close(seen[0]["latents"], noise - seen[0]["model_output"], **EXACT)
