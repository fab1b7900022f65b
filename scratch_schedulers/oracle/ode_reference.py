"""The exact probability-flow ODE endpoint: how far a deterministic sampler lands from where it must.

A deterministic sampler (DDIM, DPM-Solver, UniPC, flow Euler/Heun) is a numerical integrator of
the probability-flow ODE (Song et al., 2021, Eq. 13). Driven by the exact denoiser of a Gaussian
mixture, the ODE itself is known exactly, so its solution from the sampler's own initial noise can
be computed to any accuracy; the difference between the sampler's endpoint and that solution is
the sampler's *discretisation error*, free of sampling noise (unlike the distribution statistics of
:func:`~scratch_schedulers.oracle.statistics.mixture_error`, which need thousands of samples).

Math. Every Gaussian path x = a·x0 + b·ε is the flow path in other coordinates:
``x_flow = x/(a + b)`` lies on ``x_flow = (1 − σ)·x0 + σ·ε`` at ``σ = b/(a + b)`` (same SNR a/b).
So whatever path a scheduler samples on, its first model call — at path point (a₀, b₀) with
input x₀ — fixes the flow-path start ``(x₀/(a₀ + b₀), σ₀ = b₀/(a₀ + b₀))``, and the reference is
the flow ODE ``dx/dσ = u(x, σ) = E[ε − x0 | x_σ]`` integrated from σ₀ to 0 in float64 with
classical Runge–Kutta (RK4) on a uniform σ grid; at σ = 0 the flow sample is x0 itself, which is
where every sampler here ends (b = 0). A VP scheduler thus starts at t = T − 1 with ᾱ small but
not 0 (σ₀ ≈ 0.994 for linear β), a flow scheduler at σ = 1; both are honoured exactly.
``tests/scratch_schedulers/test_few_step.py`` checks that the reference is converged (halving its
step moves the endpoint by < 1e-6) and that a very fine DDIM run converges to it.

Example:
    >>> from diffusers import UniPCMultistepScheduler
    >>> mixture = GaussianMixture.example()
    >>> result = ode_endpoint_error(UniPCMultistepScheduler(), mixture, 10, n_samples=500)
    >>> result.rms_error, result.nfe  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .denoiser import path_coefficients, sample_with
from .mixture import GaussianMixture

REFERENCE_STEPS = 1024  # RK4 steps per unit σ: halving the step moves the endpoint by < 1e-7 (test_few_step.py)


@dataclass(frozen=True)
class EndpointAccuracy:
    """A deterministic sampler's endpoint against the exact probability-flow ODE solution.

    Attributes:
        rms_error: ``√(mean_i |x_i − x_i*|²)``, the root mean square over samples of the Euclidean distance
            between the sampler's endpoint x_i and the exact solution x_i* from the same initial noise.
        max_error: ``max_i |x_i − x_i*|``.
        nfe: Model evaluations the sampler actually made.
        samples: The sampler's endpoints, shape ``(n_samples, d)`` (its dtype), for distribution statistics.
        reference: The exact endpoints, float64, same shape.
    """

    rms_error: float
    max_error: float
    nfe: int
    samples: torch.Tensor
    reference: torch.Tensor


def probability_flow_endpoint(
    mixture: GaussianMixture, x_start: torch.Tensor, sigma_start: float, steps: int = REFERENCE_STEPS
) -> torch.Tensor:
    """Solves the flow-path ODE ``dx/dσ = E[ε − x0 | x_σ]`` from ``(x_start, sigma_start)`` to σ = 0 (float64).

    Classical RK4 on the uniform grid ``σ_k = σ_start·(1 − k/N)`` with ``N = ceil(steps·σ_start)``; the exact
    velocity is finite at both ends (``−x0``-like at σ = 0, where ε̂ = 0; the mixture mean minus x at σ = 1).

    Args:
        mixture: The data distribution whose exact denoiser defines the ODE.
        x_start: Flow-path samples at ``sigma_start``, shape ``(n, d)``.
        sigma_start: Start noise level in (0, 1].
        steps: RK4 steps per unit of σ.

    Returns:
        The endpoints x0 (σ = 0), float64, shape of ``x_start``.
    """
    if not 0 < sigma_start <= 1:
        raise ValueError(f"sigma_start={sigma_start} must be in (0, 1].")
    if steps < 1:
        raise ValueError(f"steps={steps} must be a positive integer.")

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return mixture.model_output(x, 1.0 - sigma, sigma, "flow_velocity")

    n = max(1, math.ceil(steps * sigma_start))
    h = -sigma_start / n
    x = torch.as_tensor(x_start).to(torch.float64)
    for k in range(n):
        sigma = sigma_start * (1 - k / n)
        k1 = velocity(x, sigma)
        k2 = velocity(x + 0.5 * h * k1, sigma + 0.5 * h)
        k3 = velocity(x + 0.5 * h * k2, sigma + 0.5 * h)
        k4 = velocity(x + h * k3, max(sigma + h, 0.0))
        x = x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def samples_on_flow_path(scheduler: Any) -> bool:
    """True when ``scheduler`` samples the flow path (a flow-matching class, or ``use_flow_sigmas=True``)."""
    config = getattr(scheduler, "config", {})
    return bool(config.get("use_flow_sigmas", False)) or getattr(scheduler, "alphas_cumprod", None) is None


class _HarnessView:
    """``scheduler`` as the exact-denoiser harness must read it, remembering the first model input.

    A VP-family class configured for the flow path (DPM-Solver/UniPC with ``use_flow_sigmas``) keeps its ᾱ
    table, but its model predicts the flow velocity at σ = t/T, as a flow-matching model does: the view hides
    ``alphas_cumprod`` there, so :class:`~scratch_schedulers.oracle.denoiser.ExactDenoiser` reads the flow path.
    Everything else is the scheduler's own (``sample_with`` drives the view like the scheduler).
    """

    def __init__(self, scheduler: Any) -> None:
        self._scheduler = scheduler
        self.noise_path = "flow" if samples_on_flow_path(scheduler) else "vp"  # declared: signal_noise_at reads it
        self.alphas_cumprod = None if self.noise_path == "flow" else scheduler.alphas_cumprod
        self.first_input: tuple[torch.Tensor, float | torch.Tensor] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scheduler, name)

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        scale = getattr(self._scheduler, "scale_model_input", None)
        model_input = scale(sample, timestep) if scale is not None else sample
        if self.first_input is None:
            self.first_input = (model_input.detach().clone(), timestep)
        return model_input


def ode_endpoint_error(
    scheduler: Any,
    mixture: GaussianMixture,
    num_inference_steps: int,
    n_samples: int = 1000,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    reference_steps: int = REFERENCE_STEPS,
) -> EndpointAccuracy:
    """Runs ``scheduler`` with the exact denoiser and compares its endpoint with the exact ODE solution.

    The sampler runs through ``sample_with`` (same initial noise ``init_noise_sigma · N(0, I)`` from ``seed``,
    so the endpoints are its samples); the reference starts from the first model input at the first model
    call's path point (see the module docstring) and ends at x0.

    Args:
        scheduler: A deterministic diffusers-style scheduler on a VP or flow path (ours or diffusers');
            it is mutated by ``set_timesteps``/``step``.
        mixture: The data distribution.
        num_inference_steps: Passed to ``set_timesteps`` (model evaluations are counted, not assumed).
        n_samples: Number of trajectories.
        seed: Seeds the initial noise.
        dtype: Dtype of the sampling loop (float32 is what every diffusers scheduler supports).
        reference_steps: RK4 steps per unit σ of the reference (:func:`probability_flow_endpoint`).

    Returns:
        An :class:`EndpointAccuracy` with RMS and max endpoint error and the NFE.
    """
    view = _HarnessView(scheduler)
    samples, nfe = sample_with(view, mixture, num_inference_steps, n_samples=n_samples, seed=seed, dtype=dtype)
    if view.first_input is None:
        raise ValueError(f"{type(scheduler).__name__} made no model evaluation for {num_inference_steps} steps.")
    x_start, timestep = view.first_input
    a, b = path_coefficients(view, timestep)
    reference = probability_flow_endpoint(mixture, x_start.double() / (a + b), b / (a + b), reference_steps)
    distance = (samples.double() - reference).norm(dim=1)
    return EndpointAccuracy(
        rms_error=float(distance.square().mean().sqrt()),
        max_error=float(distance.max()),
        nfe=nfe,
        samples=samples,
        reference=reference,
    )
