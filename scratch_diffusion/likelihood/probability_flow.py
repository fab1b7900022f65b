"""The probability-flow ODE of any described scheduler's model, in flow coordinates, with its divergence.

Every Gaussian path x = a·x0 + b·ε is the flow path y = (1 − σ)·x0 + σ·ε in other coordinates,
y = x/(a + b) at σ = b/(a + b) (same SNR; ``scratch_schedulers.path_change``). The ODE is integrated
there, dy/dσ = u(y, σ) = E[ε − x0 | y_σ], for a model of either path: a flow model natively (timestep
σ·T), a VP model through the core's change of variables (``pipelines.cross_path.plan_model_calls``:
the point of equal log-SNR, the rescaled input, the output read out as a velocity). Outside a VP
model's trained range (σ below its t = 0 level or above its t = T − 1 level) the model is evaluated at
the nearest trained end, as every cross-path sampler does; see :mod:`.ode_likelihood` for what that
means for the likelihood. VP points at integer timesteps are evaluated at those integer timesteps.

Divergence (Chen et al., 2018; Grathwohl et al., 2019): exact, ``Σ_j ∂u_j/∂y_j`` with one backward
pass per dimension, or Hutchinson's ``E_z[zᵀ (∂u/∂y) z]`` with fixed Rademacher probes z (one
vector–Jacobian product each, averaged).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from scratch_diffusion.pipelines.cross_path import ModelPath, plan_model_calls
from scratch_schedulers.model_fn import ModelFn
from scratch_schedulers.noise_path import parametrization_of, signal_noise_at
from scratch_schedulers.path_change import vp_log_snr_table
from scratch_schedulers.validation import check_choice

VelocityField = Callable[[torch.Tensor, float], torch.Tensor]
SPACINGS = ("geometric", "uniform")


def model_path_of(scheduler: object) -> ModelPath:
    """The path and clock of the model a scheduler describes (its parametrisation, T, VP log-SNR table)."""
    parametrization = parametrization_of(scheduler)
    T = int(scheduler.config.num_train_timesteps)
    if parametrization.path == "flow":
        return ModelPath(parametrization, T)
    return ModelPath(parametrization, T, vp_log_snr_table(scheduler.alphas_cumprod))


def path_end(scheduler: object) -> tuple[float, float]:
    """(a, b) of the scheduler's noisiest point: flow σ = 1 (0, 1); VP t = T − 1 (√ᾱ, √(1 − ᾱ))."""
    if parametrization_of(scheduler).path == "flow":
        return 0.0, 1.0
    a, b = signal_noise_at(scheduler, scheduler.config.num_train_timesteps - 1)
    return float(a), float(b)


def flow_sigma_grid(
    scheduler: object, num_steps: int, spacing: str = "geometric", sigma_min: float = 1e-4
) -> np.ndarray:
    """Ascending σ from 0 to the path end in ``num_steps`` steps (+ a few below a VP model's first level).

    Flow path: ``uniform`` in σ, or ``geometric`` (0, then σ_min … 1 evenly in log σ: the divergence of
    a model of sharp data grows like D/σ towards the data, so its integrand is smooth in log σ). VP path:
    the levels of ``num_steps`` integer timesteps spread over [0, T − 1], after 0 and, for ``geometric``,
    ⌈num_steps/10⌉ steps evenly in log σ from σ_min up to the t = 0 level (the path-change extension).
    """
    check_choice("spacing", spacing, SPACINGS)
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}; it must be ≥ 1.")
    if not 0 < sigma_min < 1:
        raise ValueError(f"sigma_min={sigma_min}; it must be in (0, 1).")
    if parametrization_of(scheduler).path == "flow":
        if spacing == "uniform":
            return np.linspace(0.0, 1.0, num_steps + 1)
        return np.concatenate([[0.0], np.geomspace(sigma_min, 1.0, num_steps)])
    T = int(scheduler.config.num_train_timesteps)
    if num_steps > T:
        raise ValueError(f"num_steps={num_steps} exceeds the VP chain's {T} timesteps; use at most {T}.")
    timesteps = np.unique(np.linspace(0, T - 1, num_steps).round().astype(np.int64))
    a, b = signal_noise_at(scheduler, torch.from_numpy(timesteps))
    levels = (b / (a + b)).numpy()
    below = [0.0]
    if spacing == "geometric" and sigma_min < levels[0]:
        below += np.geomspace(sigma_min, levels[0], -(-num_steps // 10) + 1)[:-1].tolist()
    return np.concatenate([below, levels])


def velocity_field(model: ModelFn, scheduler: object, dtype: torch.dtype) -> VelocityField:
    """u(y, σ) in float64 from ``model`` (in ``scheduler``'s parametrisation), its input cast to ``dtype``."""
    path = model_path_of(scheduler)

    def field(y: torch.Tensor, sigma: float) -> torch.Tensor:
        plan = plan_model_calls([(1.0 - sigma, sigma)], path, ["flow_velocity"], y.device)
        call, timestep = plan.calls[0], plan.timesteps[0]
        x_model = call.scale_input(y)
        output = model(x_model.to(dtype), timestep).to(torch.float64)
        if output.shape[1] == 2 * y.shape[1]:  # a VP model's learned-variance channels: the mean part only
            output = output[:, : y.shape[1]]
        return call.read(output, x_model)[0]

    return field


def rademacher_probes(shape: torch.Size, num_probes: int, generator: torch.Generator | None) -> torch.Tensor:
    """``num_probes`` independent ±1 tensors of ``shape`` (float64), stacked on a new first axis."""
    if num_probes < 1:
        raise ValueError(f"num_probes={num_probes}; it must be ≥ 1.")
    bits = torch.randint(0, 2, (num_probes, *shape), generator=generator)
    return bits.to(torch.float64) * 2 - 1


def velocity_and_divergence(
    field: VelocityField, y: torch.Tensor, sigma: float, probes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(u(y, σ), div u per example): exact if ``probes`` is None, else Hutchinson's mean over the probes."""
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        u = field(y, sigma)
        if probes is None:
            flat = u.flatten(1)
            divergence = torch.zeros(len(y), dtype=torch.float64, device=y.device)
            for j in range(flat.shape[1]):
                (grad,) = torch.autograd.grad(flat[:, j].sum(), y, retain_graph=True)
                divergence = divergence + grad.flatten(1)[:, j]
        else:
            divergence = torch.zeros(len(y), dtype=torch.float64, device=y.device)
            for k, z in enumerate(probes):
                (grad,) = torch.autograd.grad(u, y, z.to(y.device), retain_graph=k + 1 < len(probes))
                divergence = divergence + (grad * z.to(y.device)).flatten(1).sum(1)
            divergence = divergence / len(probes)
    return u.detach(), divergence.detach()
