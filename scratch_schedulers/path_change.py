"""The exact change of variables between the VP and the flow noise paths, and between parametrisations.

"Step-by-Step Diffusion" (Nakkiran et al., 2024) treats DDPM, DDIM and flow matching as one family
of samplers on different Gaussian paths x = a·x0 + b·ε. Two path points with the same
signal-to-noise ratio a/b hold the same information about x0 and differ only by a scale factor,
so a model trained on one path can be evaluated at any point of another:

* VP → flow: x_flow = x_vp / (a + b) at σ = b / (a + b), since (1 − σ)·x0 + σ·ε = (a·x0 + b·ε)/(a + b);
* in general, from (a, b) to (a′, b′) with a′/b′ = a/b: x′ = k·x with k = a′/a = b′/b;
* the time of a point is found from its log-SNR λ = log(a/b): on the flow path σ = 1/(1 + e^λ),
  t = σ·T; on the discrete VP path by interpolating λ_t = ½·log(ᾱ_t/(1 − ᾱ_t)) linearly between
  integer timesteps (:func:`vp_timestep_at_log_snr`);
* the model output is converted by the named conversions of :mod:`.noise_path`: ``split_prediction``
  gives (x̂0, ε̂) — the same two quantities on every path — and ``target_for`` expresses them as
  what the other side expects (:func:`prediction_readout`).

**The ends.** A VP model has seen only λ ∈ [λ_{T−1}, λ_0] (for the linear β schedule about
[−5.0, 4.6]); a flow sampler visits σ → 1 (λ → −∞) and σ → 0 (λ → +∞). Outside its range the
model is evaluated at the nearest point it was trained on (t = T − 1 or t = 0), and the sample is
rescaled so that its dominant part is kept: the noise (k = b′/b) where λ ≤ 0, the signal
(k = a′/a) where λ > 0 — inside the range both are the same k. At σ = 1 this gives the model
b_{T−1}·ε, i.e. its own noisiest input without the a_{T−1}·x0 ≈ 0.006·x0 it cannot know; at
σ = 0 it gives √ᾱ_0·x. A zero-terminal-SNR table (ᾱ_{T−1} = 0, λ = −∞) is matched exactly: the
last interval interpolates ᾱ instead of λ. A flow model covers every σ ∈ [0, 1] and is never
clamped.

All functions here are pure host-side float64 maths on Python floats and NumPy tables, computed
once per schedule; the sampling loop only multiplies by the resulting numbers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .noise_path import PredictionType, split_prediction, target_for
from .samplers import log_snr


class PathPoint(NamedTuple):
    """A point of a noise path: the model timestep there and the scales of x = a·x0 + b·ε."""

    timestep: float
    a: float
    b: float


def vp_to_flow(x_vp: torch.Tensor, a: float, b: float) -> tuple[torch.Tensor, float]:
    """(x_flow, σ) = (x_vp/(a + b), b/(a + b)): the flow-path point with the SNR of VP point (a, b)."""
    return x_vp / (a + b), b / (a + b)


def flow_to_vp(x_flow: torch.Tensor, sigma: float) -> tuple[torch.Tensor, float, float]:
    """(x_vp, a, b) for flow point σ: a = (1 − σ)/r, b = σ/r, x_vp = x_flow/r with r = √((1 − σ)² + σ²)."""
    r = math.hypot(1 - sigma, sigma)
    return x_flow / r, (1 - sigma) / r, sigma / r


def point_log_snr(a: float, b: float) -> float:
    """λ = log(a/b) as a Python float; −∞ at a = 0 and +∞ at b = 0."""
    return float(log_snr(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)))


def _sigmoid(z: float) -> float:
    """1/(1 + e^{−z}) without overflow, exact 0 and 1 at z = ∓∞."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    return math.exp(z) / (1.0 + math.exp(z))


def vp_point_of_log_snr(lam: float) -> tuple[float, float]:
    """(a, b) = (√sigmoid(2λ), √sigmoid(−2λ)) of the VP point with log-SNR λ (a² + b² = 1)."""
    return math.sqrt(_sigmoid(2 * lam)), math.sqrt(_sigmoid(-2 * lam))


