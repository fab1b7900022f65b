"""The Gaussian noise path shared by every scheduler: x_t = a_t·x0 + b_t·ε.

Following "Step-by-Step Diffusion" (Nakkiran et al., 2024), DDPM, DDIM and flow matching are
one family of reverse samplers over a Gaussian path; they differ only in the path and in how
they step along it. This module holds everything about the *path* (its argument checks are in
``validation.py``); ``samplers`` holds the update rules and the three scheduler classes are
thin diffusers-API views over both.

Notation
--------
============  =====================================================================
``T``         number of training timesteps (``num_train_timesteps``)
``β_t``       noise schedule of the discrete variance-preserving (VP) chain (Ho et al., 2020)
``ᾱ_t``       ``alphas_cumprod[t] = Π_{s≤t} (1 − β_s)``
``a_t, b_t``  signal and noise scale: VP ``a = √ᾱ, b = √(1 − ᾱ)``; flow ``a = 1 − σ, b = σ``
``σ``         flow-matching noise level in [0, 1]; timestep ``t = σ·T`` (diffusers' convention)
``ε, x0, v``  noise, clean sample, v-prediction ``v = a·ε − b·x0`` (Salimans & Ho, 2022)
``u``         flow velocity ``u = dx/dσ = ε − x0`` (rectified flow, Liu et al., 2022)
============  =====================================================================
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from .validation import (
    check_beta_bounds,
    check_choice,
    check_inference_steps,
    check_num_train_timesteps,
    check_trained_betas,
)

VPPredictionType = Literal["epsilon", "sample", "v_prediction"]
FlowPredictionType = Literal["flow_velocity"]
PredictionType = Literal[VPPredictionType, FlowPredictionType]
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]
TimeShiftType = Literal["exponential", "linear"]
NoisePath = Literal["vp", "flow"]

# The allowed values, read off the aliases above so the annotation and the check cannot drift apart.
BETA_SCHEDULES: tuple[str, ...] = get_args(BetaSchedule)
TIMESTEP_SPACINGS: tuple[str, ...] = get_args(TimestepSpacing)
TIME_SHIFT_TYPES: tuple[str, ...] = get_args(TimeShiftType)
VP_PREDICTION_TYPES: tuple[str, ...] = get_args(VPPredictionType)
FLOW_PREDICTION_TYPES: tuple[str, ...] = get_args(FlowPredictionType)
# The one list of parametrisations, by path: every other module (pipeline, trainer, harness) reads it here.
PREDICTION_TYPES_BY_PATH: dict[str, tuple[str, ...]] = {"vp": VP_PREDICTION_TYPES, "flow": FLOW_PREDICTION_TYPES}
PREDICTION_TYPES: tuple[str, ...] = (*VP_PREDICTION_TYPES, *FLOW_PREDICTION_TYPES)


# --------------------------------------------------------------------------------------------
# β schedules of the discrete VP chain
# --------------------------------------------------------------------------------------------


def cosine_alpha_bar(t: float) -> float:
    """ᾱ(t) of the cosine schedule, Nichol & Dhariwal (2021) Eq. (17), with s = 0.008."""
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def make_betas(
    beta_schedule: BetaSchedule,
    num_train_timesteps: int,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    trained_betas: Sequence[float] | np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """β_1..β_T as float32 (the dtype diffusers stores), from a named schedule or given values.

    ``squaredcos_cap_v2`` discretises :func:`cosine_alpha_bar`: β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), 0.999).
    """
    check_num_train_timesteps(num_train_timesteps)
    if trained_betas is not None:
        betas = torch.as_tensor(np.asarray(trained_betas, dtype=np.float64)).to(torch.float32)
        check_trained_betas(betas, num_train_timesteps)
        return betas
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    if beta_schedule != "squaredcos_cap_v2":  # the others ramp from beta_start to beta_end
        check_beta_bounds(beta_schedule, beta_start, beta_end)
    T = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if beta_schedule == "scaled_linear":  # the latent-diffusion schedule: linear in √β
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        betas = [min(1 - cosine_alpha_bar((i + 1) / T) / cosine_alpha_bar(i / T), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=torch.float32)
    # sigmoid (Jabri et al., 2022): a logistic ramp from beta_start to beta_end
    return torch.sigmoid(torch.linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2024), Algorithm 1: shift and scale √ᾱ so that ᾱ_T = 0 (SNR 0) and ᾱ_1 is kept."""
    sqrt_alpha_bar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * (first / (first - last))
    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


# --------------------------------------------------------------------------------------------
# Timestep grids
# --------------------------------------------------------------------------------------------


def spaced_timesteps(
    spacing: TimestepSpacing, num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 0
) -> np.ndarray:
    """Descending int64 timesteps of a discrete sampler (Lin et al., 2024, Table 2).

    ``leading``: k·⌊T/n⌋ + offset; ``trailing``: round(T − k·T/n) − 1; ``linspace``: round of n
    evenly spaced points in [0, T − 1]. Unlike diffusers (#10003), a ``steps_offset`` that would
    push the first timestep to T or beyond is reduced so the grid ends at T − 1 (e.g. n = T with
    offset 1 gives T−1 … 0 instead of an IndexError).
    """
    check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    T, n = num_train_timesteps, num_inference_steps
    check_inference_steps(n, T)
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        grid = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.int64)
        return grid + min(steps_offset, T - 1 - int(grid[0]))
    grid = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    return grid


