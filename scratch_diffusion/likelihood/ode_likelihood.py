"""Exact log-likelihood through the probability-flow ODE (Chen et al., 2018; Song et al., 2021, App. D).

Along the ODE dy/dσ = u(y, σ) (flow coordinates, :mod:`.probability_flow`) the density obeys the
instantaneous change of variables d log p_σ(y_σ)/dσ = −div u(y_σ, σ), so for data y_0 = x

    log p_0(x) = log p_end(y_end) + ∫_0^{σ_end} div u(y_σ, σ) dσ,

integrated from the data (σ = 0) to the path end σ_end together with y. Solvers: fixed-step
``euler`` or ``heun`` (second order) on :func:`~.probability_flow.flow_sigma_grid` (geometric in σ from
``sigma_min`` by default: the divergence of a model of sharp data grows like D/σ near the data), or ``adaptive``
(``scipy.integrate.solve_ivp`` RK45 with ``rtol``/``atol``; fractional VP timesteps are the core's
λ-interpolated clock).

**The prior at the path end.** ``prior_log_density`` is the density of the model's starting
distribution in the *scheduler's* coordinates at its noisiest point; by default N(0, I), which is the
generative model the sampler defines. On the flow path this point is σ = 1, where x = ε exactly. On a
discrete VP path it is x_{T−1} = √ᾱ x0 + √(1 − ᾱ) ε with ᾱ ≠ 0 (≈ 4·10⁻⁵ for linear β), whose true
marginal is not N(0, I): the exact model's log-likelihood then differs from the data's by
log N(y_T) − log p_T(y_T), on average −KL(p_T ‖ N(0, I)) (≤ E L_T of the bound). Passing the true
marginal (e.g. ``mixture.log_density(x, a_T, b_T)``) recovers the data density exactly.

**The low-noise end of a VP model.** A discrete VP model knows only σ ≥ σ(t = 0) (≈ 0.0099 for linear
β); below it the velocity is the core's path-change extension (the model at t = 0 on the rescaled
input), so the likelihood is that of the ODE sampler which runs the model down to σ = 0. For data
smooth at the scale √β_0 the extension is close to exact (a Gaussian mixture with spread s errs by
about D·β_0/(2s²) nats); a flow model covers σ ∈ [0, 1] and needs no extension.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from scratch_schedulers.validation import check_choice

from .probability_flow import (
    ModelFn,
    flow_sigma_grid,
    path_end,
    rademacher_probes,
    velocity_and_divergence,
    velocity_field,
)
from .units import nats_to_bits_per_dim

SOLVERS = ("euler", "heun", "adaptive")
DIVERGENCES = ("exact", "hutchinson")


@dataclass(frozen=True)
class ODELikelihood:
    """The ODE log-likelihood of each example, nats.

    Attributes:
        log_likelihood: log p(x) per example, shape (B,) (a density: see ``units.dequantized_bits_per_dim``).
        prior_log_density: log p_end of the endpoint in flow coordinates (the prior term), shape (B,).
        divergence_integral: ∫ div u dσ per example, shape (B,).
        latents: the endpoints in the scheduler's coordinates at its noisiest point, shape of the data.
        nfe: model evaluations (each with its divergence).
        num_dims: D = values per example.
    """

    log_likelihood: torch.Tensor
    prior_log_density: torch.Tensor
    divergence_integral: torch.Tensor
    latents: torch.Tensor
    nfe: int
    num_dims: int

    @property
    def bits_per_dim(self) -> torch.Tensor:
        """−log p(x)/(D·log 2) per example: bits/dim of the density (no dequantisation offset)."""
        return nats_to_bits_per_dim(-self.log_likelihood, self.num_dims)


def standard_normal_log_density(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) per example, float64."""
    x = x.to(torch.float64).flatten(1)
    return -0.5 * (x.square().sum(1) + x.shape[1] * math.log(2 * math.pi))


