"""The n-step time grid of a given model and sampler, chosen by minimising its measured endpoint error.

A deterministic sampler with n model evaluations integrates the probability-flow ODE on a grid of n
points; which grid is best depends on the model (its data, its errors) and on the sampler (its order,
its corrector). This module picks the grid for one (model, sampler) pair by direct search: from fixed
calibration noise, ``sample(grid)`` runs the actual sampler with that grid, and the grid minimises the
RMS distance between its endpoints and a reference endpoint from the same noise (a fine-step solve:
the same solver at 200+ steps, or the exact ODE solution of :mod:`scratch_schedulers.oracle`).

Grids are in flow time s = b/(a + b) = sigmoid(−λ) (the same on the VP and the flow path; see
:func:`~scratch_schedulers.dpm_grids.flow_times_of_lambdas`), descending from the configured first
point s_0 = ``top`` (fixed: it fixes the start of the ODE, hence the reference) to s_{n−1} > ``bottom``,
the final point after it being the sampler's own (s = 0). The free parameters are the logits of the n
increments s_{i−1} − s_i (the last one s_{n−1} − bottom), the first logit held at 0: every parameter
vector is a strictly descending grid, so the search needs no constraint and never returns a non-monotone
grid. It starts from the grid uniform in s (``time_grid="flow_uniform"``, all logits 0) and runs
Nelder–Mead (Nelder & Mead, 1965; the adaptive coefficients of Gao & Han, 2012, in ``scipy.optimize``)
for a budget of objective evaluations: gradient-free, so the sampler and the model are black boxes, and
deterministic for a given start. The result is never worse than the start on the calibration noise.

Related work, and what differs here:

* LD3 (Tong et al., 2024, "Learning to Discretize Denoising Diffusion ODEs") also fits the steps to a
  teacher's endpoint on ~100 samples, but by gradient descent through the sampler and with a relaxed
  (slack) objective; here the objective is the plain endpoint error and no gradient is taken.
* Align Your Steps (Sabour et al., 2024) minimises an upper bound on the KL divergence between the
  discretised and the exact SDE, not the sampler's actual error.
* GITS (Chen et al., 2024, "A Geometric Perspective on Optimal Representations of Diffusion Sampling
  Trajectories") runs dynamic programming over the teacher trajectory's local truncation costs, which
  assumes the costs of the steps add up; the endpoint error of a multistep solver with a corrector does not.
* DMN (Xue et al., 2024, "Accelerating Diffusion Sampling with Optimized Time Steps") solves a surrogate
  problem on the solver's coefficients, model-free.

Ours measures the *global* endpoint error of the actual sampler (its order, history and corrector
included) and searches over it without gradients.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

INITIAL_STEP = 0.5  # initial simplex edge in increment logits: each increment scaled by e^{±0.5} (×1.65)


@dataclass(frozen=True)
class GridSearchResult:
    """What :func:`search_time_grid` found.

    Attributes:
        grid: the n flow times s_0 > … > s_{n−1}, the best grid found.
        initial_grid: the start (uniform in s from ``top`` unless given).
        initial_error, error: the RMS endpoint discrepancy of the start and of ``grid`` on the calibration noise.
        evaluations: objective evaluations made (sampler runs).
        seconds: wall time of the search.
    """

    grid: list[float]
    initial_grid: list[float]
    initial_error: float
    error: float
    evaluations: int
    seconds: float


def flow_uniform_grid(top: float, n: int) -> np.ndarray:
    """n flow times uniform from ``top`` towards 0 (the final 0 left out): ``time_grid="flow_uniform"``'s grid."""
    return np.linspace(top, 0.0, n + 1)[:-1]


def grid_of_logits(logits: np.ndarray, top: float, bottom: float = 0.0) -> np.ndarray:
    """The descending grid s_0 = top > s_1 > … > s_{n−1} > bottom of n − 1 increment logits (the first logit is 0).

    The n increments top − s_1, s_1 − s_2, …, s_{n−1} − bottom are (top − bottom)·softmax(0, logits).
    """
    z = np.concatenate([[0.0], np.asarray(logits, dtype=np.float64)])
    weights = np.exp(z - z.max())
    weights /= weights.sum()
    return top - (top - bottom) * np.concatenate([[0.0], np.cumsum(weights)[:-1]])


def logits_of_grid(grid: Sequence[float], bottom: float = 0.0) -> np.ndarray:
    """The n − 1 increment logits of a descending grid above ``bottom`` (the inverse of :func:`grid_of_logits`)."""
    grid = np.asarray(grid, dtype=np.float64)
    increments = np.append(-np.diff(grid), grid[-1] - bottom)
    if np.any(increments <= 0):
        raise ValueError(f"grid={grid.tolist()} must be strictly descending and above bottom={bottom}.")
    return np.log(increments[1:]) - np.log(increments[0])