# --------------------------------------------------------------------------------------------
# Flow-matching σ grids (the time-shift family of SD3 / Flux)
# --------------------------------------------------------------------------------------------


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Static resolution shift σ' = s·σ / (1 + (s − 1)·σ) (Esser et al., 2024, Eq. 23)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(sigmas: np.ndarray, mu: float, kind: TimeShiftType = "exponential") -> np.ndarray:
    """Dynamic shift with μ: e^μ/(e^μ + (1/σ − 1)) (``exponential``) or μ/(μ + (1/σ − 1)) (``linear``)."""
    check_choice("time_shift_type", kind, TIME_SHIFT_TYPES)
    m = math.exp(mu) if kind == "exponential" else mu
    return m / (m + (1 / sigmas - 1))


def stretch_to_terminal(sigmas: np.ndarray, terminal: float) -> np.ndarray:
    """Rescale 1 − σ so that the last σ equals ``terminal`` (LTX-Video's ``shift_terminal``)."""
    one_minus = 1 - sigmas
    if one_minus[-1] == 0:  # a single step at σ = 1 cannot be stretched (diffusers returns NaN)
        return sigmas
    return 1 - one_minus / (one_minus[-1] / (1 - terminal))


# --------------------------------------------------------------------------------------------
# Parametrisations: converting a model output into (x0, ε) and back
# --------------------------------------------------------------------------------------------


def eps_to_x0(eps: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t − b·ε) / a  (DDPM Eq. 15)."""
    return (x_t - b * eps) / a


def x0_to_eps(x0: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ε = (x_t − a·x0) / b."""
    return (x_t - a * x0) / b


