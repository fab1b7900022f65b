"""Tune the n-step time grid of a pipeline's DPM-Solver scheduler for its UNet, and keep it in the scheduler config.

:func:`tune_time_grid` draws fixed calibration noise, solves the probability-flow ODE from it finely with
the pipeline's own scheduler (``reference_steps`` points uniform in flow time from the same first point),
then searches the n-point grid that brings the n-step sampler closest to those endpoints
(:func:`scratch_schedulers.grid_search.search_time_grid`). Sampling runs through the pipeline itself
(``output_type="latent"``: the UNet's own space, latents for a latent pipeline), so guidance and the
change of variables to the scheduler's path are what the tuned grid is measured with. The grid is stored
under ``tuned_grids`` in the scheduler config: ``pipe.save_pretrained`` keeps it and ``from_pretrained``
samples n steps with it.

Example::

    pipe.scheduler = ScratchDPMSolverScheduler.from_config(pipe.scheduler.config, use_flow_sigmas=True,
                                                           prediction_type="flow_prediction")
    record = tune_time_grid(pipe, 5)           # pipe.scheduler now samples 5 steps on the tuned grid
    pipe.save_pretrained("tuned")              # ... and so does the saved pipeline
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline

from scratch_schedulers import ScratchDPMSolverScheduler
from scratch_schedulers.grid_search import (
    configured_flow_grid,
    flow_uniform_grid,
    rms_discrepancy,
    search_time_grid,
)

from .inputs import sample_shape

__all__ = ["TunedGridRecord", "tune_time_grid"]


@dataclass(frozen=True)
class TunedGridRecord:
    """What :func:`tune_time_grid` did.

    Attributes:
        num_inference_steps: n, the number of grid points tuned.
        grid: the n flow times s = b/(a + b) stored in ``pipe.scheduler.config.tuned_grids[str(n)]``; None when no
            grid searched beat the configured one on the calibration noise (it then stays, with no entry for n).
        error_before, error_after: RMS distance of the n-step endpoints to the reference on the calibration noise
            (per sample, over all latent dimensions) with the scheduler's configured grid and with ``grid``.
        seconds: wall time, reference solve included.
        sampler_runs: pipeline calls on the calibration batch (the reference's included).
        model_evaluations: UNet evaluations spent, per image times images (a guided step counts its halves).
    """

    num_inference_steps: int
    grid: list[float] | None
    error_before: float
    error_after: float
    seconds: float
    sampler_runs: int
    model_evaluations: int


def tune_time_grid(
    pipe: DiffusionPipeline,
    num_inference_steps: int,
    *,
    num_calibration: int = 32,
    reference_steps: int = 100,
    class_labels: int | Sequence[int] | torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    seed: int = 0,
    max_evaluations: int = 60,
) -> TunedGridRecord:
    """Tune ``pipe.scheduler``'s grid for ``num_inference_steps`` on calibration noise and store it in its config.

    Args:
        pipe: a ``ScratchDiffusionPipeline`` whose scheduler is a ``ScratchDPMSolverScheduler``; its scheduler is
            replaced by one whose config holds the tuned grid (other n keep theirs).
        num_inference_steps: n ≥ 2 (one point has nothing to tune).
        num_calibration: calibration images (noise drawn from ``seed``).
        reference_steps: points of the reference solve (the same scheduler, uniform in flow time).
        class_labels: for a class-conditional UNet; default the classes in turn (0, 1, …, 0, 1, …).
        guidance_scale: the classifier-free guidance the grid is tuned for (1: none).
        seed: seeds the calibration noise; the search itself is deterministic.
        max_evaluations: the search's budget of n-step sampler runs.

    Returns:
        A :class:`TunedGridRecord`.
    """
    scheduler = pipe.scheduler
    if not isinstance(scheduler, ScratchDPMSolverScheduler):
        raise TypeError(f"tune_time_grid tunes a ScratchDPMSolverScheduler's grid; pipe.scheduler is a "
                        f"{type(scheduler).__name__}. Swap it in with ScratchDPMSolverScheduler.from_config(...).")
    n = num_inference_steps
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"num_inference_steps={n!r} must be an int ≥ 2 (one grid point has nothing to tune).")
    if not (isinstance(reference_steps, int) and reference_steps > n):
        raise ValueError(f"reference_steps={reference_steps!r} must be an int > num_inference_steps={n}.")
    if not (isinstance(num_calibration, int) and num_calibration >= 1):
        raise ValueError(f"num_calibration={num_calibration!r} must be an int ≥ 1.")
    began = time.perf_counter()
    others = {k: v for k, v in (scheduler.config.tuned_grids or {}).items() if k not in (str(n), str(reference_steps))}
    own_keys = type(scheduler).from_config(scheduler.config).config  # without other classes' leftover keys
    with_grids = lambda grids: type(scheduler).from_config(own_keys, tuned_grids=grids or None)  # noqa: E731
    configured_grid, bottom = configured_flow_grid(with_grids(others), n)
    top = float(configured_grid[0])
    noise = torch.randn(sample_shape(pipe.unet, num_calibration), generator=torch.Generator().manual_seed(seed))
    if class_labels is None and getattr(pipe, "num_classes", None) is not None:
        class_labels = torch.arange(num_calibration) % pipe.num_classes
    evaluations = [0, 0]  # sampler runs, UNet evaluations

    def run(grids: dict, steps: int) -> torch.Tensor:
        pipe.scheduler = with_grids(grids)
        latents = pipe(num_calibration, steps, latents=noise, class_labels=class_labels, guidance_scale=guidance_scale,
                       output_type="latent", return_dict=False)[0]
        evaluations[0] += 1
        evaluations[1] += round(sum(pipe.evaluations.values()) * num_calibration)
        return latents.float().cpu()

    def sample(grid: list[float]) -> torch.Tensor:
        return run({**others, str(n): grid}, n)

    progress = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)
    try:
        reference = run({**others, str(reference_steps): flow_uniform_grid(top, reference_steps).tolist()},
                        reference_steps)
        error_before = rms_discrepancy(run(others, n), reference)
        start = flow_uniform_grid(top, n)
        configured_fits = bool(np.all(np.diff(configured_grid) < 0) and configured_grid[-1] > bottom)
        if configured_fits and error_before < rms_discrepancy(sample(start.tolist()), reference):
            start = configured_grid  # a configured grid better than uniform in s is the search's start
        result = search_time_grid(sample, reference, n, top, bottom=bottom, initial_grid=start,
                                  max_evaluations=max_evaluations)
    finally:
        pipe.set_progress_bar_config(**progress)
    # A configured grid of integer timesteps (diffusers' spacings) is not reproduced exactly by flow times, whose
    # timesteps are fractional: the search may not beat it.
    grid = result.grid if result.error < error_before else None
    pipe.scheduler = with_grids(others if grid is None else {**others, str(n): grid})
    return TunedGridRecord(n, grid, error_before, min(error_before, result.error), time.perf_counter() - began,
                           evaluations[0], evaluations[1])

