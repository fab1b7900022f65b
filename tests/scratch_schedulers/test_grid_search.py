"""Tuned time grids: the ``tuned_grids`` config key of ScratchDPMSolverScheduler and the search that fills it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratch_schedulers import FEW_STEP_CONFIG, ScratchDPMSolverScheduler
from scratch_schedulers.dpm_grids import flow_times_of_lambdas, lambdas_of_flow_times
from scratch_schedulers.grid_search import (
    configured_flow_grid,
    flow_uniform_grid,
    grid_of_logits,
    logits_of_grid,
    rms_discrepancy,
    search_time_grid,
)
from scratch_schedulers.oracle import GaussianMixture, ode_endpoint_error, sample_with
from tests.tolerances import U32

FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
PATHS = pytest.mark.parametrize("path_keys", [{}, FLOW], ids=["vp", "flow"])
GRID5 = [0.9, 0.6, 0.35, 0.15, 0.04]


def flow_times(scheduler: ScratchDPMSolverScheduler) -> np.ndarray:
    """The scheduler's grid (without the final point) in flow time s = b/(a + b)."""
    levels = scheduler.sigmas.double().numpy()[:-1]
    return levels if scheduler.config.use_flow_sigmas else levels / (1 + levels)


def test_flow_time_and_log_snr_are_inverse():
    times = np.array([0.999, 0.5, 0.01])
    np.testing.assert_allclose(flow_times_of_lambdas(lambdas_of_flow_times(times)), times, rtol=1e-15 * 64)
    assert lambdas_of_flow_times(np.array([0.5]))[0] == 0.0  # a = b


@PATHS
def test_set_timesteps_uses_the_tuned_grid_and_other_n_fall_back(path_keys):
    tuned = ScratchDPMSolverScheduler(**path_keys, tuned_grids={5: GRID5})
    tuned.set_timesteps(5)
    # float32 levels: each s is rounded once (relative u) and, on the VP path, once more through s/(1 + s) and
    # the timestep interpolation (a few u): 8·u bounds both.
    np.testing.assert_allclose(flow_times(tuned), GRID5, rtol=8 * U32)
    assert tuned.timesteps.dtype == torch.float32 and tuned.sigmas[-1] == 0  # fractional, final point appended
    plain = ScratchDPMSolverScheduler(**path_keys)
    for n in (4, 6):
        tuned.set_timesteps(n)
        plain.set_timesteps(n)
        assert torch.equal(tuned.timesteps, plain.timesteps) and torch.equal(tuned.sigmas, plain.sigmas)


@PATHS
def test_flow_uniform_as_a_tuned_grid_is_the_flow_uniform_time_grid(path_keys):
    reference = ScratchDPMSolverScheduler(**path_keys, time_grid="flow_uniform")
    grid, _ = configured_flow_grid(reference, 6)
    tuned = ScratchDPMSolverScheduler(**path_keys, tuned_grids={6: flow_uniform_grid(grid[0], 6).tolist()})
    tuned.set_timesteps(6)
    # timesteps ≈ 1000·s: the float32 level's rounding (u relative) moves t by ≤ 1000·u·(dt/d log s ≤ 1)·4 slack
    torch.testing.assert_close(tuned.timesteps, reference.timesteps, rtol=0, atol=4000 * U32)


@PATHS
def test_saved_config_samples_the_same_grid(path_keys, tmp_path):
    scheduler = ScratchDPMSolverScheduler(**FEW_STEP_CONFIG, **path_keys, tuned_grids={5: GRID5, "3": [0.9, 0.5, 0.1]})
    assert scheduler.config.tuned_grids == {"3": [0.9, 0.5, 0.1], "5": GRID5}  # JSON's form: string keys
    scheduler.save_config(tmp_path)
    loaded = ScratchDPMSolverScheduler.from_pretrained(tmp_path)
    assert loaded.config.tuned_grids == scheduler.config.tuned_grids
    for n in (3, 5, 7):
        scheduler.set_timesteps(n)
        loaded.set_timesteps(n)
        assert torch.equal(loaded.timesteps, scheduler.timesteps) and torch.equal(loaded.sigmas, scheduler.sigmas)


