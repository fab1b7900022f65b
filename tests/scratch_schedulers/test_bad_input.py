"""Bad input gets a ValueError/TypeError naming the offending value and what is allowed."""

from __future__ import annotations

import pytest
import torch

from scratch_schedulers import ScratchDDIMScheduler, ScratchDDPMScheduler, ScratchFlowMatchScheduler

X = torch.zeros(1, 3, 4, 4)


def ddpm_ready(**config):
    s = ScratchDDPMScheduler(**config)
    s.set_timesteps(10)
    return s


def ddim_ready(**config):
    s = ScratchDDIMScheduler(**config)
    s.set_timesteps(10)
    return s


def flow_ready(**config):
    s = ScratchFlowMatchScheduler(**config)
    s.set_timesteps(10)
    return s


CASES = [
    # (name, callable, exception, substrings the message must contain)
    ("beta_schedule", lambda: ScratchDDPMScheduler(beta_schedule="cosine"), ValueError,
     ["'cosine'", "squaredcos_cap_v2"]),
    ("ddim beta_schedule", lambda: ScratchDDIMScheduler(beta_schedule="quad"), ValueError, ["'quad'", "linear"]),
    ("prediction_type", lambda: ScratchDDPMScheduler(prediction_type="noise"), ValueError, ["'noise'", "v_prediction"]),
    ("ddim prediction_type", lambda: ScratchDDIMScheduler(prediction_type="x0"), ValueError, ["'x0'", "epsilon"]),
    ("variance_type", lambda: ScratchDDPMScheduler(variance_type="other"), ValueError, ["'other'", "fixed_small"]),
    ("timestep_spacing", lambda: ScratchDDIMScheduler(timestep_spacing="uniform"), ValueError,
     ["'uniform'", "trailing"]),
    ("solver", lambda: ScratchFlowMatchScheduler(solver="rk4"), ValueError, ["'rk4'", "heun"]),
    ("time_shift_type", lambda: ScratchFlowMatchScheduler(time_shift_type="log"), ValueError, ["'log'", "linear"]),
    ("stochastic heun", lambda: ScratchFlowMatchScheduler(solver="heun", stochastic_sampling=True), ValueError,
     ["stochastic_sampling", "euler"]),
    ("steps < 1", lambda: ScratchDDPMScheduler().set_timesteps(0), ValueError, ["num_inference_steps=0", "1000"]),
    ("steps > T", lambda: ScratchDDIMScheduler().set_timesteps(1001), ValueError, ["1001", "num_train_timesteps=1000"]),
    ("flow steps < 1", lambda: ScratchFlowMatchScheduler().set_timesteps(-3), ValueError, ["-3", "between 1"]),
    ("steps not int", lambda: ScratchDDPMScheduler().set_timesteps(2.5), TypeError, ["2.5", "int"]),
    ("ascending timesteps", lambda: ScratchDDPMScheduler().set_timesteps(timesteps=[1, 50, 100]), ValueError,
     ["strictly descending", "[1.0, 50.0, 100.0]"]),
    ("timesteps out of range", lambda: ScratchDDIMScheduler().set_timesteps(timesteps=[1000, 10]), ValueError,
     ["[0, 1000)", "1000.0"]),
    ("negative timesteps", lambda: ScratchDDPMScheduler().set_timesteps(timesteps=[10, -1]), ValueError, ["[0, 1000)"]),
    ("fractional timesteps", lambda: ScratchDDPMScheduler().set_timesteps(timesteps=[10.5, 2]), ValueError,
     ["integers", "10.5"]),
    ("both steps and timesteps", lambda: ScratchDDPMScheduler().set_timesteps(5, timesteps=[10, 0]), ValueError,
     ["num_inference_steps=5", "not both"]),
    ("nothing given", lambda: ScratchDDIMScheduler().set_timesteps(), ValueError, ["num_inference_steps"]),
    ("flow sigmas ascending", lambda: ScratchFlowMatchScheduler().set_timesteps(sigmas=[0.2, 0.5]), ValueError,
     ["strictly descending"]),
    ("flow timesteps out of range", lambda: ScratchFlowMatchScheduler().set_timesteps(timesteps=[2000.0, 10.0]),
     ValueError, ["2000.0"]),
    ("flow sigmas/timesteps disagree", lambda: ScratchFlowMatchScheduler().set_timesteps(
        sigmas=[1.0, 0.5], timesteps=[1000.0, 100.0]), ValueError, ["disagree"]),
    ("dynamic shift without mu", lambda: ScratchFlowMatchScheduler(use_dynamic_shifting=True).set_timesteps(4),
     ValueError, ["mu"]),
    ("ddim step before set_timesteps", lambda: ScratchDDIMScheduler().step(X, 10, X), ValueError, ["set_timesteps"]),
    ("flow step before set_timesteps", lambda: ScratchFlowMatchScheduler().step(X, 10.0, X), ValueError,
     ["set_timesteps"]),
    ("timestep out of range", lambda: ddpm_ready().step(X, 1000, X), ValueError, ["timestep 1000", "[0, 999]"]),
    ("ddim negative timestep", lambda: ddim_ready().step(X, -5, X), ValueError, ["timestep -5", "[0, 999]"]),
    ("ddim fractional timestep", lambda: ddim_ready().step(X, 37.5, X), ValueError, ["timestep 37.5", "integer"]),
    ("flow timestep out of range", lambda: flow_ready().step(X, 1333.0, X), ValueError,
     ["timestep 1333", "[0, 1000]"]),
    ("heun out of order", lambda: (lambda s: s.step(X, s.timesteps[3], X))(flow_ready(solver="heun")), ValueError,
     ["not the Heun loop's next timestep 1000", "position 0"]),
    ("trained_betas length", lambda: ScratchDDPMScheduler(trained_betas=[0.1, 0.2]), ValueError,
     ["(2,)", "num_train_timesteps=1000"]),
    ("trained_betas range", lambda: ScratchDDIMScheduler(num_train_timesteps=2, trained_betas=[0.1, 1.5]),
     ValueError, ["(0, 1)", "1.5"]),
    ("shape mismatch", lambda: ddpm_ready().step(torch.zeros(1, 3, 4, 5), 900, X), ValueError,
     ["(1, 3, 4, 5)", "(1, 3, 4, 4)"]),
    ("flow shape mismatch", lambda: flow_ready().step(torch.zeros(2, 3, 4, 4), 1000.0, X), ValueError,
     ["(2, 3, 4, 4)"]),
    ("timesteps for another batch size", lambda: ddim_ready().step(X, torch.tensor([900, 800]), X), ValueError,
     ["got 2 timesteps", "(1, 3, 4, 4)", "one per example (1)"]),
    ("negative eta", lambda: ddim_ready().step(X, 900, X, eta=-1.0), ValueError, ["eta=-1.0"]),
    ("generator and variance_noise", lambda: ddim_ready().step(X, 900, X, eta=1.0, generator=torch.manual_seed(0),
                                                              variance_noise=X), ValueError, ["variance_noise"]),
    ("shift <= 0", lambda: ScratchFlowMatchScheduler(shift=0.0), ValueError, ["shift=0.0"]),
    ("shift_terminal", lambda: ScratchFlowMatchScheduler(shift_terminal=1.5), ValueError, ["shift_terminal=1.5"]),
    ("flow add_noise out of range", lambda: ScratchFlowMatchScheduler().add_noise(X, X, torch.tensor([1200.0])),
     ValueError, ["1200.0", "[0, 1000]"]),
    ("vp add_noise fractional", lambda: ScratchDDPMScheduler().add_noise(X, X, torch.tensor([10.5])), ValueError,
     ["integers"]),
]


@pytest.mark.parametrize(("name", "call", "error", "needles"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_clear_message(name, call, error, needles):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{name}: {needle!r} not in {message!r}"