def v_to_x0(v: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x0 = a·x_t − b·v on a VP path (a² + b² = 1; Salimans & Ho, 2022, §4)."""
    return a * x_t - b * v


def v_to_eps(v: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ε = a·v + b·x_t on a VP path."""
    return a * v + b * x_t


def velocity_to_x0(u: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 = x_t − σ·u on the flow path x_t = (1 − σ)·x0 + σ·ε with u = ε − x0."""
    return x_t - sigma * u


def velocity_to_eps(u: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """ε = x_t + (1 − σ)·u on the flow path."""
    return x_t + (1 - sigma) * u


def target_for(
    prediction_type: PredictionType,
    x0: torch.Tensor,
    eps: torch.Tensor,
    a: torch.Tensor | float | None = None,
    b: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """The regression target of a parametrisation: ε, x0, v = a·ε − b·x0 (needs a, b), or u = ε − x0.

    Inverse of :func:`split_prediction` at the same path point.
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "flow_velocity":
        return eps - x0
    return a * eps - b * x0


def split_prediction(
    model_output: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor, b: torch.Tensor, prediction_type: PredictionType
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x̂0, ε̂) from a model output of the given parametrisation at path point (a, b).

    For ``flow_velocity`` the path is a = 1 − σ, b = σ and only ``b`` (= σ) is read.
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return eps_to_x0(model_output, x_t, a, b), model_output
    if prediction_type == "sample":
        return model_output, x0_to_eps(model_output, x_t, a, b)
    if prediction_type == "v_prediction":
        return v_to_x0(model_output, x_t, a, b), v_to_eps(model_output, x_t, a, b)
    return velocity_to_x0(model_output, x_t, b), velocity_to_eps(model_output, x_t, b)


# --------------------------------------------------------------------------------------------
# Describing any scheduler (ours or diffusers') as a path + parametrisation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parametrization:
    """What a model trained with a scheduler predicts, and on which path.

    Attributes:
        path: ``"vp"`` (x_t = √ᾱ·x0 + √(1−ᾱ)·ε, discrete t ∈ {0..T−1}) or ``"flow"``
            (x_t = (1−σ)·x0 + σ·ε, t = σ·T).
        prediction_type: ``epsilon``, ``sample``, ``v_prediction`` (VP) or ``flow_velocity`` (flow).
    """

    path: NoisePath
    prediction_type: PredictionType


# diffusers' name for the flow velocity u = ε − x0 (DPMSolverMultistepScheduler, use_flow_sigmas=True).
FLOW_PREDICTION_NAMES = {"flow_prediction": "flow_velocity", "flow_velocity": "flow_velocity"}
# What a scheduler on each path may ask the model for (the flow path has no v-prediction).
SAMPLER_PREDICTION_TYPES = {"vp": VP_PREDICTION_TYPES, "flow": ("flow_velocity", "epsilon", "sample")}
NOISE_PATHS: tuple[str, ...] = get_args(NoisePath)


@functools.cache
def _init_parameters(cls: type) -> frozenset[str]:
    """The argument names of ``cls.__init__`` (read once per class)."""
    return frozenset(inspect.signature(cls.__init__).parameters)


def noise_path_of(scheduler: object) -> NoisePath:
    """The path ``scheduler`` samples: the one it declares (``noise_path``, as ours do), else recognised.

    diffusers' schedulers declare nothing: DPM-Solver with ``use_flow_sigmas=True``, FlowMatch and FlowMap
    (flow-map Euler) schedulers sample the flow path, others with ``alphas_cumprod`` the VP path; VE/EDM
    schedulers cannot be described (``ValueError``).
    """
    declared = getattr(scheduler, "noise_path", None)  # a class attribute, or set at construction from the config
    if declared is not None:
        check_choice(f"{type(scheduler).__name__}.noise_path", declared, NOISE_PATHS)
        return declared
    config = getattr(scheduler, "config", {})
    # from_config keeps keys another class left in the config: read use_flow_sigmas only where it is an argument
    if "use_flow_sigmas" in _init_parameters(type(scheduler)) and config.get("use_flow_sigmas", False):
        return "flow"
    if hasattr(scheduler, "alphas_cumprod"):
        return "vp"
    if any(name in type(scheduler).__name__ for name in ("FlowMatch", "FlowMap")):
        return "flow"
    raise ValueError(
        f"cannot describe the noise path of {type(scheduler).__name__}: expected a scheduler that declares "
        "noise_path ('vp' or 'flow'), a VP scheduler (with alphas_cumprod), a flow scheduler (FlowMatch…, FlowMap…) "
        "or DPM-Solver with use_flow_sigmas=True; VE/EDM schedulers are not supported."
    )


def parametrization_of(scheduler: object) -> Parametrization:
    """The path (:func:`noise_path_of`) and parametrisation a scheduler (ours or any diffusers one) samples with.

    The prediction type is the config's ``prediction_type``; on the flow path diffusers' ``flow_prediction``
    is the velocity ``flow_velocity``, which is also what a flow scheduler without a ``prediction_type``
    argument (FlowMatch) asks for. A prediction type the path does not have is a ``ValueError``.
    """
    path = noise_path_of(scheduler)
    config = getattr(scheduler, "config", {})
    prediction_type = config.get("prediction_type", "epsilon")
    if path == "flow":
        takes_prediction_type = "prediction_type" in _init_parameters(type(scheduler))
        prediction_type = FLOW_PREDICTION_NAMES.get(prediction_type, prediction_type) if takes_prediction_type else (
            "flow_velocity"
        )
    if prediction_type not in SAMPLER_PREDICTION_TYPES[path]:
        raise ValueError(
            f"{type(scheduler).__name__} asks for prediction_type={prediction_type!r} on the {path!r} path; "
            f"allowed there: {list(SAMPLER_PREDICTION_TYPES[path])}."
        )
    return Parametrization(path, prediction_type)


def signal_noise_at(
    scheduler: object,
    timestep: torch.Tensor | float,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_t, b_t) of ``scheduler``'s path at ``timestep``: the one look-up from a timestep to its path point.

    Flow path: σ = t/T, (a, b) = (1 − σ, σ). VP path: (√ᾱ_t, √(1 − ᾱ_t)) at an integer t; a fractional t
    interpolates the level s = b/a = √((1 − ᾱ)/ᾱ) linearly between its neighbours, as diffusers' discrete
    (Euler, Heun, …) schedulers do, and gives (1, s)/√(1 + s²). Computed in ``dtype`` (float64 unless asked)
    on ``device`` (the timestep's own unless given), broadcast like ``timestep``; nothing is read back from
    a device, and integer timesteps (the training batches) take no interpolation at all.
    """
    t = torch.as_tensor(timestep, device=device)
    if noise_path_of(scheduler) == "flow":
        sigma = t.to(dtype) / scheduler.config.num_train_timesteps
        return 1 - sigma, sigma
    alpha_bar = torch.as_tensor(scheduler.alphas_cumprod).to(device=t.device, dtype=dtype)
    if not t.is_floating_point():
        at = alpha_bar[t]
        return at**0.5, (1 - at) ** 0.5
    low = t.floor().long().clamp(0, len(alpha_bar) - 1)
    at = alpha_bar[low]
    a, b = at**0.5, (1 - at) ** 0.5
    fraction = (t - low).to(dtype)
    if t.device.type == "cpu" and not bool((fraction != 0).any()):
        return a, b
    level_table = ((1 - alpha_bar) / alpha_bar) ** 0.5  # +∞ where ᾱ = 0 (zero terminal SNR)
    high = (low + 1).clamp(max=len(alpha_bar) - 1)
    level = level_table[low] + fraction * (level_table[high] - level_table[low])
    a_between = 1 / (1 + level**2) ** 0.5
    b_between = torch.where(torch.isinf(level), torch.ones_like(level), level * a_between)
    between = fraction != 0
    return torch.where(between, a_between, a), torch.where(between, b_between, b)


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample ``x`` broadcasts against ``ndim``-D tensors."""
    return x.reshape(*x.shape, *([1] * (ndim - x.ndim)))
