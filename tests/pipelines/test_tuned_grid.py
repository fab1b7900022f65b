"""tune_time_grid: a pipeline's DPM-Solver grid tuned on calibration noise, kept in the scheduler config and saved."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratch_diffusion import ScratchDiffusionPipeline
from scratch_diffusion.pipelines.tuned_grid import tune_time_grid
from scratch_schedulers import ScratchDPMSolverScheduler

from .helpers import tiny_pipeline

FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}


@pytest.mark.parametrize("path_keys", [{}, FLOW], ids=["vp", "flow"])
def test_the_tuned_grid_is_stored_and_saved(path_keys, tmp_path):
    scheduler = ScratchDPMSolverScheduler(**path_keys, time_grid="flow_uniform",
                                          tuned_grids={7: np.linspace(0.9, 0.1, 7).tolist()})
    pipe = tiny_pipeline(scheduler, num_class_embeds=3)
    record = tune_time_grid(pipe, 3, num_calibration=2, reference_steps=12, max_evaluations=8)
    config = pipe.scheduler.config
    assert config.tuned_grids["3"] == record.grid and "7" in config.tuned_grids and "12" not in config.tuned_grids
    # flow_uniform is both the configured grid and the search's start, so the search can only improve on it
    assert record.error_after < record.error_before and np.all(np.diff(record.grid) < 0)
    # runs: the reference, the configured grid, flow_uniform, then the search's (its start again, then more, at most
    # max_evaluations in all); each run evaluates the UNet once per step and image (no guidance).
    assert 3 + 2 <= record.sampler_runs <= 3 + 8
    assert record.model_evaluations == 2 * (12 + 3 * (record.sampler_runs - 1))
    pipe.save_pretrained(tmp_path)
    loaded = ScratchDiffusionPipeline.from_pretrained(tmp_path)
    assert loaded.scheduler.config.tuned_grids == config.tuned_grids
    for n in (3, 4):
        pipe.scheduler.set_timesteps(n)
        loaded.scheduler.set_timesteps(n)
        assert torch.equal(loaded.scheduler.timesteps, pipe.scheduler.timesteps)
    untuned = ScratchDPMSolverScheduler(**path_keys, time_grid="flow_uniform")
    untuned.set_timesteps(3)
    assert not torch.equal(untuned.timesteps, pipe.scheduler.timesteps)


def test_only_a_dpm_solver_scheduler_is_tuned():
    with pytest.raises(TypeError, match=r"ScratchDPMSolverScheduler.*ScratchDDIMScheduler"):
        tune_time_grid(tiny_pipeline(), 3)
    pipe = tiny_pipeline(ScratchDPMSolverScheduler())
    with pytest.raises(ValueError, match="reference_steps=3 must be an int > num_inference_steps=3"):
        tune_time_grid(pipe, 3, reference_steps=3)
    with pytest.raises(ValueError, match="num_inference_steps=1"):
        tune_time_grid(pipe, 1)


def test_a_configured_grid_the_search_cannot_beat_stays():
    """diffusers' flow grid has integer timesteps, which flow times cannot reproduce: an untrained UNet's error may
    then be lowest on it, and no tuned grid is stored for n."""
    pipe = tiny_pipeline(ScratchDPMSolverScheduler(**FLOW), num_class_embeds=3)
    record = tune_time_grid(pipe, 3, num_calibration=2, reference_steps=12, max_evaluations=8)
    assert record.error_after <= record.error_before
    stored = (pipe.scheduler.config.tuned_grids or {}).get("3")
    assert stored == record.grid and (record.grid is None) == (record.error_after == record.error_before)
