"""Any model with any sampler: evaluate a UNet trained on one path for a scheduler that samples another.

The sampling loop runs in the scheduler's path and parametrisation. Before each UNet call the
sample and timestep are mapped to the point of the model's path with the same SNR, and the model
output is converted into what the scheduler expects (``scratch_schedulers.path_change``: the exact
change of variables; Nakkiran et al., 2024). Everything is computed once per schedule on the host
(:func:`plan_model_calls`), so a step only multiplies by two numbers and indexes a timestep tensor
already on the device: the UNet call count is the native one and no step reads a value back. A
scheduler of the model's own parametrisation gets a plan too, of identity calls at its own timesteps
(:func:`native_model_calls`), so every caller runs one code path (:class:`~.denoiser.Denoiser`).

**What can be described.** A scheduler's path and parametrisation (``noise_path.parametrization_of``):
ours and diffusers' VP schedulers (``alphas_cumprod``; DDPM, DDIM, DPM-Solver, Euler, UniPC, …),
flow-matching schedulers (``FlowMatch…``, ``ScratchFlowMatchScheduler``) and DPM-Solver with
``use_flow_sigmas=True`` (flow path; ``flow_prediction``, ``epsilon`` or ``sample``). Refused:
schedulers of other paths (VE/EDM schedulers such as ``EDMEulerScheduler``, ``ScoreSdeVeScheduler``),
a model whose training schedule is unknown (``noise_schedule``), and a conversion that does not
exist at a visited point (an ε-model at a zero-SNR timestep asked for x̂0) — each a ``ValueError``
before any model evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from scratch_schedulers import Parametrization
from scratch_schedulers.model_path import VP_SCHEDULE_DEFAULTS, ModelPath
from scratch_schedulers.noise_path import (
    parametrization_of,
    signal_noise_at,
)
from scratch_schedulers.path_change import (
    point_log_snr,
    prediction_readout,
    rescale_factor,
)
from scratch_schedulers.samplers import log_snr


def noise_schedule_of(scheduler: object, path: str) -> dict | None:
    """The config keys that fix ``scheduler``'s noise path, if it samples ``path``; else None."""
    if parametrization_of(scheduler).path != path:
        return None
    config = scheduler.config
    if path == "flow":
        return {"num_train_timesteps": int(config.get("num_train_timesteps", 1000))}
    schedule = {key: config.get(key, default) for key, default in VP_SCHEDULE_DEFAULTS.items()}
    if schedule["trained_betas"] is not None:
        schedule["trained_betas"] = [float(beta) for beta in schedule["trained_betas"]]
    return schedule


def sampler_levels(scheduler: object, path: str) -> list[tuple[float, float]]:
    """(a, b) of the model input at every entry of ``scheduler.timesteps`` (after ``scale_model_input``).

    Schedulers with one ``sigmas`` entry per timestep plus a final one (DPM-Solver, Euler, UniPC,
    flow matching) sample at those levels: σ on the flow path, s = b/a on the VP path, where
    a = 1/√(1 + s²). Others (DDPM, DDIM) are at the path point of their timesteps
    (``noise_path.signal_noise_at``: a fractional t interpolates s linearly, as diffusers' discrete schedulers do).
    """
    timesteps = torch.as_tensor(scheduler.timesteps).detach().cpu()
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or len(sigmas) != len(timesteps) + 1:
        a, b = signal_noise_at(scheduler, timesteps)
        return list(zip(a.tolist(), b.tolist(), strict=True))
    levels = torch.as_tensor(sigmas).detach().cpu().to(torch.float64)[:-1]
    if path == "flow":
        return [(1 - s, s) for s in levels.tolist()]
    a = 1 / torch.sqrt(1 + levels**2)
    b = torch.where(torch.isinf(levels), torch.ones_like(levels), levels * a)
    return list(zip(a.tolist(), b.tolist(), strict=True))


class Point(NamedTuple):
    """A point x = a·x0 + b·ε of a path, with its log-SNR λ = log(a/b)."""

    a: float
    b: float
    lam: float