@pytest.mark.parametrize(
    ("tuned_grids", "match"),
    [
        ([0.5], "must be None or a dict"),
        ({0: []}, "n must be ≥ 1"),
        ({"five": [0.5]}, "must be a number of steps"),
        ({True: [0.5]}, "must be a number of steps"),
        ({2: [0.5, 0.2], "2": [0.5, 0.2]}, "2 steps given twice"),
        ({3: [0.9, 0.5]}, "3 steps need 3 flow times"),
        ({2: [1.0, 0.5]}, r"open interval \(0, 1\)"),
        ({2: [0.5, 0.0]}, r"open interval \(0, 1\)"),
        ({2: [0.5, float("nan")]}, r"open interval \(0, 1\)"),
        ({3: [0.9, 0.2, 0.5]}, "strictly descending"),
        ({2: [0.5, 0.5]}, "strictly descending"),
        ({2: ["a", 0.5]}, "must be a list of 2 flow times"),
    ],
)
def test_bad_tuned_grids_are_refused_at_construction(tuned_grids, match):
    with pytest.raises(ValueError, match=match):
        ScratchDPMSolverScheduler(tuned_grids=tuned_grids)


def test_a_grid_beyond_the_vp_training_levels_is_refused():
    scheduler = ScratchDPMSolverScheduler(tuned_grids={2: [0.9999, 0.5], 3: [0.9, 0.5, 0.001]})
    for n in (2, 3):  # the VP top is s ≈ 0.994 (t = 999), its floor s ≈ 0.01 (t = 0)
        with pytest.raises(ValueError, match="leaves this path's flow times"):
            scheduler.set_timesteps(n)
    ScratchDPMSolverScheduler(**FLOW, tuned_grids={2: [0.9999, 0.001]}).set_timesteps(2)  # the flow path takes them


def test_logits_parametrise_descending_grids():
    top, bottom = 0.99, 0.01
    start = flow_uniform_grid(top, 6)
    np.testing.assert_allclose(grid_of_logits(logits_of_grid(start, bottom), top, bottom), start, rtol=1e-14)
    for logits in np.random.default_rng(0).normal(scale=3.0, size=(50, 5)):
        grid = grid_of_logits(logits, top, bottom)
        assert grid[0] == top and np.all(np.diff(grid) < 0) and grid[-1] > bottom
    with pytest.raises(ValueError, match="strictly descending"):
        logits_of_grid([0.9, 0.9, 0.1])


def test_rms_discrepancy():
    x = torch.zeros(4, 2, 3)
    y = torch.ones(4, 2, 3)
    assert rms_discrepancy(x, y) == pytest.approx(6**0.5)  # every sample 6 units² away
    assert rms_discrepancy(x + float("nan"), y) == float("inf")
    with pytest.raises(ValueError, match="shape"):
        rms_discrepancy(x, y[:2])


@PATHS
def test_search_improves_the_endpoint_error_with_a_monotone_grid(path_keys):
    mixture = GaussianMixture.example()
    config = {**FEW_STEP_CONFIG, **path_keys}
    n, n_calibration, seed = 4, 200, 1
    reference = ode_endpoint_error(ScratchDPMSolverScheduler(**config), mixture, n, n_samples=n_calibration,
                                   seed=seed).reference
    grid, bottom = configured_flow_grid(ScratchDPMSolverScheduler(**config), n)
    seen = []

    def sample(candidate: list[float]) -> torch.Tensor:
        seen.append(candidate)
        return sample_with(ScratchDPMSolverScheduler(**config, tuned_grids={n: candidate}), mixture, n,
                           n_samples=n_calibration, seed=seed)[0]

    result = search_time_grid(sample, reference, n, float(grid[0]), bottom=bottom, max_evaluations=25)
    assert result.evaluations == len(seen) <= 25
    assert result.initial_grid == flow_uniform_grid(grid[0], n).tolist()
    assert seen[0] == pytest.approx(result.initial_grid, rel=1e-13)  # through the logits and back: a few ulps
    # The flow_uniform start's error is ~3e-2 on this mixture (bench_few_step's table); a worse grid is ≥ 1e-2 off.
    assert result.error < 0.9 * result.initial_error
    for candidate in seen:
        assert candidate[0] == grid[0] and np.all(np.diff(candidate) < 0) and candidate[-1] > bottom
    ScratchDPMSolverScheduler(**config, tuned_grids={n: result.grid}).set_timesteps(n)  # a valid config value


def test_search_checks_its_arguments():
    sample = lambda grid: torch.zeros(1, 1)  # noqa: E731
    with pytest.raises(ValueError, match="bottom < top"):
        search_time_grid(sample, torch.zeros(1, 1), 3, 0.5, bottom=0.6)
    with pytest.raises(ValueError, match="starting at top"):
        search_time_grid(sample, torch.zeros(1, 1), 3, 0.5, initial_grid=[0.4, 0.3, 0.2])
    one = search_time_grid(sample, torch.zeros(1, 1), 1, 0.5)  # one point: nothing to tune
    assert one.grid == [0.5] and one.evaluations == 1
