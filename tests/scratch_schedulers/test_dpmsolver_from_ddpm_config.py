"""A DDPM config swaps into DPM-Solver++ as into diffusers' DPMSolverMultistepScheduler (a stock-pipeline habit)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from scratch_schedulers import FEW_STEP_CONFIG, ScratchDPMSolverScheduler
from scratch_schedulers.scheduling_ddpm import LEARNED_VARIANCE_TYPES, VARIANCE_TYPES


def loop(scheduler: ScratchDPMSolverScheduler, channels: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=generator)
    scheduler.set_timesteps(6)
    for t in scheduler.timesteps:
        model_output = torch.randn(2, channels, 8, 8, generator=generator)
        x = scheduler.step(model_output, t, x).prev_sample
    return x


@pytest.mark.parametrize("variance_type", [v for v in VARIANCE_TYPES if v not in LEARNED_VARIANCE_TYPES])
def test_a_fixed_variance_type_from_a_ddpm_config_means_no_variance_block(variance_type):
    ddpm_config = DDPMScheduler(variance_type=variance_type).config
    swapped = ScratchDPMSolverScheduler.from_config(ddpm_config, **FEW_STEP_CONFIG)
    assert swapped.config.variance_type == variance_type
    plain = ScratchDPMSolverScheduler.from_config({**ddpm_config, "variance_type": None}, **FEW_STEP_CONFIG)
    assert torch.equal(loop(swapped), loop(plain))  # the same arithmetic: the fixed types change nothing here
    with pytest.raises(ValueError, match="shape"):  # and a 2·C output is not silently cut
        loop(ScratchDPMSolverScheduler.from_config(ddpm_config), channels=6)


def test_an_unknown_variance_type_is_still_refused():
    with pytest.raises(ValueError, match=r"'other'.*fixed_small"):
        ScratchDPMSolverScheduler(variance_type="other")