class ModelCall:
    """The UNet evaluation for one sampler point: scale the input, call at the model's timestep, read out.

    ``sampler`` and ``model`` are the two points (a, b, λ) of the call: where the sampler is and where the
    model is evaluated (same λ; the same point when the scheduler samples the model's own parametrisation).
    """

    def __init__(
        self,
        input_scale: float,
        readouts: Sequence[tuple[float, float]],
        sampler: Point | None = None,
        model: Point | None = None,
    ):
        # Identities within rounding (a same-path conversion gives 1 ± 1e-16) are snapped to exactly 1 and 0,
        # so the loop skips those full-tensor multiplies.
        self.input_scale = _snap(input_scale, 1.0)
        self.readouts = tuple((_snap(p, 1.0), _snap(q, 0.0)) for p, q in readouts)  # target = p·output + q·x_model
        self.sampler, self.model = sampler, model if model is not None else sampler

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """The sampler's sample at the model's point of equal SNR."""
        return x if self.input_scale == 1.0 else x * self.input_scale

    def read(self, output: torch.Tensor, x_model: torch.Tensor) -> list[torch.Tensor]:
        """Every requested target from the model output at ``x_model`` (plain multiply-adds, no sync)."""
        return [_read(output, x_model, p, q) for p, q in self.readouts]


def _snap(value: float, identity: float) -> float:
    return identity if math.isclose(value, identity, rel_tol=1e-12, abs_tol=1e-15) else value


def _read(output: torch.Tensor, x_model: torch.Tensor, p: float, q: float) -> torch.Tensor:
    scaled = output if p == 1.0 else output * p
    return scaled if q == 0.0 else torch.add(scaled, x_model, alpha=q)


@dataclass
class ModelCalls:
    """The plan of one run: a :class:`ModelCall` per sampler point and the model timesteps, already on the device.

    ``targets`` are the prediction types each call returns, in order.
    """

    calls: list[ModelCall]
    timesteps: torch.Tensor
    targets: tuple[str, ...]


def native_model_calls(
    timesteps: torch.Tensor, prediction_type: str, levels: Sequence[tuple[float, float]] | None = None
) -> ModelCalls:
    """Identity calls at the sampler's own ``timesteps`` (the model samples its own parametrisation).

    ``levels``: the sampler points (a, b) of the timesteps, recorded as both points of each call; without
    them (one timestep per example) the calls carry no point.
    """
    if levels is None:
        points = [None] * len(timesteps)
    else:
        a, b = torch.tensor(levels, dtype=torch.float64).reshape(-1, 2).unbind(1)
        points = [Point(*point) for point in zip(a.tolist(), b.tolist(), log_snr(a, b).tolist(), strict=True)]
    return ModelCalls([ModelCall(1.0, [(1.0, 0.0)], point) for point in points], timesteps, (prediction_type,))


def plan_model_calls(
    levels: Sequence[tuple[float, float]], model: ModelPath, targets: Sequence[str], device: torch.device
) -> ModelCalls:
    """The model calls for sampler points ``levels`` returning ``targets`` (prediction types at each point).

    Raises ``ValueError`` naming the point where a conversion does not exist (a non-finite coefficient).
    """
    calls, timesteps = [], []
    for i, (a, b) in enumerate(levels):
        lam = point_log_snr(a, b)
        point = model.point(lam)
        readouts = [
            prediction_readout(model.parametrization.prediction_type, point.a, point.b, target, a, b)
            for target in targets
        ]
        if not all(np.isfinite(readouts).flat):
            raise ValueError(
                f"a model trained on the {model.parametrization.path!r} path to predict "
                f"{model.parametrization.prediction_type!r} cannot give {list(targets)} at sampler point {i} "
                f"(a={a:.4g}, b={b:.4g}, λ={lam:.4g}; model timestep {point.timestep:.4g}): the conversion divides by "
                "zero there. Use a schedule that avoids this point, or a scheduler of the model's own parametrisation."
            )
        sampler, model_point = Point(a, b, lam), Point(point.a, point.b, lam)
        calls.append(ModelCall(rescale_factor(a, b, point.a, point.b), readouts, sampler, model_point))
        timesteps.append(point.timestep)
    return ModelCalls(calls, torch.tensor(timesteps, dtype=torch.float32).to(device), tuple(targets))


def scheduler_model_calls(
    scheduler: object,
    sampled: Parametrization,
    trained: Parametrization,
    noise_schedule: Mapping | None,
    targets: Sequence[str] | None,
    device: torch.device,
    levels: Sequence[tuple[float, float]] | None = None,
) -> ModelCalls:
    """The model calls for ``scheduler``'s current timesteps (or ``levels``), read once from the scheduler.

    ``targets`` None asks for the scheduler's own prediction type, and a scheduler of the trained
    parametrisation then calls the UNet as it is, at its own timesteps (:func:`native_model_calls`).
    """
    levels = sampler_levels(scheduler, sampled.path) if levels is None else levels
    if targets is None and sampled == trained:
        return native_model_calls(scheduler.timesteps, sampled.prediction_type, levels)
    model = ModelPath.of_schedule(trained, noise_schedule)
    return plan_model_calls(levels, model, targets or (sampled.prediction_type,), device)