def _fixed_step(
    step: Callable, y: torch.Tensor, grid: np.ndarray, solver: str
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Euler or Heun on ``grid``; returns (y_end, ∫ div u dσ, nfe)."""
    integral = torch.zeros(len(y), dtype=torch.float64, device=y.device)
    nfe = 0
    for s0, s1 in itertools.pairwise(grid.tolist()):
        h = s1 - s0
        u, div = step(y, s0)
        y_euler = y + h * u
        if solver == "euler":
            y, integral, nfe = y_euler, integral + h * div, nfe + 1
            continue
        u1, div1 = step(y_euler, s1)
        y, integral, nfe = y + 0.5 * h * (u + u1), integral + 0.5 * h * (div + div1), nfe + 2
    return y, integral, nfe


def _adaptive(step: Callable, y: torch.Tensor, sigma_end: float, rtol: float, atol: float):
    """RK45 (scipy.integrate.solve_ivp) of (y, ∫ div u dσ) from σ = 0 to ``sigma_end``."""
    from scipy.integrate import solve_ivp

    shape, n = y.shape, y.numel()

    def rhs(sigma: float, state: np.ndarray) -> np.ndarray:
        current = torch.from_numpy(state[:n]).reshape(shape).to(y.device)
        u, div = step(current, float(sigma))
        return np.concatenate([u.flatten().cpu().numpy(), div.cpu().numpy()])

    start = np.concatenate([y.detach().to(torch.float64).flatten().cpu().numpy(), np.zeros(len(y))])
    solution = solve_ivp(rhs, (0.0, sigma_end), start, method="RK45", rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"the adaptive ODE solver failed: {solution.message}")
    end = torch.from_numpy(solution.y[:, -1]).to(y.device)
    return end[:n].reshape(shape), end[n:], int(solution.nfev)


def ode_log_likelihood(
    model: ModelFn,
    data: torch.Tensor,
    scheduler: object,
    *,
    solver: Literal["euler", "heun", "adaptive"] = "heun",
    num_steps: int = 100,
    spacing: Literal["geometric", "uniform"] = "geometric",
    sigma_min: float = 1e-4,
    divergence: Literal["exact", "hutchinson"] = "exact",
    num_probes: int = 1,
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    prior_log_density: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> ODELikelihood:
    """log p(x) of each example under the probability-flow ODE of ``model`` (module docstring).

    Args:
        model: ``(sample, timestep) -> model_output`` in ``scheduler``'s parametrisation (e.g.
            ``ExactDenoiser(mixture, scheduler)`` or :func:`pipeline_model`); it is differentiated w.r.t. the sample.
        data: Examples, shape (B, …); their dtype is the model input's (the ODE state is float64).
        scheduler: Describes the path (``noise_path.parametrization_of``): a flow or a VP scheduler.
        solver: ``euler``, ``heun`` (``num_steps`` steps) or ``adaptive`` (RK45 with ``rtol``, ``atol``).
        spacing, sigma_min: the fixed-step grid (:func:`~.probability_flow.flow_sigma_grid`).
        divergence: ``exact`` (D backward passes per evaluation) or ``hutchinson`` (``num_probes`` Rademacher
            probes drawn once from ``generator`` and kept along the trajectory).
        prior_log_density: log-density per example of the endpoint in the scheduler's coordinates; N(0, I) if None.
    """
    check_choice("solver", solver, SOLVERS)
    check_choice("divergence", divergence, DIVERGENCES)
    x = torch.as_tensor(data)
    field = velocity_field(model, scheduler, x.dtype if x.is_floating_point() else torch.float32)
    probes = None if divergence == "exact" else rademacher_probes(x.shape, num_probes, generator)

    def step(y: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        return velocity_and_divergence(field, y, sigma, probes)

    y = x.to(torch.float64)
    a_end, b_end = path_end(scheduler)
    sigma_end = b_end / (a_end + b_end)
    if solver == "adaptive":
        y_end, integral, nfe = _adaptive(step, y, sigma_end, rtol, atol)
    else:
        y_end, integral, nfe = _fixed_step(step, y, flow_sigma_grid(scheduler, num_steps, spacing, sigma_min), solver)
    scale = a_end + b_end  # scheduler coordinates x = (a + b)·y at the end
    latents = y_end * scale
    prior = standard_normal_log_density if prior_log_density is None else prior_log_density
    num_dims = x[0].numel()
    prior_term = prior(latents).to(torch.float64).to(y.device) + num_dims * math.log(scale)
    return ODELikelihood(prior_term + integral, prior_term, integral, latents, nfe, num_dims)
