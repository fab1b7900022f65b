"""Time grids of the DPM-Solver scheduler, as descending noise levels on a Gaussian path.

A grid is given by its path points (a_i, b_i), i = 0..n, from the noisiest to the cleanest; the
solver only needs their log-SNR λ_i = log(a_i/b_i). Notation (see :mod:`.noise_path`):

============  =====================================================================
``s``         VP noise-to-signal ratio s = b/a = √((1 − ᾱ)/ᾱ) = e^{−λ} (diffusers' ``sigmas``)
``σ``         flow noise level, a = 1 − σ, b = σ, so e^{−λ} = σ/(1 − σ)
``ρ``         the Karras et al. (2022) grid exponent, Eq. (5)
============  =====================================================================

diffusers' boolean keys pick among :func:`karras_levels`, :func:`exponential_levels` and
:func:`beta_levels` (all in s) and then round or truncate the matching timesteps; the
``time_grid`` key of :class:`~scratch_schedulers.ScratchDPMSolverScheduler` builds the grid in λ
instead (:data:`TIME_GRIDS`) and keeps each timestep exactly at its noise level.
"""

from __future__ import annotations

import importlib
import math
from typing import Literal

import numpy as np

from .noise_path import shift_sigmas

# Noise-level spacings of diffusers' DPMSolverMultistepScheduler (its use_*_sigmas keys).
LevelSpacing = Literal["default", "karras", "exponential", "beta", "lu", "flow"]
# Our one-choice time grids (config key time_grid): uniform in λ, Karras' ρ = 7 grid, and
# uniform in the flow time σ_flow = b/(a + b) = sigmoid(−λ) (see :func:`time_grid_lambdas`).
TimeGrid = Literal["logsnr", "karras", "flow_uniform"]
TIME_GRIDS: tuple[str, ...] = ("logsnr", "karras", "flow_uniform")
KARRAS_RHO = 7.0  # Karras et al. (2022), Eq. (5) and Table 1


def karras_levels(level_min: float, level_max: float, n: int, rho: float = KARRAS_RHO) -> np.ndarray:
    """n levels, descending, uniform in level^{1/ρ} (Karras et al., 2022, Eq. 5)."""
    ramp = np.linspace(0, 1, n)
    return (level_max ** (1 / rho) + ramp * (level_min ** (1 / rho) - level_max ** (1 / rho))) ** rho


def exponential_levels(level_min: float, level_max: float, n: int) -> np.ndarray:
    """n levels, descending, uniform in log(level) (for s = e^{−λ}: uniform in λ)."""
    return np.exp(np.linspace(math.log(level_max), math.log(level_min), n))


