"""The diffusers scheduler contract: config round trips, cross-loading, compatibles, devices, dtypes."""

from __future__ import annotations

import inspect

import diffusers
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

from scratch_schedulers import (
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchFlowMatchScheduler,
    parametrization_of,
)
from scratch_schedulers.samplers import ddpm_posterior_coefficients, posterior_mean, reverse_step

from .helpers import denoiser_model, smooth_model

OURS = [ScratchDDPMScheduler, ScratchDDIMScheduler, ScratchFlowMatchScheduler]
PAIRS = [(ScratchDDPMScheduler, DDPMScheduler), (ScratchDDIMScheduler, DDIMScheduler),
         (ScratchFlowMatchScheduler, FlowMatchEulerDiscreteScheduler)]
CONFIGS = {
    ScratchDDPMScheduler: {"beta_schedule": "squaredcos_cap_v2", "variance_type": "fixed_large",
                           "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    ScratchDDIMScheduler: {"beta_schedule": "scaled_linear", "set_alpha_to_one": False, "steps_offset": 1,
                           "prediction_type": "sample", "clip_sample": False},
    ScratchFlowMatchScheduler: {"shift": 3.0, "shift_terminal": 0.05, "solver": "heun"},
}


def sample_loop(scheduler, steps=6, seed=0):
    scheduler.set_timesteps(steps)
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(seed))
    generator = torch.Generator().manual_seed(seed + 1)
    for t in scheduler.timesteps:
        out = denoiser_model(scheduler, x, t) if hasattr(scheduler, "alphas_cumprod") else smooth_model(x, t)
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("cls", OURS)
def test_save_pretrained_from_pretrained_from_config_round_trip(cls, tmp_path):
    scheduler = cls(**CONFIGS[cls])
    scheduler.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").is_file()
    loaded = cls.from_pretrained(tmp_path)
    again = cls.from_config(loaded.config)
    for other in (loaded, again):
        for key, value in CONFIGS[cls].items():
            assert other.config[key] == value
        torch.testing.assert_close(sample_loop(other), sample_loop(cls(**CONFIGS[cls])), rtol=0, atol=0)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_configs_cross_load_both_ways(ours, theirs, tmp_path):
    shared = {k: v for k, v in CONFIGS[ours].items() if k in inspect.signature(theirs.__init__).parameters}
    mine = ours(**CONFIGS[ours])
    mine.save_pretrained(tmp_path / "ours")
    into_theirs = theirs.from_pretrained(tmp_path / "ours")
    for key, value in shared.items():
        assert into_theirs.config[key] == value
    theirs(**shared).save_pretrained(tmp_path / "theirs")
    into_ours = ours.from_pretrained(tmp_path / "theirs")
    for key, value in shared.items():
        assert into_ours.config[key] == value
    assert type(into_ours) is ours


def test_switching_between_our_schedulers_and_diffusers_keeps_the_path():
    base = DDPMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction")
    for cls in (ScratchDDPMScheduler, ScratchDDIMScheduler):
        ours = cls.from_config(base.config)
        assert torch.equal(ours.alphas_cumprod, base.alphas_cumprod)
        assert parametrization_of(ours) == parametrization_of(base)
        back = EulerDiscreteScheduler.from_config(ours.config)
        assert torch.equal(back.alphas_cumprod, base.alphas_cumprod)


@pytest.mark.parametrize("cls", OURS)
def test_compatibles_name_diffusers_counterparts_and_names_do_not_clash(cls):
    assert cls.__name__ not in dir(diffusers)
    names = {c.__name__ for c in cls().compatibles}
    counterpart = {ScratchDDPMScheduler: "DDPMScheduler", ScratchDDIMScheduler: "DDIMScheduler",
                   ScratchFlowMatchScheduler: "FlowMatchEulerDiscreteScheduler"}[cls]
    assert counterpart in names
    for compatible in cls().compatibles:
        compatible.from_config(cls().config)


