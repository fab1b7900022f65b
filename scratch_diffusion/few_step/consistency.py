"""Consistency tuning (ECT; Geng et al., 2024, "Consistency Models Made Easy") on the Gaussian noise path.

A consistency function maps every point of one probability-flow trajectory to its end x0. A diffusion model already
gives one candidate, its denoised estimate f(x_t, t) = x̂0 (on the flow path f(x_σ, σ) = x_σ − σ·v(x_σ, σ),
the consistency function "in flow form"; on a VP path x̂0 = (x_t − b_t·ε̂)/a_t), so tuning needs no change of
the network. Training pairs share data and noise,

    x_t = a_t·x0 + b_t·ε,   x_r = a_r·x0 + b_r·ε,   r = t·(1 − d_k),
    L = E w(t, r)·d(f_θ(x_t, t), sg f_θ(x_r, r)),   f(x_r, r) = x0 where r ≤ 0,

with the same network at both points (stop-gradient at r; ECT's θ⁻ = sg θ, no EMA teacher) and the gap d_k
annealed from 1 (r = 0: the target is x0 itself — denoising, the teacher's own objective in x0 form, so the
tuning starts from where the teacher stands) to d_min by halving at equal stage lengths, d_k = q^(−⌊S·k/K⌋)
(ECT §3, the Δt = t/q^a schedule; S stages over the K steps of the run). w(t, r) = 1/(σ_t − σ_r) on the flow
clock σ = b/(a + b), ECT's 1/Δt, and d is the squared error or ECT's pseudo-Huber distance √(‖Δ‖² + c²) − c.
"""

from __future__ import annotations

import math

import torch

DISTANCES = ("l2", "pseudo_huber")


def gap_fraction(step: int, total_steps: int, stages: int, ratio: float) -> float:
    """d_k = ratio^(−⌊stages·k/K⌋): 1 in the first stage (r = 0), then divided by ``ratio`` at each stage."""
    if total_steps < 1 or stages < 1 or ratio <= 1:
        raise ValueError(f"need total_steps ≥ 1, stages ≥ 1 and ratio > 1; got {total_steps}, {stages}, {ratio}.")
    stage = min(stages - 1, (stages * max(step, 0)) // total_steps)
    return ratio ** (-stage)


def flow_clock(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """σ = b/(a + b): the flow-path level of equal SNR (b/a = σ/(1 − σ)); σ itself on the flow path."""
    return b / (a + b)


def pair_weights(sigma_t: torch.Tensor, sigma_r: torch.Tensor) -> torch.Tensor:
    """w(t, r) = 1/(σ_t − σ_r) (ECT's 1/Δt on the flow clock); (B,)."""
    return 1.0 / (sigma_t - sigma_r).clamp_min(torch.finfo(sigma_t.dtype).tiny)


def consistency_distance(
    prediction: torch.Tensor, target: torch.Tensor, distance: str = "l2", huber_c: float = 0.03
) -> torch.Tensor:
    """Per-example distance (B,) in float32: mean squared error, or pseudo-Huber √(mean Δ² + c²) − c.

    The pseudo-Huber constant is per element (mean, not sum, of Δ²), so ``huber_c`` does not depend on the image
    size; ECT uses c = 0.00054·√d on the sum, i.e. 0.00054 here.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance={distance!r}; allowed: {list(DISTANCES)}.")
    error = (prediction.float() - target.float()).pow(2)
    mse = error.mean(dim=tuple(range(1, error.ndim)))
    if distance == "l2":
        return mse
    return torch.sqrt(mse + huber_c**2) - huber_c


def annealed_r(t: torch.Tensor, gap: float) -> torch.Tensor:
    """r = t·(1 − d): ``gap`` = 1 gives r = 0 (the data end), a small gap r → t."""
    if not 0 < gap <= 1 or not math.isfinite(gap):
        raise ValueError(f"gap={gap} must be in (0, 1].")
    return t * (1 - gap)