def beta_levels(level_min: float, level_max: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """n levels at the Beta(α, β) quantiles of 1 − i/(n − 1) (Lee et al., 2024, "Beta Sampling is All You Need")."""
    # scipy is optional here (scikit-learn, a dependency of the package, brings it). It is imported by
    # name so that the saved pipeline's single-file code, whose imports diffusers scans when it loads
    # remote code, lists only torch, numpy and diffusers.
    try:
        stats = importlib.import_module("scipy.stats")
    except ImportError:  # pragma: no cover - scikit-learn installs scipy
        raise ImportError("use_beta_sigmas=True needs scipy (pip install scipy).") from None
    quantiles = stats.beta.ppf(1 - np.linspace(0, 1, n), alpha, beta)
    return level_min + quantiles * (level_max - level_min)


def flow_levels(n: int, num_train_timesteps: int, shift: float) -> np.ndarray:
    """diffusers' ``use_flow_sigmas`` grid: σ = 1 − linspace(1, 1/T, n + 1), shifted, without σ = 0."""
    sigmas = 1.0 - np.linspace(1, 1 / num_train_timesteps, n + 1)
    return np.flip(shift_sigmas(sigmas, shift))[:-1].copy()


def spaced_dpm_timesteps(
    spacing: str, num_train_timesteps: int, n: int, steps_offset: int, last_timestep: int
) -> np.ndarray:
    """Descending int64 timesteps of diffusers' DPM-Solver for ``timestep_spacing``.

    They differ from DDIM's (``noise_path.spaced_timesteps``): ``linspace`` and ``leading`` lay
    n + 1 points and drop the last, and ``last_timestep`` (below T when λ_min is clipped) bounds them.
    """
    if spacing == "linspace":
        return np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last_timestep // (n + 1)
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
    return np.arange(last_timestep, 0, -num_train_timesteps / n).round().astype(np.int64) - 1


def timesteps_of_levels(levels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Fractional timesteps t where the log of the per-timestep ``table`` (ascending in t) equals log(levels).

    Linear interpolation of log s between integer timesteps, clamped to [0, T − 1] — the inverse
    diffusers' Karras-family schedulers use.
    """
    # log of the float32 table, as diffusers' _sigma_to_t: the grid's first level is the table's last entry, and
    # float64 logs put it at exactly T − 1 where diffusers' float32 log may land 1 ulp below and truncate to T − 2
    # (which way depends on the last bit of ᾱ's cumprod, i.e. on the CPU's SIMD path).
    with np.errstate(divide="ignore"):
        log_table = np.log(table.astype(np.float32)).astype(np.float64)
        log_levels = np.log(np.maximum(levels, 1e-10))
    finite = np.isfinite(log_table)
    return np.interp(log_levels, log_table[finite], np.arange(len(table))[finite])


def time_grid_lambdas(grid: str, lambda_min: float, lambda_max: float, n: int) -> np.ndarray:
    """n ascending log-SNRs from λ_min (noisiest) to λ_max for the ``time_grid`` choices.

    * ``logsnr``: uniform in λ — DPM-Solver's recommended grid (Lu et al., 2022a, §3.3).
    * ``karras``: Karras et al.'s ρ = 7 grid in s = e^{−λ}.
    * ``flow_uniform``: uniform in the flow time σ_flow = sigmoid(−λ) = b/(a + b) on n + 1 points
      from σ_flow(λ_min) to 0, the last (σ = 0, λ = +∞) left to the final step: the time of the
      rectified-flow path through the same SNRs (on a flow model, diffusers' unshifted flow grid).
      It is the documented choice for few (5–20) model evaluations, on both paths: with the exact
      denoiser its ODE endpoint error with 3M (``benchmarks/bench_few_step.py``) was the lowest of the
      three in 17 of 18 cases (5/10/20 evaluations × VP/flow × three mixtures; logsnr won the 8-D
      mixture on VP at 20), by 1.2–35× at 10 (logsnr and karras spend points at the ends of the λ
      range); grids with the last point nearer σ = 0 (σ_i ∝ (1 − i/n)^p, p > 1) or uniform in
      arctan(e^{c·λ}) measured worse. With the UniC corrector and the σ² final step
      (``scheduling_dpmsolver.FEW_STEP_CONFIG``) logsnr and karras were 1.25–47× worse (example mixture).
    """
    if grid == "logsnr":
        return np.linspace(lambda_min, lambda_max, n)
    if grid == "karras":
        return -np.log(karras_levels(math.exp(-lambda_max), math.exp(-lambda_min), n))
    t = np.linspace(1 / (1 + math.exp(lambda_min)), 0, n + 1)[:-1]  # sigmoid(−λ), without the final 0
    return np.log1p(-t) - np.log(t)


def flow_times_of_lambdas(lambdas: np.ndarray) -> np.ndarray:
    """The flow time s = sigmoid(−λ) = b/(a + b) of log-SNRs λ = log(a/b): the same on the VP and the flow path."""
    return 1 / (1 + np.exp(np.asarray(lambdas, dtype=np.float64)))


def lambdas_of_flow_times(times: np.ndarray) -> np.ndarray:
    """λ = log((1 − s)/s) of flow times s ∈ (0, 1), the inverse of :func:`flow_times_of_lambdas`."""
    times = np.asarray(times, dtype=np.float64)
    return np.log1p(-times) - np.log(times)


def checked_tuned_grids(tuned_grids: dict | None) -> dict[str, list[float]] | None:
    """The ``tuned_grids`` config key, checked and normalised to ``{"n": [s_0, …, s_{n−1}]}`` (JSON's form).

    Each entry is the n-step grid in flow time s = b/(a + b), strictly descending in (0, 1); its key is n, an int or
    its decimal string (a saved config turns int keys into strings). Raises ``ValueError`` naming the bad entry.
    """
    if tuned_grids is None:
        return None
    if not isinstance(tuned_grids, dict):
        raise ValueError(f"tuned_grids={tuned_grids!r} must be None or a dict {{num_inference_steps: flow times}}.")
    normalised: dict[int, list[float]] = {}
    for key, grid in tuned_grids.items():
        if isinstance(key, bool) or not (isinstance(key, int) or (isinstance(key, str) and key.isdecimal())):
            raise ValueError(f"tuned_grids key {key!r} must be a number of steps: an int ≥ 1 or its decimal string.")
        n = int(key)
        if n < 1 or n in normalised:
            raise ValueError(f"tuned_grids key {key!r}: {'n must be ≥ 1' if n < 1 else f'{n} steps given twice'}.")
        try:
            times = np.asarray(grid, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"tuned_grids[{key!r}]={grid!r} must be a list of {n} flow times.") from None
        if times.shape != (n,):
            raise ValueError(f"tuned_grids[{key!r}] has shape {times.shape}; {n} steps need {n} flow times.")
        if not (np.all(np.isfinite(times)) and np.all(times > 0) and np.all(times < 1)):
            raise ValueError(f"tuned_grids[{key!r}]={times.tolist()} must lie in the open interval (0, 1).")
        if np.any(np.diff(times) >= 0):
            raise ValueError(f"tuned_grids[{key!r}]={times.tolist()} must be strictly descending (noisiest first).")
        normalised[n] = times.tolist()
    return {str(n): normalised[n] for n in sorted(normalised)}


def tuned_grid_lambdas(
    tuned_grids: dict[str, list[float]] | None, n: int, lambda_min: float = -math.inf, lambda_max: float = math.inf
) -> np.ndarray | None:
    """The ascending log-SNRs of the tuned n-step grid (``checked_tuned_grids``' form), or None if none is tuned.

    Points outside the path's [λ_min, λ_max] raise ``ValueError``; within 1e-6 of an end they are put on it: a grid
    read off a scheduler's float32 ``sigmas`` (relative error ≤ u = 2⁻²⁴ ≈ 6e-8 in s = e^{−λ}, so ≤ 6e-8 in λ)
    starts at its end up to that rounding, and 1e-6 leaves a 16× margin.
    """
    if tuned_grids is None or str(n) not in tuned_grids:
        return None
    lambdas = lambdas_of_flow_times(np.asarray(tuned_grids[str(n)]))
    slack = 1e-6
    if lambdas[0] < lambda_min - slack or lambdas[-1] > lambda_max + slack:
        allowed = flow_times_of_lambdas(np.array([lambda_max, lambda_min]))
        raise ValueError(f"tuned_grids[{str(n)!r}]={tuned_grids[str(n)]} leaves this path's flow times "
                         f"[{allowed[0]:.6g}, {allowed[1]:.6g}]; tune the grid for this scheduler's path.")
    return np.clip(lambdas, lambda_min, lambda_max)