@pytest.mark.parametrize("cls", OURS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_step_and_add_noise_keep_dtype(cls, dtype):
    scheduler = cls()
    scheduler.set_timesteps(4)
    x = torch.randn(2, 3, 4, 4).to(dtype)
    t = scheduler.timesteps[0]
    assert scheduler.step(torch.randn_like(x), t, x).prev_sample.dtype == dtype
    assert scheduler.add_noise(x, torch.randn_like(x), scheduler.timesteps[:2].repeat(1)).dtype == dtype


@pytest.mark.parametrize(("cls", "config"), [
    (ScratchDDPMScheduler, {}), (ScratchDDPMScheduler, {"variance_type": "learned_range"}),
    (ScratchDDIMScheduler, {}), (ScratchFlowMatchScheduler, {}), (ScratchFlowMatchScheduler, {"solver": "heun"}),
    (ScratchFlowMatchScheduler, {"stochastic_sampling": True})])
def test_device_path_never_reads_back_to_host(cls, config):
    """On the meta device every host read (.item(), bool(), t[i] with a tensor i) raises, so a full
    loop there proves the step has no host–device synchronisation."""
    scheduler = cls(**config)
    scheduler.set_timesteps(5, device="meta")
    x = torch.empty(2, 3, 8, 8, device="meta")
    channels = 6 if config.get("variance_type") == "learned_range" else 3
    kwargs = {"eta": 0.5} if cls is ScratchDDIMScheduler else {}
    for t in scheduler.timesteps:
        x = scheduler.step(torch.empty(2, channels, 8, 8, device="meta"), t, x, **kwargs).prev_sample
    assert x.device.type == "meta"
    assert scheduler.timesteps.device.type == "meta"


def test_public_api_members():
    for cls in OURS:
        scheduler = cls()
        assert scheduler.init_noise_sigma == 1.0 and len(scheduler) == 1000
        sample = torch.randn(1, 3, 4, 4)
        assert scheduler.scale_model_input(sample, 0) is sample
        assert "timesteps" in inspect.signature(scheduler.set_timesteps).parameters
    assert ScratchFlowMatchScheduler(solver="heun").order == 2 and ScratchFlowMatchScheduler().order == 1
    ddpm = ScratchDDPMScheduler()
    ddpm.set_timesteps(timesteps=[100, 87, 50, 1, 0])
    assert [int(ddpm.previous_timestep(t)) for t in (100, 87, 50, 1, 0)] == [87, 50, 1, 0, -1]
    out = ddpm.step(torch.zeros(1, 1, 2, 2), 100, torch.zeros(1, 1, 2, 2), return_dict=False)
    assert isinstance(out, tuple) and len(out) == 2


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_scale_model_input_returns_the_sample_unchanged_as_diffusers(ours, theirs):
    """x_t goes to the model unscaled on both paths: DDPM/DDIM return the very tensor, as diffusers'
    counterparts do; diffusers' FlowMatchEuler has no scale_model_input at all (ours adds the identity)."""
    shared = {k: v for k, v in CONFIGS[ours].items() if k in inspect.signature(theirs.__init__).parameters}
    mine, reference = ours(**CONFIGS[ours]), theirs(**shared)
    mine.set_timesteps(4)
    reference.set_timesteps(4)
    sample = torch.randn(2, 3, 4, 4)
    for t in mine.timesteps:
        assert mine.scale_model_input(sample, t) is sample
        if hasattr(reference, "scale_model_input"):
            assert torch.equal(mine.scale_model_input(sample, t), reference.scale_model_input(sample, t))
    assert hasattr(reference, "scale_model_input") == (theirs is not FlowMatchEulerDiscreteScheduler)


def test_heun_runs_in_a_plain_loop_with_2n_minus_1_evaluations():
    scheduler = ScratchFlowMatchScheduler(solver="heun")
    scheduler.set_timesteps(5)
    assert len(scheduler.timesteps) == 9
    x = torch.randn(1, 1, 4, 4)
    for t in scheduler.timesteps:
        x = scheduler.step(smooth_model(x, t), t, x).prev_sample
    with pytest.raises(ValueError, match="already taken all"):
        scheduler.step(x, scheduler.timesteps[-1], x)


def test_ddpm_step_is_ddim_at_eta_one():
    """DDPM's posterior mean (Eq. 7) is DDIM's update (Eq. 12) at η = 1 with ε̂ from x̂0."""
    alpha_bar_t, alpha_bar_next = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    x0, x_t = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    coef_x0, coef_xt, posterior_var = ddpm_posterior_coefficients(alpha_bar_t, alpha_bar_next)
    eps = (x_t - alpha_bar_t.sqrt() * x0) / (1 - alpha_bar_t).sqrt()
    ddim = reverse_step(x0, eps, alpha_bar_next.sqrt(), 1 - alpha_bar_next, noise_std=posterior_var.sqrt())
    torch.testing.assert_close(posterior_mean(x0, x_t, coef_x0, coef_xt), ddim)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS[:2])
def test_vp_config_keys_and_defaults_are_diffusers(ours, theirs):
    """DDPM and DDIM: the same config keys with the same defaults as the diffusers classes."""
    assert dict(ours().config) | {"_class_name": None} == dict(theirs().config) | {"_class_name": None}


def test_flow_config_has_diffusers_core_keys_with_the_same_defaults():
    core = ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len",
            "max_image_seq_len", "shift_terminal", "time_shift_type", "stochastic_sampling")
    ours, theirs = ScratchFlowMatchScheduler().config, FlowMatchEulerDiscreteScheduler().config
    assert {k: ours[k] for k in core} == {k: theirs[k] for k in core}
