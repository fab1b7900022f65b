"""MeanFlow (Geng et al., 2025, "Mean Flows for One-step Generative Modeling"): the training target of a flow map.

A flow map predicts the average velocity over [r, t] on the flow path z_σ = (1 − σ)·x0 + σ·ε,

    u(z_t, r, t) = 1/(t − r) ∫_r^t v(z_τ, τ) dτ,   so   z_r = z_t − (t − r)·u(z_t, r, t)

and differentiating (t − r)·u = ∫ v in t gives the MeanFlow identity u = v − (t − r)·du/dt, with the total
derivative du/dt = v·∂_z u + ∂_t u along the trajectory: a Jacobian-vector product with tangent (v, 0, 1) in
(z, r, t). The regression target is u_tgt = sg(v_t − (t − r)·du/dt) with the conditional velocity v_t = ε − x0
(the MeanFlow loss); at r = t it is v_t and the loss is flow matching's, which is why a flow-matching model is a
valid start.

Time pairs: (t, r) two logit-normal draws, sorted so t ≥ r, and r := t for a fraction 1 − ``interval_fraction`` of
the batch (the paper's best: 25 % with r ≠ t, logit-normal(−0.4, 1)). Adaptive loss weighting
w = 1/(‖Δ‖² + c)^p (the paper's p = 1) on the per-element mean squared error. Classifier-free guidance folded
into the target (the paper's guided target with κ = 0): v_t is replaced by ṽ_t = ω·v_t + (1 − ω)·u(z_t, t, t | ∅)
for the conditional examples, so one evaluation samples the guided model.
"""

from __future__ import annotations

import torch


def sample_time_pairs(
    batch: int, generator: torch.Generator, mean: float, std: float, interval_fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r) in σ units, shape (B,) each, t ≥ r: logit-normal pairs, r = t outside ``interval_fraction``."""
    device = generator.device
    draws = torch.sigmoid(torch.randn(2, batch, generator=generator, device=device) * std + mean)
    t, r = draws.max(dim=0).values, draws.min(dim=0).values
    keep = torch.rand(batch, generator=generator, device=device) < interval_fraction
    return t, torch.where(keep, r, t)


def meanflow_target(
    velocity: torch.Tensor, sigma_t: torch.Tensor, sigma_r: torch.Tensor, time_derivative: torch.Tensor
) -> torch.Tensor:
    """u_tgt = v − (t − r)·du/dt (stop the gradient where it is used), times broadcast over (C, H, W)."""
    gap = (sigma_t - sigma_r).reshape(-1, *([1] * (velocity.ndim - 1)))
    return velocity - gap.to(velocity.dtype) * time_derivative.to(velocity.dtype)


def guided_velocity(
    velocity: torch.Tensor, unconditional: torch.Tensor, scale: float, conditional: torch.Tensor
) -> torch.Tensor:
    """ṽ = ω·v + (1 − ω)·u(z_t, t, t | ∅) on the ``conditional`` examples (B,) bool, v elsewhere (κ = 0)."""
    guided = scale * velocity + (1 - scale) * unconditional.to(velocity.dtype)
    mask = conditional.reshape(-1, *([1] * (velocity.ndim - 1)))
    return torch.where(mask, guided, velocity)


def adaptive_weighted_loss(squared_error: torch.Tensor, power: float, constant: float = 1e-3) -> torch.Tensor:
    """sg(w)·e with w = 1/(e + c)^p for the per-example mean squared error e (B,); p = 0 is plain MSE."""
    if power == 0:
        return squared_error
    weights = (squared_error.detach() + constant).pow(-power)
    return weights * squared_error