def rms_discrepancy(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """√(mean_i |x_i − x_i*|²) over the samples (first dimension), in float64; inf if a sample is not finite."""
    if samples.shape != reference.shape:
        raise ValueError(f"samples have shape {tuple(samples.shape)}, the reference {tuple(reference.shape)}.")
    distance = (samples.double() - reference.double()).flatten(1).square().sum(1)
    value = float(distance.mean().sqrt())
    return value if math.isfinite(value) else math.inf


def search_time_grid(
    sample: Callable[[list[float]], torch.Tensor],
    reference: torch.Tensor,
    num_inference_steps: int,
    top: float,
    *,
    bottom: float = 0.0,
    initial_grid: Sequence[float] | None = None,
    max_evaluations: int = 200,
) -> GridSearchResult:
    """Minimise ``rms_discrepancy(sample(grid), reference)`` over the n − 1 interior points of an n-step grid.

    Args:
        sample: runs the sampler with the n flow times ``grid`` (s_0 = ``top`` first) on fixed calibration noise
            and returns its endpoints; called once per evaluation.
        reference: the endpoints a fine solve reaches from the same noise, shape of ``sample``'s output.
        num_inference_steps: n, the number of grid points (n ≥ 1; n = 1 has nothing to tune).
        top: s_0, the configured first point in (0, 1), kept fixed.
        bottom: the last point stays above it (a VP model's least noisy training level; 0 on the flow path).
        initial_grid: the start, n descending flow times from ``top``; default uniform in s (``flow_uniform``).
        max_evaluations: the budget of objective evaluations (sampler runs), the start's included.

    Returns:
        A :class:`GridSearchResult`; its ``grid`` is never worse than the start on the calibration noise.
    """
    n = num_inference_steps
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"num_inference_steps={n!r} must be an int ≥ 1.")
    if not 0 <= bottom < top < 1:
        raise ValueError(f"need 0 ≤ bottom < top < 1, got bottom={bottom}, top={top}.")
    if max_evaluations < 1:
        raise ValueError(f"max_evaluations={max_evaluations} must be ≥ 1.")
    start = flow_uniform_grid(top, n) if initial_grid is None else np.asarray(initial_grid, dtype=np.float64)
    if start.shape != (n,) or start[0] != top:
        raise ValueError(f"initial_grid={start.tolist()} must hold {n} flow times starting at top={top}.")
    began = time.perf_counter()
    evaluations, best, seen = 0, (math.inf, start), {}

    def objective(logits: np.ndarray) -> float:
        nonlocal evaluations, best
        key = np.asarray(logits, dtype=np.float64).tobytes()
        if key in seen:  # Nelder–Mead evaluates its start again as the first vertex of the simplex
            return seen[key]
        grid = grid_of_logits(logits, top, bottom)
        if np.any(np.diff(grid) >= 0) or grid[-1] <= bottom:  # increments below float64 resolution: no grid
            return math.inf
        if evaluations >= max_evaluations:
            raise _BudgetSpent
        evaluations += 1
        error = rms_discrepancy(sample(grid.tolist()), reference)
        if error < best[0]:
            best = (error, grid)
        seen[key] = error
        return error

    x0 = logits_of_grid(start, bottom)
    initial_error = objective(x0)
    if n > 1:
        simplex = np.vstack([x0, x0 + INITIAL_STEP * np.eye(n - 1)])
        options = {"initial_simplex": simplex, "maxfev": max_evaluations, "adaptive": True, "xatol": 1e-4, "fatol": 0}
        with contextlib.suppress(_BudgetSpent):  # the best grid seen so far is kept in `best`
            _scipy_optimize().minimize(objective, x0, method="Nelder-Mead", options=options)
    best_error, best_grid = best
    return GridSearchResult(
        grid=best_grid.tolist(),
        initial_grid=start.tolist(),
        initial_error=initial_error,
        error=best_error,
        evaluations=evaluations,
        seconds=time.perf_counter() - began,
    )


def configured_flow_grid(scheduler, num_inference_steps: int) -> tuple[np.ndarray, float]:
    """(the n-point grid ``scheduler`` is configured with, in flow time; the floor its last point must stay above).

    For a :class:`~scratch_schedulers.ScratchDPMSolverScheduler` (it calls ``set_timesteps``): its first point is
    the ``top`` to tune from. A VP level s = b/a has flow time s/(1 + s), and the VP floor is the least noisy
    training level (tuned points below it would leave the model's timesteps); the flow path's floor is 0.
    """
    scheduler.set_timesteps(num_inference_steps)
    levels = scheduler.sigmas.double().numpy()[:-1]
    if scheduler.config.use_flow_sigmas:
        return levels, 0.0
    least = float(scheduler.alphas_cumprod[0].double())
    return levels / (1 + levels), (1 - least) ** 0.5 / ((1 - least) ** 0.5 + least**0.5)


class _BudgetSpent(Exception):
    """Raised by the objective once ``max_evaluations`` are spent (scipy's ``maxfev`` may overshoot by a shrink)."""


def _scipy_optimize():
    """``scipy.optimize`` (scikit-learn, a dependency of the package, installs scipy)."""
    try:
        return importlib.import_module("scipy.optimize")
    except ImportError:  # pragma: no cover - scikit-learn installs scipy
        raise ImportError("the time-grid search needs scipy (pip install scipy).") from None