def vp_log_snr_table(alphas_cumprod: torch.Tensor | np.ndarray) -> np.ndarray:
    """λ_t = ½·log(ᾱ_t/(1 − ᾱ_t)) for t = 0..T−1 in float64 (−∞ where ᾱ = 0); checked non-increasing."""
    alpha_bar = np.asarray(torch.as_tensor(alphas_cumprod).detach().cpu().to(torch.float64))
    with np.errstate(divide="ignore"):
        table = 0.5 * (np.log(alpha_bar) - np.log1p(-alpha_bar))
    if np.any(np.diff(table) > 0) or np.isnan(table).any():
        raise ValueError("alphas_cumprod must be non-increasing in (0, 1] with values < 1 (a noising schedule).")
    return table


def vp_timestep_at_log_snr(lam: float, table: np.ndarray) -> float:
    """The continuous VP timestep t ∈ [0, T − 1] whose log-SNR is ``lam``, clamped to that range.

    λ is interpolated linearly between integer timesteps (monotone, so the inverse is unique up to
    plateaus of the table). Where the table ends in λ_{T−1} = −∞ (zero terminal SNR), the last
    interval interpolates ᾱ = sigmoid(2λ) instead, which reaches t = T − 1 exactly at λ = −∞.
    """
    last = len(table) - 1
    if lam >= table[0]:
        return 0.0
    if lam <= table[last]:
        return float(last)
    finite = int(np.isfinite(table).sum()) - 1  # index of the last finite λ
    if lam < table[finite]:  # inside the final interval towards ᾱ = 0
        alpha_bar_last_finite = _sigmoid(2 * float(table[finite]))
        return finite + (1.0 - _sigmoid(2 * lam) / alpha_bar_last_finite) * (last - finite)
    return float(np.interp(lam, table[: finite + 1][::-1], np.arange(finite + 1, dtype=np.float64)[::-1]))


def vp_model_point(lam: float, table: np.ndarray) -> PathPoint:
    """Where a VP model with log-SNR table ``table`` is evaluated for a point of log-SNR ``lam``.

    Inside [λ_{T−1}, λ_0] the point with exactly that SNR; outside, the nearest trained end.
    """
    clamped = min(max(lam, float(table[-1])), float(table[0]))
    a, b = vp_point_of_log_snr(clamped)
    return PathPoint(vp_timestep_at_log_snr(clamped, table), a, b)


def flow_model_point(lam: float, num_train_timesteps: int) -> PathPoint:
    """The flow point with log-SNR ``lam``: σ = sigmoid(−λ), a = 1 − σ, timestep σ·T (every λ, ±∞ too)."""
    sigma = _sigmoid(-lam)
    return PathPoint(sigma * num_train_timesteps, _sigmoid(lam), sigma)


def rescale_factor(a_from: float, b_from: float, a_to: float, b_to: float) -> float:
    """k with x_to = k·x_from: b_to/b_from where λ_from ≤ 0 (keeps the noise), else a_to/a_from (keeps x0).

    For points of equal SNR both ratios are the same number (and equal (a_to + b_to)/(a_from + b_from));
    for a clamped target the choice keeps the dominant component of the sample (module docstring).
    """
    return b_to / b_from if b_from >= a_from else a_to / a_from


def prediction_readout(
    model_type: PredictionType, a_model: float, b_model: float, target_type: PredictionType, a: float, b: float
) -> tuple[float, float]:
    """(p, q) with target = p·model_output + q·x_model, converting a prediction between parametrisations.

    The model output of ``model_type`` at its point (a_model, b_model) gives (x̂0, ε̂) by
    ``split_prediction``; ``target_for`` writes them as ``target_type`` at the sampler's point
    (a, b). Both are linear in (output, x), so evaluating them at the unit vectors gives the two
    coefficients exactly. A non-finite coefficient means the conversion does not exist (e.g. x̂0
    from an ε-prediction at a = 0): callers refuse it.
    """
    one, zero, a_m, b_m = (torch.tensor(v, dtype=torch.float64) for v in (1.0, 0.0, a_model, b_model))
    coefficients = []
    for output, x in ((one, zero), (zero, one)):
        x0, eps = split_prediction(output, x, a_m, b_m, model_type)
        coefficients.append(float(target_for(target_type, x0, eps, a, b)))
    return coefficients[0], coefficients[1]
