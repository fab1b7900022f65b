"""scratch-diffusion 0.1.0: ScratchDiffusionPipeline and its schedulers in one file.

Generated from the package source by `python -m scratch_diffusion.pipelines.build_shipped`; do not edit.
diffusers loads it as remote code (trust_remote_code=True) where the scratch-diffusion package
is not used. Sections, in dependency order (imports between them removed):

    scratch_schedulers.validation
    scratch_schedulers.noise_path
    scratch_schedulers.samplers.steps
    scratch_schedulers.samplers.dpm
    scratch_schedulers.path_change
    scratch_diffusion.guidance.setup
    scratch_diffusion.guidance.models
    scratch_diffusion.guidance.combination
    scratch_diffusion.guidance.gradient
    scratch_diffusion.guidance.compose
    scratch_diffusion.control.conditioning_encoder
    scratch_diffusion.control.controlnet
    scratch_diffusion.few_step.flow_map_unet
    scratch_schedulers.model_path
    scratch_diffusion.guidance.noisy_classifier
    scratch_schedulers.scheduling_common
    scratch_schedulers.scheduling_vp
    scratch_schedulers.scheduling_ddim
    scratch_schedulers.scheduling_ddpm
    scratch_schedulers.dpm_grids
    scratch_schedulers.dpm_schedule
    scratch_schedulers.samplers.unipc
    scratch_schedulers.dpm_stepping
    scratch_schedulers.scheduling_dpmsolver
    scratch_schedulers.flow_forward
    scratch_schedulers.scheduling_flow_map
    scratch_schedulers.flow_churn
    scratch_schedulers.scheduling_flow_match
    scratch_diffusion.pipelines.latents
    scratch_diffusion.pipelines.components
    scratch_diffusion.control.residuals
    scratch_diffusion.pipelines.cross_path
    scratch_diffusion.pipelines.denoiser
    scratch_diffusion.pipelines.inputs
    scratch_diffusion.pipelines.guidance
    scratch_diffusion.pipelines.inversion
    scratch_diffusion.pipelines.control
    scratch_diffusion.pipelines.edit_images
    scratch_diffusion.pipelines.edit_levels
    scratch_diffusion.pipelines.sampling_loop
    scratch_diffusion.pipelines.edit_run
    scratch_diffusion.pipelines.postprocess
    scratch_diffusion.pipelines.img2img
    scratch_diffusion.pipelines.repaint
    scratch_diffusion.pipelines.inpainting
    scratch_diffusion.pipelines.editing
    scratch_diffusion.pipelines.flow_map
    scratch_diffusion.pipelines.latent_pipeline_support
    scratch_diffusion.pipelines.parametrization
    scratch_diffusion.pipelines.remote_code
    scratch_diffusion.pipelines.saved_format
    scratch_diffusion.pipelines.loading
    scratch_diffusion.pipelines.saved_pipeline
    scratch_diffusion.pipelines.pipeline_scratch_diffusion
"""

from __future__ import annotations

# ============================================================================================
# scratch_schedulers.validation
# ============================================================================================

"""Argument checks shared by the schedulers: each raises naming the offending value and what is allowed.

They run on the host, on config values and host-side arguments only; nothing here reads a tensor
back from an accelerator.
"""


import math
from collections.abc import Sequence

import numpy as np
import torch

# Schedules are tabulated per training timestep; far beyond any published model (1000–4000), and
# refused before a multi-gigabyte table is allocated for a typo such as 10**9.
MAX_TRAIN_TIMESTEPS = 100_000


def check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    """Raise ``ValueError`` naming ``value`` and the allowed values unless ``value in allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(allowed)}.")


def check_num_train_timesteps(value: object) -> None:
    """``num_train_timesteps`` must be an int in [1, MAX_TRAIN_TIMESTEPS] (checked before any allocation)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"num_train_timesteps={value!r} must be an int in [1, {MAX_TRAIN_TIMESTEPS}].")
    if not 1 <= value <= MAX_TRAIN_TIMESTEPS:
        raise ValueError(f"num_train_timesteps={value} must be a positive integer ≤ {MAX_TRAIN_TIMESTEPS}.")


def check_device(device: object) -> None:
    """``device`` for ``set_timesteps``: None, a torch.device, or a string torch understands."""
    if device is None or isinstance(device, torch.device):
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device={device!r} is not a torch device; pass e.g. 'cpu', 'cuda', 'cuda:0', 'mps' or a torch.device."
        ) from None


def check_positive(name: str, value: object) -> None:
    """A config number that must be finite and > 0 (NaN and inf included in the refusal)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 < value < math.inf:
        raise ValueError(f"{name}={value!r} is not allowed; pass a finite number > 0.")


def check_beta_bounds(beta_schedule: str, beta_start: object, beta_end: object) -> None:
    """``beta_start`` and ``beta_end`` of a ramped β schedule must be numbers in [0, 1)."""
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value < 1:
            raise ValueError(
                f"{name}={value!r} is not allowed for beta_schedule={beta_schedule!r}; "
                "β must lie in [0, 1) (the defaults are beta_start=0.0001, beta_end=0.02)."
            )


def check_inference_steps(num_inference_steps: object, num_train_timesteps: int) -> None:
    """Validate ``1 ≤ num_inference_steps ≤ num_train_timesteps`` with a message naming both."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise TypeError(f"num_inference_steps must be an int, got {num_inference_steps!r}.")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_inference_steps} must be between 1 and "
            f"num_train_timesteps={num_train_timesteps}."
        )


def check_custom_timesteps(timesteps: Sequence[float], upper: float, *, integer: bool) -> np.ndarray:
    """Custom timesteps as a strictly descending array inside [0, upper); else a clear error."""
    values = np.asarray(
        timesteps.detach().cpu() if isinstance(timesteps, torch.Tensor) else timesteps, dtype=np.float64
    )
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence, got {timesteps!r}.")
    if not np.isfinite(values).all():
        raise ValueError(f"timesteps must be finite, got {values.tolist()}.")
    if integer and not np.all(values == np.round(values)):
        raise ValueError(f"timesteps must be integers for a discrete scheduler, got {values.tolist()}.")
    if np.any(np.diff(values) >= 0):
        raise ValueError(f"timesteps must be strictly descending, got {values.tolist()}.")
    if values[0] >= upper or values[-1] < 0:
        raise ValueError(f"timesteps must lie in [0, {upper:g}), got {values.tolist()}.")
    return values


def check_trained_betas(betas: torch.Tensor, num_train_timesteps: int) -> None:
    """Explicit β_1..β_T: exactly one per training timestep, each in the open interval (0, 1)."""
    if betas.ndim != 1 or len(betas) != num_train_timesteps:
        raise ValueError(
            f"trained_betas has {tuple(betas.shape)} values but num_train_timesteps={num_train_timesteps}; "
            "pass exactly one beta per training timestep."
        )
    inside = (betas > 0) & (betas < 1)
    if not bool(inside.all()):
        bad = betas[~inside][:3].tolist()
        raise ValueError(f"trained_betas must lie in the open interval (0, 1); got values such as {bad}.")


# ============================================================================================
# scratch_schedulers.noise_path
# ============================================================================================

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


import functools
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch


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


# ============================================================================================
# scratch_schedulers.samplers.steps
# ============================================================================================

"""The one-step rules in (a, b) and σ: DDIM/DDPM, Euler/Heun, EDM churn, dynamic thresholding.

Each function is one update of the overview in :mod:`scratch_schedulers.samplers` (the package docstring), written
next to its equation. Coefficients are 0-d or broadcastable tensors (or Python numbers).
"""


import math

import torch


def nonneg_sqrt(x) -> torch.Tensor:
    """√max(x, 0) as a tensor op, in ``x``'s dtype (a Python number becomes a float32 CPU tensor).

    Uses torch's ``** 0.5`` on purpose: for 0-d tensors it differs from a correctly rounded
    square root in the last bit, and diffusers' schedulers use it.
    """
    return torch.as_tensor(x).clamp(min=0) ** 0.5


def reverse_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    a_next,
    var_next,
    noise_std=0.0,
    noise: torch.Tensor | None = None,
    direction=None,
) -> torch.Tensor:
    """x_next = a_next·x̂0 + √(b_next² − s²)·ε̂ + s·z  (DDIM Eq. 12, written for any path).

    Args:
        x0: predicted clean sample x̂0, shape (B, ...).
        eps: predicted noise ε̂, same shape.
        a_next: signal scale of the target path point.
        var_next: its noise variance b_next² (1 − ᾱ_next on the VP path, σ_next² on the flow path).
        noise_std: s, the standard deviation of fresh noise injected at this step (0 = deterministic).
        noise: z ~ N(0, I) of the sample's shape; required when ``noise_std`` is not 0.
        direction: √(b_next² − s²) when the caller has it precomputed (e.g. b_next at s = 0).
    """
    if direction is None:
        direction = nonneg_sqrt(var_next - noise_std**2)
    x_next = a_next * x0 + direction * eps
    if noise is not None:
        x_next = x_next + noise_std * noise
    return x_next


def posterior_mean(x0: torch.Tensor, x_t: torch.Tensor, coef_x0, coef_xt) -> torch.Tensor:
    """μ̃_t = (√ᾱ_next·β_t / (1 − ᾱ_t))·x̂0 + (√α_t·(1 − ᾱ_next) / (1 − ᾱ_t))·x_t  (DDPM Eq. 7).

    Algebraically this is :func:`reverse_step` at η = 1 with ε̂ re-derived from x̂0
    (``tests/scratch_schedulers/test_samplers.py`` checks the identity); written in this form
    because it avoids the cancellation in ε̂ = (x_t − a_t·x̂0)/b_t as t → 0. With
    α_t = ᾱ_t/ᾱ_next and β_t = 1 − α_t the step may span several training timesteps.
    """
    return coef_x0 * x0 + coef_xt * x_t


def ddpm_posterior_coefficients(alpha_bar_t, alpha_bar_next):
    """(coef_x0, coef_xt, β̃_t) of :func:`posterior_mean` and the posterior variance (DDPM Eqs. 6–7)."""
    alpha = alpha_bar_t / alpha_bar_next
    beta = 1 - alpha
    coef_x0 = (alpha_bar_next**0.5 * beta) / (1 - alpha_bar_t)
    coef_xt = alpha**0.5 * (1 - alpha_bar_next) / (1 - alpha_bar_t)
    return coef_x0, coef_xt, (1 - alpha_bar_next) / (1 - alpha_bar_t) * beta


def ddim_noise_std(alpha_bar_t: torch.Tensor, alpha_bar_next: torch.Tensor, eta: float) -> torch.Tensor:
    """σ_t(η) = η·√((1 − ᾱ_next)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_next)  (DDIM Eq. 16).

    At η = 1 this is √β̃_t, the std of DDPM's posterior q(x_{t−1} | x_t, x0) (DDPM Eq. 7).
    """
    return eta * ((1 - alpha_bar_next) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_next)) ** 0.5


def euler_step(x: torch.Tensor, derivative: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """x_next = x + (σ_next − σ)·dx/dσ: one Euler step of the probability-flow ODE."""
    return x + (sigma_next - sigma) * derivative


def heun_step(
    x: torch.Tensor, derivative: torch.Tensor, derivative_next: torch.Tensor, sigma, sigma_next
) -> torch.Tensor:
    """x_next = x + (σ_next − σ)·(d + d′)/2, the trapezoidal corrector of Karras et al. (2022), Alg. 1.

    ``derivative`` is dx/dσ at (x, σ); ``derivative_next`` at the Euler predictor's (x̃, σ_next).
    """
    return x + (derivative + derivative_next) / 2 * (sigma_next - sigma)


def churn_gamma(level: float, num_steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """γ = min(S_churn/N, √2 − 1) if S_tmin ≤ s ≤ S_tmax (s finite) else 0  (Karras et al., 2022, Alg. 2).

    ``level`` is EDM's noise level s = b/a of the path point (σ/(1 − σ) on the flow path); N the number
    of steps. The churned level is ŝ = (1 + γ)·s; the cap √2 − 1 keeps the added variance ŝ² − s² ≤ s².
    """
    if not (math.isfinite(level) and s_tmin <= level <= s_tmax):
        return 0.0
    return min(s_churn / num_steps, math.sqrt(2) - 1)


def raise_noise(x: torch.Tensor, a, b, a_hat, b_hat, noise: torch.Tensor, s_noise: float = 1.0) -> torch.Tensor:
    """x̂ = (â/a)·x + √(b̂² − (â·b/a)²)·S_noise·z: a sample at path point (a, b) moved to the noisier (â, b̂).

    If x = a·x0 + b·ε then x̂ = â·x0 + b̂·ε' in distribution (at S_noise = 1), for any Gaussian path: the
    forward transition between two levels (on the VP path DDPM's q(x_t | x_s), Ho et al., 2020). In EDM's
    VE coordinates x/a with s = b/a it is Alg. 2's x̂ = x + √(ŝ² − s²)·S_noise·z, scaled by â (Karras et al.,
    2022); on the flow path a = 1 − σ, b = σ. Needs b̂/â ≥ b/a (the variance is clamped at 0 against rounding).
    Coefficients: Python floats (computed on the host, nothing created) or broadcastable tensors.
    """
    ratio = a_hat / a
    variance = b_hat**2 - (ratio * b) ** 2
    std = math.sqrt(max(variance, 0.0)) if isinstance(variance, float) else nonneg_sqrt(variance)
    return ratio * x + (std * s_noise) * noise


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al., 2022, §2.3) of a predicted x̂0.

    s = clamp(quantile_ratio(|x̂0|), 1, max_value) per sample; x̂0 ← clamp(x̂0, −s, s) / s.
    """
    flat = x0.reshape(x0.shape[0], -1)
    flat = flat.float() if flat.dtype not in (torch.float32, torch.float64) else flat
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape).to(x0.dtype)


# ============================================================================================
# scratch_schedulers.samplers.dpm
# ============================================================================================

"""DPM-Solver++ (data form, orders 1–3, ODE and SDE) and the noise-form SDE-DPM-Solver, in the log-SNR λ.

The derivation below (exact solution, φ functions, path ends, the SDE and the noise form) is the one the
functions implement; :mod:`scratch_schedulers.samplers` gives the overview of all update rules.
"""


import torch


# --------------------------------------------------------------------------------------------
# DPM-Solver++ in data-prediction form (Lu et al., 2022, "DPM-Solver++: Fast Solver for Guided
# Sampling of Diffusion Probabilistic Models", arXiv:2211.01095), multistep orders 1–3.
#
# On any Gaussian path x = a·x0 + b·ε with log-SNR λ = log(a/b) the probability-flow ODE has the
# exact solution (DPM-Solver++ §3, data-prediction form)
#     x_next = (b_next/b)·x + b_next·∫_λ^λ_next e^ℓ·D(ℓ) dℓ,        D = x̂0,  h = λ_next − λ.
# Expanding D in ℓ − λ and integrating each power exactly (b_next·e^λ_next = a_next):
#     ∫ e^ℓ·1                → a_next·φ1,   φ1 = 1 − e^{−h}
#     ∫ e^ℓ·(ℓ − λ)          → a_next·h·φ2, φ2 = 1 − φ1/h          (= (e^{−h} − 1)/h + 1)
#     ∫ e^ℓ·(ℓ − λ)²/2       → a_next·h²·φ3, φ3 = 1/2 − (h − φ1)/h²
# and the multistep methods replace the λ-derivatives of D by divided differences of the stored
# x̂0 of the previous steps. The functions are written once for both paths: VP (a = √ᾱ,
# b = √(1 − ᾱ)) and flow (a = 1 − σ, b = σ) differ only in the (a, b) they are given.
#
# The ends of the path, exactly (IEEE ±∞ arithmetic, no clamping):
# * b_next = 0 (σ = 0, the last step): λ_next = +∞, e^{−h} = 0, φ1 = 1, so the first-order step is
#   x_next = 0·x + a_next·x̂0 — the model's x̂0 exactly. Higher orders have infinite weights there
#   (a polynomial in λ extrapolated over an infinite λ-interval), so the scheduler always takes a
#   step to b_next = 0 with order 1 (as diffusers does for ``final_sigmas_type="zero"``).
# * a = 0 (σ = 1 on the flow path, the zero-terminal-SNR timestep on the VP path): λ = −∞,
#   e^{−h} = e^{λ − λ_next} = 0, so the step is x_next = (b_next/b)·x + a_next·x̂0, finite.
# * A previous point with λ_prev = −∞ enters only through h/h_prev = 0 (finite/∞), so its
#   divided difference vanishes and the method reduces, exactly, to the next lower order.
# Every coefficient is a product of finite factors; nothing is written as ∞·0.
#
# Stochastic DPM-Solver++ (SDE-DPM-Solver++ of Lu et al., 2022; Gonzalez et al., 2023, "SEEDS"), with
# a noise fraction η ≥ 0. With the forward SDE dx = f·x dt + g dw (f = d log a/dt, g² = −2·b²·dλ/dt) the
# reverse SDEs dx = [f·x − (1 + η)/2·g²·∇log p] dt + √η·g dw̄ all have the path's marginals (η = 0 is the
# probability-flow ODE, η = 1 the reverse SDE of Anderson, 1982). In y = x/a, ∇log p = (a·D − x)/b², this
# is dy = (1 + η)·(D − y) dλ + noise: linear, with the exact solution (ĥ = (1 + η)·h, u = (1 + η)·(ℓ − λ))
#     x_next = (b_next/b)·e^{−ηh}·x + a_next·∫_0^ĥ e^{−(ĥ−u)}·D(λ + u/(1+η)) du + b_next·√(1 − e^{−2ηh})·z.
# η = 0 is the ODE above; η = 1 is diffusers' "sde-dpmsolver++" and k-diffusion's dpmpp_2m_sde/3m_sde.
# With D(λ + v) = D0 + v·D′ + v²/2·D″ the integral is a_next·(φ1(ĥ)·D0 + h·φ2(ĥ)·D′ + h²·φ3(ĥ)·D″)
# (the (1 + η)^−k of (u/(1 + η))^k turns ĥ^k·φ_{k+1}(ĥ) into h^k·φ_{k+1}(ĥ)), so with the same divided
# differences D1 ≈ h·D′, D2 ≈ h²·D″/2 (true λ ratios) every order is the deterministic formula with φ1, φ2,
# φ3 at ĥ, the x coefficient times e^{−ηh}, plus the noise term. Ends: at b_next = 0 (λ_next = +∞) the step is a_next·x̂0
# and the noise term b_next·√(1 − 0)·z = 0 exactly; from a = 0 (h = +∞) the x term is (b_next/b)·0·x.
# Check (one step, D constant = c, x ~ N(a·c, b²)): the mean (b_next/b)·e^{−ηh}·a·c + a_next·(1 − e^{−ĥ})·c
# = a_next·c (since (b_next/b)·a = a_next·e^{−h}) and the variance b_next²·e^{−2ηh} + b_next²·(1 − e^{−2ηh})
# = b_next²: the step maps N(a·c, b²) onto N(a_next·c, b_next²) exactly, for every η.
#
# DPM-Solver in noise-prediction form ("dpmsolver", Lu et al., 2022a, §3) is the same integral with the
# roles of (a, x0) and (b, ε) swapped: x_next = (a_next/a)·x − a_next·∫_λ^λ_next e^{−ℓ}·ε̂ dℓ, i.e. these functions
# called with λ → −λ, a_next → b_next, b_next/b → a_next/a and D → ε̂ (first order (a_next/a)·x −
# b_next·(e^h − 1)·ε̂; algebraically the same as the data form, so the scheduler takes every first-order
# step in the data form, which is exact at λ_next = +∞ and λ = −∞). Its SDE ("sde-dpmsolver") has the
# score with weight g² instead of g²/2: the ε-terms of the exact solution are twice the ODE's, so
# x_sde = 2·x_ode − (a_next/a)·x + b_next·√(e^{2h} − 1)·z at any order (:func:`dpm_noise_sde_step`).
# --------------------------------------------------------------------------------------------


def log_snr(a, b) -> torch.Tensor:
    """λ = log a − log b, the log signal-to-noise ratio; −∞ at a = 0 and +∞ at b = 0 (exactly)."""
    return torch.log(torch.as_tensor(a)) - torch.log(torch.as_tensor(b))


def _sde_start(x: torch.Tensor, lam, lam_next, b_ratio, eta: float):
    """(λ, h, ĥ = (1 + η)·h, the x term (b_next/b)·e^{−ηh}·x) of a step λ → λ_next (SDE above; η = 0: the ODE's)."""
    lam = torch.as_tensor(lam)
    h = torch.as_tensor(lam_next) - lam
    x_term = b_ratio * x if eta == 0 else (b_ratio * torch.exp(-eta * h)) * x  # η = 0 avoids e^{−0·∞} at a = 0
    return lam, h, (1 + eta) * h, x_term


def _with_sde_noise(x_next: torch.Tensor, noise: torch.Tensor | None, h, lam_next, a_next, eta: float) -> torch.Tensor:
    """x_next + b_next·√(1 − e^{−2ηh})·z, b_next = a_next·e^{−λ_next} (0 at λ_next = +∞); x_next when η = 0."""
    if eta == 0:
        return x_next
    if noise is None:
        raise ValueError(f"eta={eta} needs noise: a tensor z ~ N(0, I) of the sample's shape.")
    std = a_next * torch.exp(-torch.as_tensor(lam_next)) * nonneg_sqrt(-torch.expm1(-2 * eta * h))
    return x_next + std * noise


def dpmpp_first_order_step(
    x: torch.Tensor, x0: torch.Tensor, lam, lam_next, a_next, b_ratio, eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_next = (b_next/b)·e^{−ηh}·x + a_next·(1 − e^{−ĥ})·D0 + b_next·√(1 − e^{−2ηh})·z, h = λ_next − λ,
    ĥ = (1 + η)·h  (DPM-Solver++ first order = DDIM at η = 0; SDE-DPM-Solver++1 at η = 1).

    Args:
        x: sample at λ, shape (B, ...).
        x0: data prediction D0 = x̂0(x, λ), same shape.
        lam, lam_next: λ of this and the next path point (0-d tensors; ±∞ allowed, see above).
        a_next: signal scale of the next point.
        b_ratio: b_next / b (0 at the last step).
        eta: noise fraction η ≥ 0 of the SDE above (0: the probability-flow ODE, bit-identical to it).
        noise: z ~ N(0, I) of the sample's shape; required when η > 0.
    """
    _, h, h_hat, x_term = _sde_start(x, lam, lam_next, b_ratio, eta)
    phi1 = -torch.expm1(-h_hat)  # 1 − e^{−ĥ}, exact 1 at λ_next = +∞ or λ = −∞
    return _with_sde_noise(x_term + (a_next * phi1) * x0, noise, h, lam_next, a_next, eta)


def dpmpp_second_order_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    x0_prev: torch.Tensor,
    lam_prev,
    lam,
    lam_next,
    a_next,
    b_ratio,
    solver_type: str = "midpoint",
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022, Algorithm 2): x_next = first order + w·D1, D1 = (h/h_prev)·(D0 − D_prev).

    D1 ≈ h·dD/dλ from the previous step's x̂0 at λ_prev (h_prev = λ − λ_prev). The ``midpoint``
    variant weighs it with w = a_next·φ1/2 (Algorithm 2), ``heun`` with the exact Taylor weight
    w = a_next·φ2 (the "taylor" variant of the DPM-Solver code). λ_next must be finite.
    ``eta``, ``noise``: the SDE above (φ at ĥ = (1 + η)·h; η = 1 is diffusers' ``sde-dpmsolver++`` 2M:
    midpoint w = a_next·(1 − e^{−2h})/2, heun w = a_next·((1 − e^{−2h})/(−2h) + 1)).
    """
    lam, h, h_hat, x_term = _sde_start(x, lam, lam_next, b_ratio, eta)
    phi1 = -torch.expm1(-h_hat)
    weight = a_next * (phi1 / 2 if solver_type == "midpoint" else 1 - phi1 / h_hat)
    d1_scale = h / (lam - lam_prev)  # 1/r0; 0 when λ_prev = −∞
    x_next = x_term + (a_next * phi1) * x0 + (weight * d1_scale) * (x0 - x0_prev)
    return _with_sde_noise(x_next, noise, h, lam_next, a_next, eta)


def dpmpp_third_order_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    x0_prev: torch.Tensor,
    x0_prev2: torch.Tensor,
    lam_prev2,
    lam_prev,
    lam,
    lam_next,
    a_next,
    b_ratio,
    halve_d2: bool = False,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """DPM-Solver++(3M): x_next = (b_next/b)·x + a_next·(φ1·D0 + φ2·D1 + φ3·D2)  (Taylor terms above).

    With r0 = h_prev/h, r1 = h_prev2/h and the divided differences Δ0 = (D0 − D_prev)/r0 and
    Δ1 = (D_prev − D_prev2)/r1: D1 = Δ0 + r0/(r0 + r1)·(Δ0 − Δ1) ≈ h·D′ and
    D2 = (Δ0 − Δ1)/(r0 + r1) ≈ h²·D″/2 (third-order multistep of Lu et al., 2022a, App. B, in
    data-prediction form). λ_next must be finite; λ_prev2 = −∞ reduces it exactly to heun 2M.

    Since D2 ≈ h²·D″/2 while the Taylor term is a_next·h²·φ3·D″, the weight of D2 is 2·a_next·φ3
    (local error O(h⁴)). ``halve_d2=True`` uses a_next·φ3, as the DPM-Solver reference code and
    diffusers do: local error O(h³), i.e. no more accurate than 2M (test_dpmsolver.py measures both).

    ``eta``, ``noise``: the SDE above, φ1, φ2, φ3 at ĥ = (1 + η)·h. diffusers' ``sde-dpmsolver++`` 3M (η = 1)
    weighs D2 with a_next·((1 − e^{−2h} − 2h)/(2h)² − 1/2) = −a_next·(1/2 + (ĥ − φ1)/ĥ²) ≈ −a_next, where the
    halved Taylor weight is a_next·φ3(ĥ) = a_next·(1/2 − (ĥ − φ1)/ĥ²) ≈ a_next·ĥ/6: a sign error that leaves an
    O(h²) error per step (first order overall); ours is the Taylor weight (test_dpmsolver_sde.py measures both).
    """
    lam, h, h_hat, x_term = _sde_start(x, lam, lam_next, b_ratio, eta)
    lam_prev = torch.as_tensor(lam_prev)
    h_prev, h_prev2 = lam - lam_prev, lam_prev - lam_prev2
    phi1 = -torch.expm1(-h_hat)
    phi2 = 1 - phi1 / h_hat
    phi3 = 0.5 - (h_hat - phi1) / h_hat**2
    d2_weight = a_next * (phi3 if halve_d2 else 2 * phi3)
    delta0 = (h / h_prev) * (x0 - x0_prev)
    delta1 = (h / h_prev2) * (x0_prev - x0_prev2)  # 0 when λ_prev2 = −∞
    share = h_prev / (h_prev + h_prev2)  # r0/(r0 + r1)
    second_difference = delta0 - delta1
    d1 = delta0 + share * second_difference
    d2 = (h / (h_prev + h_prev2)) * second_difference  # (Δ0 − Δ1)/(r0 + r1)
    x_next = x_term + (a_next * phi1) * x0 + (a_next * phi2) * d1 + d2_weight * d2
    return _with_sde_noise(x_next, noise, h, lam_next, a_next, eta)


def dpm_noise_sde_step(x_ode: torch.Tensor, x: torch.Tensor, a_ratio, b_next, h, noise: torch.Tensor) -> torch.Tensor:
    """x_sde = 2·x_ode − (a_next/a)·x + b_next·√(e^{2h} − 1)·z  (SDE-DPM-Solver, noise form, any order).

    ``x_ode`` is the noise-form DPM-Solver step x_ode = (a_next/a)·x + (ε-terms) of the same order from x
    (section above): the reverse SDE weighs the score with g² where the ODE has g²/2, so its ε-terms are twice
    the ODE's, and the noise variance is b_next²·(e^{2h} − 1) (SDE-DPM-Solver of Lu et al., 2022; diffusers'
    ``sde-dpmsolver`` has orders 1–2). h = λ_next − λ; b_next > 0 (a step to b_next = 0
    would leave the noise ∞·0, and a start at a = 0 makes a_next/a infinite: the scheduler refuses both).
    """
    return 2 * x_ode - a_ratio * x + (b_next * nonneg_sqrt(torch.expm1(2 * torch.as_tensor(h)))) * noise


# ============================================================================================
# scratch_schedulers.path_change
# ============================================================================================

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


import math
from typing import NamedTuple

import numpy as np
import torch



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


# ============================================================================================
# scratch_diffusion.guidance.setup
# ============================================================================================

"""What every guidance rule binds against, and the one formula that turns a score into a model output.

A rule (:mod:`.combination`, :mod:`.gradient`) acts on one evaluation of the model at one point of its
path, x = a·x0 + b·ε, in the model's own parametrisation (ε, x0, v or the flow velocity). Before any
evaluation the rules of a run are *bound* to a :class:`GuidanceSetup` — the model's parametrisation and
sample shape, the class labels of the batch, the optional guide UNet, classifier and VAE decoder — and
every check that can fail fails there, naming the value and what is allowed.

**The noise level of an interval** is σ = b/a = e^{−λ} (EDM's σ; Karras et al., 2022): the same number
for points of equal SNR on the VP path (σ = √((1 − ᾱ)/ᾱ)) and the flow path (σ = σ_flow/(1 − σ_flow)),
so one interval means the same thing whichever scheduler samples.

**Gradient guidance in one parametrisation.** Tweedie's formula x̂0 = (x + b²·∇log p(x))/a makes a
conditional score ∇log p(x | y) = ∇log p(x) + ∇log p(y | x) a shift of the denoiser:

    x̂0′ = x̂0 + (b²/a)·g,    ε̂′ = ε̂ − b·g,    with g = s·∇_x log p(y | x)

(x = a·x̂0 + b·ε̂ holds before and after). The ε form is Dhariwal & Nichol's (2021, Alg. 2) for DDIM;
an ancestral DDPM step's mean c₀·x̂0 + c_x·x moves by c₀·(b²/a)·g = (β_t/√α_t)·g, their Alg. 1's
Σ·g = β̃_t·g where β_t·SNR_{t−1} is small (the ratio is (1 + β_t·SNR_{t−1})/√(1 − β_t): ≈ 1.01 at most steps of
the linear schedule, ≈ 2 at t = 1, where x̂0 is nearly known and the Bayes-exact shift is the larger).
Every parametrisation is linear in (x̂0, ε̂) at fixed x
(``noise_path.target_for``), so :func:`shift_output` adds ``target_for(Δx̂0, Δε̂)`` to the output.
"""


import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch


# ``model(x, timestep, conditions) -> output``: one evaluation of a model at its own path point.
ModelFunction = Callable[[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]


class EvaluationPoint(NamedTuple):
    """Where the model is evaluated: x = a·x0 + b·ε, with log-SNR λ = log(a/b) (host floats).

    Any object with these three attributes will do (the pipeline passes its plan's points).
    """

    a: float
    b: float
    lam: float


def noise_level(point: EvaluationPoint) -> float:
    """σ = b/a = e^{−λ} of a path point (+∞ at a = 0, 0 at b = 0)."""
    return math.exp(-point.lam) if math.isfinite(point.lam) else (math.inf if point.lam < 0 else 0.0)


def shift_output(
    output: torch.Tensor, score_step: torch.Tensor, point: EvaluationPoint, parametrization: Parametrization
) -> torch.Tensor:
    """The model output whose x̂0 is shifted by (b²/a)·g and whose ε̂ by −b·g, for g = ``score_step``.

    At a = 0 (pure noise: flow σ = 1, zero terminal SNR) nothing about y is left in x, so nothing shifts.
    """
    a, b = point.a, point.b
    if a == 0:
        return output
    g = score_step.to(output.dtype)
    return output + target_for(parametrization.prediction_type, (b * b / a) * g, -b * g, a, b)


class EvaluationCounter:
    """Rows each model evaluated in one run, by model name; per image = rows / batch (host integers, no sync)."""

    def __init__(self, batch_size: int):
        self.batch_size, self.rows = batch_size, Counter()

    def counted(self, name: str, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``fn`` (whose first argument is the batch) counting its rows as evaluations of ``name``."""

        def call(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            self.rows[name] += x.shape[0]
            return fn(x, *args, **kwargs)

        return call

    def per_image(self) -> dict[str, float]:
        """Evaluations per image of each model: a guided step that evaluates two halves counts two."""
        return {name: rows / self.batch_size for name, rows in self.rows.items()}


@dataclass
class GuidanceSetup:
    """What the guidance rules of one run bind against (built before any model evaluation).

    Attributes:
        parametrization: the model's path and prediction type (its output is in this parametrisation).
        sample_shape: (C, H, W) of the model's input.
        labels: the classes to guide towards, (B,) long, or None.
        model_conditions: what the main model takes per sample (``class_labels`` of a class-conditional UNet).
        null_class: a class-conditional model's null class ∅; None for an unconditional model.
        noise_schedule: the model's training schedule (a guide or classifier must have the same).
        log_snr_range: the λ the model was trained on (an interval must meet it).
        components: optional models the rules may use by default: ``guide_unet``, ``classifier``.
        decode: latents → images in [−1, 1] (a latent pipeline's VAE decoder), for loss guidance; None.
        decoded_shape: (C, H, W) of ``decode``'s images.
        counter: counts every model's evaluations.
    """

    parametrization: Parametrization
    sample_shape: tuple[int, ...]
    labels: torch.Tensor | None = None
    model_conditions: Mapping[str, torch.Tensor] = field(default_factory=dict)
    null_class: int | None = None
    noise_schedule: Mapping | None = None
    log_snr_range: tuple[float, float] = (-math.inf, math.inf)
    components: Mapping[str, object] = field(default_factory=dict)
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    decoded_shape: tuple[int, ...] | None = None
    counter: EvaluationCounter = field(default_factory=lambda: EvaluationCounter(1))


# ============================================================================================
# scratch_diffusion.guidance.models
# ============================================================================================

"""The second networks guidance uses — autoguidance's guide, classifier guidance's classifier — checked and called.

A guide or classifier must see what the main model sees: the same noise path and training schedule (the same
timestep means the same noise level), the same sample size and space (pixels, or one VAE's latents), and for a
classifier the classes the labels name. Each check runs when a rule is bound, before any model evaluation, and
names the mismatch. A bare ``UNet2DModel`` cannot state its path (its config has no such key): it is taken to be
the pipeline's (a ``guide_unet`` component is saved with it); pass the guide's pipeline to have its path checked.
"""


from collections.abc import Callable, Mapping

import torch



def _config(model: object) -> Mapping | None:
    config = getattr(model, "config", None)
    return config if isinstance(config, Mapping) else None


def check_same_space(name: str, config: Mapping, sample_shape: tuple[int, ...]) -> None:
    """``config``'s sample size and channels are the main model's ``sample_shape`` (resolution, latent space)."""
    channels, *size = sample_shape
    sample_size = config.get("sample_size")
    if sample_size is not None:
        given = [sample_size] * 2 if isinstance(sample_size, int) else list(sample_size)
        if given != size:
            raise ValueError(f"the {name} has sample_size={sample_size!r}, but the model samples {tuple(size)}.")
    if config.get("in_channels", channels) != channels:
        raise ValueError(
            f"the {name} takes in_channels={config['in_channels']}, but the model's samples have {channels} channels "
            "(a guide or classifier of another latent space or of pixels?)."
        )


def check_same_path(name: str, config: Mapping, setup: GuidanceSetup) -> None:
    """``config``'s recorded noise path and schedule (where it records them) are the main model's."""
    path = config.get("noise_path")
    if path is not None and path != setup.parametrization.path:
        raise ValueError(
            f"the {name} was trained on the {path!r} path, the model on {setup.parametrization.path!r}; "
            "allowed: one of the model's own path."
        )
    schedule = config.get("noise_schedule")
    if schedule is not None and setup.noise_schedule is not None and dict(schedule) != dict(setup.noise_schedule):
        raise ValueError(
            f"the {name}'s noise_schedule {dict(schedule)} differs from the model's {dict(setup.noise_schedule)}; "
            "its timesteps would mean other noise levels."
        )


def guide_function(guide: object, setup: GuidanceSetup) -> tuple[ModelFunction, bool]:
    """The guide as ``fn(x, t, conditions)`` and whether it takes the class labels, after every check."""
    pipeline_config = _config(guide) if hasattr(guide, "unet") else None
    if pipeline_config is not None:  # a pipeline of ours: its path, parametrisation and space are known
        check_same_path("guide pipeline", pipeline_config, setup)
        if pipeline_config.get("prediction_type") not in (None, setup.parametrization.prediction_type):
            raise ValueError(
                f"the guide pipeline predicts {pipeline_config['prediction_type']!r}, the model "
                f"{setup.parametrization.prediction_type!r}; allowed: a guide of the same parametrisation."
            )
        if (getattr(guide, "vae", None) is None) != (setup.decode is None):
            raise ValueError("the guide pipeline and the model differ in space (one has a VAE, the other not).")
        guide = guide.unet
    config = _config(guide)
    if config is None:
        if not callable(guide):
            raise TypeError(f"guide={guide!r} is not allowed; pass a UNet2DModel, a pipeline or a callable.")
        takes_labels = "class_labels" in setup.model_conditions
        return (lambda x, t, conditions: guide(x, t, **conditions)), takes_labels
    check_same_space("guide UNet", config, setup.sample_shape)
    if config.get("out_channels", setup.sample_shape[0]) != setup.sample_shape[0]:
        raise ValueError(
            f"the guide UNet outputs {config['out_channels']} channels; the model {setup.sample_shape[0]}."
        )
    classes = config.get("num_class_embeds")
    if classes is not None and (setup.null_class is None or classes != setup.null_class + 1):
        model_classes = (
            "an unconditional model" if setup.null_class is None else f"{setup.null_class + 1} class embeddings"
        )
        raise ValueError(
            f"the guide UNet has num_class_embeds={classes}, the model {model_classes}; allowed: the same classes, "
            "or an unconditional guide."
        )
    unet = guide

    def call(x: torch.Tensor, t: torch.Tensor, conditions: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return unet(x.to(unet.dtype), t, **conditions).sample

    return call, classes is not None


def check_classifier_classes(classes: int, model_classes: int | None, model: str) -> None:
    """A class-conditional ``model`` (``model_classes`` real classes; None: unconditional) and its classifier agree."""
    if model_classes is not None and classes != model_classes:
        raise ValueError(
            f"the classifier knows {classes} classes, the class-conditional {model} {model_classes}; "
            f"allowed: a classifier of the {model}'s classes."
        )


def classifier_function(
    classifier: object, setup: GuidanceSetup
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The classifier as ``fn(x, t) -> logits`` after every check (its classes against the labels included)."""
    config = _config(classifier)
    if config is None:
        if not callable(classifier):
            raise TypeError(f"classifier={classifier!r} is not allowed; pass a NoisyClassifier or a callable.")
        return classifier
    check_same_space("classifier", config, setup.sample_shape)
    check_same_path("classifier", config, setup)
    classes = config.get("num_classes")
    if classes is not None:
        check_classifier_classes(classes, setup.null_class, "model")
        if setup.labels is not None and setup.labels.device.type == "cpu" and bool((setup.labels >= classes).any()):
            raise ValueError(
                f"class labels {setup.labels.tolist()} name classes the classifier does not know; allowed: "
                f"integers in [0, {classes - 1}]."
            )
    dtype = getattr(classifier, "dtype", None)
    return lambda x, t: classifier(x if dtype is None else x.to(dtype), t)


def unet_sample_shape(unet_config: Mapping) -> tuple[int, int, int]:
    """(C, H, W) of the samples a UNet with ``unet_config`` denoises."""
    size = unet_config["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return (unet_config["in_channels"], height, width)


def check_guide_fits_unet(guide: object, unet_config: Mapping) -> None:
    """The ``guide_unet`` component denoises the UNet's samples, with its classes or none (pipeline row check)."""
    num_classes = unet_config.get("num_class_embeds")
    setup = GuidanceSetup(
        parametrization=None,
        sample_shape=unet_sample_shape(unet_config),
        null_class=None if num_classes is None else num_classes - 1,
    )
    guide_function(guide, setup)


def check_classifier_fits_unet(classifier: object, unet_config: Mapping) -> None:
    """The ``classifier`` component sees the UNet's samples and, for a conditional UNet, knows its classes."""
    check_same_space("classifier", classifier.config, unet_sample_shape(unet_config))
    num_class_embeds, classes = unet_config.get("num_class_embeds"), classifier.config.get("num_classes")
    if classes is not None:
        check_classifier_classes(classes, None if num_class_embeds is None else num_class_embeds - 1, "UNet")


# ============================================================================================
# scratch_diffusion.guidance.combination
# ============================================================================================

"""Guidance that combines two model outputs: classifier-free guidance and autoguidance, with an optional interval.

Both extrapolate from a weaker prediction towards the model's own, in its parametrisation (the combination is
linear, so it is the same rule on x̂0, ε̂, v or the velocity):

* **classifier-free guidance** (Ho & Salimans, 2022): ŷ = ŷ_∅ + w·(ŷ_c − ŷ_∅), the unconditional half with the
  null class ∅ of a class-conditional model, both halves in one batched forward pass;
* **autoguidance** (Karras et al., 2024): D_w = D_guide + w·(D_main − D_guide), the guide a *bad version of the
  model itself* — a smaller and/or shorter-trained UNet of the same path — given the same input and labels; it
  works for unconditional models too. One main and one guide evaluation per step.

**Guidance interval** (Kynkäänniemi et al., 2024): guide only at noise levels σ = b/a in (σ_lo, σ_hi]; outside,
the model's own prediction is used and the second evaluation (the unconditional half, the guide) is not made at
all, so the run costs fewer evaluations (:class:`~.setup.EvaluationCounter` counts the ones made).
"""


import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch



@dataclass(frozen=True)
class GuidanceInterval:
    """Noise levels σ = b/a in (low, high] (EDM's σ = e^{−λ}: the same on every path)."""

    low: float = 0.0
    high: float = math.inf

    def __post_init__(self) -> None:
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (self.low, self.high))
        if not numbers or not (
            0 <= self.low < self.high
        ):
            raise ValueError(
                f"interval=({self.low!r}, {self.high!r}) is not allowed; pass noise levels σ = b/a with "
                "0 ≤ low < high (high may be math.inf)."
            )

    @classmethod
    def of(cls, interval: GuidanceInterval | tuple[float, float] | None) -> GuidanceInterval | None:
        """``interval`` as given, from a (low, high) pair, or None."""
        if interval is None or isinstance(interval, GuidanceInterval):
            return interval
        low, high = interval
        return cls(float(low), float(high))

    def contains(self, point: EvaluationPoint) -> bool:
        """Whether the point's σ = b/a lies in (low, high] (a host comparison: nothing is read from a device)."""
        return self.low < noise_level(point) <= self.high

    def check(self, setup: GuidanceSetup) -> None:
        """The interval must meet the noise levels the model was trained on (else it would never guide)."""
        lam_low, lam_high = setup.log_snr_range
        sigma_min = math.exp(-lam_high) if math.isfinite(lam_high) else 0.0
        sigma_max = math.exp(-lam_low) if math.isfinite(lam_low) else math.inf
        if self.high < sigma_min or self.low >= sigma_max:
            raise ValueError(
                f"interval=({self.low:g}, {self.high:g}) lies outside the model's schedule, whose noise levels "
                f"σ = b/a span [{sigma_min:.4g}, {sigma_max:.4g}]; pass an interval that meets that range."
            )


def _expand_timestep(timestep: torch.Tensor, copies: int) -> torch.Tensor:
    """A per-example timestep repeated for each copy of the batch (a scalar one stays as it is)."""
    return timestep.repeat(copies) if timestep.ndim == 1 else timestep


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """ŷ = ŷ_∅ + w·(ŷ_c − ŷ_∅) (Ho & Salimans, 2022), optionally only for σ in ``interval``.

    Attributes:
        scale: the weight w (1: the conditional model alone).
        interval: (σ_lo, σ_hi) where it guides (Kynkäänniemi et al., 2024), or None for every step.
    """

    scale: float
    interval: GuidanceInterval | tuple[float, float] | None = None

    combines: ClassVar[bool] = True  # it combines model outputs (at most one such rule per run)
    needs_labels: ClassVar[bool] = True  # it guides towards given class labels
    memory_factor: ClassVar[int] = 2  # the model's batch is twice the sample batch

    def __post_init__(self) -> None:
        check_scale(self.scale, "ClassifierFreeGuidance")
        object.__setattr__(self, "interval", GuidanceInterval.of(self.interval))

    @property
    def argument(self) -> str:
        """How error messages name it."""
        return f"ClassifierFreeGuidance(scale={self.scale!r})"

    def bind(self, setup: GuidanceSetup) -> BoundClassifierFree:
        if setup.null_class is None or "class_labels" not in setup.model_conditions:
            raise ValueError(
                f"{self.argument} needs a class-conditional model (with a null class) and class labels; "
                "this model is unconditional — use AutoGuidance or ClassifierGuidance."
            )
        if self.interval is not None:
            self.interval.check(setup)
        return BoundClassifierFree(self, setup.model_conditions, setup.null_class)


class BoundClassifierFree:
    """Classifier-free guidance for one run: both halves' conditions expanded once."""

    def __init__(self, rule: ClassifierFreeGuidance, conditions: Mapping[str, torch.Tensor], null_class: int):
        self.rule, self.conditions = rule, dict(conditions)
        self.expanded = {name: torch.cat([value, value]) for name, value in conditions.items()}
        labels = conditions["class_labels"]
        self.expanded["class_labels"] = torch.cat([labels, torch.full_like(labels, null_class)])

    def __call__(
        self, model: ModelFunction, x: torch.Tensor, timestep: torch.Tensor, point: EvaluationPoint
    ) -> torch.Tensor:
        interval = self.rule.interval
        if interval is not None and not interval.contains(point):
            return model(x, timestep, self.conditions)
        output = model(torch.cat([x, x]), _expand_timestep(timestep, 2), self.expanded)
        conditional, unconditional = output.chunk(2)
        return unconditional + self.rule.scale * (conditional - unconditional)


@dataclass(frozen=True)
class AutoGuidance:
    """D_w = D_guide + w·(D_main − D_guide) (Karras et al., 2024), optionally only for σ in ``interval``.

    Attributes:
        scale: the weight w (1: the main model alone).
        guide: the bad version of the model: a ``UNet2DModel`` of the same path, sample size and latent space, a
            pipeline of ours (its path and schedule are checked), or a callable ``(x, t, **conditions)``; None:
            the pipeline's ``guide_unet`` component.
        interval: (σ_lo, σ_hi) where it guides, or None for every step.
    """

    scale: float
    guide: object | None = None
    interval: GuidanceInterval | tuple[float, float] | None = None

    combines: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False  # unconditional models are guided too
    memory_factor: ClassVar[int] = 1  # two forward passes of the sample batch, one per network

    def __post_init__(self) -> None:
        check_scale(self.scale, "AutoGuidance")
        object.__setattr__(self, "interval", GuidanceInterval.of(self.interval))

    @property
    def argument(self) -> str:
        return f"AutoGuidance(scale={self.scale!r})"

    def bind(self, setup: GuidanceSetup) -> BoundAutoGuidance:
        guide = self.guide if self.guide is not None else setup.components.get("guide_unet")
        if guide is None:
            raise ValueError(
                f"{self.argument} has no guide: pass AutoGuidance(scale, guide=...) or load a pipeline with a "
                "guide_unet component."
            )
        if self.interval is not None:
            self.interval.check(setup)
        function, takes_labels = guide_function(guide, setup)
        # the guide is a plain UNet: it takes the class labels at most, never the main model's other inputs
        # (a control image goes to the main model's control network only)
        labels = setup.model_conditions.get("class_labels")
        conditions = {"class_labels": labels} if takes_labels and labels is not None else {}
        return BoundAutoGuidance(self, setup.counter.counted("guide_unet", function), conditions, setup)


class BoundAutoGuidance:
    """Autoguidance for one run: the guide as a counted model function."""

    def __init__(self, rule: AutoGuidance, guide: ModelFunction, guide_conditions: Mapping, setup: GuidanceSetup):
        self.rule, self.guide, self.guide_conditions = rule, guide, guide_conditions
        self.conditions = setup.model_conditions

    def __call__(
        self, model: ModelFunction, x: torch.Tensor, timestep: torch.Tensor, point: EvaluationPoint
    ) -> torch.Tensor:
        main = model(x, timestep, self.conditions)
        interval = self.rule.interval
        if interval is not None and not interval.contains(point):
            return main
        guide = self.guide(x, timestep, self.guide_conditions).to(main.dtype)
        return guide + self.rule.scale * (main - guide)


def check_scale(scale: object, name: str) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{name}(scale={scale!r}) is not allowed; pass a finite number.")


# ============================================================================================
# scratch_diffusion.guidance.gradient
# ============================================================================================

"""Gradient guidance: classifier guidance and loss guidance, each a shift of the model's x̂0 by a score.

Both compute g = s·∇_x log p(y | x) at the model's point x = a·x0 + b·ε and apply it with the one formula
of :func:`~.setup.shift_output`: x̂0′ = x̂0 + (b²/a)·g, ε̂′ = ε̂ − b·g. Gradients are taken only here, under
``torch.enable_grad`` and with respect to the sample alone (``torch.autograd.grad``: no parameter gets a
``.grad``); every other evaluation stays under the caller's ``no_grad``.

At a = 0 (the flow path's σ = 1) x holds nothing about y and no gradient is taken: that first step is unguided.
The exact conditional denoiser there is E[x0 | y], the limit of the shift as a → 0, which no gradient at a = 0
supplies, so a flow grid that starts at σ = 1 carries an O(1/N) bias in N steps (measured 0.76/N for flow Euler on
the example mixture, ``tests/guidance/test_exact_guidance.py``); VP grids (a > 0 everywhere) have none.

* **Classifier guidance** (Dhariwal & Nichol, 2021): log p(y | x) from a noise-aware classifier p_φ(y | x_t)
  (:class:`~.noisy_classifier.NoisyClassifier`, or any ``fn(x, t) -> logits``). With the exact classifier and
  s = 1 the shifted denoiser is the exact conditional denoiser E[x0 | x, y] (Bayes' rule on the scores).
* **Loss guidance** (universal guidance, Bansal et al., 2023; DPS, Chung et al., 2023): log p(y | x) := −L(x̂0(x))
  for any differentiable per-example loss L — of x̂0, or of the decoded image x̂ = D(x̂0) on a latent pipeline.
  Scale convention: s multiplies the gradient of L itself, so g = −s·∇_x L and x̂0 moves by −s·(b²/a)·∇_x L; with
  ``through_model=True`` (DPS) ∇_x L is back-propagated through the model's x̂0(x); with ``through_model=False``
  the model's Jacobian is replaced by Tweedie's leading term I/a, so ∇_x L ≈ ∇_{x̂0} L / a (no backward pass
  through the UNet: cheaper, cruder).
"""


from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F



# ``evaluate(x, t) -> output``: the (possibly already guided) model evaluation a gradient rule wraps.
Evaluation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ClassifierGuidance:
    """x̂0′ = x̂0 + (b²/a)·s·∇_x log p_φ(y | x) (Dhariwal & Nichol, 2021).

    Attributes:
        scale: s (0: no guidance, bit for bit).
        classifier: a :class:`~.noisy_classifier.NoisyClassifier` (its path, schedule, space and classes are
            checked), or any ``fn(x, t) -> logits``; None: the pipeline's ``classifier`` component.
    """

    scale: float
    classifier: object | None = None

    combines: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = True
    memory_factor: ClassVar[int] = 1

    def __post_init__(self) -> None:
        check_scale(self.scale, "ClassifierGuidance")

    @property
    def argument(self) -> str:
        return f"ClassifierGuidance(scale={self.scale!r})"

    def resolve_classifier(self, components: Mapping[str, object]) -> object:
        """Its own classifier, else the ``classifier`` of ``components``; ``ValueError`` if there is none."""
        classifier = self.classifier if self.classifier is not None else components.get("classifier")
        if classifier is None:
            raise ValueError(
                f"{self.argument} has no classifier: pass ClassifierGuidance(scale, classifier=...) or load a "
                "pipeline with a classifier component (training/train_classifier.py trains one)."
            )
        return classifier

    def bind(self, setup: GuidanceSetup) -> BoundClassifierGuidance:
        classifier = self.resolve_classifier(setup.components)
        if setup.labels is None:
            raise ValueError(f"{self.argument} needs class labels to guide towards; pass class_labels.")
        function = setup.counter.counted("classifier", classifier_function(classifier, setup))
        return BoundClassifierGuidance(self.scale, function, setup)


class BoundClassifierGuidance:
    """Classifier guidance for one run."""

    def __init__(self, scale: float, classifier: Callable, setup: GuidanceSetup):
        self.scale, self.classifier, self.parametrization = scale, classifier, setup.parametrization
        self.labels = setup.labels[:, None]

    def log_likelihood_gradient(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """∇_x log p_φ(y | x) per example (the sum over the batch separates: each term sees its own x)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logits = self.classifier(x, timestep)  # half precision upcast to float32; float64 kept
            log_probs = F.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
            (gradient,) = torch.autograd.grad(log_probs.gather(1, self.labels.to(x.device)).sum(), x)
        return gradient

    def __call__(
        self, evaluate: Evaluation, x: torch.Tensor, timestep: torch.Tensor, point: EvaluationPoint
    ) -> torch.Tensor:
        output = evaluate(x, timestep)
        if self.scale == 0 or point.a == 0:
            return output
        return shift_output(output, self.scale * self.log_likelihood_gradient(x, timestep), point, self.parametrization)


@dataclass(frozen=True)
class LossGuidance:
    """x̂0′ = x̂0 − s·(b²/a)·∇_x L(x̂0(x)) for a differentiable per-example loss L (module docstring).

    Attributes:
        loss: ``loss(images) -> (B,)`` tensor; images are x̂0 in the model's space, or on a latent pipeline the
            decoded x̂0 in [−1, 1] (``space="decoded"``).
        scale: s, multiplying ∇L (0: no guidance).
        through_model: back-propagate through the model's x̂0(x) (DPS) rather than use ∂x̂0/∂x ≈ I/a.
        space: ``"decoded"`` (images; the default, the model's own samples on a pixel pipeline) or ``"model"``
            (the latents themselves on a latent pipeline).
    """

    loss: Callable[[torch.Tensor], torch.Tensor]
    scale: float = 1.0
    through_model: bool = True
    space: str = "decoded"

    combines: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    memory_factor: ClassVar[int] = 1

    SPACES: ClassVar[tuple[str, ...]] = ("decoded", "model")

    def __post_init__(self) -> None:
        check_scale(self.scale, "LossGuidance")
        if not callable(self.loss):
            raise TypeError(f"LossGuidance(loss={self.loss!r}) is not allowed; pass a callable images -> (B,) losses.")
        if self.space not in self.SPACES:
            raise ValueError(f"LossGuidance(space={self.space!r}) is not allowed; choose one of {list(self.SPACES)}.")

    @property
    def argument(self) -> str:
        return f"LossGuidance(scale={self.scale!r})"

    def bind(self, setup: GuidanceSetup) -> BoundLossGuidance:
        decode = setup.decode if self.space == "decoded" else None
        shape = setup.decoded_shape if decode is not None else setup.sample_shape
        batch = setup.counter.batch_size
        probe = torch.zeros(batch, *shape)  # a shape check on zeros of the run's batch: no model evaluation
        with torch.enable_grad():
            value = self.loss(probe)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (batch,):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"{self.argument}: the loss must return one scalar per example, shape (B,); for a batch of {batch} "
                f"images of shape {tuple(shape)} it returned {got}."
            )
        return BoundLossGuidance(self, decode, setup)


class BoundLossGuidance:
    """Loss guidance for one run."""

    def __init__(self, rule: LossGuidance, decode: Callable | None, setup: GuidanceSetup):
        self.rule, self.decode, self.parametrization = rule, decode, setup.parametrization
        self.counter = setup.counter  # a backward pass through the model is counted as one more evaluation

    def loss_of_x0(self, x0: torch.Tensor) -> torch.Tensor:
        images = x0 if self.decode is None else self.decode(x0)
        return self.rule.loss(images).sum()

    def __call__(
        self, evaluate: Evaluation, x: torch.Tensor, timestep: torch.Tensor, point: EvaluationPoint
    ) -> torch.Tensor:
        rule, a, b = self.rule, point.a, point.b
        if rule.scale == 0 or a == 0:
            return evaluate(x, timestep)
        prediction_type = self.parametrization.prediction_type
        with torch.enable_grad():
            if rule.through_model:
                x_grad = x.detach().requires_grad_(True)
                output = evaluate(x_grad, timestep)
                x0 = split_prediction(output, x_grad, a, b, prediction_type)[0]
                (gradient,) = torch.autograd.grad(self.loss_of_x0(x0), x_grad)
                self.counter.rows["unet_backward"] += x.shape[0]
                output = output.detach()
            else:
                output = evaluate(x, timestep)
                x0 = split_prediction(output, x, a, b, prediction_type)[0].detach().requires_grad_(True)
                (gradient,) = torch.autograd.grad(self.loss_of_x0(x0), x0)
                gradient = gradient / a
        return shift_output(output, -rule.scale * gradient, point, self.parametrization)


# ============================================================================================
# scratch_diffusion.guidance.compose
# ============================================================================================

"""Guidance rules bound together: one guided model evaluation, for the pipeline and for a bare model callable.

A run's rules are at most one *combining* rule (classifier-free guidance or autoguidance), first, and any number
of *gradient* rules (classifier and loss guidance) after it, each wrapping the evaluation before it:

    ŷ = G_k(… G_1(C(model)))    e.g. [ClassifierFreeGuidance(2.0), ClassifierGuidance(0.5)]

:func:`bind_guidance` checks and binds them to a :class:`~.setup.GuidanceSetup` before any evaluation; the
:class:`GuidedEvaluation` it returns is what the pipeline's denoiser calls at each point.

:func:`guided_model` is the same for a bare model callable ``model(sample, timestep) -> model_output`` (the shape
``ExactDenoiser`` and the likelihood API use) with the scheduler that describes its path: it returns the guided
model, so guidance can be checked against exact answers without a trained network.
"""


import functools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch



GuidanceRule = ClassifierFreeGuidance | AutoGuidance | ClassifierGuidance | LossGuidance
RULES = (ClassifierFreeGuidance, AutoGuidance, ClassifierGuidance, LossGuidance)
Guidance = GuidanceRule | Sequence[GuidanceRule]


# What makes an object a guidance rule (duck-typed: a rule of your own, or ours from another copy of the package,
# such as the code a saved pipeline ships, works alike).
RULE_MEMBERS = ("bind", "combines", "needs_labels", "memory_factor", "argument")


def is_rule(value: object) -> bool:
    """Whether ``value`` has the members of a guidance rule (:data:`RULE_MEMBERS`)."""
    return all(hasattr(value, member) for member in RULE_MEMBERS)


def as_rules(guidance: Guidance | None) -> tuple[GuidanceRule, ...]:
    """``guidance`` as a tuple of rules, checked: at most one combining rule, and it comes first."""
    if guidance is None:
        return ()
    rules = (guidance,) if is_rule(guidance) else tuple(guidance) if isinstance(guidance, Sequence) else None
    if rules is None or isinstance(guidance, str) or not all(is_rule(rule) for rule in rules):
        raise TypeError(
            f"guidance={guidance!r} is not allowed; pass one rule or a list of rules such as "
            f"{[cls.__name__ for cls in RULES]} (an object with {list(RULE_MEMBERS)})."
        )
    combining = [i for i, rule in enumerate(rules) if rule.combines]
    if len(combining) > 1 or combining[:1] not in ([], [0]):
        raise ValueError(
            f"guidance={list(rules)!r} is not allowed; pass at most one of ClassifierFreeGuidance/AutoGuidance, "
            "first, then any ClassifierGuidance/LossGuidance."
        )
    return rules


class GuidedEvaluation:
    """The bound rules of one run: ``guided(model, x, t, point) -> output`` (module docstring)."""

    def __init__(self, rules: Sequence[GuidanceRule], setup: GuidanceSetup):
        self.rules = tuple(rules)
        bound = [rule.bind(setup) for rule in self.rules]  # every check, before any evaluation
        self.combination = bound[0] if self.rules and self.rules[0].combines else None
        self.gradients = bound[1:] if self.combination is not None else bound
        self.conditions = setup.model_conditions

    @property
    def memory_factor(self) -> int:
        """The model's batch per sample (2 under classifier-free guidance)."""
        return max((rule.memory_factor for rule in self.rules), default=1)

    def __call__(
        self, model: ModelFunction, x: torch.Tensor, timestep: torch.Tensor, point: EvaluationPoint
    ) -> torch.Tensor:
        if self.combination is not None:
            evaluate = functools.partial(self.combination, model, point=point)
        else:
            evaluate = functools.partial(_plain, model, conditions=self.conditions)
        for rule in self.gradients:
            evaluate = functools.partial(rule, evaluate, point=point)
        return evaluate(x, timestep)


def _plain(model: ModelFunction, x: torch.Tensor, timestep: torch.Tensor, conditions: Mapping) -> torch.Tensor:
    return model(x, timestep, conditions)


def bind_guidance(guidance: Guidance | None, setup: GuidanceSetup) -> GuidedEvaluation | None:
    """The rules of ``guidance`` bound to ``setup`` (None for no rule); raises before any model evaluation."""
    rules = as_rules(guidance)
    return GuidedEvaluation(rules, setup) if rules else None


def schedule_log_snr_range(scheduler: object) -> tuple[float, float]:
    """(λ_min, λ_max) a model of ``scheduler``'s path was trained on (the flow path covers every λ)."""
    if parametrization_of(scheduler).path == "flow":
        return (-math.inf, math.inf)
    table = vp_log_snr_table(scheduler.alphas_cumprod)
    return (float(np.min(table)), float(np.max(table)))


class GuidedModel:
    """A bare model callable with guidance: ``guided(sample, timestep) -> model_output`` (see :func:`guided_model`)."""

    def __init__(self, model: Callable, scheduler: object, guidance: Guidance, labels, conditional: bool, components):
        self.model, self.scheduler, self.rules = model, scheduler, as_rules(guidance)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.conditional, self.components = conditional, dict(components or {})
        self.guided: GuidedEvaluation | None = None
        self.counter: EvaluationCounter | None = None

    def bind(self, sample: torch.Tensor) -> GuidedEvaluation:
        """Bind the rules for batches like ``sample`` (done at the first call, before the model is evaluated)."""
        labels = self.labels
        if labels is not None and labels.ndim == 0:
            labels = labels.expand(len(sample))
        conditions = {"class_labels": labels} if self.conditional and labels is not None else {}
        self.counter = EvaluationCounter(len(sample))
        setup = GuidanceSetup(
            parametrization=parametrization_of(self.scheduler),
            sample_shape=tuple(sample.shape[1:]),
            labels=labels,
            model_conditions=conditions,
            null_class=self.components.get("null_class"),
            log_snr_range=schedule_log_snr_range(self.scheduler),
            components=self.components,
            counter=self.counter,
        )
        return GuidedEvaluation(self.rules, setup)

    def __call__(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        if self.guided is None:
            self.guided = self.bind(sample)
        a, b = (float(v) for v in signal_noise_at(self.scheduler, torch.as_tensor(timestep).detach().cpu()))
        point = EvaluationPoint(a, b, point_log_snr(a, b))
        model = self.counter.counted("model", lambda x, t, conditions: self.model(x, t, **conditions))
        return self.guided(model, sample, torch.as_tensor(timestep), point)

    @property
    def evaluations(self) -> dict[str, float]:
        """Evaluations per sample of each model so far (``model``, ``guide_unet``, ``classifier``, …)."""
        return {} if self.counter is None else self.counter.per_image()


def guided_model(
    model: Callable,
    scheduler: object,
    guidance: Guidance,
    class_labels: int | Sequence[int] | torch.Tensor | None = None,
    *,
    conditional: bool = False,
    null_class: int | None = None,
    guide_unet: object | None = None,
    classifier: object | None = None,
) -> GuidedModel:
    """``model(sample, timestep) -> output`` with ``guidance`` applied, on the path ``scheduler`` describes.

    Args:
        model: a model callable in ``scheduler``'s parametrisation (e.g. ``ExactDenoiser(mixture, scheduler)``);
            called as ``model(x, t, class_labels=...)`` when ``conditional``.
        scheduler: describes the path and parametrisation (``noise_path.signal_noise_at`` gives each point).
        guidance: one rule or a list (:func:`as_rules`).
        class_labels: the classes to guide towards (one for all, or one per sample).
        conditional: the model takes ``class_labels`` (classifier-free guidance needs it, with ``null_class``).
        guide_unet, classifier: the defaults of rules given without their own.
    """
    components = {"guide_unet": guide_unet, "classifier": classifier, "null_class": null_class}
    return GuidedModel(model, scheduler, guidance, class_labels, conditional, components)


# ============================================================================================
# scratch_diffusion.control.conditioning_encoder
# ============================================================================================

"""ControlNet's conditioning encoder E: a control image at pixel resolution → features on the UNet's first grid.

Zhang, Rao & Agrawala (2023, §3.2) encode a 512×512 control image to Stable Diffusion's 64×64 latent grid with
"a tiny network E(·) of four convolution layers" with stride 2. Here the sample may be pixels (the control image
has the sample's size, ``downscale_factor`` 1) or a VAE's latents (the control image is ``downscale_factor`` =
the VAE's scale factor times larger), so the number of stride-2 convolutions is log2(downscale_factor). The last
convolution is zero-initialised: at initialisation E(c) = 0 and the control network's stream equals the UNet's.
"""


import torch
from torch import nn


def is_power_of_two(value: object) -> bool:
    """Whether ``value`` is an integer 2^k, k ≥ 0 (bools excluded)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1 and value & (value - 1) == 0


class ConditioningEncoder(nn.Module):
    """E: (B, C_c, f·H, f·W) → (B, C_out, H, W) with 3×3 convolutions and SiLU, the last one zero-initialised.

    Layers: a 3×3 conv to ``widths[0]``; one 3×3 conv to each further width, the first log2(f) of them with
    stride 2; further stride-2 convs at ``widths[-1]`` while the factor needs more halvings; then the zero conv to
    ``out_channels``. A stride-2 conv with padding 1 halves an even side exactly.

    Args:
        conditioning_channels: C_c, the control image's channels.
        out_channels: C_out, the channels of the UNet's ``conv_in`` output the features are added to.
        downscale_factor: f, a power of 2: the control image is f times the sample's height and width.
        widths: the encoder's hidden widths (at least one).
    """

    def __init__(self, conditioning_channels: int, out_channels: int, downscale_factor: int, widths: tuple[int, ...]):
        super().__init__()
        halvings = downscale_factor.bit_length() - 1
        plan = [*widths[1:], *[widths[-1]] * max(0, halvings - (len(widths) - 1))]
        layers: list[nn.Module] = [nn.Conv2d(conditioning_channels, widths[0], kernel_size=3, padding=1), nn.SiLU()]
        width = widths[0]
        for index, next_width in enumerate(plan):
            stride = 2 if index < halvings else 1
            layers += [nn.Conv2d(width, next_width, kernel_size=3, padding=1, stride=stride), nn.SiLU()]
            width = next_width
        self.layers = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(width, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # the paper's zero convolution: E(c) = 0 at initialisation
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, control_image: torch.Tensor) -> torch.Tensor:
        """Features (B, C_out, H, W) of ``control_image`` (B, C_c, f·H, f·W)."""
        return self.conv_out(self.layers(control_image))


# ============================================================================================
# scratch_diffusion.control.controlnet
# ============================================================================================

"""A control network for a frozen ``UNet2DModel`` (ControlNet: Zhang, Rao & Agrawala, 2023).

The network is a trainable copy of the UNet's encoder — ``conv_in``, the time (and class) embedding, the down
blocks and the mid block — whose input is the noisy sample plus the encoded control image,
h₀ = conv_in(x_t) + E(c) (``conditioning_encoder.py``). Every tensor the UNet keeps for a skip connection (conv_in's
output and each resnet / downsampler output of the down blocks, the ``down_block_res_samples`` of
``UNet2DModel.forward``) and the mid block's output pass through a zero-initialised 1×1 convolution Z; the results,
times ``conditioning_scale``, are the residuals ``ControlledUNet`` adds to the frozen UNet's skips and mid block:
y_c = F(x; Θ) + Z(F(x + Z(c; Θ_z1); Θ_c); Θ_z2) (the paper's Eq. 2). At initialisation every Z is zero, so the
residuals are exactly zero and the controlled UNet's output is the UNet's bit for bit.

The copied parts are not rebuilt here: ``__init__`` builds a ``UNet2DModel`` from the copied config keys
(:data:`COPIED_UNET_KEYS`) and keeps its modules, so they are diffusers' own blocks with diffusers' construction.
"""


import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import BaseOutput
from torch import nn


# The UNet2DModel config keys that define the copied path (everything but the up path and out_channels).
COPIED_UNET_KEYS = (
    "sample_size", "in_channels", "center_input_sample", "time_embedding_type", "time_embedding_dim", "freq_shift",
    "flip_sin_to_cos", "down_block_types", "mid_block_type", "block_out_channels", "layers_per_block",
    "mid_block_scale_factor", "downsample_padding", "downsample_type", "dropout", "act_fn", "attention_head_dim",
    "norm_num_groups", "attn_norm_num_groups", "norm_eps", "resnet_time_scale_shift", "add_attention",
    "class_embed_type", "num_class_embeds", "num_train_timesteps",
)  # fmt: skip
# The UNet2DModel modules the control network copies (weights included, by ``from_unet``).
COPIED_UNET_MODULES = ("conv_in", "time_proj", "time_embedding", "class_embedding", "down_blocks", "mid_block")
# Down blocks whose skip tensors are one per resnet plus one after the downsampler (UNet2DModel's 2-D blocks).
CONTROL_DOWN_BLOCK_TYPES = (
    "DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D", "SkipDownBlock2D", "AttnSkipDownBlock2D",
)  # fmt: skip
UNET_CONFIG_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(UNet2DModel.__init__).parameters.items()
    if name != "self"
}


@dataclass
class ControlNet2DOutput(BaseOutput):
    """The residuals of :class:`ControlNet2DModel`, already scaled by ``conditioning_scale``.

    Args:
        down_block_res_samples: one per skip tensor of ``UNet2DModel.forward``, in the order it collects them.
        mid_block_res_sample: added to the mid block's output.
    """

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor


def zero_conv(channels: int) -> nn.Conv2d:
    """A 1×1 convolution with zero weight and bias (the paper's zero convolution Z)."""
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def check_control_image(
    control_image: object, sample_shape: tuple[int, ...], conditioning_channels: int, downscale_factor: int
) -> None:
    """``control_image`` is a tensor (B, C_c, f·H, f·W) for a sample (B, C, H, W); raises naming both shapes."""
    if not isinstance(control_image, torch.Tensor):
        raise TypeError(f"controlnet_cond of type {type(control_image).__name__} is not allowed; pass a tensor.")
    batch, _, height, width = sample_shape
    needed = (batch, conditioning_channels, height * downscale_factor, width * downscale_factor)
    if tuple(control_image.shape) != needed:
        raise ValueError(
            f"controlnet_cond of shape {tuple(control_image.shape)} is not allowed with a sample of shape "
            f"{tuple(sample_shape)}; the control network needs {needed}: the sample's batch, "
            f"conditioning_channels={conditioning_channels} and conditioning_downscale_factor={downscale_factor} "
            "times the sample's height and width."
        )


def _as_saved(value: object) -> object:
    """A config value with tuples as lists (a saved config reads back lists)."""
    return [_as_saved(item) for item in value] if isinstance(value, (list, tuple)) else value


def check_controlnet_fits_unet(controlnet: object, unet_config: Mapping) -> None:
    """The ``controlnet`` component was made from a UNet of ``unet_config`` (pipeline row check).

    Raises:
        ValueError: naming the first of :data:`COPIED_UNET_KEYS` that differs.
    """
    config = controlnet.config
    for key in COPIED_UNET_KEYS:
        made_from = _as_saved(config.get(key, UNET_CONFIG_DEFAULTS[key]))
        unet_value = _as_saved(unet_config.get(key, UNET_CONFIG_DEFAULTS[key]))
        if made_from != unet_value:
            raise ValueError(
                f"the control network was made from a UNet with {key}={made_from!r}, but this UNet has "
                f"{key}={unet_value!r}; allowed: ControlNet2DModel.from_unet(unet) of this UNet (equal {key})."
            )


class ControlNet2DModel(ModelMixin, ConfigMixin):
    """Residuals for a frozen ``UNet2DModel``'s skips and mid block from a control image (module docstring).

    Args:
        sample_size … num_train_timesteps: as ``UNet2DModel``'s (:data:`COPIED_UNET_KEYS`; the same defaults);
            ``down_block_types`` from :data:`CONTROL_DOWN_BLOCK_TYPES`.
        conditioning_channels: the control image's channels.
        conditioning_downscale_factor: a power of 2; the control image is that many times the sample's height and
            width (1 for pixel pipelines, the VAE scale factor for latent ones).
        conditioning_embedding_channels: the conditioning encoder's hidden widths.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns: ClassVar[list[str]] = ["norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
        conditioning_channels: int = 3,
        conditioning_downscale_factor: int = 1,
        conditioning_embedding_channels: tuple[int, ...] = (16, 32),
    ):
        super().__init__()
        arguments = locals()
        unet_config = {key: arguments[key] for key in COPIED_UNET_KEYS}
        checks = (
            (all(kind in CONTROL_DOWN_BLOCK_TYPES for kind in down_block_types),
             f"down_block_types={list(down_block_types)}", f"types from {list(CONTROL_DOWN_BLOCK_TYPES)}"),
            (isinstance(conditioning_channels, int) and conditioning_channels >= 1,
             f"conditioning_channels={conditioning_channels!r}", "an integer ≥ 1"),
            (is_power_of_two(conditioning_downscale_factor),
             f"conditioning_downscale_factor={conditioning_downscale_factor!r}", "a power of 2 (1, 2, 4, 8, …)"),
            (len(conditioning_embedding_channels) >= 1
             and all(isinstance(w, int) and w >= 1 for w in conditioning_embedding_channels),
             f"conditioning_embedding_channels={list(conditioning_embedding_channels)}",
             "one or more positive integer widths"),
        )  # fmt: skip
        for holds, value, allowed in checks:
            if not holds:
                raise ValueError(f"{value} is not allowed; pass {allowed}.")
        # diffusers builds the copied path; the up path it also builds (one plain block per level) is dropped.
        unet = UNet2DModel(**unet_config, up_block_types=("UpBlock2D",) * len(down_block_types))
        self.conv_in = unet.conv_in
        self.time_proj = unet.time_proj
        self.time_embedding = unet.time_embedding
        self.class_embedding = unet.class_embedding
        self.down_blocks = unet.down_blocks
        self.mid_block = unet.mid_block
        self.conditioning_encoder = ConditioningEncoder(
            conditioning_channels, block_out_channels[0], conditioning_downscale_factor,
            tuple(conditioning_embedding_channels),
        )  # fmt: skip
        skip_channels = [block_out_channels[0]]
        for block in self.down_blocks:  # one skip per resnet, one after the downsampler (CONTROL_DOWN_BLOCK_TYPES)
            count = len(block.resnets) + (block.downsamplers is not None)
            skip_channels += [block.resnets[-1].out_channels] * count
        self.down_zero_convs = nn.ModuleList(zero_conv(channels) for channels in skip_channels)
        self.mid_zero_conv = zero_conv(block_out_channels[-1])

    def embedding(
        self, sample: torch.Tensor, timestep: torch.Tensor | float | int, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The time (plus class) embedding the blocks receive, computed as ``UNet2DModel.forward`` does.

        A Python number becomes an integer tensor (as the UNet does); a 0-d or 1-element timestep is broadcast to
        the batch.
        """
        if not torch.is_tensor(timestep):
            timesteps = torch.tensor([timestep], dtype=torch.long, device=sample.device)
        else:
            timesteps = timestep.reshape(-1).to(sample.device) if timestep.ndim == 0 else timestep
        if timesteps.ndim != 1 or len(timesteps) not in (1, sample.shape[0]):
            raise ValueError(
                f"timestep of shape {tuple(timesteps.shape)} is not allowed for a batch of {sample.shape[0]}; "
                "pass a scalar or one timestep per example."
            )
        timesteps = timesteps.expand(sample.shape[0])
        # the projection has no weights and answers float32; the embedding may run in another dtype
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=self.dtype))
        if self.class_embedding is None:
            if class_labels is not None:
                raise ValueError(
                    "class_labels are not allowed: this control network (like its UNet) is unconditional "
                    "(class_embed_type=None, num_class_embeds=None); pass class_labels=None."
                )
            return emb
        if class_labels is None:
            raise ValueError("class_labels=None is not allowed: this control network's UNet is class-conditional.")
        if self.config.class_embed_type == "timestep":
            class_labels = self.time_proj(class_labels)
        return emb + self.class_embedding(class_labels).to(dtype=self.dtype)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        controlnet_cond: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        conditioning_scale: float | torch.Tensor = 1.0,
        return_dict: bool = True,
    ) -> ControlNet2DOutput | tuple:
        """The scaled residuals for the UNet's skips and mid block.

        Args:
            sample: the noisy sample (B, C, H, W) the UNet is given.
            timestep: the UNet's timestep (a number, a 0-d tensor or one per example).
            controlnet_cond: the control image (B, conditioning_channels, f·H, f·W) in [0, 1], cast to the
                network's dtype.
            class_labels: the UNet's class labels (a class-conditional UNet's network needs them).
            conditioning_scale: multiplies every residual: a number, or a tensor (B,) of one scale per example.
            return_dict: a :class:`ControlNet2DOutput`, else the tuple ``(down_block_res_samples, mid)``.
        """
        check_control_image(
            controlnet_cond, tuple(sample.shape), self.config.conditioning_channels,
            self.config.conditioning_downscale_factor,
        )  # fmt: skip
        if isinstance(conditioning_scale, torch.Tensor) and conditioning_scale.ndim == 1:
            if len(conditioning_scale) != sample.shape[0]:
                raise ValueError(
                    f"conditioning_scale of shape {tuple(conditioning_scale.shape)} is not allowed for a batch of "
                    f"{sample.shape[0]}; pass a number or one scale per example."
                )
            conditioning_scale = conditioning_scale[:, None, None, None]
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = self.embedding(sample, timestep, class_labels)
        skip_sample = sample
        hidden = self.conv_in(sample) + self.conditioning_encoder(controlnet_cond.to(self.dtype))
        skips = [hidden]
        for block in self.down_blocks:
            if hasattr(block, "skip_conv"):  # NCSN++'s skip blocks also carry the downsampled input
                hidden, states, skip_sample = block(hidden_states=hidden, temb=emb, skip_sample=skip_sample)
            else:
                hidden, states = block(hidden_states=hidden, temb=emb)
            skips += states
        if self.mid_block is not None:
            hidden = self.mid_block(hidden, emb)
        down = tuple(conv(skip) * conditioning_scale for conv, skip in zip(self.down_zero_convs, skips, strict=True))
        mid = self.mid_zero_conv(hidden) * conditioning_scale
        if not return_dict:
            return down, mid
        return ControlNet2DOutput(down_block_res_samples=down, mid_block_res_sample=mid)

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DModel,
        conditioning_channels: int | None = None,
        conditioning_downscale_factor: int = 1,
        conditioning_embedding_channels: tuple[int, ...] = (16, 32),
        load_weights_from_unet: bool = True,
    ) -> ControlNet2DModel:
        """A control network for ``unet``: its copied path's config, and (by default) its weights copied exactly.

        Args:
            unet: the frozen UNet.
            conditioning_channels: the control image's channels (None: the UNet's ``in_channels``, right for a pixel
                pipeline; pass the image's channels for a latent one).
            conditioning_downscale_factor: 1 for a pixel pipeline, the VAE scale factor for a latent one.
            conditioning_embedding_channels: the conditioning encoder's widths.
            load_weights_from_unet: copy the UNet's weights into the copied modules (else diffusers' fresh init).

        Returns:
            A float32 network on the UNet's device (a trainable copy, whatever the UNet's dtype).
        """
        config = {key: unet.config.get(key, UNET_CONFIG_DEFAULTS[key]) for key in COPIED_UNET_KEYS}
        controlnet = cls(
            **config,
            conditioning_channels=unet.config.in_channels if conditioning_channels is None else conditioning_channels,
            conditioning_downscale_factor=conditioning_downscale_factor,
            conditioning_embedding_channels=tuple(conditioning_embedding_channels),
        )
        if load_weights_from_unet:
            for name in COPIED_UNET_MODULES:
                source = getattr(unet, name)
                if source is not None:
                    getattr(controlnet, name).load_state_dict(source.state_dict())
        return controlnet.to(unet.device)


# ============================================================================================
# scratch_diffusion.few_step.flow_map_unet
# ============================================================================================

"""A flow map on diffusers' ``UNet2DModel``: the average velocity u(z_t, r, t) with a second time input r.

MeanFlow (Geng et al., 2025, "Mean Flows for One-step Generative Modeling") conditions the network on two times;
(t, t − r) is one of the conditionings its ablations compare. Here t enters through the UNet's own time
embedding, unchanged, and the interval t − r through one added submodule,

    emb = time_embedding(time_proj(t)) + interval_embedding(t − r)     (+ the class embedding, as before),

with ``interval_embedding`` = a sinusoidal projection with the settings of the UNet's ``time_proj`` (diffusers'
``Timesteps``) followed by a ``TimestepEmbedding`` MLP to the time-embedding width whose last linear layer starts
at zero. Both times are in the model's timestep units (timestep = σ·T on the flow path z_σ = (1 − σ)·x0 + σ·ε).

Why this shape:

- **No copy of diffusers' forward.** The sum goes in through a forward hook on ``self.time_embedding`` registered
  for one call and removed in a ``finally`` (as ``scratch_diffusion.control.residuals`` adds ControlNet residuals);
  the rest of ``UNet2DModel.forward`` is the installed one. The hook lives on the module while the call runs: do
  not call the same model from another thread meanwhile.
- **No extra config keys.** The class takes exactly ``UNet2DModel``'s constructor arguments, so
  ``FlowMapUNet2DModel.from_config(unet.config)`` builds it and ``save_pretrained``/``from_pretrained`` work as for
  any diffusers model (the saved config names ``_class_name: FlowMapUNet2DModel``).
- **A trained flow-matching UNet is the start.** At r = t, u is the instantaneous velocity v(z_t, t), which is what
  a flow-matching UNet predicts; :meth:`FlowMapUNet2DModel.from_unet` copies its weights, and the zero last layer
  makes the copy's output equal the UNet's bit for bit at every r until training moves it.

Loading a saved flow map with plain ``UNet2DModel.from_pretrained`` "works" and gives a different model: diffusers
warns that the checkpoint's ``interval_embedding.*`` weights were not used and drops them. What is left is the
flow map without its interval embedding, which is not even u(z, t, t) once training has made the embedding of
the interval 0 nonzero (it is u only while the last layer is still zero). Load flow maps with this class. Loading
a plain UNet folder with ``FlowMapUNet2DModel.from_pretrained`` gives what :meth:`FlowMapUNet2DModel.from_unet`
gives (a new zero interval embedding; diffusers warns that those weights were newly initialised).
"""


import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import UNet2DModel
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

INTERVAL_EMBEDDING_PREFIX = "interval_embedding."
# The time embeddings a flow map can differentiate in t: a learned table (nn.Embedding) takes integer steps.
TIME_EMBEDDING_TYPES = ("positional", "fourier")


class IntervalEmbedding(nn.Module):
    """t − r (timestep units, (B,)) → (B, time-embedding width): sinusoids, then an MLP whose last layer is zero.

    Args:
        num_channels, flip_sin_to_cos, downscale_freq_shift: the settings of the UNet's sinusoidal ``time_proj``.
        time_embed_dim: the width of the UNet's time embedding.
    """

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, time_embed_dim: int):
        super().__init__()
        self.proj = Timesteps(num_channels, flip_sin_to_cos, downscale_freq_shift)
        self.embedding = TimestepEmbedding(num_channels, time_embed_dim)
        nn.init.zeros_(self.embedding.linear_2.weight)
        nn.init.zeros_(self.embedding.linear_2.bias)

    def forward(self, interval: torch.Tensor) -> torch.Tensor:
        """The embedding of ``interval`` (B,); the float32 sinusoids are cast to the MLP's dtype first."""
        return self.embedding(self.proj(interval).to(dtype=self.embedding.linear_1.weight.dtype))


def _per_example(value: torch.Tensor | float | int, batch: int, device: torch.device, name: str) -> torch.Tensor:
    """``value`` (a number, a 0-d tensor or shape (B,)) as a (B,) tensor on ``device``."""
    tensor = torch.as_tensor(value, device=device)
    if tensor.ndim == 0:
        tensor = tensor.reshape(1).expand(batch)
    if tuple(tensor.shape) != (batch,):
        raise ValueError(
            f"{name} of shape {tuple(tensor.shape)} is not allowed for a batch of {batch}: pass a number, a 0-d "
            f"tensor or a tensor of shape ({batch},)."
        )
    return tensor


@contextmanager
def _added_to_time_embedding(time_embedding: nn.Module, addition: torch.Tensor) -> Iterator[None]:
    """Within the block, ``time_embedding``'s output is its own plus ``addition`` (cast to the output's dtype)."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + addition.to(output.dtype)

    handle = time_embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class FlowMapUNet2DModel(UNet2DModel):
    """``UNet2DModel`` with a second time input: u(z_t, r, t), the average velocity over [r, t] (module docstring).

    Takes ``UNet2DModel``'s constructor arguments and no others (its config is a UNet's); ``time_embedding_type``
    must be one of ``TIME_EMBEDDING_TYPES`` (the interval projection is sinusoidal either way).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.config.time_embedding_type not in TIME_EMBEDDING_TYPES:
            raise ValueError(
                f"time_embedding_type={self.config.time_embedding_type!r} is not allowed for a flow map: MeanFlow "
                f"differentiates u in t, which a learned embedding table does not allow; use one of "
                f"{TIME_EMBEDDING_TYPES}."
            )
        self.interval_embedding = self._new_interval_embedding()

    # ConfigMixin reads the constructor's keys from its signature (from_config, from_pretrained): UNet2DModel's.
    __init__.__signature__ = inspect.signature(UNet2DModel.__init__)

    def _new_interval_embedding(self) -> IntervalEmbedding:
        """An interval embedding for this UNet (float32, on the CPU or the ``meta`` device being initialised on)."""
        return IntervalEmbedding(
            num_channels=self.config.block_out_channels[0],
            flip_sin_to_cos=self.config.flip_sin_to_cos,
            downscale_freq_shift=self.config.freq_shift,
            time_embed_dim=self.time_embedding.linear_2.out_features,
        )

    @classmethod
    def from_unet(cls, unet: UNet2DModel) -> FlowMapUNet2DModel:
        """A flow map with ``unet``'s config and weights and a zero interval embedding (equal to ``unet`` at any r).

        Keeps ``unet``'s device, dtype and train/eval mode; ``unet`` itself is not changed.
        """
        flow_map = cls.from_config(unet.config)
        missing, unexpected = flow_map.load_state_dict(unet.state_dict(), strict=False)
        stray = [key for key in missing if not key.startswith(INTERVAL_EMBEDDING_PREFIX)]
        if stray or unexpected:
            raise ValueError(f"{type(unet).__name__} does not match its own config: missing {stray}, unexpected "
                             f"{list(unexpected)}; pass a UNet2DModel.")  # fmt: skip
        if flow_map.dtype != unet.dtype:  # ModelMixin.to warns about fp32 modules whenever a dtype is passed
            flow_map = flow_map.to(unet.dtype)
        return flow_map.to(unet.device).train(unet.training)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> FlowMapUNet2DModel:
        """``ModelMixin.from_pretrained``; a plain UNet's checkpoint loads too, with a new zero interval embedding.

        (diffusers would leave the weights a checkpoint lacks on the ``meta`` device; they are made anew here, on
        the device and in the dtype of the loaded ``conv_in``.)
        """
        flow_map = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if any(parameter.is_meta for parameter in flow_map.interval_embedding.parameters()):
            weight = flow_map.conv_in.weight
            flow_map.interval_embedding = flow_map._new_interval_embedding().to(weight.device, weight.dtype)
        return flow_map

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        r_timestep: torch.Tensor | float | int | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple:
        """u(z_t, r, t): ``UNet2DModel.forward`` with the interval embedding of t − r added to the time embedding.

        Args:
            sample: z_t, (B, C, H, W).
            timestep: t in the model's timestep units (σ_t·T on the flow path), a number or (B,); passed to
                ``UNet2DModel.forward`` unchanged (which truncates a Python float to an integer: pass a tensor
                for fractional times; the interval t − r uses the same t).
            class_labels: as ``UNet2DModel`` takes them.
            r_timestep: r in the same units, a number or (B,); ``None`` means r = t (interval 0: the
                instantaneous velocity).
            return_dict: as ``UNet2DModel``.

        Returns:
            What ``UNet2DModel.forward`` returns: a ``UNet2DOutput``, or ``(sample,)`` with ``return_dict=False``.

        Raises:
            ValueError: if ``timestep`` or ``r_timestep`` is neither a number nor of shape (B,).
        """
        batch, device = sample.shape[0], sample.device
        # t as UNet2DModel.forward embeds it: a Python number becomes an integer (long) tensor there
        t = _per_example(timestep if torch.is_tensor(timestep) else int(timestep), batch, device, "timestep")
        r = t if r_timestep is None else _per_example(r_timestep, batch, device, "r_timestep")
        interval_emb = self.interval_embedding(t - r)
        with _added_to_time_embedding(self.time_embedding, interval_emb):
            return super().forward(sample, timestep, class_labels=class_labels, return_dict=return_dict)


# ============================================================================================
# scratch_schedulers.model_path
# ============================================================================================

"""The path a model was trained on, as a clock: from a log-SNR λ to the model's timestep and path point.

A model is evaluated at the point of its own path with the sampler's SNR (``path_change``); :class:`ModelPath`
holds what that needs — the parametrisation, ``num_train_timesteps`` and, on the VP path, the log-SNR table of
the training schedule, built from the ``noise_schedule`` dict a pipeline records (:data:`VP_SCHEDULE_DEFAULTS`'
keys on the VP path, ``num_train_timesteps`` on the flow path). The pipeline's change of variables, the
likelihood code and the noise-aware classifier read it here.
"""


import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch


# The keys of a training scheduler's config that fix its noise path (saved as the pipeline's noise_schedule).
VP_SCHEDULE_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "rescale_betas_zero_snr": False,
}


@dataclass(frozen=True)
class ModelPath:
    """The path a UNet was trained on, with the clock that turns a log-SNR into its timestep."""

    parametrization: Parametrization
    num_train_timesteps: int
    log_snr_table: np.ndarray | None = None  # VP only: λ_t for t = 0..T−1

    @classmethod
    def from_schedule(cls, parametrization: Parametrization, schedule: Mapping) -> ModelPath:
        """Build from a ``noise_schedule`` dict (:func:`noise_schedule_of`)."""
        if parametrization.path == "flow":
            return cls(parametrization, int(schedule["num_train_timesteps"]))
        s = {**VP_SCHEDULE_DEFAULTS, **schedule}
        betas = make_betas(
            s["beta_schedule"], s["num_train_timesteps"], s["beta_start"], s["beta_end"], s["trained_betas"]
        )
        if s["rescale_betas_zero_snr"]:
            betas = rescale_zero_terminal_snr(betas)
        table = vp_log_snr_table(torch.cumprod(1.0 - betas, dim=0))
        return cls(parametrization, int(s["num_train_timesteps"]), table)

    @staticmethod
    def of_schedule(parametrization: Parametrization, schedule: Mapping) -> ModelPath:
        """:meth:`from_schedule`, built once per (parametrisation, schedule) and reused by every call."""
        return _cached_model_path(parametrization, json.dumps(schedule, sort_keys=True))

    def point(self, lam: float) -> PathPoint:
        """Where the model is evaluated for a sampler point of log-SNR ``lam``."""
        if self.parametrization.path == "flow":
            return flow_model_point(lam, self.num_train_timesteps)
        return vp_model_point(lam, self.log_snr_table)


@functools.lru_cache(maxsize=16)
def _cached_model_path(parametrization: Parametrization, schedule_json: str) -> ModelPath:
    return ModelPath.from_schedule(parametrization, json.loads(schedule_json))


# ============================================================================================
# scratch_diffusion.guidance.noisy_classifier
# ============================================================================================

"""A noise-aware classifier p_φ(y | x_t): the down half of a ``UNet2DModel`` with a pooling head.

Classifier guidance (Dhariwal & Nichol, 2021, §4 and App. F) needs log p_φ(y | x_t) at every noise level the
sampler visits, so the classifier sees the noisy sample *and* its timestep, exactly as the diffusion UNet does:
the same sinusoidal timestep embedding (``Timesteps`` → ``TimestepEmbedding``), diffusers' own down blocks
(``get_down_block``) and mid block (``UNetMidBlock2D``), then ADM's "adaptive" head — GroupNorm, activation,
global average pooling and a linear layer to the logits (zero-initialised, so an untrained classifier answers
the uniform distribution). The timestep is the UNet's own: t ∈ [0, T) on the VP path, σ·T on the flow path.

The config records the path (``noise_path``) and training schedule (``noise_schedule``, the dict a
``ScratchDiffusionPipeline`` records) the classifier was trained on, so guidance can refuse a classifier whose
timesteps mean other noise levels. :meth:`NoisyClassifier.from_unet_config` builds one "like" a pipeline's UNet.
``training/train_classifier.py`` trains it.
"""


import inspect
from collections.abc import Mapping

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block
from torch import nn


# The UNet2DModel down blocks that take a timestep embedding and no skip sample (the skip blocks are NCSN++'s).
DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D")
# The keys of a UNet2DModel config that from_unet_config copies (the classifier's input and encoder).
MIRRORED_UNET_KEYS = (
    "sample_size", "in_channels", "block_out_channels", "layers_per_block", "down_block_types", "norm_num_groups",
    "attention_head_dim", "add_attention", "norm_eps", "act_fn", "downsample_type", "flip_sin_to_cos", "freq_shift",
    "dropout",
)  # fmt: skip
# Any prediction type of the path: a ModelPath is used here only for its clock (λ ↔ timestep), never its outputs.
_ANY_PREDICTION = {"vp": "epsilon", "flow": "flow_velocity"}


def check_noise_schedule(noise_path: str, noise_schedule: Mapping | None) -> None:
    """``noise_schedule`` is None or a schedule of ``noise_path`` (``cross_path.noise_schedule_of``'s keys)."""
    if noise_schedule is None:
        return
    if not isinstance(noise_schedule, Mapping):
        raise ValueError(f"noise_schedule={noise_schedule!r} is not allowed; pass a dict (or None).")
    allowed = {"num_train_timesteps"} if noise_path == "flow" else set(VP_SCHEDULE_DEFAULTS)
    unknown = sorted(set(noise_schedule) - allowed)
    if unknown or "num_train_timesteps" not in noise_schedule:
        raise ValueError(
            f"noise_schedule={dict(noise_schedule)} is not a {noise_path!r} schedule (unknown keys {unknown}); "
            f"allowed keys: {sorted(allowed)}, num_train_timesteps required."
        )
    try:
        ModelPath.from_schedule(Parametrization(noise_path, _ANY_PREDICTION[noise_path]), noise_schedule)
    except (ValueError, TypeError) as err:
        raise ValueError(f"noise_schedule={dict(noise_schedule)} is not allowed: {err}") from None


class NoisyClassifier(ModelMixin, ConfigMixin):
    """logits = f_φ(x_t, t) of shape (B, num_classes): a UNet2DModel's encoder, mid block and a pooling head.

    Args:
        sample_size: the sample side (pixels, or latents on a latent pipeline), divisible by 2^(levels − 1).
        in_channels: the sample's channels.
        num_classes: classes K ≥ 2.
        block_out_channels, layers_per_block, down_block_types, norm_num_groups, attention_head_dim, add_attention,
            norm_eps, act_fn, downsample_type, flip_sin_to_cos, freq_shift, dropout: as ``UNet2DModel``'s.
        noise_path: ``"vp"`` or ``"flow"``, the path of the timesteps it is given.
        noise_schedule: the path's training schedule (a pipeline's ``noise_schedule``); None: unknown.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 16,
        in_channels: int = 1,
        num_classes: int = 10,
        block_out_channels: tuple[int, ...] = (32, 64),
        layers_per_block: int = 1,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D"),
        norm_num_groups: int = 8,
        attention_head_dim: int | None = 8,
        add_attention: bool = True,
        norm_eps: float = 1e-5,
        act_fn: str = "silu",
        downsample_type: str = "conv",
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        dropout: float = 0.0,
        noise_path: str = "flow",
        noise_schedule: dict | None = None,
    ):
        super().__init__()
        levels = len(block_out_channels)
        checks = (
            (isinstance(num_classes, int) and num_classes >= 2, f"num_classes={num_classes!r}", "an integer ≥ 2"),
            (noise_path in NOISE_PATHS, f"noise_path={noise_path!r}", f"one of {list(NOISE_PATHS)}"),
            (isinstance(in_channels, int) and in_channels >= 1, f"in_channels={in_channels!r}", "an integer ≥ 1"),
            (isinstance(layers_per_block, int) and layers_per_block >= 1, f"layers_per_block={layers_per_block!r}",
             "an integer ≥ 1"),
            (levels >= 1 and len(down_block_types) == levels,
             f"block_out_channels={list(block_out_channels)} with down_block_types={list(down_block_types)}",
             "one down block type per width (at least one)"),
            (all(kind in DOWN_BLOCK_TYPES for kind in down_block_types), f"down_block_types={list(down_block_types)}",
             f"types from {list(DOWN_BLOCK_TYPES)}"),
            (all(isinstance(w, int) and w >= 1 and w % norm_num_groups == 0 for w in block_out_channels),
             f"block_out_channels={list(block_out_channels)} with norm_num_groups={norm_num_groups}",
             "positive widths divisible by norm_num_groups"),
            (isinstance(sample_size, int) and sample_size >= 1 and sample_size % 2 ** (levels - 1) == 0,
             f"sample_size={sample_size!r}", f"a positive multiple of {2 ** (levels - 1)} ({levels} levels)"),
        )  # fmt: skip
        for holds, value, allowed in checks:
            if not holds:
                raise ValueError(f"{value} is not allowed; pass {allowed}.")
        check_noise_schedule(noise_path, noise_schedule)

        time_dim = block_out_channels[0] * 4
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_dim)
        self.down_blocks = nn.ModuleList()
        for i, (kind, width) in enumerate(zip(down_block_types, block_out_channels, strict=True)):
            self.down_blocks.append(
                get_down_block(
                    kind,
                    num_layers=layers_per_block,
                    in_channels=block_out_channels[max(i - 1, 0)],
                    out_channels=width,
                    temb_channels=time_dim,
                    add_downsample=i < levels - 1,
                    resnet_eps=norm_eps,
                    resnet_act_fn=act_fn,
                    resnet_groups=norm_num_groups,
                    attention_head_dim=attention_head_dim if attention_head_dim is not None else width,
                    downsample_padding=1,
                    downsample_type=downsample_type,
                    dropout=dropout,
                )
            )
        width = block_out_channels[-1]
        self.mid_block = UNetMidBlock2D(
            in_channels=width,
            temb_channels=time_dim,
            dropout=dropout,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            attention_head_dim=attention_head_dim if attention_head_dim is not None else width,
            resnet_groups=norm_num_groups,
            add_attention=add_attention,
        )
        self.norm_out = nn.GroupNorm(norm_num_groups, width, eps=norm_eps)
        self.act_out = get_activation(act_fn)
        self.classify = nn.Linear(width, num_classes)
        nn.init.zeros_(self.classify.weight)  # ADM's zero_module: uniform p(y | x_t) before training
        nn.init.zeros_(self.classify.bias)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int) -> torch.Tensor:
        """Logits (B, num_classes) of ``sample`` (B, C, H, W) at ``timestep`` (a scalar or one per example)."""
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(sample.shape[0])
        elif timesteps.shape != (sample.shape[0],):
            raise ValueError(
                f"timestep of shape {tuple(timesteps.shape)} is not allowed for a batch of {sample.shape[0]}; "
                "pass a scalar or one timestep per example."
            )
        emb = self.time_embedding(self.time_proj(timesteps).to(self.dtype))  # the projection is float32
        hidden = self.conv_in(sample)
        for block in self.down_blocks:
            hidden, _ = block(hidden_states=hidden, temb=emb)
        hidden = self.act_out(self.norm_out(self.mid_block(hidden, emb)))
        return self.classify(hidden.mean(dim=(-2, -1)))

    @property
    def model_path(self) -> ModelPath:
        """Its path with the clock from a log-SNR λ to its timestep (``ModelPath.point``); needs ``noise_schedule``."""
        path, schedule = self.config.noise_path, self.config.noise_schedule
        if schedule is None:
            raise ValueError("this classifier records no noise_schedule, so its timesteps' noise levels are unknown.")
        return ModelPath.of_schedule(Parametrization(path, _ANY_PREDICTION[path]), dict(schedule))

    @classmethod
    def from_unet_config(
        cls,
        unet_config: Mapping,
        num_classes: int,
        noise_path: str,
        noise_schedule: Mapping | None,
        **overrides,
    ) -> NoisyClassifier:
        """A fresh classifier with a UNet2DModel's input and encoder (:data:`MIRRORED_UNET_KEYS`; the UNet's
        defaults where its config is silent); ``overrides`` (any argument of :class:`NoisyClassifier`) win."""
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"overrides {unknown} are not NoisyClassifier arguments; allowed: {sorted(known)}.")
        unet_defaults = {
            name: parameter.default for name, parameter in inspect.signature(UNet2DModel.__init__).parameters.items()
        }
        mirrored = {key: unet_config.get(key, unet_defaults[key]) for key in MIRRORED_UNET_KEYS}
        schedule = None if noise_schedule is None else dict(noise_schedule)
        arguments = {**mirrored, "num_classes": num_classes, "noise_path": noise_path, "noise_schedule": schedule}
        return cls(**{**arguments, **overrides})


# ============================================================================================
# scratch_schedulers.scheduling_common
# ============================================================================================

"""What every scratch scheduler shares, VP and flow alike: the output type, the ``step`` argument
checks (timesteps included), the working precision of ``step`` and a small diffusers base class.

Any timestep: ``step(model_output, t, sample)`` takes any t in the path's range, not only the values of
``scheduler.timesteps``. Its coefficients are those of the exact t (ᾱ_t on the VP chain, σ = t/T on the
flow path), and it steps to the largest scheduled timestep strictly below t — or to the end (x0) from
at or below the last one — so a loop continues with ``scheduler.timesteps[scheduler.timesteps < t]``.
A (B,) tensor gives one timestep per example; each example then steps exactly as it would alone.

Nothing here knows about a particular path; :mod:`.scheduling_vp` (DDPM, DDIM) and
:mod:`.scheduling_flow_match` both build on it.
"""


from collections import OrderedDict
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput



@dataclass
class ScratchSchedulerOutput(BaseOutput):
    """Output of every scratch scheduler's ``step``.

    Attributes:
        prev_sample: x at the next (less noisy) timestep, shape of ``sample``.
        pred_original_sample: the model's estimate x̂0 (after clipping/thresholding).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def __post_init__(self) -> None:
        """``BaseOutput.__post_init__`` for these two fields: the non-None ones become dict items, in field order.

        The same result without ``dataclasses.fields()`` and diffusers' generic checks, which cost about as much
        as a small step's arithmetic; anything but a tensor as ``prev_sample`` takes diffusers' own path.
        """
        if not isinstance(self.prev_sample, torch.Tensor):
            super().__post_init__()
            return
        OrderedDict.__setitem__(self, "prev_sample", self.prev_sample)  # the attributes are already set
        if self.pred_original_sample is not None:
            OrderedDict.__setitem__(self, "pred_original_sample", self.pred_original_sample)


# What ``step(..., return_dict=...)`` returns, and what its ``generator`` argument accepts.
StepResult = ScratchSchedulerOutput | tuple[torch.Tensor, torch.Tensor]
Generators = torch.Generator | list[torch.Generator] | None

HALF_PRECISION = (torch.float16, torch.bfloat16)


def timestep_tensor(timestep: int | float | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """``step``'s timestep as a tensor on its own device (a Python number goes to the CPU): 0-d for one
    timestep for the whole batch, (B,) for one per example of ``sample``; any other count is a ValueError."""
    t = torch.as_tensor(timestep)
    if t.numel() == 1:
        return t.reshape(())
    check_timestep_batch(t, sample)
    return t.reshape(-1)


def is_host(timestep: object) -> bool:
    """A Python number or a CPU tensor: its value may be read without a host–device synchronisation."""
    return not isinstance(timestep, torch.Tensor) or timestep.is_cpu


def check_step_timesteps(t: torch.Tensor, upper: float, integer: bool) -> None:
    """Host timesteps given to ``step`` must lie in [0, upper] (integers on a discrete chain).

    Any value in range is accepted, scheduled or not (README, "Any timestep"); device timesteps are
    not passed here (reading them would synchronise).
    """
    inside = (t >= 0) & (t <= upper)  # NaN fails
    if not bool(inside.all()):
        bad = float(t.reshape(-1)[~inside.reshape(-1)][0])
        raise ValueError(
            f"timestep {bad:g} is not in the current schedule and outside [0, {upper:g}], the timesteps this "
            f"scheduler's path is defined on; pass a value in that range (e.g. from scheduler.timesteps)."
        )
    if integer and t.is_floating_point() and not bool((t == t.round()).all()):
        bad = float(t.reshape(-1)[(t != t.round()).reshape(-1)][0])
        raise ValueError(
            f"timestep {bad:g} is not in the current schedule and not an integer: a discrete VP chain has ᾱ only "
            f"at the integer timesteps 0…{upper:g} (no interpolation); ScratchDPMSolverScheduler takes real timesteps."
        )


def per_example(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 0-d coefficient as it is; a (B,) one on ``like``'s device with trailing dims to broadcast per example."""
    return coefficient if coefficient.ndim == 0 else append_dims(coefficient.to(like.device), like.ndim)


def check_step_shapes(model_output: torch.Tensor, sample: torch.Tensor, allow_variance: bool = False) -> None:
    """``model_output`` must match ``sample`` (or carry a variance channel block when learned).

    Also checks what is known on the host without reading values: both are floating-point tensors
    on one device. The *values* are not checked (that would need a host–device sync per step): a
    NaN or inf in ``model_output`` propagates into ``prev_sample`` (see the README, "Reliability").
    """
    if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
        raise TypeError(
            f"model_output and sample must be torch tensors, got {type(model_output).__name__} and "
            f"{type(sample).__name__}."
        )
    if not (model_output.is_floating_point() and sample.is_floating_point()):
        raise TypeError(
            f"model_output has dtype {model_output.dtype} and sample {sample.dtype}; both must be floating point "
            "(torch.float16, torch.bfloat16, torch.float32 or torch.float64)."
        )
    if not (model_output.is_cpu and sample.is_cpu) and model_output.device != sample.device:  # is_cpu: no objects
        raise ValueError(
            f"model_output is on device {model_output.device} but sample is on {sample.device}; "
            "both must be on the same device."
        )
    same = model_output.shape == sample.shape
    doubled = (
        allow_variance
        and model_output.ndim == sample.ndim
        and model_output.shape[1] == 2 * sample.shape[1]
        and model_output.shape[2:] == sample.shape[2:]
        and model_output.shape[0] == sample.shape[0]
    )
    if not (same or doubled):
        raise ValueError(
            f"model_output has shape {tuple(model_output.shape)} but sample has shape {tuple(sample.shape)}; "
            "they must match" + (" (or model_output may have twice the channels)" if allow_variance else "") + "."
        )


def check_same_shape(x: torch.Tensor, noise: torch.Tensor, x_name: str, noise_name: str) -> None:
    """Training helpers take a clean batch and noise of the very same shape."""
    if tuple(x.shape) != tuple(noise.shape):
        raise ValueError(
            f"{noise_name} has shape {tuple(noise.shape)} but {x_name} has shape {tuple(x.shape)}; they must match."
        )


def check_timestep_batch(timesteps: torch.Tensor | float, like: torch.Tensor) -> None:
    """One timestep for the whole batch, or one per example of ``like`` (B, ...)."""
    count = torch.as_tensor(timesteps).numel()
    if count != 1 and (like.ndim == 0 or count != like.shape[0]):
        raise ValueError(
            f"got {count} timesteps for a batch of shape {tuple(like.shape)}; pass one timestep, or one per example "
            f"({like.shape[0] if like.ndim else 1})."
        )


def in_working_precision(
    sample: torch.Tensor, model_output: torch.Tensor, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sample, model_output)`` in the dtype ``step`` computes in (upcast to avoid precision loss).

    ``dtype=None`` keeps float32/float64 samples as they are and upcasts float16/bfloat16 to float32
    (the VP schedulers); the flow scheduler passes ``torch.float32``, as diffusers' flow schedulers
    compute. ``model_output`` follows the sample. Undo with :func:`step_result`.
    """
    if dtype is None:
        dtype = torch.float32 if sample.dtype in HALF_PRECISION else sample.dtype
    if sample.dtype != dtype:
        sample = sample.to(dtype)
    if model_output.dtype != dtype:
        model_output = model_output.to(dtype)
    return sample, model_output


def step_result(prev_sample: torch.Tensor, x0: torch.Tensor, dtype: torch.dtype, return_dict: bool) -> StepResult:
    """Cast ``step``'s results back to the caller's ``dtype``; a :class:`ScratchSchedulerOutput` or a tuple."""
    if prev_sample.dtype != dtype:
        prev_sample, x0 = prev_sample.to(dtype), x0.to(dtype)
    if not return_dict:
        return prev_sample, x0
    return ScratchSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


class ScratchScheduler(SchedulerMixin, ConfigMixin):
    """Base of the scratch schedulers: what diffusers' API expects of all of them alike.

    ``step`` has diffusers' signature and return convention; a subclass supplies the update rule
    as ``_step`` (a scheduler whose ``step`` takes more arguments, like DDIM's, overrides ``step``).
    """

    order = 1
    init_noise_sigma = 1.0
    # The path the scheduler samples, declared (``noise_path.noise_path_of`` reads it): "vp" or "flow".
    noise_path: str

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
        return_dict: bool = True,
    ) -> StepResult:
        """One sampling step from ``timestep`` to the next point of the schedule (the class docstring
        names the update rule).

        Args:
            model_output: the model's prediction at (sample, timestep), in the scheduler's parametrisation.
            timestep: the current timestep — any in the path's range, scheduled or not — or a (B,) tensor
                of one per example (README, "Any timestep").
            sample: x_t, shape (B, C, ...).
            generator: torch generator(s) for the noise the step injects, if it injects any.
            return_dict: return a :class:`ScratchSchedulerOutput` rather than a tuple.
        """
        prev_sample, x0 = self._step(model_output, timestep, sample, generator)
        return step_result(prev_sample, x0, sample.dtype, return_dict)

    def _step(
        self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor, generator: Generators
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The update rule: (x_next, x̂0) in the working precision (:func:`in_working_precision`)."""
        raise NotImplementedError

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Identity, returning ``sample`` itself: both paths feed the model x_t unscaled (API compatibility)."""
        return sample


# ============================================================================================
# scratch_schedulers.scheduling_vp
# ============================================================================================

"""Shared machinery of the discrete variance-preserving schedulers (DDPM and DDIM).

The chain has T training timesteps with ᾱ_t from :mod:`.noise_path`; a sampler visits a
descending subset of them. ``set_timesteps`` precomputes, for every training timestep t, the path
coefficients of the step it starts (a_t, b_t, a_next, b_next, noise scales) into one float32 table
indexed by the timestep value, where t steps to the largest scheduled timestep strictly below it
(the next one for a scheduled t; the end, x0, below the last). So ``step`` at any integer t, or at
one t per example, is a table row look-up on the timestep's own device plus elementwise maths: no
host–device synchronisation and no hidden step counter. Scheduled host timesteps keep prebuilt rows.
Each scheduler names its columns with a ``NamedTuple`` (``DDPMStepCoefficients``,
``DDIMStepCoefficients``): a row is that tuple of 0-d tensors, on the host or on the device.
"""


from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


# diffusers' Karras-family schedulers that share our VP config keys (`from_config` either way).
# DPMSolverSDEScheduler is left out: it is a dummy object unless torchsde is installed.
VP_COMPATIBLES = [
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "EDMEulerScheduler",
]

class DiscreteVPScheduler(ScratchScheduler):
    """Base of :class:`ScratchDDPMScheduler` and :class:`ScratchDDIMScheduler` (not used directly).

    Subclasses set ``_row_type``, the ``NamedTuple`` of their table columns, and build its
    columns over a grid in :meth:`_columns`.
    """

    _compatibles = VP_COMPATIBLES
    noise_path = "vp"
    _row_type: Any  # the NamedTuple class of the table columns, set by each subclass

    # ---- construction ------------------------------------------------------------------------

    def _init_path(self) -> None:
        """Validate the config and build β, ᾱ and the default (all training steps) schedule."""
        cfg = self.config
        check_choice("prediction_type", cfg.prediction_type, VP_PREDICTION_TYPES)
        check_choice("timestep_spacing", cfg.timestep_spacing, TIMESTEP_SPACINGS)
        if not 0 < cfg.dynamic_thresholding_ratio <= 1:
            raise ValueError(f"dynamic_thresholding_ratio={cfg.dynamic_thresholding_ratio} must be in (0, 1].")
        check_positive("clip_sample_range", cfg.clip_sample_range)
        check_positive("sample_max_value", cfg.sample_max_value)
        offset = cfg.steps_offset
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise ValueError(f"steps_offset={offset!r} is not allowed; pass an integer ≥ 0 (usually 0 or 1).")
        betas = make_betas(
            cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.trained_betas
        )
        if cfg.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # float32, as diffusers exposes it
        # A host copy of ᾱ for checks that must not touch a tensor (the zero-SNR guard); the
        # coefficient tables themselves are computed in float32 (see _set_schedule).
        self._alpha_bar = self.alphas_cumprod.to(torch.float64).numpy()
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self._set_schedule(np.arange(cfg.num_train_timesteps)[::-1].copy(), device=None)

    # ---- schedules ---------------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Choose the timesteps to sample with: ``num_inference_steps`` spaced by the config's
        ``timestep_spacing``, or an explicit strictly descending list ``timesteps`` in [0, T)."""
        T = self.config.num_train_timesteps
        check_device(device)
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError(
                f"pass either num_inference_steps={num_inference_steps} or timesteps=..., not both."
            )
        if timesteps is not None:
            grid = check_custom_timesteps(timesteps, T, integer=True).astype(np.int64)
            self.custom_timesteps = True
        elif num_inference_steps is not None:
            grid = spaced_timesteps(self.config.timestep_spacing, T, num_inference_steps, self.config.steps_offset)
            self.custom_timesteps = False
        else:
            raise ValueError("set_timesteps needs num_inference_steps (an int ≥ 1) or a timesteps list.")
        self._check_terminal_snr(grid)
        self.num_inference_steps = len(grid)
        self._set_schedule(grid, device)

    def _set_schedule(self, grid: np.ndarray, device: str | torch.device | None) -> None:
        """Install ``grid`` and precompute the per-timestep coefficient table."""
        T = self.config.num_train_timesteps
        self.timesteps = torch.from_numpy(grid.astype(np.int64)).to(device)
        ascending = grid[::-1]
        below = np.searchsorted(ascending, np.arange(T), side="left") - 1  # the largest scheduled value < t
        self._next_timestep = np.where(below >= 0, ascending[np.maximum(below, 0)], -1)
        # Every coefficient is evaluated in float32 from the float32 ᾱ that add_noise uses in
        # training, with the same formulas as diffusers: sampling then sees the very path the model
        # was trained on, and a model moves between our schedulers and diffusers' without drift
        # (x̂0 = (x − b·ε)/a and β = 1 − ᾱ_t/ᾱ_next amplify last-bit differences near both ends).
        alpha_bar_t = self.alphas_cumprod[torch.from_numpy(grid)]
        alpha_bar_next = torch.cat([alpha_bar_t[1:], torch.tensor([self._final_alpha_bar()], dtype=torch.float32)])
        columns = self._columns(alpha_bar_t, alpha_bar_next)
        table = np.empty((T, len(columns)), dtype=np.float32)
        table[grid] = torch.stack(tuple(columns), dim=1).numpy()
        off = np.setdiff1d(np.arange(T), grid)  # any other timestep steps to the scheduled one below it
        if len(off):
            target = self._next_timestep[off]
            alpha_bar_target = torch.where(torch.from_numpy(target >= 0), self.alphas_cumprod[np.maximum(target, 0)],
                                           torch.tensor(self._final_alpha_bar(), dtype=torch.float32))
            table[off] = torch.stack(tuple(self._columns(self.alphas_cumprod[off], alpha_bar_target)), dim=1).numpy()
        self._table_cpu = torch.from_numpy(table)
        # Scheduled host timesteps get rows of 0-d float32 CPU tensors, built on first use and kept: the
        # cheapest scalar operands on any device, and float32 arithmetic throughout (as in diffusers).
        self._scheduled = frozenset(int(t) for t in grid)
        self._host_rows: dict[int, Any] = {}
        self._tables: dict[torch.device, torch.Tensor] = {}

    @staticmethod
    def _path_scales(alpha_bar: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) = (√ᾱ, √(1 − ᾱ)) — the one place they are computed, for add_noise and step alike."""
        alpha_bar = torch.as_tensor(alpha_bar)
        return alpha_bar**0.5, (1 - alpha_bar) ** 0.5

    def _final_alpha_bar(self) -> float:
        """ᾱ after the last timestep: 1 (x0 itself); DDIM may use ᾱ_0 instead."""
        return 1.0

    def _columns(self, alpha_bar_t: torch.Tensor, alpha_bar_next: torch.Tensor) -> Any:
        """The table columns over the grid, as a ``_row_type`` of float32 vectors (ᾱ_t and ᾱ_next per step)."""
        raise NotImplementedError

    def _check_terminal_snr(self, grid: np.ndarray) -> None:
        """Fail fast on ε-prediction at a zero-SNR timestep, where x̂0 = (x − ε)/0 (diffusers #3851)."""
        if self.config.prediction_type != "epsilon":
            return
        zero = grid[self._alpha_bar[grid] == 0]
        if len(zero):
            raise ValueError(
                f"rescale_betas_zero_snr=True gives ᾱ=0 at timestep {int(zero[0])}, where an "
                "ε-prediction says nothing about x0 (x̂0 would be inf/NaN). Use "
                "prediction_type='v_prediction' (Lin et al., 2024) or 'sample', or "
                "timestep_spacing='leading', which never visits the terminal timestep."
            )

    def previous_timestep(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """Where ``step`` moves from ``timestep``: the largest scheduled timestep strictly below it (−1: the end)."""
        t = self._host_timesteps(torch.as_tensor(timestep).detach().cpu())
        return torch.from_numpy(np.asarray(self._next_timestep[t.numpy()]))

    # ---- per-step look-up --------------------------------------------------------------------

    def _host_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Host-side check of CPU timesteps (0-d or (B,)): integers in [0, T), as int64."""
        check_step_timesteps(t, self.config.num_train_timesteps - 1, integer=True)
        t = t.long()
        if bool((self._alpha_bar[t.numpy()] == 0).any()):
            self._check_terminal_snr(t.reshape(-1).numpy())
        return t

    def _scheduled_row(self, t: int) -> Any:
        """The prebuilt row of scheduled timestep ``t`` (built on its first use), or None off the schedule."""
        row = self._host_rows.get(t)
        if row is None and t in self._scheduled:
            row = self._host_rows[t] = self._row_type._make(self._table_cpu[t].unbind())
        return row

    def _row(self, timestep: int | float | torch.Tensor, like: torch.Tensor) -> Any:
        """Coefficients of the step starting at ``timestep``: a ``_row_type`` of 0-d tensors, or of
        (B, 1, …) tensors on ``like``'s device for one timestep per example.

        A scheduled Python or CPU timestep gets its prebuilt row of CPU scalars (the fast path,
        usable with tensors on any device); another host timestep is validated on the host and its
        row read from the table; a timestep on an accelerator indexes a copy of the table on that
        device, without being read back (no synchronisation; it is not validated).
        """
        if is_host(timestep):
            if not isinstance(timestep, torch.Tensor) or timestep.numel() == 1:
                value = float(timestep)
                row = self._scheduled_row(int(value)) if value.is_integer() else None
                if row is not None and self._alpha_bar[int(value)] != 0:
                    return row
            t = self._host_timesteps(timestep_tensor(timestep, like))
            table = self._table_cpu
        else:
            t = timestep_tensor(timestep, like).long()
            table = self._tables.get(t.device)
            if table is None:
                table = self._tables[t.device] = self._table_cpu.to(t.device)
        rows = table.index_select(0, t.reshape(-1))  # table[t] would call .item() on a device tensor
        if t.ndim == 0:
            return self._row_type._make(rows[0].unbind())
        return self._row_type._make(per_example(column, like) for column in rows.to(like.device).unbind(1))

    def _clip_or_threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding if enabled (it takes precedence), else clipping to ±clip_sample_range."""
        cfg = self.config
        if cfg.thresholding:
            return dynamic_threshold(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        if cfg.clip_sample:
            return x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        return x0

    # ---- training-time helpers ---------------------------------------------------------------

    def _signal_noise(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(√ᾱ_t, √(1−ᾱ_t)) for a batch of timesteps, broadcast against ``like`` in its dtype/device.

        Timesteps on the CPU are checked to be integers in [0, T) (a negative one would silently
        index from the end of ᾱ); timesteps on an accelerator are not read back.
        """
        T = self.config.num_train_timesteps
        check_timestep_batch(timesteps, like)
        host = torch.as_tensor(timesteps)
        if host.device.type == "cpu":
            bad = (host < 0) | (host >= T)
            if host.is_floating_point():
                bad = bad | (host != host.round())
            if bool(bad.any()):
                raise ValueError(
                    f"timesteps of a discrete VP scheduler must be integers in [0, {T}), got "
                    f"{host.flatten()[:8].tolist()}."
                )
        a, b = signal_noise_at(self, torch.as_tensor(timesteps).long(), dtype=like.dtype, device=like.device)
        return append_dims(a, like.ndim), append_dims(b, like.ndim)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Forward process q(x_t | x0): x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (DDPM Eq. 4), batched over t."""
        check_same_shape(original_samples, noise, "original_samples", "noise")
        a, b = self._signal_noise(timesteps, original_samples)
        return a * original_samples + b * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (Salimans & Ho, 2022)."""
        check_same_shape(sample, noise, "sample", "noise")
        a, b = self._signal_noise(timesteps, sample)
        return a * noise - b * sample


# ============================================================================================
# scratch_schedulers.scheduling_ddim
# ============================================================================================

"""DDIM (Song et al., 2021, "Denoising Diffusion Implicit Models").

x_next = √ᾱ_next·x̂0 + √(1 − ᾱ_next − σ_t²)·ε̂ + σ_t·z with σ_t = η·√β̃_t (Eqs. 12 and 16);
η = 0 is the deterministic sampler, η = 1 has DDPM's posterior. The config is key-for-key
diffusers' ``DDIMScheduler``; ``set_timesteps`` additionally takes custom ``timesteps``, and
every step goes to the schedule's real next timestep (diffusers assumes t − T//n, #11347).
"""


import math
import numbers
from typing import NamedTuple

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' loader looks it up here)
from diffusers.utils.torch_utils import randn_tensor



class DDIMStepCoefficients(NamedTuple):
    """One row of the DDIM table: the path points of the step from t to the schedule's next t′."""

    a: torch.Tensor  # √ᾱ_t
    b: torch.Tensor  # √(1 − ᾱ_t)
    a_next: torch.Tensor  # √ᾱ_t′
    b_next: torch.Tensor  # √(1 − ᾱ_t′)
    var_next: torch.Tensor  # 1 − ᾱ_t′
    sigma: torch.Tensor  # σ_t at η = 1 (Eq. 16), 0 where it is NaN


class ScratchDDIMScheduler(DiscreteVPScheduler):
    """DDIM sampler with the exact config of ``diffusers.DDIMScheduler``.

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, clip_sample,
        clip_sample_range, prediction_type, thresholding, dynamic_thresholding_ratio,
        sample_max_value, timestep_spacing, steps_offset, rescale_betas_zero_snr:
            as in :class:`~scratch_schedulers.ScratchDDPMScheduler`.
        set_alpha_to_one: the last step lands on ᾱ = 1 (x0 itself) if True, else on ᾱ_0.
    """

    _row_type = DDIMStepCoefficients

    # The keys repeat ScratchDDPMScheduler's on purpose: @register_to_config turns exactly these
    # arguments, in diffusers' order and with its defaults, into the config (DDIMScheduler's, key for
    # key; tests/scratch_schedulers/test_api.py), so they cannot be shared through a base signature.
    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: VPPredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        self._init_path()
        self.final_alpha_cumprod = torch.tensor(self._final_alpha_bar(), dtype=torch.float32)
        self.num_inference_steps = None  # step() needs set_timesteps() first

    def _final_alpha_bar(self) -> float:
        return 1.0 if self.config.set_alpha_to_one else float(self._alpha_bar[0])

    def _columns(self, alpha_bar_t: torch.Tensor, alpha_bar_next: torch.Tensor) -> DDIMStepCoefficients:
        sigma = ddim_noise_std(alpha_bar_t, alpha_bar_next, eta=1.0)  # σ_t at η = 1, Eq. (16)
        (a, b), (a_next, b_next) = self._path_scales(alpha_bar_t), self._path_scales(alpha_bar_next)
        return DDIMStepCoefficients(a=a, b=b, a_next=a_next, b_next=b_next, var_next=1 - alpha_bar_next,
                                    sigma=sigma.nan_to_num())

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Generators = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> StepResult:
        """One DDIM step (Eq. 12) from ``timestep`` to the largest scheduled timestep below it (the end, ᾱ = 1
        or ᾱ_0, below the last one), with ᾱ at the exact ``timestep``.

        Args:
            model_output: the model's prediction at (sample, timestep).
            timestep: any integer timestep in [0, T), or a (B,) tensor of one per example.
            sample: x_t, shape (B, C, ...).
            eta: η ≥ 0, the weight of fresh noise (0: deterministic DDIM, 1: DDPM posterior).
            use_clipped_model_output: re-derive ε̂ from the clipped/thresholded x̂0.
            generator: torch generator(s) for the noise when η > 0; a list of B draws example i's from the i-th.
            variance_noise: explicit noise z instead of drawing it (e.g. for CycleDiffusion).
            return_dict: return a :class:`ScratchSchedulerOutput` rather than a tuple.
        """
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps() before step().")
        if isinstance(eta, numbers.Real) and not 0 <= eta < math.inf:  # NaN fails too; a tensor eta is not read
            raise ValueError(f"eta={eta} must be a finite number ≥ 0 (0: deterministic DDIM, 1: DDPM-like).")
        if variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise to step(), not both.")
        check_step_shapes(model_output, sample)
        c = self._row(timestep, sample)
        x_t, model_output = in_working_precision(sample, model_output)

        x0, eps = split_prediction(model_output, x_t, c.a, c.b, self.config.prediction_type)
        x0 = self._clip_or_threshold(x0)
        if use_clipped_model_output:
            eps = x0_to_eps(x0, x_t, c.a, c.b)
        if eta == 0:  # Eq. 12 with σ_t = 0: x_next = a_next·x̂0 + b_next·ε̂
            prev_sample = reverse_step(x0, eps, c.a_next, c.var_next, direction=c.b_next)
        else:
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=model_output.dtype)
            prev_sample = reverse_step(x0, eps, c.a_next, c.var_next, eta * c.sigma, variance_noise)
        return step_result(prev_sample, x0, sample.dtype, return_dict)


# ============================================================================================
# scratch_schedulers.scheduling_ddpm
# ============================================================================================

"""DDPM ancestral sampling (Ho et al., 2020, "Denoising Diffusion Probabilistic Models").

x_{t−1} = μ̃_t(x_t, x̂0) + s_t·z, where μ̃_t is the posterior mean of Eq. (7) — DDIM's
:func:`~scratch_schedulers.samplers.reverse_step` at η = 1, see
:func:`~scratch_schedulers.samplers.posterior_mean` — and s_t the noise scale chosen by
``variance_type``. The config is key-for-key diffusers' ``DDPMScheduler``.
"""


from typing import Literal, NamedTuple, get_args

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' loader looks it up here)
from diffusers.utils.torch_utils import randn_tensor


VarianceType = Literal["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]
VARIANCE_TYPES: tuple[str, ...] = get_args(VarianceType)
# The variance types whose model output carries a variance block (2·C channels) beside the prediction.
LEARNED_VARIANCE_TYPES: tuple[str, ...] = ("learned", "learned_range")


class DDPMStepCoefficients(NamedTuple):
    """One row of the DDPM table: the coefficients of the step from t to the schedule's next t′."""

    a: torch.Tensor  # √ᾱ_t
    b: torch.Tensor  # √(1 − ᾱ_t)
    coef_x0: torch.Tensor  # μ̃_t's weight of x̂0 (Eq. 7)
    coef_xt: torch.Tensor  # μ̃_t's weight of x_t
    posterior_std: torch.Tensor  # √β̃_t
    posterior_log_var: torch.Tensor  # log β̃_t (β̃_t clamped at 1e-20)
    log_beta: torch.Tensor  # log β of the (possibly strided) step, β = 1 − ᾱ_t/ᾱ_t′
    beta_std: torch.Tensor  # √β


class ScratchDDPMScheduler(DiscreteVPScheduler):
    """Ancestral DDPM sampler with the exact config of ``diffusers.DDPMScheduler``.

    Args:
        num_train_timesteps: T, the length of the β schedule.
        beta_start, beta_end: first and last β of ``linear``, ``scaled_linear`` and ``sigmoid``.
        beta_schedule: ``linear``, ``scaled_linear``, ``squaredcos_cap_v2`` or ``sigmoid``.
        trained_betas: explicit β_1..β_T in (0, 1), overriding the schedule.
        variance_type: noise scale s_t²: ``fixed_small`` / ``fixed_small_log`` = β̃_t (posterior),
            ``fixed_large`` / ``fixed_large_log`` = β_t, ``learned`` = the model's second channel
            block, ``learned_range`` = interpolation of log β̃_t and log β_t (Nichol & Dhariwal, 2021, Eq. 15).
        clip_sample, clip_sample_range: clamp x̂0 to ±range.
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction``.
        thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen's dynamic thresholding of x̂0.
        timestep_spacing: ``leading``, ``trailing`` or ``linspace`` for ``set_timesteps(n)``.
        steps_offset: added to ``leading`` timesteps (capped so the first stays < T).
        rescale_betas_zero_snr: rescale β to zero terminal SNR (Lin et al., 2024).
    """

    _row_type = DDPMStepCoefficients

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: VarianceType = "fixed_small",
        clip_sample: bool = True,
        prediction_type: VPPredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        self.variance_type = variance_type
        self._init_path()

    def _columns(self, alpha_bar_t: torch.Tensor, alpha_bar_next: torch.Tensor) -> DDPMStepCoefficients:
        coef_x0, coef_xt, posterior_var = ddpm_posterior_coefficients(alpha_bar_t, alpha_bar_next)
        posterior_var = posterior_var.clamp(min=1e-20)  # β̃_t, kept > 0 for its logarithm
        beta = 1 - alpha_bar_t / alpha_bar_next  # β of the (possibly strided) step t → next
        a, b = self._path_scales(alpha_bar_t)
        return DDPMStepCoefficients(
            a=a,
            b=b,
            coef_x0=coef_x0,
            coef_xt=coef_xt,
            posterior_std=posterior_var**0.5,
            posterior_log_var=posterior_var.log(),
            log_beta=beta.log(),
            beta_std=beta**0.5,
        )

    def _step(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, generator: Generators
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step x_t → x_{t_next} (Ho et al., 2020, Algorithm 2) from any integer t (or one
        per example) to the largest scheduled timestep below it; ``model_output`` has twice the channels
        of ``sample`` when ``variance_type`` is ``learned``/``learned_range``. A list of B generators
        draws each example's noise from its own generator (as that example stepped alone would)."""
        learned = self.variance_type in LEARNED_VARIANCE_TYPES
        check_step_shapes(model_output, sample, allow_variance=learned)
        c = self._row(timestep, sample)
        predicted_variance = None
        if model_output.shape[1] != sample.shape[1]:
            model_output, predicted_variance = model_output.split(sample.shape[1], dim=1)
        x_t, model_output = in_working_precision(sample, model_output)

        x0, _ = split_prediction(model_output, x_t, c.a, c.b, self.config.prediction_type)
        x0 = self._clip_or_threshold(x0)
        mean = posterior_mean(x0, x_t, c.coef_x0, c.coef_xt)  # μ̃_t, Eq. (7): DDIM at η = 1

        # Noise is drawn at every step (also the last, where it is scaled by 0) so the loop never
        # needs to read the timestep back from the device.
        noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
        std = self._noise_std(c, predicted_variance)
        if is_host(timestep) and (not isinstance(timestep, torch.Tensor) or timestep.numel() == 1):
            prev_sample = mean + std * noise if float(timestep) > 0 else mean  # none at t = 0 (Algorithm 2, line 3)
        else:  # a device timestep, or one per example: the same rule as a mask, without reading t back
            prev_sample = mean + std * per_example(timestep_tensor(timestep, sample) > 0, sample) * noise
        return prev_sample, x0

    def _noise_std(self, c: DDPMStepCoefficients, predicted_variance: torch.Tensor | None) -> torch.Tensor:
        """s_t of x_{t−1} = μ̃_t + s_t·z for each ``variance_type``."""
        kind = self.variance_type
        if kind in ("fixed_small", "fixed_small_log"):
            return c.posterior_std
        if kind in ("fixed_large", "fixed_large_log"):  # diffusers returns √(log β) = NaN for *_log
            return c.beta_std
        if kind == "learned":
            return predicted_variance.float().clamp(min=0).sqrt()
        frac = (predicted_variance.float() + 1) / 2  # learned_range, Nichol & Dhariwal (2021) Eq. 15
        return torch.exp(0.5 * (frac * c.log_beta + (1 - frac) * c.posterior_log_var))


# ============================================================================================
# scratch_schedulers.dpm_grids
# ============================================================================================

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


import importlib
import math
from typing import Literal

import numpy as np


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


# ============================================================================================
# scratch_schedulers.dpm_schedule
# ============================================================================================

"""The schedule-building part of :class:`~scratch_schedulers.ScratchDPMSolverScheduler`: the config checks
and the grid of path points.

``_check_config`` makes every refusal at construction, before any model evaluation. ``set_timesteps`` builds the
grid in float64 on the host: the levels s = b/a of the VP path (diffusers' spacings and ``use_*_sigmas`` grids,
``time_grid``, ``tuned_grids``; :mod:`.dpm_grids` computes them) or σ of the flow path, the final point
(``final_sigmas_type``), and from them the path points (a_i, b_i, λ_i) and b_{i+1}/b_i that
:class:`~.dpm_stepping.DPMSolverStepping` steps between.
"""


from collections.abc import Sequence

import numpy as np
import torch


DPM_PREDICTION_TYPES = {"vp": ("epsilon", "sample", "v_prediction"), "flow": ("flow_prediction", "epsilon", "sample")}
ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
SDE_ALGORITHM_TYPES = ("sde-dpmsolver++", "sde-dpmsolver")
LEVEL_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")


class DPMSolverSchedule:
    """Mixin of :class:`~scratch_schedulers.ScratchDPMSolverScheduler`: checks its config and builds the grid
    (``_a``, ``_b``, ``_lam``, ``_b_ratio``, ``_host_timesteps``, ``_first_index``, ``sigmas``, ``timesteps``)
    from ``noise_path`` and ``_level_table``, which its ``__init__`` sets."""

    def _check_config(self) -> None:
        """Every refusal happens here, at construction, before any model evaluation."""
        cfg = self.config
        check_choice("solver_order", cfg.solver_order, (1, 2, 3))
        check_choice("algorithm_type", cfg.algorithm_type, ALGORITHM_TYPES)
        check_choice("solver_type", cfg.solver_type, ("midpoint", "heun", "bh1", "bh2"))
        check_choice("final_sigmas_type", cfg.final_sigmas_type, ("zero", "sigma_min"))
        check_choice("timestep_spacing", cfg.timestep_spacing, ("linspace", "leading", "trailing"))
        check_choice("variance_type", cfg.variance_type, (None, *VARIANCE_TYPES))
        check_choice("time_shift_type", cfg.time_shift_type, ("exponential",))
        check_choice("time_grid", cfg.time_grid, (None, *TIME_GRIDS))
        check_choice("third_order", cfg.third_order, ("taylor", "diffusers"))
        check_choice("corrector", cfg.corrector, ("none", "unic_bh1", "unic_bh2"))
        check_choice("corrector_reuses", cfg.corrector_reuses, ("x0", "epsilon", "gaussian"))
        check_choice("final_step", cfg.final_step, ("x0", "sigma_squared"))
        self.register_to_config(tuned_grids=checked_tuned_grids(cfg.tuned_grids))  # JSON's {"n": [...]} form
        self._check_algorithm_type()
        path = "flow" if cfg.use_flow_sigmas else "vp"
        allowed = DPM_PREDICTION_TYPES[path]
        if cfg.prediction_type not in allowed:
            raise ValueError(
                f"prediction_type={cfg.prediction_type!r} cannot be used on the {path} path "
                f"(use_flow_sigmas={cfg.use_flow_sigmas}); choose one of {list(allowed)}."
            )
        flags = [name for name in LEVEL_FLAGS if cfg[name]]
        if len(flags) > 1 or (flags and (cfg.use_flow_sigmas or cfg.time_grid is not None)):
            chosen = flags + ["use_flow_sigmas"] * cfg.use_flow_sigmas + [f"time_grid={cfg.time_grid!r}"] * (
                cfg.time_grid is not None
            )
            raise ValueError(f"{chosen} choose the time grid in conflicting ways; set at most one of them.")
        if cfg.time_grid is not None and cfg.flow_shift != 1.0:
            raise ValueError(f"time_grid={cfg.time_grid!r} replaces flow_shift={cfg.flow_shift}; set flow_shift=1.0.")

    def _check_algorithm_type(self) -> None:
        """The options that assume the data-form ODE (``dpmsolver++``), refused with the other algorithm types."""
        cfg = self.config
        algorithm = cfg.algorithm_type
        if algorithm == "dpmsolver++":
            return
        if cfg.corrector != "none":
            raise ValueError(f"corrector={cfg.corrector!r} (UniC, a data-form ODE corrector) cannot be used with "
                             f"algorithm_type={algorithm!r}; choose corrector='none' or algorithm_type='dpmsolver++'.")
        if cfg.solver_type in ("bh1", "bh2"):
            raise ValueError(f"solver_type={cfg.solver_type!r} (UniP, a data-form ODE predictor) cannot be used with "
                             f"algorithm_type={algorithm!r}; choose solver_type 'midpoint' or 'heun'.")
        if algorithm in SDE_ALGORITHM_TYPES and cfg.final_step != "x0":
            raise ValueError(f"final_step={cfg.final_step!r} extrapolates an ODE solution and cannot be used with "
                             f"algorithm_type={algorithm!r}; choose final_step='x0'.")
        if algorithm == "sde-dpmsolver" and cfg.final_sigmas_type == "zero":
            raise ValueError("final_sigmas_type='zero' cannot be used with algorithm_type='sde-dpmsolver': its step to "
                             "σ = 0 keeps noise (b_next·√(e^{2h} − 1) = 0·∞); choose final_sigmas_type='sigma_min' or "
                             "algorithm_type='sde-dpmsolver++'.")

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        mu: float | None = None,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        """Build the grid: ``num_inference_steps`` points as configured, or custom descending ``timesteps``.

        ``mu`` (with ``use_dynamic_shifting``) shifts the flow grid by e^μ for this schedule only.
        """
        cfg = self.config
        check_device(device)
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps needs exactly one of num_inference_steps (an int ≥ 1) or timesteps.")
        if mu is not None and not cfg.use_dynamic_shifting:
            raise ValueError(f"mu={mu} needs use_dynamic_shifting=True.")
        if num_inference_steps is not None:
            check_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        shift = float(np.exp(mu)) if mu is not None else cfg.flow_shift
        levels, grid = self._flow_grid(num_inference_steps, timesteps, shift) if self.noise_path == "flow" else (
            self._vp_grid(num_inference_steps, timesteps))
        # The path points are the float32 levels exposed as ``self.sigmas``, with a and b evaluated in float32
        # by the same formulas as diffusers (a = 1/√(1 + s²), b = s·a): x̂0 = (x − b·ε)/a cancels badly near
        # the clean end, so equal float32 scalars are what keeps the two schedulers' samples together.
        levels = np.append(levels, self._final_level(shift)).astype(np.float32)
        if self.noise_path == "flow":
            a, b = 1 - levels, levels
        else:
            with np.errstate(invalid="ignore"):
                a = 1 / np.sqrt(levels**2 + 1)
                b = np.where(np.isinf(levels), np.float32(1), levels * a)  # exact at s = ∞ (ᾱ = 0)
        a, b = a.astype(np.float64), b.astype(np.float64)
        with np.errstate(divide="ignore"):
            lam = np.log(a) - np.log(b)
        if self.config.prediction_type == "epsilon" and np.any(a[:-1] == 0):
            raise ValueError(
                f"the grid starts where a = 0 (λ = −∞, timestep {grid[0]:g}): an ε-prediction says nothing about x0 "
                "there. Use prediction_type='v_prediction'/'flow_prediction' or 'sample', or another spacing."
            )
        if self.config.algorithm_type == "sde-dpmsolver" and np.any(a[:-1] == 0):
            raise ValueError(
                f"the grid starts where a = 0 (timestep {grid[0]:g}): sde-dpmsolver's step from there is infinite "
                "(a_next/a). Choose algorithm_type='sde-dpmsolver++' or another spacing."
            )
        self.num_inference_steps = len(grid)
        grid = torch.from_numpy(grid if grid.dtype == np.int64 else grid.astype(np.float32))
        self.timesteps = grid.to(device)
        self.sigmas = torch.from_numpy(levels).to(torch.float32)
        host = lambda values: [torch.tensor(v, dtype=torch.float64) for v in values]  # noqa: E731
        self._a, self._b, self._lam = host(a), host(b), host(lam)
        self._b_ratio = host(b[1:] / b[:-1])
        self._host_timesteps = grid.tolist()
        self._first_index = {}
        for i, t in enumerate(self._host_timesteps):
            self._first_index.setdefault(t, i)
        self.set_begin_index(0)

    def _vp_grid(self, n: int | None, custom: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
        """(s levels, timesteps) of a VP grid, without the final point."""
        cfg, table = self.config, self._level_table
        T = cfg.num_train_timesteps
        if custom is not None:
            t = check_custom_timesteps(custom, T, integer=True).astype(np.int64)
            return table[t], t
        with np.errstate(divide="ignore"):
            lam_table = -np.log(table)
        last_timestep = T - int(np.sum(lam_table < cfg.lambda_min_clipped))
        finite = table[np.isfinite(table)]
        s_min, s_max = float(finite[0]), float(finite[-1])
        top = last_timestep - 1 if np.isfinite(table[last_timestep - 1]) else last_timestep - 2
        tuned = tuned_grid_lambdas(cfg.tuned_grids, n, lam_table[top], lam_table[0])
        if tuned is not None or cfg.time_grid is not None:  # fractional timesteps exactly at their level (linear in s)
            lam = tuned if tuned is not None else time_grid_lambdas(cfg.time_grid, lam_table[top], lam_table[0], n)
            levels = np.exp(-lam)
            t = np.interp(levels, table[: top + 1], np.arange(top + 1))
            return np.interp(t, np.arange(top + 1), table[: top + 1]), t
        if cfg.use_karras_sigmas or cfg.use_lu_lambdas:
            levels = (karras_levels if cfg.use_karras_sigmas else exponential_levels)(s_min, s_max, n)
            t = timesteps_of_levels(levels, table)
            t = t if cfg.beta_schedule == "squaredcos_cap_v2" else t.round()
        elif cfg.use_exponential_sigmas or cfg.use_beta_sigmas:
            levels = (exponential_levels if cfg.use_exponential_sigmas else beta_levels)(s_min, s_max, n)
            t = timesteps_of_levels(levels, table)
        else:
            t = spaced_dpm_timesteps(cfg.timestep_spacing, T, n, cfg.steps_offset, last_timestep)
            levels = table[t]
        return levels, t.astype(np.int64)  # diffusers truncates fractional timesteps

    def _flow_grid(self, n: int | None, custom: Sequence[float] | None, shift: float) -> tuple[np.ndarray, np.ndarray]:
        """(σ levels, timesteps) of a flow grid, without the final point; t = σ·T."""
        T = self.config.num_train_timesteps
        if custom is not None:
            t = check_custom_timesteps(custom, T + 1e-3, integer=False)
            return t / T, t
        tuned = tuned_grid_lambdas(self.config.tuned_grids, n)
        if tuned is not None or self.config.time_grid is not None:
            lam_min, lam_max = np.log(1 / (T - 1)), np.log(T - 1)  # σ from 1 − 1/T to 1/T
            lam = tuned if tuned is not None else time_grid_lambdas(self.config.time_grid, lam_min, lam_max, n)
            levels = 1 / (1 + np.exp(lam))
            return levels, levels * T
        levels = flow_levels(n, T, shift)
        return levels, (levels * T).astype(np.int64)

    def _final_level(self, shift: float) -> float:
        """Level after the last step: 0 (x0 itself) or the least noisy training level."""
        if self.config.final_sigmas_type == "zero":
            return 0.0
        if self.noise_path == "flow":
            return float(shift_sigmas(1 / self.config.num_train_timesteps, shift))
        return float(self._level_table[0])


# ============================================================================================
# scratch_schedulers.samplers.unipc
# ============================================================================================

"""UniPC's UniP/UniC update, the corrected-sample x̂0 shift and the σ² final step (Zhao et al., 2023).

The derivation below is the one :func:`unipc_update` implements; :mod:`scratch_schedulers.samplers` gives the
overview of all update rules.
"""


import torch

# --------------------------------------------------------------------------------------------
# UniP / UniC (Zhao et al., 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
# of Diffusion Models", arXiv:2302.04867, data-prediction form, Algorithms 2–3 with B(h)).
#
# The exact solution of dpm.py's comment, with D(ℓ) = D0 + Σ_k (ℓ − λ)^k/k!·D^{(k)} integrated term by term:
#     x_next = (b_next/b)·x + a_next·φ1·D0 + a_next·Σ_{k≥1} G_k·h^k·D^{(k)}/k!,
#     G_0 = φ1 = 1 − e^{−h},   G_k = 1 − k·G_{k−1}/h   (= h·k!·∫_0^1 e^{−h(1−u)} u^k/k! du).
# UniPC replaces the unknown derivatives by differences at p other points λ_m = λ + r_m·h,
# D_m − D0 = Σ_k (r_m·h)^k/k!·D^{(k)}, weighted B(h)·a_m/r_m: matching the terms k = 1..p gives
# the Vandermonde system Σ_m a_m·r_m^{k−1} = G_k/B(h) (the paper's R_p(h)·a_p = g_p(h)/B(h)).
# The product w_m = B(h)·a_m solves Σ_m w_m·r_m^{k−1} = G_k, so for p ≥ 2 the step does not
# depend on B(h) at all; UniPC's rule for p = 1, a_1 = 1/2, is where it does: w_1 = B(h)/2 with
# B(h) = h ("bh1") or B(h) = 1 − e^{−h} ("bh2"; the paper's e^h − 1 with h → −h in this form).
# * UniP-p (predictor): the points are the p − 1 previous steps' x̂0 (r_m < 0). UniP-2 "bh2" is
#   DPM-Solver++(2M) midpoint; UniP-3 solves the same two conditions as the Taylor 3M of dpm.py.
# * UniC-p (corrector): once the model has been evaluated at x_next, the same update from the same
#   x and D0 is recomputed with the new x̂0 as one more point (r = 1), so p points match p terms
#   (order p + 1), without another model evaluation.
# Ends: a point with λ_m = ±∞ has |r_m| = ∞ and, in the limit, weight 0 (the solution of the system
# tends to that of the other points), so it is dropped; at λ = −∞ (a = 0) h = ∞, every G_k = 1, and
# the only point is the corrector's (r = 1 exactly): w_1 = 1/2 with bh2, infinite with bh1 (the
# scheduler skips that correction). λ_next = +∞ is only reached by first-order steps (no points).
# --------------------------------------------------------------------------------------------


def unipc_update(
    x: torch.Tensor,
    x0: torch.Tensor,
    lam,
    points,
    lam_next,
    a_next,
    b_ratio,
    variant: str = "bh2",
) -> torch.Tensor:
    """x_next = (b_next/b)·x + a_next·φ1·D0 + a_next·Σ_m (w_m/r_m)·(D_m − D0)  (UniP-p / UniC-p above).

    Args:
        x: sample at λ, shape (B, ...).
        x0: its data prediction D0.
        lam, lam_next: λ of the start and of the target point (host 0-d tensors; λ = −∞ allowed).
        points: (λ_m, D_m) of the other points: previous steps (UniP) and, for UniC, (λ_next, x̂0 at
            the predicted x_next) last. Host λ_m; the weights come from a p × p solve in float64.
        a_next: signal scale of the target point.
        b_ratio: b_next / b.
        variant: ``bh1`` (B(h) = h) or ``bh2`` (B(h) = 1 − e^{−h}); matters only for one point.
    """
    lam, lam_next = torch.as_tensor(lam, dtype=torch.float64), torch.as_tensor(lam_next, dtype=torch.float64)
    h = lam_next - lam
    phi1 = -torch.expm1(-h)
    x_next = b_ratio * x + (a_next * phi1) * x0
    one_point = len(points) == 1
    points = [(torch.as_tensor(lam_m, dtype=torch.float64), d) for lam_m, d in points]
    points = [(lam_m, d) for lam_m, d in points if bool(torch.isfinite(lam_m))]  # weight 0 in the limit
    if not points:
        return x_next
    ratios = torch.stack([torch.where(lam_m == lam_next, 1.0, (lam_m - lam) / h) for lam_m, _ in points])
    if one_point:
        weights = (h if variant == "bh1" else phi1).reshape(1) / 2  # UniPC's a_1 = 1/2
    else:
        g, rhs = phi1, []
        for k in range(1, len(points) + 1):
            g = 1 - k * g / h
            rhs.append(g)
        vandermonde = torch.stack([ratios ** (k - 1) for k in range(1, len(points) + 1)])
        weights = torch.linalg.solve(vandermonde, torch.stack(rhs))
    for (_, d), w in zip(points, weights / ratios, strict=True):
        x_next = x_next + (a_next * w) * (d - x0)
    return x_next


def corrected_prediction_shift(rule: str, a, b):
    """J in x̂0(x_c) ≈ x̂0(x̃) + J·(x_c − x̃): the data prediction at a corrected sample x_c, from the model's
    output at the predicted sample x̃ (the corrector makes no new evaluation; J ≈ ∂x̂0/∂x, Tweedie:
    a·Cov[x0 | x]/b²).

    * ``x0``: J = 0, x̂0 itself is reused (UniPC).
    * ``epsilon``: J = 1/a, ε̂ is reused (x̂0 = (x_c − b·ε̂)/a): exact as b → 0, too large at high noise.
    * ``gaussian``: J = a/(a² + b²), the exact J for data N(μ, I) (unit variance, as normalised data and
      latents are): 1/a as b → 0 and → 0 as a → 0, like the J of any data with that variance.
    """
    if rule == "x0":
        return 0.0
    return 1 / a if rule == "epsilon" else a / (a**2 + b**2)


def clean_endpoint_step(x0: torch.Tensor, x0_prev: torch.Tensor, lam, lam_prev) -> torch.Tensor:
    """The last step to σ = 0 (λ = +∞) from two x̂0s: x_end = D + w·(D − D_prev), w = s²/(s_prev² − s²).

    In the flow time s = b/(a + b) = sigmoid(−λ) (any path: x̂0 and the ODE do not depend on it), along an
    ODE solution x(s) with velocity u = dx/ds, D = x − s·u = x(0) − s²·x''(0)/2 + O(s³): x̂0 tends to the
    endpoint quadratically in s, with no linear term. A first-order step returns D (error O(s²)); eliminating
    the s² term between the last two points leaves O(s³). A polynomial in λ cannot do this (its weights are
    infinite at λ = +∞); in s the end is an ordinary point. ``lam``, ``lam_prev``: host 0-d tensors, finite.
    """
    s2, s2_prev = torch.sigmoid(-torch.as_tensor(lam)) ** 2, torch.sigmoid(-torch.as_tensor(lam_prev)) ** 2
    return x0 + (s2 / (s2_prev - s2)) * (x0 - x0_prev)


# ============================================================================================
# scratch_schedulers.dpm_stepping
# ============================================================================================

"""The stepping part of :class:`~scratch_schedulers.ScratchDPMSolverScheduler`: where a step starts, the
multistep history, and the update call (README, "Any timestep").

Any timestep: a scheduled timestep starts the usual multistep step; any other t in the path's range
([0, T − 1] on the VP path, [0, T] on the flow path) a first-order step from its exact path point (VP:
the level s = b/a interpolated linearly between training timesteps, as the fractional grids are, so an
integer t is exact; flow: σ = t/T) to the largest scheduled point below it. History entries record the
grid index a step landed on, its start (λ, b, sample), its order and its x̂0; a step uses the latest ones while they
land in one line (at i, then i − 1), so an off-schedule step serves as the next step's history and a jump
in the loop restarts it. One timestep per example (a (B,) CPU tensor): each example keeps its own loop
position and history, examples sharing a start and a history step together, and each steps exactly as
it would alone (lock-step loops at different positions, each with its own order).

Corrector (``corrector="unic_bh1"/"unic_bh2"``): a step whose history is consecutive first corrects its
start sample with UniC (:func:`~scratch_schedulers.samplers.unipc_update`), recomputing the step that led
here from that step's own start, with the model output just evaluated here as one more point; x̂0 is the
one computed from the uncorrected sample (UniPC, ``corrector_reuses="x0"``) or that one shifted towards the
corrected sample (``"epsilon"``, ``"gaussian"``: :func:`~scratch_schedulers.samplers.corrected_prediction_shift`).
The final sample is never corrected (as in UniPC): that would cost one more model evaluation, at σ = 0
where the model adds no information (x̂0 = x there for ε- and v-models), and the UniC weights of a step to
λ = +∞ are infinite. The last step's own accuracy is ``final_step="sigma_squared"``'s job instead.

Algorithm types (:mod:`.samplers.dpm`): ``dpmsolver++`` and ``sde-dpmsolver++`` (η = 1) step in
the data form with the x̂0 history; ``dpmsolver`` and ``sde-dpmsolver`` in the noise form (the same functions with
(a, x0) and (b, ε) swapped) with an ε̂ history, except that every first-order step is taken in the data form
(algebraically the same step, exact at the path's ends); ``sde-dpmsolver`` doubles the ODE step's ε-terms
(:func:`~scratch_schedulers.samplers.dpm_noise_sde_step`). ``step`` draws the noise z once per call for the whole
batch (per-example timesteps: once, indexed by the rows of each group).
"""


from typing import NamedTuple

import numpy as np
import torch



class DPMStart(NamedTuple):
    """Where a step starts: grid index (None off the schedule), path point (a, b, λ), index it lands on, b_next/b."""

    index: int | None
    a: torch.Tensor
    b: torch.Tensor
    lam: torch.Tensor
    target: int
    b_ratio: torch.Tensor


class PastStep(NamedTuple):
    """An earlier step as later ones read it: its start (λ, b, sample), the x̂0 there, its order, and ε̂ there
    (noise-form algorithm types; None otherwise)."""

    lam: torch.Tensor
    b: torch.Tensor
    sample: torch.Tensor
    x0: torch.Tensor
    order: int
    eps: torch.Tensor | None = None


class DPMSolverStepping:
    """Mixin of :class:`~scratch_schedulers.ScratchDPMSolverScheduler`: reads the grid that its ``set_timesteps``
    builds (``_a``, ``_b``, ``_lam``, ``_b_ratio``, ``_host_timesteps`` and ``_first_index``)."""

    def _start(self, value: float | None, position: int) -> DPMStart:
        """The step from host timestep ``value`` (None: a device timestep, trusted to be the loop's next one)
        at loop ``position`` (which settles repeated timesteps)."""
        n = self.num_inference_steps
        if value is None or (position < n and self._host_timesteps[position] == value):
            if position >= n:
                raise ValueError(f"the loop has already taken all {n} steps; call set_timesteps() again.")
            i = position
        elif value in self._first_index:
            i = self._first_index[value]
        else:
            return self._off_schedule_start(value)
        return DPMStart(i, self._a[i], self._b[i], self._lam[i], i + 1, self._b_ratio[i])

    def _off_schedule_start(self, value: float) -> DPMStart:
        """A first-order step from the exact path point of an off-schedule host timestep (module docstring)."""
        T = self.config.num_train_timesteps
        t = torch.tensor(value, dtype=torch.float64)
        check_step_timesteps(t, T if self.noise_path == "flow" else T - 1, False)
        a, b = (v.to(torch.float64) for v in signal_noise_at(self, t, dtype=torch.float32))  # float32, as the grid
        if a == 0 and self.config.prediction_type == "epsilon":
            raise ValueError(f"timestep {value:g} has a = 0 (λ = −∞): an ε-prediction says nothing about x0 there.")
        if a == 0 and self.config.algorithm_type == "sde-dpmsolver":
            raise ValueError(f"timestep {value:g} has a = 0: sde-dpmsolver's step from there is infinite (a_next/a); "
                             "choose algorithm_type='sde-dpmsolver++'.")
        target = int(np.sum(np.asarray(self._host_timesteps) > value))  # the first grid point below t
        return DPMStart(None, a, b, log_snr(a, b), target, self._b[target] / b)

    def _consecutive_history(self, start: DPMStart, example: int | None = None) -> list[PastStep]:
        """The latest steps that led here in one line (landing at i, i − 1, ...), for one example or all.

        ``self._history`` holds (target, λ, b, order, sample, x̂0, ε̂ or None) per step, the first four per example
        (arrays) after a step with one timestep per example.
        """
        history: list[PastStep] = []
        if start.index is None:
            return history  # an off-schedule step is first order
        for target, lam, b, order, sample, x0, eps in reversed(self._history):
            if not isinstance(target, int):
                if example is None:  # a per-example entry serves the batch if all examples agree
                    if not all(np.all(v == v[0]) for v in (target, lam, b, order)):
                        break
                    example_ = 0
                else:
                    example_ = example
                target, order = int(target[example_]), int(order[example_])
                lam, b = (torch.tensor(v[example_], dtype=torch.float64) for v in (lam, b))
            if target != start.index - len(history):
                break
            history.append(PastStep(lam, b, sample, x0, order, eps))
        return history

    def _advance(self, x, out, start: DPMStart, history: list[PastStep], rows=None, noise=None):
        """(x_next, x̂0, the corrected start sample, order, ε̂ or None) of one step from ``start`` on ``rows`` (all
        when None); ``noise``: z of the whole batch for the SDE types."""
        if rows is not None:
            x, out = x[rows], out[rows]
            noise = None if noise is None else noise[rows]
            history = [past._replace(sample=past.sample[rows], x0=past.x0[rows],
                                     eps=None if past.eps is None else past.eps[rows]) for past in history]
        x0 = self._data_prediction(out, x, start.a, start.b)
        algorithm = self.config.algorithm_type
        noise_form = algorithm in ("dpmsolver", "sde-dpmsolver")
        eps = self._noise_prediction(out, x, start.a, start.b, x0) if noise_form else None
        if history and self.config.corrector != "none":
            x_predicted, x = x, self._corrected(x, x0, start, history)
            if self.config.corrector_reuses != "x0":
                x0 = x0 + corrected_prediction_shift(self.config.corrector_reuses, start.a, start.b) * (x - x_predicted)
        order = 1 if start.index is None else self._order_at(start.index, len(history))
        lam, lam_next, a_next, b_ratio = start.lam, self._lam[start.target], self._a[start.target], start.b_ratio
        solver_type = self.config.solver_type
        eta, pp_noise = (1.0, noise) if algorithm == "sde-dpmsolver++" else (0.0, None)
        if order == 1 and history and self.config.final_step == "sigma_squared" and bool(torch.isinf(lam_next)):
            x_next = clean_endpoint_step(x0, history[0].x0, lam, history[0].lam)
        elif order == 1:  # the data form for every algorithm type (noise form: the same step, exact at the ends)
            x_next = dpmpp_first_order_step(x, x0, lam, lam_next, a_next, b_ratio, eta, pp_noise)
        elif solver_type in ("bh1", "bh2"):  # UniP-p
            points = [(past.lam, past.x0) for past in history[: order - 1]]
            x_next = unipc_update(x, x0, lam, points, lam_next, a_next, b_ratio, solver_type)
        elif noise_form:  # (a, x0) ↔ (b, ε): λ → −λ, a_next → b_next, b_next/b → a_next/a, D → ε̂
            ds, lams = [eps, *(past.eps for past in history)], [-lam, *(-past.lam for past in history)]
            x_next = self._multistep(order, x, ds, lams, -lam_next, self._b[start.target], a_next / start.a)
        else:
            ds, lams = [x0, *(past.x0 for past in history)], [lam, *(past.lam for past in history)]
            x_next = self._multistep(order, x, ds, lams, lam_next, a_next, b_ratio, eta, pp_noise)
        if algorithm == "sde-dpmsolver":
            x_next = dpm_noise_sde_step(x_next, x, a_next / start.a, self._b[start.target], lam_next - lam, noise)
        return x_next, x0, x, order, eps

    def _multistep(self, order: int, x, ds, lams, lam_next, a_next, b_ratio, eta=0.0, noise=None):
        """The 2M/3M DPM-Solver++ update from x with the estimates ``ds`` (this step's first) at ``lams``."""
        if order == 2:
            return dpmpp_second_order_step(x, ds[0], ds[1], lams[1], lams[0], lam_next, a_next, b_ratio,
                                           self.config.solver_type, eta, noise)
        return dpmpp_third_order_step(x, *ds[:3], lams[2], lams[1], lams[0], lam_next, a_next, b_ratio,
                                      self.config.third_order == "diffusers", eta, noise)

    def _corrected(self, x: torch.Tensor, x0: torch.Tensor, start: DPMStart, history: list[PastStep]) -> torch.Tensor:
        """UniC-p: the step that led to ``start`` recomputed with this point's x̂0 (p = that step's order)."""
        past, *older = history
        variant = self.config.corrector.removeprefix("unic_")
        if variant == "bh1" and not bool(torch.isfinite(past.lam)):
            return x  # B(h) = h is infinite for a step from λ = −∞ (samplers/unipc.py, UniP/UniC ends)
        points = [(p.lam, p.x0) for p in older[: past.order - 1]] + [(start.lam, x0)]
        return unipc_update(past.sample, past.x0, past.lam, points, start.lam, start.a, start.b / past.b, variant)

    def _step_per_example(self, t: torch.Tensor, x: torch.Tensor, out: torch.Tensor, noise: torch.Tensor | None):
        """One step with a timestep per example: examples sharing a start point and history step together (each
        group reads its rows of the batch's ``noise``)."""
        if not is_host(t):
            raise ValueError(
                f"one timestep per example ({tuple(t.shape)}, on {t.device}) must be a CPU tensor for DPM-Solver: each "
                "example's grid position, history and order are chosen on the host, and reading a device tensor "
                "would synchronise. Pass timesteps.cpu() (the samples may stay on the device)."
            )
        groups: dict[tuple, tuple[DPMStart, list, list[int]]] = {}
        for example, value in enumerate(t.tolist()):
            position = self._position
            if self._history and not isinstance(self._history[-1][0], int):
                position = int(self._history[-1][0][example])  # this example's own loop position
            start = self._start(value, position)
            history = self._consecutive_history(start, example)
            key = (start.index, start.target, float(start.lam),
                   tuple((float(past.lam), float(past.b), past.order) for past in history))
            groups.setdefault(key, (start, history, []))[2].append(example)
        prev_sample = x0 = sample = eps = None
        orders = np.zeros(len(t), dtype=np.int64)
        for start, history, examples in groups.values():
            rows = torch.tensor(examples, device=x.device)
            prev_rows, x0_rows, sample_rows, orders[examples], eps_rows = self._advance(x, out, start, history, rows,
                                                                                       noise)
            if prev_sample is None:
                prev_sample, x0, sample = (v.new_empty(x.shape) for v in (prev_rows, x0_rows, sample_rows))
                eps = None if eps_rows is None else eps_rows.new_empty(x.shape)
            prev_sample[rows], x0[rows], sample[rows] = prev_rows, x0_rows, sample_rows
            if eps is not None:
                eps[rows] = eps_rows
        starts = {example: start for start, _, examples in groups.values() for example in examples}
        targets = np.array([starts[b].target for b in range(len(t))])
        lams, bs = (np.array([float(getattr(starts[b], name)) for b in range(len(t))]) for name in ("lam", "b"))
        return prev_sample, x0, (targets, lams, bs, orders, sample, x0, eps)


# ============================================================================================
# scratch_schedulers.scheduling_dpmsolver
# ============================================================================================

"""Multistep DPM-Solver++ (Lu et al., 2022) over the VP or the flow path, for 🤗 diffusers.

The update rules are :func:`~scratch_schedulers.samplers.dpmpp_first_order_step` and its 2M/3M
siblings, written once in the path's log-SNR λ = log(a/b), with a noise fraction η for the stochastic
solver; the noise-prediction DPM-Solver is the same rules with (a, x0) and (b, ε) swapped. The class is
assembled from two mixins: :class:`~.dpm_schedule.DPMSolverSchedule` checks the config and builds the grid of
path points (a_i, b_i, λ_i) in float64 on the host (``set_timesteps``), :class:`~.dpm_stepping.DPMSolverStepping`
finds where a step starts, keeps the multistep history and calls the update rule. This module holds the config
(``__init__``), ``step`` (the model output converted into x̂0 and ε̂, the SDE's noise drawn) and ``add_noise``.
The config is key-for-key diffusers' ``DPMSolverMultistepScheduler`` (all four
``algorithm_type`` values), plus ``time_grid`` (one choice instead of the ``use_*_sigmas`` booleans),
``third_order``, and the UniC corrector of UniPC with its few-step companions (``corrector``,
``corrector_reuses``, ``final_step``; ``FEW_STEP_CONFIG`` is the recommended few-step setting). Deliberate
differences from diffusers are listed in the class docstring.
"""


from typing import Literal

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.utils.torch_utils import randn_tensor


# The documented few-step (5–20 evaluations) configuration, both paths: ScratchDPMSolverScheduler(**FEW_STEP_CONFIG).
FEW_STEP_CONFIG = {"solver_order": 3, "time_grid": "flow_uniform", "corrector": "unic_bh2",
                   "corrector_reuses": "gaussian", "final_step": "sigma_squared"}


class ScratchDPMSolverScheduler(DPMSolverSchedule, DPMSolverStepping, ScratchScheduler):
    """Multistep DPM-Solver(++) of order 1–3, ODE or SDE, with the config of ``diffusers.DPMSolverMultistepScheduler``.

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr:
            the VP training path (as in :class:`~scratch_schedulers.ScratchDDPMScheduler`).
        solver_order: 1 (DDIM), 2 (2M) or 3 (3M).
        prediction_type: ``epsilon``, ``sample``, ``v_prediction`` (VP path) or ``flow_prediction``
            (u = ε − x0; flow path, which also takes ``epsilon`` and ``sample``).
        thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen's dynamic thresholding of x̂0.
        algorithm_type: ``dpmsolver++`` (the data-prediction ODE solver), ``sde-dpmsolver++`` (its SDE, noise
            fraction η = 1: :func:`~scratch_schedulers.samplers.dpmpp_first_order_step` and siblings), ``dpmsolver``
            (noise-prediction form, Lu et al., 2022a) or ``sde-dpmsolver`` (its SDE:
            :func:`~scratch_schedulers.samplers.dpm_noise_sde_step`). The SDE types draw z once per step with
            ``randn_tensor`` from ``step``'s ``generator`` (a list of B: example i's from the i-th), as diffusers.
            The UniC ``corrector``, UniP ``solver_type`` ``bh1``/``bh2`` and ``final_step="sigma_squared"`` assume the
            data-form ODE and are refused with the others (``final_step`` is allowed with ``dpmsolver``); so is
            ``final_sigmas_type="zero"`` with ``sde-dpmsolver`` (its last step would keep noise b_next·√(e^{2h} − 1)·z
            = 0·∞), as in diffusers.
        solver_type: the 2M variant, ``midpoint`` (Algorithm 2) or ``heun`` (Taylor weights); or ``bh1``/``bh2``:
            the UniP-p predictor of UniPC (Zhao et al., 2023; :func:`~scratch_schedulers.samplers.unipc_update`):
            2M midpoint (bh2) or weight a·h/2 (bh1) at order 2, the Taylor 3M at order 3 (``third_order`` unused).
        lower_order_final, euler_at_final, final_sigmas_type: as diffusers (order 1 at a step to σ = 0;
            orders ≤ 2, 1 at the last two steps below 15 steps).
        use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas, use_lu_lambdas: diffusers' VP grids.
        use_flow_sigmas, flow_shift, use_dynamic_shifting, time_shift_type: the flow path x = (1 − σ)·x0 + σ·ε
            with σ shifted by ``flow_shift`` (or e^μ from ``set_timesteps(mu=...)``).
        lambda_min_clipped: timesteps with λ below this are not visited.
        variance_type: ``learned``/``learned_range`` models return a variance block, ignored here; DDPM's fixed
            types (what a DDPM config brings to ``from_config``) mean no block, as ``None`` does.
        timestep_spacing, steps_offset: diffusers' DPM-Solver spacings (``linspace``, ``leading``, ``trailing``).
        time_grid: None (diffusers' grid from the keys above), or ``logsnr``, ``karras`` or ``flow_uniform``
            (:func:`~scratch_schedulers.dpm_grids.time_grid_lambdas`); timesteps then sit exactly at
            their noise level (fractional on the VP path).
        third_order: ``taylor`` (weight 2·a·φ3 on D2, third order) or ``diffusers`` (a·φ3, as the
            reference code: only second order; kept for step-by-step parity).
        corrector: ``none``, or ``unic_bh1``/``unic_bh2``: UniPC's UniC corrector, which refines each sample with
            the model output evaluated there before the next step, at no extra model evaluation (:mod:`.dpm_stepping`).
            ``solver_type="bh2", corrector="unic_bh2"`` is diffusers' ``UniPCMultistepScheduler`` (bh2).
        corrector_reuses: the x̂0 the next step uses at the corrected sample x_c (no model call there): ``x0`` the
            predicted sample's (UniPC), ``epsilon`` the one with its ε̂, ``gaussian`` shifted by a/(a² + b²)·(x_c − x̃)
            (:func:`~scratch_schedulers.samplers.corrected_prediction_shift`).
        final_step: ``x0`` (the last step to σ = 0 returns x̂0) or ``sigma_squared`` (extrapolates the last two x̂0s
            to σ = 0, exact to O(σ³): :func:`~scratch_schedulers.samplers.clean_endpoint_step`).
        tuned_grids: ``{n: [s_0, …, s_{n−1}]}``, n-step grids in flow time s = b/(a + b) (descending, in (0, 1); the
            final point follows as configured) that ``set_timesteps(n)`` uses instead of the grid keys and the shift,
            timesteps exactly at their level; other n keep the configured grid (:mod:`.grid_search` tunes them).

    Few steps (5–20 model evaluations), both paths: ``ScratchDPMSolverScheduler(**FEW_STEP_CONFIG)`` (3M, UniC bh2,
    ``corrector_reuses="gaussian"``, ``final_step="sigma_squared"``, ``time_grid="flow_uniform"``) had the lowest
    ODE endpoint error of our configurations in ``benchmarks/bench_few_step.py``: on the example mixture 0.38 /
    0.09 / 0.09× the best diffusers scheduler at 5 / 10 / 20 evaluations on the VP path, 0.64 / 0.42 / 0.42× on
    the flow path. The constructor defaults stay diffusers' for parity.

    Differences from diffusers (each tested in ``tests/scratch_schedulers/test_dpmsolver.py``):
    ᾱ = 0 with ``rescale_betas_zero_snr`` is kept exact (λ = −∞; diffusers sets ᾱ = 2⁻²⁴);
    ``third_order="taylor"``; ``sde-dpmsolver++`` at order 3 weighs D2 with the Taylor weight (diffusers' has a sign
    error: first-order accurate; ``test_dpmsolver_sde.py``) and ``sde-dpmsolver`` has order 3 (diffusers' crashes);
    ``dpmsolver`` accepts ``final_sigmas_type="zero"`` (its last step is order 1, as ``dpmsolver++``'s; diffusers
    refuses it) and ``flow_prediction``; custom flow timesteps mean σ = t/T; ``final_sigmas_type="sigma_min"``
    on the flow path ends at the smallest training σ (diffusers uses the VP value); float64 samples stay
    float64; a ``use_*_sigmas`` key with ``use_flow_sigmas`` and a prediction type the path cannot
    use raise a ``ValueError`` instead of sampling on mixed paths.
    """

    _compatibles = [*VP_COMPATIBLES]  # noqa: RUF012

    # The VP keys repeat ScratchDDPMScheduler's on purpose: @register_to_config turns exactly these arguments,
    # in diffusers' order and with its defaults, into DPMSolverMultistepScheduler's config (see scheduling_ddim.py).
    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: Literal["epsilon", "sample", "v_prediction", "flow_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: Literal["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"] = "dpmsolver++",
        solver_type: Literal["midpoint", "heun", "bh1", "bh2"] = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: VarianceType | None = None,
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
        time_grid: Literal["logsnr", "karras", "flow_uniform"] | None = None,
        third_order: Literal["taylor", "diffusers"] = "taylor",
        corrector: Literal["none", "unic_bh1", "unic_bh2"] = "none",
        corrector_reuses: Literal["x0", "epsilon", "gaussian"] = "x0",
        final_step: Literal["x0", "sigma_squared"] = "x0",
        tuned_grids: dict[int | str, list[float]] | None = None,
    ):
        self._check_config()
        self.noise_path = "flow" if use_flow_sigmas else "vp"
        betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas)
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if self.noise_path == "vp":  # the flow path has no ᾱ (diffusers tells the paths apart by it)
            self.betas, self.alphas, self.alphas_cumprod = betas, 1.0 - betas, alphas_cumprod
        with np.errstate(divide="ignore"):  # s = b/a per training timestep; +∞ where ᾱ = 0
            self._level_table = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).to(torch.float64).numpy()
        self.sigmas = torch.from_numpy(self._level_table).to(torch.float32)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(num_train_timesteps)[::-1].copy())

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the loop at ``self.timesteps[begin_index]`` (image-to-image); clears the history."""
        self._position = begin_index
        self._history: list[tuple] = []  # (grid index landed on, start λ and b, order, start sample, x̂0) per step

    # ---- sampling (where a step starts and the history: dpm_stepping.DPMSolverStepping) -------

    def _order_at(self, i: int, available: int) -> int:
        """Solver order of step i given ``available`` consecutive earlier x̂0s (diffusers' rule)."""
        cfg, n = self.config, self.num_inference_steps
        cap = cfg.solver_order
        few = cfg.lower_order_final and n < 15
        if i == n - 1 and (cfg.euler_at_final or few or cfg.final_sigmas_type == "zero"):
            cap = 1  # to b_next = 0 (λ = +∞) only order 1 is finite, and it returns x̂0 exactly
        elif i == n - 2 and few:
            cap = min(cap, 2)
        return min(cap, available + 1)

    def _data_prediction(self, model_output: torch.Tensor, x: torch.Tensor, a, b) -> torch.Tensor:
        """x̂0 from the model output at path point (a, b), thresholded if configured."""
        cfg = self.config
        if cfg.prediction_type == "epsilon":
            x0 = eps_to_x0(model_output, x, a, b)
        elif cfg.prediction_type == "v_prediction":
            x0 = v_to_x0(model_output, x, a, b)
        elif cfg.prediction_type == "flow_prediction":
            x0 = velocity_to_x0(model_output, x, b)
        else:
            x0 = model_output
        if cfg.thresholding:
            x0 = dynamic_threshold(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        return x0

    def _noise_prediction(self, model_output: torch.Tensor, x: torch.Tensor, a, b, x0: torch.Tensor) -> torch.Tensor:
        """ε̂ for the noise-form solvers: from the model output directly, as diffusers (from the thresholded x̂0
        when thresholding)."""
        prediction_type = self.config.prediction_type
        if self.config.thresholding or prediction_type == "sample":
            return x0_to_eps(x0, x, a, b)
        if prediction_type == "epsilon":
            return model_output
        if prediction_type == "v_prediction":
            return v_to_eps(model_output, x, a, b)
        return velocity_to_eps(model_output, x, b)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Generators = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """One multistep DPM-Solver(++) step from ``timestep`` to the next grid point below it (:mod:`.dpm_stepping`).

        Args:
            model_output: the model's prediction at (sample, timestep), in ``prediction_type``.
            timestep: a value of ``self.timesteps``, any other t in the path's range, or a (B,) CPU tensor of
                one per example (each example keeps its own history: lock-step loops give each its own order).
            sample: x at that timestep, shape (B, C, ...).
            generator: torch generator(s) for the SDE types' noise z (a list of B draws example i's from the i-th,
                as that example alone would); unused by the ODE types.
            variance_noise: z itself (the sample's shape) instead of drawing it; takes precedence over ``generator``.
            return_dict: return a :class:`ScratchSchedulerOutput` rather than a tuple (prev_sample, x̂0).
        """
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps() before step().")
        check_step_shapes(model_output, sample, allow_variance=self.config.variance_type in LEARNED_VARIANCE_TYPES)
        t = timestep_tensor(timestep, sample)
        x, out = in_working_precision(sample, model_output)
        out = out[:, : x.shape[1]]
        noise = None
        if self.config.algorithm_type in SDE_ALGORITHM_TYPES:  # one draw per step for the batch, as diffusers
            if variance_noise is None:
                noise = randn_tensor(x.shape, generator=generator, device=sample.device, dtype=torch.float32)
            else:
                check_same_shape(variance_noise, sample, "variance_noise", "sample")
                noise = variance_noise.to(device=sample.device)
            noise = noise.to(x.dtype)
        if t.ndim == 0:
            start = self._start(float(t) if is_host(t) else None, self._position)
            prev_sample, x0, corrected, order, eps = self._advance(x, out, start, self._consecutive_history(start),
                                                                   noise=noise)
            entry = (start.target, start.lam, start.b, order, corrected, x0, eps)
        else:
            prev_sample, x0, entry = self._step_per_example(t, x, out, noise)
        self._history = [*self._history[-2:], entry]  # 3M needs the last two, its UniC-3 corrector three
        target = entry[0]  # the grid index landed on: an int, or an array of one per example
        self._position = target if isinstance(target, int) else int(target.min())
        return step_result(prev_sample, x0, sample.dtype, return_dict)

    # ---- forward process (training, img2img) -------------------------------------------------

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = a_t·x0 + b_t·ε at training timesteps: VP a = √ᾱ_t (integer t), flow a = 1 − t/T."""
        check_same_shape(original_samples, noise, "original_samples", "noise")
        check_timestep_batch(timesteps, original_samples)
        T = self.config.num_train_timesteps
        host = torch.as_tensor(timesteps)
        if host.device.type == "cpu":  # validated like step's timesteps; device ones are not read back
            check_step_timesteps(host, T if self.noise_path == "flow" else T - 1, integer=self.noise_path == "vp")
        t = host.to(original_samples.device)
        if self.noise_path == "flow":
            sigma = append_dims(t.to(torch.float32) / T, original_samples.ndim).to(original_samples.dtype)
            return (1 - sigma) * original_samples + sigma * noise
        alpha_bar = self.alphas_cumprod.to(original_samples.device)[t.long()]
        alpha_bar = append_dims(alpha_bar, original_samples.ndim).to(original_samples.dtype)
        return alpha_bar**0.5 * original_samples + (1 - alpha_bar) ** 0.5 * noise


# ============================================================================================
# scratch_schedulers.flow_forward
# ============================================================================================

"""The forward process of the flow path, x_σ = (1 − σ)·x0 + σ·ε with t = σ·T, for every flow scheduler.

``add_noise`` (training, image-to-image), diffusers' ``scale_noise`` name for it, and the training target
``get_velocity`` = ε − x0: one definition that ``ScratchFlowMatchScheduler`` and ``ScratchFlowMapScheduler`` share.
"""


import torch



class FlowForwardProcess:
    """Mixin: the flow path's forward process for a scheduler with ``config.num_train_timesteps``."""

    def _sigma(self, timesteps: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
        """σ = t/T for a scalar or a batch of timesteps, broadcast against ``like``."""
        T = self.config.num_train_timesteps
        check_timestep_batch(timesteps, like)
        t = torch.as_tensor(timesteps)
        if t.device.type == "cpu" and not bool(((t >= 0) & (t <= T)).all()):  # host check only: no sync; NaN fails
            raise ValueError(f"flow timesteps must lie in [0, {T}], got {t.flatten()[:8].tolist()}.")
        sigma = t.to(device=like.device, dtype=torch.float32) / T
        return append_dims(sigma, like.ndim).to(like.dtype)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x_σ = (1 − σ)·x0 + σ·ε for a batch of timesteps t = σ·T (any real t in [0, T])."""
        check_same_shape(original_samples, noise, "original_samples", "noise")
        sigma = self._sigma(timesteps, original_samples)
        return (1 - sigma) * original_samples + sigma * noise

    def scale_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor | float, noise: torch.Tensor
    ) -> torch.Tensor:
        """diffusers' name for the forward process (img2img): σ·noise + (1 − σ)·sample."""
        return self.add_noise(sample, noise, timestep)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps=None) -> torch.Tensor:
        """The training target u = ε − x0 (independent of t on this path)."""
        check_same_shape(sample, noise, "sample", "noise")
        return noise - sample


# ============================================================================================
# scratch_schedulers.scheduling_flow_map
# ============================================================================================

"""Few-step sampling on the flow path: flow maps (MeanFlow) and consistency-tuned flow models.

Path x_σ = (1 − σ)·x0 + σ·ε, σ ∈ [0, 1], timestep t = σ·T, as :mod:`.scheduling_flow_match`. One step
goes from t down to any r ∈ [0, t] (σ_t ≥ σ_r) with one model output m = ``model_output``:

* **Flow map** (deterministic). A MeanFlow network predicts the average velocity over [r, t],
  u(x_t, r, t) = 1/(t − r)·∫_r^t v(x_τ, τ) dτ, so the exact displacement is one product (Geng et al.,
  2025, "Mean Flows for One-step Generative Modeling", there with t ∈ [0, 1]; here in σ):
  x_r = x_t − (σ_t − σ_r)·u. For a plain flow UNet (m = v) the same rule is one Euler step of
  dx/dσ = v — which is what diffusers' ``FlowMapEulerDiscreteScheduler`` computes.
* **Multistep consistency sampling** (``stochastic_sampling=True``; Song et al., 2023, "Consistency
  Models", Algorithm 1). A consistency-tuned flow UNet (m = v) gives the clean estimate
  x̂0 = f(x_t, t) = x_t − σ_t·v, which is re-noised to the next level with fresh noise z ~ N(0, I):
  x_r = (1 − σ_r)·x̂0 + σ_r·z.

Both report x̂0 = x_t − σ_t·m as ``pred_original_sample``: the consistency function of a velocity model,
and for a flow map its jump to σ = 0 exactly where the network was evaluated at r = 0 (else an estimate).
"""


from collections.abc import Sequence

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' loader looks it up here)
from diffusers.utils.torch_utils import randn_tensor


# σ of one step's end points: Python floats (float32 values) for host scalars, else tensors.
Sigma = float | torch.Tensor


class ScratchFlowMapScheduler(FlowForwardProcess, ScratchScheduler):
    """Flow-map / consistency sampler for few-step flow models (module docstring), any number of steps ≥ 1.

    ``step(model_output, t, sample)`` goes to the next σ of the grid (from t's grid position; an off-grid t
    goes from σ = t/T to the largest scheduled σ below it, as every scratch scheduler); ``r_timestep=``
    steps to any r ∈ [0, t] instead, one per example allowed. :attr:`r_timesteps` are the interval ends a
    flow-map network takes as its second time input. Config keys and grid follow diffusers'
    ``FlowMapEulerDiscreteScheduler``, so configs load both ways.

    Args:
        num_train_timesteps: T; timesteps are σ·T.
        shift: static shift s of σ' = s·σ/(1 + (s − 1)·σ) (Esser et al., 2024, Eq. 23), applied to the
            default grid and to custom ``sigmas``/``timesteps`` alike, as diffusers' FlowMap scheduler does.
        stochastic_sampling: multistep consistency sampling, x_r = (1 − σ_r)·x̂0 + σ_r·z, instead of the
            deterministic flow-map step x_r = x_t − (σ_t − σ_r)·m.
    """

    _compatibles = ["FlowMapEulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler"]  # noqa: RUF012
    noise_path = "flow"
    is_flow_map = True  # a pipeline gives a flow-map UNet r = the next grid level (pipelines/flow_map.py)

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, stochastic_sampling: bool = False):
        check_num_train_timesteps(num_train_timesteps)
        check_positive("shift", shift)
        if not isinstance(stochastic_sampling, bool):
            raise ValueError(f"stochastic_sampling={stochastic_sampling!r} is not allowed; pass True or False.")
        self._begin_index = 0
        self._device_grids: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.set_timesteps(num_train_timesteps)  # as diffusers: step works right after construction

    # ---- schedule ----------------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | None = None,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        """The grid σ_0 > … > σ_{n−1} > σ_n = 0: shift(linspace(1, 0, n + 1)[:−1]), or shifted custom values.

        Custom ``sigmas`` (strictly descending in (0, 1]) or ``timesteps`` (in (0, T]) are shifted like the
        default grid (diffusers' FlowMap convention), and σ = 0 is appended. ``self.timesteps`` = σ_{0…n−1}·T,
        ``self.sigmas`` has n + 1 entries, :attr:`r_timesteps` = σ_{1…n}·T. The grid is formed in float64
        and held in float32 (what ``step`` computes in). Every argument is checked before anything changes.
        """
        T = self.config.num_train_timesteps
        check_device(device)
        if sigmas is not None and timesteps is not None:
            s = check_custom_timesteps(sigmas, 1 + 1e-6, integer=False)
            t = check_custom_timesteps(timesteps, T + 1e-3, integer=False)
            if len(s) != len(t) or not np.allclose(s * T, t, rtol=1e-4, atol=1e-3):
                raise ValueError("sigmas and timesteps disagree: timesteps must equal sigmas × num_train_timesteps.")
        if sigmas is not None:
            grid = torch.from_numpy(check_custom_timesteps(sigmas, 1 + 1e-6, integer=False))
        elif timesteps is not None:
            grid = torch.from_numpy(check_custom_timesteps(timesteps, T + 1e-3, integer=False)) / T
        elif num_inference_steps is not None:
            check_inference_steps(num_inference_steps, T)
            grid = torch.linspace(1.0, 0.0, num_inference_steps + 1, dtype=torch.float64)[:-1]
        else:
            raise ValueError("set_timesteps needs num_inference_steps (an int ≥ 1), sigmas or timesteps.")
        if num_inference_steps is not None and num_inference_steps != len(grid):
            raise ValueError(f"num_inference_steps={num_inference_steps} but {len(grid)} custom values were given.")
        if grid[-1] <= 0:
            raise ValueError(f"custom sigmas/timesteps must stay > 0 (σ = 0 is appended), got {grid.tolist()}.")
        full = torch.cat([shift_sigmas(grid, self.config.shift), grid.new_zeros(1)])  # float64, as diffusers
        sigma32 = full.to(torch.float32)
        starts, ends = (full[:-1] * T).to(torch.float32), (full[1:] * T).to(torch.float32)
        self.num_inference_steps = len(grid)
        # Host look-ups: each value of self.timesteps (and 0, the last interval end) → (σ, σ_next) as floats.
        pairs = zip(sigma32[:-1].tolist(), sigma32[1:].tolist(), strict=True)
        self._host_sigmas: dict[float, tuple[float, float]] = dict(zip(starts.tolist(), pairs, strict=True))
        self._host_sigmas[0.0] = (0.0, 0.0)
        # (scheduled timesteps, −∞) and (σ grid, 0) in float32, for off-schedule and per-example look-ups
        self._host_grids = (torch.cat([starts, torch.tensor([-torch.inf])]), sigma32)
        self._device_grids = {}
        self.sigmas, self.timesteps = sigma32.to(device), starts.to(device)
        self._r_timesteps = ends.to(device)
        self._begin_index = 0

    @property
    def r_timesteps(self) -> torch.Tensor:
        """The interval end r of each entry of ``self.timesteps`` (σ_{i+1}·T; the last is 0), on their device:
        a flow-map network's second time input at entry i, and the default target of ``step`` there."""
        return self._r_timesteps

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start a loop at ``self.timesteps[begin_index:]`` (image-to-image). Recorded for diffusers' API only:
        ``step`` reads its position from the timestep it is given, never from a counter."""
        self._begin_index = begin_index

    # ---- sampling ----------------------------------------------------------------------------

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        r_timestep: float | torch.Tensor | None = None,
        generator: Generators = None,
        return_dict: bool = True,
    ) -> StepResult:
        """One step from ``timestep`` t to ``r_timestep`` r (module docstring for the two rules).

        Args:
            model_output: the average velocity u(x_t, r, t) of a flow map, or the velocity v of a flow
                (consistency-tuned) UNet; shape of ``sample``.
            timestep: t — any value in [0, T], scheduled or not — or a (B,) tensor of one per example.
            sample: x_t, shape (B, C, ...).
            r_timestep: the target r ∈ [0, t], a number or a 0-d / (B,) tensor; None steps to the next
                scheduled σ below t (``self.r_timesteps`` at t's entry). r = t returns x_t.
            generator: torch generator(s) for the re-noising z of ``stochastic_sampling`` (a list of B
                draws example i's noise from the i-th, as alone); one draw of z per step.
            return_dict: return a :class:`ScratchSchedulerOutput` rather than a tuple.

        Raises:
            ValueError: before any arithmetic, for a host t or r outside [0, T] or r above t (host values
                only: a device tensor is never read back), or mismatched shapes.
        """
        check_step_shapes(model_output, sample)
        sigma_t, sigma_next = self._resolve(timestep, sample)
        sigma_r = sigma_next if r_timestep is None else self._resolve(r_timestep, sample)[0]
        self._check_r_below_t(sigma_t, sigma_r, timestep, r_timestep)
        x, m = in_working_precision(sample, model_output, torch.float32)  # float32 throughout, as diffusers' flows
        if isinstance(sigma_t, float) and isinstance(sigma_r, float):  # host scalars: fused float32 kernels
            x0 = x.sub(m, alpha=sigma_t)
            if not self.config.stochastic_sampling:
                increment = float(np.float32(sigma_r) - np.float32(sigma_t))  # σ_r − σ_t in float32, as tensors
                return step_result(x.add(m, alpha=increment), x0, sample.dtype, return_dict)
        else:
            sigma_t, sigma_r = self._shaped(sigma_t, sample), self._shaped(sigma_r, sample)
            x0 = velocity_to_x0(m, x, sigma_t)
            if not self.config.stochastic_sampling:
                return step_result(euler_step(x, m, sigma_t, sigma_r), x0, sample.dtype, return_dict)
        z = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return step_result((1 - sigma_r) * x0 + sigma_r * z, x0, sample.dtype, return_dict)

    def _resolve(self, timestep: float | torch.Tensor, like: torch.Tensor) -> tuple[Sigma, Sigma]:
        """(σ, σ_next) of a timestep by the any-timestep rule: floats for a host scalar, else tensors of the
        timestep's shape (0-d or (B,)) on its own device.

        A scheduled timestep (within float32 rounding; 0 included) has its grid σ and the next one; any other
        t in [0, T] has σ = t/T and the largest scheduled σ below it (0 below the last). A host value is
        validated; a device one is located with tensor ops on its device and never read back.
        """
        if is_host(timestep) and (not isinstance(timestep, torch.Tensor) or timestep.numel() == 1):
            pair = self._host_sigmas.get(float(timestep))
            if pair is not None:  # the usual case: a value of self.timesteps or self.r_timesteps
                return pair
            t = torch.as_tensor(timestep).reshape(1)
            check_step_timesteps(t, self.config.num_train_timesteps, integer=False)
            sigma, sigma_next = self._locate(t, *self._host_grids)
            return float(sigma), float(sigma_next)
        t = timestep_tensor(timestep, like)
        if t.is_cpu:
            check_step_timesteps(t, self.config.num_train_timesteps, integer=False)
            grids = self._host_grids
        else:
            grids = self._device_grids.get(t.device)
            if grids is None:
                grids = self._device_grids[t.device] = tuple(g.to(t.device) for g in self._host_grids)
        sigma, sigma_next = self._locate(t.reshape(-1), *grids)
        return sigma.reshape(t.shape), sigma_next.reshape(t.shape)

    def _locate(self, t: torch.Tensor, scheduled: torch.Tensor, sigma_grid: torch.Tensor):
        """(σ, σ_next) for timesteps ``t`` (k,) in tensor ops only (no reads); ``scheduled`` holds the
        timesteps then −∞, ``sigma_grid`` their σ then 0 (float32), as :meth:`_resolve` describes."""
        t = t.to(device=scheduled.device, dtype=torch.float32)
        tolerance = 1e-3 * t.clamp(min=1)
        above = (scheduled > (t + tolerance)[:, None]).sum(1)  # grid points above t: index of the first one ≤ t
        on_grid = (scheduled.index_select(0, above) - t).abs() <= tolerance
        sigma = torch.where(on_grid, sigma_grid.index_select(0, above), t / self.config.num_train_timesteps)
        return sigma, sigma_grid.index_select(0, above + on_grid.long())

    @staticmethod
    def _check_r_below_t(sigma_t: Sigma, sigma_r: Sigma, timestep, r_timestep) -> None:
        """r ≤ t (as σ_r ≤ σ_t, so a value within rounding of t's grid point counts as t), where both are on
        the host; a device value is not read (no synchronisation)."""
        if r_timestep is None or not (is_host(sigma_t) and is_host(sigma_r)):
            return
        above = torch.as_tensor(sigma_r) > torch.as_tensor(sigma_t)
        if bool(above.any()):
            t, r = (torch.as_tensor(value).reshape(-1) for value in (timestep, r_timestep))
            t, r = torch.broadcast_tensors(t, r)
            i = int(above.reshape(-1).nonzero()[0, 0]) if above.ndim else 0
            raise ValueError(
                f"r_timestep {float(r[i]):g} is above timestep {float(t[i]):g}: a step goes from t down to r, so "
                "r must lie in [0, t] (r = t returns the sample, r = 0 the clean estimate)."
            )

    @staticmethod
    def _shaped(sigma: Sigma, like: torch.Tensor) -> torch.Tensor | float:
        """A float or 0-d σ as it is; a (B,) one on ``like``'s device, broadcasting per example."""
        return sigma if isinstance(sigma, float) else per_example(sigma, like)


# ============================================================================================
# scratch_schedulers.flow_churn
# ============================================================================================

"""EDM's stochastic churn (Karras et al., 2022, "Elucidating the Design Space…", Alg. 2) on the flow path.

Alg. 2 raises the noise level of the sample before each step, t̂_i = (1 + γ_i)·t_i with
γ_i = min(S_churn/N, √2 − 1) on S_tmin ≤ t_i ≤ S_tmax, by fresh noise x̂_i = x_i + √(t̂_i² − t_i²)·S_noise·ε
(VE coordinates, t = s = b/a), and then takes the ODE step from t̂_i to t_{i+1}. On the flow path
x = (1 − σ)·x0 + σ·ε the level is s = σ/(1 − σ), so ŝ = (1 + γ)·s is σ̂ = (1 + γ)·σ/(1 + γ·σ) and the raise is
:func:`~.samplers.raise_noise` from (1 − σ, σ) to (1 − σ̂, σ̂). The model is evaluated at σ̂_i, so the
scheduler lists σ̂_i as its timesteps; in a diffusers loop (one ``step`` per model evaluation) step i's
call ends with the raise σ_{i+1} → σ̂_{i+1} of the next step. The first raise would precede the first
evaluation: the initial noise stands for the sample at σ̂_0 (at σ_0 = 1, s = ∞, there is no churn).
Everything here is computed once per schedule, in float64 on the host.
"""


import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor



def check_churn(s_churn: object, s_tmin: object, s_tmax: object, s_noise: object, stochastic_sampling: bool) -> None:
    """s_churn ≥ 0, 0 ≤ s_tmin ≤ s_tmax (s_tmax may be inf), 0 < s_noise < inf; churn excludes stochastic_sampling."""

    def number(value: object) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float, np.number)) and not math.isnan(value)

    if not (number(s_churn) and s_churn >= 0):
        raise ValueError(f"s_churn={s_churn!r} is not allowed; pass a number ≥ 0 (0 = no churn, EDM uses 0–80).")
    if not (number(s_tmin) and number(s_tmax) and 0 <= s_tmin <= s_tmax):
        raise ValueError(
            f"s_tmin={s_tmin!r}, s_tmax={s_tmax!r} are not allowed; pass 0 ≤ s_tmin ≤ s_tmax (s_tmax may be "
            "float('inf')), EDM noise levels s = σ/(1 − σ)."
        )
    if not (number(s_noise) and 0 < s_noise < math.inf):
        raise ValueError(f"s_noise={s_noise!r} is not allowed; pass a finite number > 0 (EDM uses 1.0–1.007).")
    if stochastic_sampling and s_churn > 0:
        raise ValueError(
            f"stochastic_sampling=True and s_churn={s_churn!r} are two different stochastic samplers; choose one "
            "(s_churn=0.0 or stochastic_sampling=False)."
        )


def churned_sigma(sigma: float, gamma: float) -> float:
    """σ̂ of the level ŝ = (1 + γ)·s, s = σ/(1 − σ): σ̂ = (1 + γ)·σ/(1 + γ·σ) (σ itself at γ = 0)."""
    return sigma if gamma == 0 else (1 + gamma) * sigma / (1 + gamma * sigma)


@dataclass(frozen=True)
class ChurnPlan:
    """The churned schedule of n steps.

    Attributes:
        sigmas: σ_0 > … > σ_{n−1} > σ_n = 0 (float64): step i's ODE goes from σ̂_i to σ_{i+1}.
        churned: σ̂_0 … σ̂_{n−1} (float64), the model's levels; σ̂_i = σ_i exactly where γ_i = 0.
        s_noise: S_noise, the scale of the fresh noise.
        timesteps: the Euler loop's timesteps σ̂_i·T (float32 values, as ``scheduler.timesteps`` holds them).
    """

    sigmas: np.ndarray
    churned: np.ndarray
    s_noise: float
    timesteps: tuple[float, ...]

    @classmethod
    def of(cls, sigmas: np.ndarray, config) -> ChurnPlan | None:
        """The plan for the grid ``sigmas`` (σ_0 … σ_{n−1}, 0) and a scheduler ``config`` (its s_churn, s_tmin,
        s_tmax, s_noise, num_train_timesteps); None when no step churns (every γ_i = 0)."""
        n = len(sigmas) - 1
        levels = [sigma / (1 - sigma) if sigma < 1 else math.inf for sigma in sigmas[:-1].tolist()]
        gammas = [churn_gamma(level, n, config.s_churn, config.s_tmin, config.s_tmax) for level in levels]
        if not any(gammas):
            return None
        churned = np.array([churned_sigma(s, g) for s, g in zip(sigmas[:-1].tolist(), gammas, strict=True)])
        timesteps = (torch.from_numpy(churned).to(torch.float32) * config.num_train_timesteps).tolist()
        return cls(sigmas, churned, float(config.s_noise), tuple(timesteps))

    @property
    def num_steps(self) -> int:
        return len(self.churned)

    def loop_sigmas(self, heun: bool) -> torch.Tensor:
        """The model's level at every entry of ``timesteps`` then 0 (float32): σ̂_0 … σ̂_{n−1}, 0 (Euler);
        σ̂_0, σ_1, σ̂_1, σ_2, …, σ_{n−1}, σ̂_{n−1}, 0 (Heun: predictor at σ̂_i, corrector at σ_{i+1})."""
        if not heun:
            levels = [*self.churned.tolist(), 0.0]
        else:
            pairs = zip(self.sigmas[1:-1].tolist(), self.churned[1:].tolist(), strict=True)
            levels = [float(self.churned[0]), *(level for pair in pairs for level in pair), 0.0]
        return torch.tensor(levels, dtype=torch.float64).to(torch.float32)

    def euler_start(self, value: float, num_train_timesteps: int) -> tuple[float, int]:
        """(σ, j) of an Euler step from host timestep ``value``: (σ̂_i, i + 1) at entry i of the schedule (within
        float32 rounding), else (t/T, j) with j the first entry below t (n if none; t in [0, T] is checked)."""
        i = next((k for k, t in enumerate(self.timesteps) if t == value), None)
        if i is None:
            check_step_timesteps(torch.tensor(value), num_train_timesteps, integer=False)
            tolerance = 1e-3 * max(1.0, value)
            i = next((k for k, t in enumerate(self.timesteps) if abs(t - value) <= tolerance), None)
        if i is not None:
            return float(self.churned[i]), i + 1
        j = next((k for k, t in enumerate(self.timesteps) if t < value), self.num_steps)
        return value / num_train_timesteps, j

    def raise_to(self, x: torch.Tensor, j: int, generator: Generators) -> torch.Tensor:
        """x at σ_j raised to σ̂_j (:func:`~.samplers.raise_noise`, noise drawn from ``generator``); x itself
        where γ_j = 0 (nothing drawn) or j = n (the end)."""
        if j >= self.num_steps or self.churned[j] == self.sigmas[j]:
            return x
        sigma, sigma_hat = float(self.sigmas[j]), float(self.churned[j])
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return raise_noise(x, 1 - sigma, sigma, 1 - sigma_hat, sigma_hat, noise, self.s_noise)


def per_example_churn_error(timestep: torch.Tensor) -> ValueError:
    """The refusal of one timestep per example with churn on."""
    return ValueError(
        f"s_churn > 0 takes one timestep for the whole batch, got {tuple(timestep.shape)} timesteps: the churn "
        "belongs to a step of the schedule. For one timestep per example use s_churn=0.0."
    )


# ============================================================================================
# scratch_schedulers.scheduling_flow_match
# ============================================================================================

"""Flow matching / rectified flow (Lipman et al., 2023; Liu et al., 2022).

Path x_σ = (1 − σ)·x0 + σ·ε, σ ∈ [0, 1], timestep t = σ·T; the model predicts the velocity
u = dx/dσ = ε − x0 and sampling integrates the ODE from σ = 1 to 0 with Euler or Heun steps.
Config keys follow diffusers' ``FlowMatchEulerDiscreteScheduler`` (shift, dynamic shifting with
μ, shift_terminal, stochastic_sampling); ``solver="heun"`` is second order with diffusers' Heun
convention (``order = 2``, interior timesteps repeated) so a plain ``for t in timesteps`` works.
``s_churn > 0`` makes either one EDM's stochastic sampler (Karras et al., 2022, Alg. 2; :mod:`.flow_churn`):
the timesteps are then the churned levels σ̂_i where the model is evaluated.
"""


import itertools
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' loader looks it up here)
from diffusers.utils.torch_utils import randn_tensor


FlowSolver = Literal["euler", "heun"]
SOLVERS: tuple[str, ...] = get_args(FlowSolver)


class ScratchFlowMatchScheduler(FlowForwardProcess, ScratchScheduler):
    """Euler / Heun sampler for flow-matching models (velocity u = ε − x0).

    Args:
        num_train_timesteps: T; timesteps are σ·T.
        shift: static shift s of σ' = s·σ/(1 + (s − 1)·σ) (SD3 uses 3.0).
        use_dynamic_shifting: shift by ``mu`` passed to ``set_timesteps`` instead (Flux).
        base_shift, max_shift, base_image_seq_len, max_image_seq_len: read by pipelines to
            compute ``mu`` from the image size (kept for config compatibility).
        shift_terminal: stretch the schedule so its last σ equals this value.
        time_shift_type: ``exponential`` or ``linear`` form of the dynamic shift.
        stochastic_sampling: re-noise at every step, x_next = (1 − σ_next)·x̂0 + σ_next·z (Euler only).
        solver: ``euler`` (first order) or ``heun`` (second order, 2n − 1 model evaluations).
        s_churn, s_tmin, s_tmax, s_noise: EDM's churn (Karras et al., 2022, Alg. 2) on its noise level
            s = σ/(1 − σ) (= b/a; the VP level of a VP model sampled through the pipeline's change of variables).
            Step i raises s_i to ŝ_i = (1 + γ_i)·s_i, γ_i = min(s_churn/n, √2 − 1) where s_tmin ≤ s_i ≤ s_tmax
            (s_i finite, so never at σ = 1) else 0, by x̂ = (â/a)·x + √(b̂² − (â·b/a)²)·s_noise·z
            (``samplers.raise_noise``; x + √(ŝ² − s²)·s_noise·z in x/a), then integrates the ODE from σ̂_i to
            σ_{i+1}. The timesteps are σ̂_i·T (Euler: n; Heun: σ̂_0, σ_1, σ̂_1, …, σ̂_{n−1}, 2n − 1) and
            ``sigmas`` the model's level per timestep then 0; a ``step`` call ends with the raise of the next
            step, with noise from ``generator`` (a list of B: example i from the i-th). The initial noise
            stands for the sample at σ̂_0. Heun here is the trapezoid in σ, not EDM's in s (both second order).
            0 (default) is the deterministic sampler, bit for bit; exclusive with ``stochastic_sampling``.
    """

    _compatibles = ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"]  # noqa: RUF012
    noise_path = "flow"

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int | None = 256,
        max_image_seq_len: int | None = 4096,
        shift_terminal: float | None = None,
        time_shift_type: TimeShiftType = "exponential",
        stochastic_sampling: bool = False,
        solver: FlowSolver = "euler",
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
    ):
        check_choice("solver", solver, SOLVERS)
        check_choice("time_shift_type", time_shift_type, TIME_SHIFT_TYPES)
        check_num_train_timesteps(num_train_timesteps)
        check_positive("shift", shift)
        if shift_terminal is not None and not 0 <= shift_terminal < 1:
            raise ValueError(f"shift_terminal={shift_terminal} must be in [0, 1).")
        if stochastic_sampling and solver != "euler":
            raise ValueError(f"stochastic_sampling=True needs solver='euler', got solver={solver!r}.")
        check_churn(s_churn, s_tmin, s_tmax, s_noise, stochastic_sampling)
        self.order = 1 if solver == "euler" else 2
        self._deterministic_euler = solver == "euler" and not stochastic_sampling  # the fused host step applies
        # Training grid, as diffusers (in float32): σ = t/T for t = T … 1, statically shifted.
        T = num_train_timesteps
        train_t = torch.from_numpy(np.linspace(1, T, T, dtype=np.float32)[::-1].copy())
        sigmas = train_t / num_train_timesteps
        if not use_dynamic_shifting:
            sigmas = shift_sigmas(sigmas, shift)
        self.sigma_max, self.sigma_min = float(sigmas[0]), float(sigmas[-1])
        self.num_inference_steps: int | None = None
        self.timesteps = sigmas * num_train_timesteps
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])
        self._grid: np.ndarray | None = None  # distinct σ_0 > … > σ_{n−1} > σ_n = 0 after set_timesteps
        self._host_floats: dict[float, tuple[float, float]] = {}
        self._position = 0
        self._heun_pending: tuple[torch.Tensor, torch.Tensor, float, float] | None = None
        self._churn: ChurnPlan | None = None  # set by set_timesteps when some step's γ > 0

    # ---- schedule ----------------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        """Build the σ grid: n evenly spaced timesteps shifted as configured, or custom values.

        Custom ``sigmas`` (strictly descending in (0, 1]) or ``timesteps`` (in (0, T]) are used
        exactly as given — no shift — so the model is always evaluated at t = σ·T of the state it
        sees (diffusers 0.42 shifts σ but not the given timesteps). A terminal σ = 0 is appended.
        """
        cfg = self.config
        T = cfg.num_train_timesteps
        check_device(device)
        given = [v for v in (num_inference_steps, sigmas, timesteps) if v is not None]
        if sigmas is not None and timesteps is not None:
            s = check_custom_timesteps(sigmas, 1 + 1e-6, integer=False)
            t = check_custom_timesteps(timesteps, T + 1e-3, integer=False)
            if len(s) != len(t) or not np.allclose(s * T, t, rtol=1e-4, atol=1e-3):
                raise ValueError("sigmas and timesteps disagree: timesteps must equal sigmas × num_train_timesteps.")
        if sigmas is not None:
            grid = check_custom_timesteps(sigmas, 1 + 1e-6, integer=False)
        elif timesteps is not None:
            grid = check_custom_timesteps(timesteps, T + 1e-3, integer=False) / T
        elif num_inference_steps is not None:
            check_inference_steps(num_inference_steps, T)
            grid = np.linspace(self.sigma_max * T, self.sigma_min * T, num_inference_steps) / T
            if cfg.use_dynamic_shifting:
                if mu is None:
                    raise ValueError("use_dynamic_shifting=True needs mu=... in set_timesteps().")
                grid = time_shift(grid, mu, cfg.time_shift_type)
            else:
                grid = shift_sigmas(grid, cfg.shift)
            if cfg.shift_terminal:
                grid = stretch_to_terminal(grid, cfg.shift_terminal)
        else:
            raise ValueError("set_timesteps needs num_inference_steps (an int ≥ 1), sigmas or timesteps.")
        if len(given) > 1 and num_inference_steps is not None and num_inference_steps != len(grid):
            raise ValueError(
                f"num_inference_steps={num_inference_steps} but {len(grid)} custom values were given."
            )
        if grid[-1] <= 0:
            raise ValueError(f"custom sigmas/timesteps must stay > 0 (σ = 0 is appended), got {grid.tolist()}.")
        self.num_inference_steps = len(grid)
        self._grid = np.append(grid, 0.0)  # float64, read by the Heun stages
        self._churn = ChurnPlan.of(self._grid, cfg)
        sigma32 = torch.from_numpy(self._grid).to(torch.float32)  # σ_0 … σ_{n−1}, 0 as diffusers holds them
        # The distinct timesteps exactly as self.timesteps holds them (float32 σ times T, as diffusers), so that
        # every value of self.timesteps is a key of the O(1) host look-ups below (float32(σ·T) differs by an ulp).
        distinct = sigma32[:-1] * T
        # per distinct timestep: (σ, σ_next) as tensors, and σ with the float32 step σ_next − σ (as diffusers
        # computes it) as floats for the fused host Euler step
        self._host_sigmas, self._host_floats = {}, {}
        for t, (s, s_next) in zip(distinct.tolist(), itertools.pairwise(sigma32), strict=True):
            self._host_sigmas[t], self._host_floats[t] = (s, s_next), (float(s), float(s_next - s))
        # (distinct timesteps, −∞) and (σ grid, 0) in float32, for off-schedule and per-example look-ups
        self._host_grids = (torch.cat([distinct, torch.tensor([-torch.inf])]), sigma32)
        self._device_grids: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        if self._churn is not None:  # the model's levels: σ̂_i (and σ_{i+1} for Heun's correctors), then 0
            loop_sigmas = self._churn.loop_sigmas(heun=self.config.solver == "heun")
            timesteps = loop_sigmas[:-1] * T
        elif self.config.solver == "heun":  # σ_0, σ_1, σ_1, …, σ_{n−1}, σ_{n−1}, 0: predictor/corrector pairs
            loop_sigmas = torch.cat([sigma32[:1], sigma32[1:-1].repeat_interleave(2), sigma32[-1:]])
            timesteps = torch.cat([distinct[:1], distinct[1:].repeat_interleave(2)])
        else:
            loop_sigmas, timesteps = sigma32, distinct
        self.sigmas, self.timesteps = loop_sigmas.to(device), timesteps.to(device)
        self._schedule = timesteps.tolist()  # self.timesteps on the host, for the Heun loop's order check
        self._position = 0
        self._heun_pending = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start a loop at ``self.timesteps[begin_index:]`` (image-to-image); resets a Heun loop."""
        self._position = begin_index
        self._heun_pending = None

    # ---- sampling ----------------------------------------------------------------------------

    def _euler_sigmas(self, timestep: float | torch.Tensor, like: torch.Tensor):
        """(σ, σ_next) of the Euler step from ``timestep``: 0-d tensors, or (B, 1, …) ones on ``like``'s
        device for one timestep per example.

        A scheduled timestep (within float32 rounding) steps from its grid σ to the next; any other t in
        [0, T] from σ = t/T to the largest scheduled σ below it (0 below the last). A scheduled host
        timestep is a dict look-up; others are located with tensor ops on the timestep's own device (a
        device timestep is never read back, nor validated).
        """
        if is_host(timestep):
            if not isinstance(timestep, torch.Tensor) or timestep.numel() == 1:
                pair = self._host_sigmas.get(float(timestep))
                if pair is not None:  # the usual case: a value taken from self.timesteps
                    return pair
            t = timestep_tensor(timestep, like)
            check_step_timesteps(t, self.config.num_train_timesteps, integer=False)
            grids = self._host_grids
        else:
            t = timestep_tensor(timestep, like)
            grids = self._device_grids.get(t.device)
            if grids is None:
                grids = self._device_grids[t.device] = tuple(g.to(t.device) for g in self._host_grids)
        sigma, sigma_next = self._locate(t.reshape(-1), *grids)
        if t.ndim == 0:
            return sigma.reshape(()), sigma_next.reshape(())
        return per_example(sigma, like), per_example(sigma_next, like)

    def _locate(self, t: torch.Tensor, distinct: torch.Tensor, sigma_grid: torch.Tensor):
        """(σ, σ_next) for timesteps ``t`` (k,) by the any-timestep rule, in tensor ops only (no reads).

        ``distinct`` holds the scheduled timesteps then −∞, ``sigma_grid`` their σ then 0 (float32).
        """
        t = t.to(device=distinct.device, dtype=torch.float32)
        tolerance = 1e-3 * t.clamp(min=1)
        above = (distinct > (t + tolerance)[:, None]).sum(1)  # grid points above t: index of the first one ≤ t
        on_grid = (distinct.index_select(0, above) - t).abs() <= tolerance
        sigma = torch.where(on_grid, sigma_grid.index_select(0, above), t / self.config.num_train_timesteps)
        return sigma, sigma_grid.index_select(0, above + on_grid.long())

    def _host_euler_step(self, timestep: float | torch.Tensor, like: torch.Tensor) -> tuple[float, float] | None:
        """(σ, σ_next − σ) as Python floats for a deterministic Euler step from one host timestep, else None
        (device timesteps are located on their device, without a read-back).

        A value of ``self.timesteps`` is one dict look-up (keys built by ``set_timesteps``): the hot path of a
        sampling loop creates no tensor and validates nothing it has not already validated.
        """
        if not self._deterministic_euler or self._churn is not None:
            return None
        if isinstance(timestep, torch.Tensor) and (not timestep.is_cpu or timestep.numel() != 1):
            return None
        host = self._host_floats.get(float(timestep))
        if host is None:  # not a value of self.timesteps: validate (raises) and locate
            sigma, sigma_next = self._euler_sigmas(timestep, like)
            host = float(sigma), float(sigma_next - sigma)
        return host

    def _step(
        self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor, generator: Generators
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One Euler step, or one Heun stage, of dx/dσ = u from ``timestep`` (t = σ·T) to the largest
        scheduled σ below it; ``model_output`` is the velocity u = ε − x0 and ``generator`` drives
        ``stochastic_sampling`` (a list of B draws example i's noise from the i-th, as alone)."""
        if self._grid is None:
            raise ValueError("num_inference_steps is None: call set_timesteps() before step().")
        check_step_shapes(model_output, sample)
        x, u = in_working_precision(sample, model_output, torch.float32)  # float32 throughout, as diffusers
        host = self._host_euler_step(timestep, x)
        if host is not None:  # Euler, host timestep: one fused kernel each for x + (σ_next − σ)·u, x − σ·u
            sigma, dt = host
            prev_sample, x0 = x.add(u, alpha=dt), x.sub(u, alpha=sigma)
        elif self.config.solver == "heun":
            prev_sample, x0 = self._heun_stage(u, timestep, x, generator)
        elif self._churn is not None:
            prev_sample, x0 = self._churned_euler_step(u, timestep, x, generator)
        else:
            sigma, sigma_next = self._euler_sigmas(timestep, x)
            x0 = velocity_to_x0(u, x, sigma)
            if self.config.stochastic_sampling:  # reverse_step with s = b_next: full re-noising
                z = randn_tensor(u.shape, generator=generator, device=u.device, dtype=u.dtype)
                prev_sample = reverse_step(x0, velocity_to_eps(u, x, sigma), 1 - sigma_next, sigma_next**2,
                                           noise_std=sigma_next, noise=z)
            else:
                prev_sample = euler_step(x, u, sigma, sigma_next)
        return prev_sample, x0

    def _churned_euler_step(
        self, u: torch.Tensor, timestep, x: torch.Tensor, generator: Generators
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Euler step i of Alg. 2: σ̂_i → σ_{i+1} along the ODE, then the churn σ_{i+1} → σ̂_{i+1} of step i + 1.

        A host timestep of the schedule is step i (a look-up); any other host t in [0, T] steps from σ = t/T
        to σ_j and churns to σ̂_j, j the first entry below t, where the loop goes on. A device timestep is
        taken to be the loop's next entry (position counter, as diffusers' step index: reading it would
        synchronise). The churn noise is per step, so one timestep serves the whole batch.
        """
        churn = self._churn
        if isinstance(timestep, torch.Tensor) and timestep.numel() != 1:
            raise per_example_churn_error(timestep)
        if is_host(timestep):
            sigma, j = churn.euler_start(float(timestep), self.config.num_train_timesteps)
        else:
            if self._position >= churn.num_steps:
                raise ValueError(f"the loop has already taken all {churn.num_steps} steps; call set_timesteps().")
            sigma, j = float(churn.churned[self._position]), self._position + 1
        self._position = j
        x_next = euler_step(x, u, sigma, float(churn.sigmas[j]))
        return churn.raise_to(x_next, j, generator), velocity_to_x0(u, x, sigma)

    def _heun_stage(
        self, u: torch.Tensor, timestep, x: torch.Tensor, generator: Generators = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictor (even positions) or corrector (odd) of a Heun step; the last step is Euler.

        The two stages share state (the predictor's x, derivative and σs), so a Heun loop keeps a
        position counter; each host-side ``timestep`` is checked against it, and an off-schedule one
        starts a new step there (:meth:`_heun_from`). One timestep serves the whole batch.
        """
        position = self._position
        if position >= len(self._schedule):
            raise ValueError(f"the Heun loop has already taken all {len(self._schedule)} steps; call set_timesteps().")
        if is_host(timestep):
            value = float(timestep) if not isinstance(timestep, torch.Tensor) else None
            if value is None:
                t = timestep_tensor(timestep, x)
                if t.ndim and not bool((t == t[0]).all()):
                    raise self._per_example_heun_error(t)
                value = float(t.reshape(-1)[0])
            expected = self._schedule[position]
            if abs(value - expected) > 1e-3 * max(1.0, expected):
                return self._heun_from(value, u, x)
        elif timestep.numel() != 1:
            raise self._per_example_heun_error(timestep)
        i = (position + 1) // 2  # predictor: step i (from σ_i, σ̂_i when churned); corrector: its target σ_i
        self._position += 1
        if self._heun_pending is None:  # predictor from σ_i (also the final Euler step to σ = 0)
            start = self._grid[i] if self._churn is None else self._churn.churned[i]
            sigma, sigma_next = float(start), float(self._grid[i + 1])
            if sigma_next > 0:
                self._heun_pending = (x, u, sigma, sigma_next)
            return euler_step(x, u, sigma, sigma_next), velocity_to_x0(u, x, sigma)
        x_start, u_start, sigma, sigma_next = self._heun_pending  # corrector: u is the velocity at (x̃, σ_next)
        self._heun_pending = None
        x_next = heun_step(x_start, u_start, u, sigma, sigma_next)
        if self._churn is not None:  # Alg. 2: raise σ_i → σ̂_i for the next step's predictor
            x_next = self._churn.raise_to(x_next, i, generator)
        return x_next, velocity_to_x0(u, x, sigma_next)

    def _heun_from(self, value: float, u: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A Heun step from an off-schedule host timestep t: predictor from σ = t/T to the largest scheduled
        σ_j below it, whose corrector is the loop's next call (at σ_j: ``timesteps[timesteps < t]`` goes on).
        Above the first scheduled σ, or below the last, it is one Euler step (to σ_0, or to 0)."""
        T = self.config.num_train_timesteps
        if self._churn is not None:
            raise ValueError(
                f"timestep {value:g} is not the Heun loop's next timestep {self._schedule[self._position]:g} "
                f"(position {self._position}); with s_churn > 0 a Heun loop runs its entries in order (call "
                "set_begin_index() to start later), as the churn noise belongs to a step of the schedule."
            )
        check_step_timesteps(torch.tensor(value), T, integer=False)
        scheduled = self._grid[:-1] * T
        if np.any(np.abs(scheduled - value) <= 1e-3 * max(1.0, value)):
            raise ValueError(
                f"timestep {value:g} is not the Heun loop's next timestep {self._schedule[self._position]:g} "
                f"(position {self._position}); iterate over scheduler.timesteps in order, or call set_begin_index()."
            )
        j = int(np.sum(scheduled > value))
        sigma, sigma_next = value / T, float(self._grid[j])
        self._heun_pending = None
        if j == 0 or j == len(scheduled):
            self._position = 0 if j == 0 else len(self._schedule)
        else:
            self._heun_pending, self._position = (x, u, sigma, sigma_next), 2 * j - 1
        return euler_step(x, u, sigma, sigma_next), velocity_to_x0(u, x, sigma)

    @staticmethod
    def _per_example_heun_error(timestep: torch.Tensor) -> ValueError:
        return ValueError(
            f"solver='heun' takes one timestep for the whole batch, got {tuple(timestep.shape)} timesteps: its "
            "predictor and corrector share one state per batch. For one timestep per example use solver='euler', "
            "or ScratchDPMSolverScheduler(use_flow_sigmas=True, prediction_type='flow_prediction') (second order)."
        )


# ============================================================================================
# scratch_diffusion.pipelines.latents
# ============================================================================================

"""Latent space of an ``AutoencoderKL``: the one place images become latents and back (Rombach et al., 2022).

The UNet of a latent pipeline sees ``z = (E(x) − shift) · scale``, with ``scale`` the VAE config's
``scaling_factor`` (LDM §4.3: 1 / the latents' standard deviation, so that z has unit variance like the
noise) and ``shift`` its ``shift_factor`` (0 when the config has none); decoding inverts it:
``x = D(z / scale + shift)``. The trainer (encoding the dataset), the pipeline (decoding samples) and DDIM
inversion (encoding images) all call these functions.
"""


import warnings

import torch


def latent_scaling(vae) -> tuple[float, float]:
    """``(scale, shift)`` of ``vae``'s latent space, from its config (``shift_factor`` None → 0)."""
    scale = getattr(vae.config, "scaling_factor", None)
    if scale is None or not scale > 0:
        raise ValueError(f"the VAE's scaling_factor is {scale!r}; allowed: a positive number.")
    shift = getattr(vae.config, "shift_factor", None)
    return float(scale), float(shift or 0.0)


def vae_downsampling_factor(vae) -> int:
    """How many pixels one latent spans along a side: 2^(number of encoder blocks − 1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_to_latents(
    vae, images: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Images in [−1, 1] (N, C, H, W) → scaled latents: the posterior mean, or a draw from it with ``sample``."""
    scale, shift = latent_scaling(vae)
    posterior = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist
    latents = posterior.sample(generator=generator) if sample else posterior.mean
    return (latents - shift) * scale


def decode_differentiably(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents → images (N, C, H, W), nominally in [−1, 1], in the caller's grad mode (loss guidance)."""
    scale, shift = latent_scaling(vae)
    return vae.decode(latents.to(device=vae.device, dtype=vae.dtype) / scale + shift).sample


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents → images (N, C, H, W), nominally in [−1, 1] (not clamped)."""
    return decode_differentiably(vae, latents)


def check_vae_fits_unet(vae, unet_config) -> None:
    """A latent pipeline's UNet must denoise the VAE's latents: ``in_channels == latent_channels``, and
    ``out_channels`` the same (or twice as many for a learned variance, Nichol & Dhariwal, 2021); the VAE
    must record a positive ``scaling_factor``. Raises ``ValueError`` naming both numbers."""
    latent_channels = vae.config.latent_channels
    in_channels = unet_config.get("in_channels")
    out_channels = unet_config.get("out_channels", in_channels)
    if in_channels != latent_channels:
        raise ValueError(
            f"the UNet takes in_channels={in_channels} but the VAE's latents have latent_channels={latent_channels}; "
            f"build the UNet with in_channels={latent_channels} to denoise this VAE's latents."
        )
    if out_channels not in (latent_channels, 2 * latent_channels):
        raise ValueError(
            f"the UNet has out_channels={out_channels} for the VAE's latent_channels={latent_channels}; allowed: "
            f"{latent_channels}, or {2 * latent_channels} for a UNet that also predicts a (learned) variance."
        )
    latent_scaling(vae)  # a missing or non-positive scaling_factor fails here, naming it


def warn_if_scheduler_clips(scheduler) -> None:
    """Warn when ``scheduler`` clips x̂0 (``clip_sample``) or thresholds it: a VAE's scaled latents are not in ±1.

    diffusers' DDIM/DDPM default to ``clip_sample=True``, right for images in [−1, 1]; on latents (unit variance, so
    beyond ±1 often) it distorts every sample. Stable Diffusion's scheduler configs set it False for that reason.
    """
    config = scheduler.config
    if config.get("clip_sample", False) or config.get("thresholding", False):
        warnings.warn(
            f"{type(scheduler).__name__} has clip_sample={config.get('clip_sample')}, thresholding="
            f"{config.get('thresholding')}: it clamps x̂0 to ±{config.get('clip_sample_range', 1.0)}, but this "
            "pipeline's UNet denoises a VAE's scaled latents, which are not bounded by it; set clip_sample=False "
            "(e.g. DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)).",
            stacklevel=3,
        )


def decoded_shape(vae, latent_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(channels, height, width) of the images ``vae`` decodes latents of ``latent_shape`` (C, h, w) to."""
    factor = vae_downsampling_factor(vae)
    _, height, width = latent_shape
    return (vae.config.out_channels, height * factor, width * factor)


# ============================================================================================
# scratch_diffusion.pipelines.components
# ============================================================================================

"""The pipeline's components, one row each: what every part of the package reads to know them.

A row names the component (its ``model_index.json`` key and folder), its class and library, the classes
of ours a saved ``["scratch_diffusion", <class>]`` entry may name (shipped as our code, loaded as the
installed class), the files a saved folder must hold, whether it is optional, the check that it fits the
pipeline's other components, and whether the likelihood code can use a pipeline that has it. The
pipeline's signature and ``_optional_components``, the saved-folder checks, loading, the Hub push's
completeness check, the trainer's export and the likelihood refusal all read :data:`COMPONENTS`.

Adding an optional component is one :func:`register_component` call (a row) plus its own module.
"""


import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from diffusers import AutoencoderKL, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin



# What a diffusers model folder holds (``save_pretrained`` with safetensors).
MODEL_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


@dataclass(frozen=True)
class Component:
    """One component of the pipeline (see the module docstring).

    Attributes:
        name: the ``model_index.json`` key, the folder name and the pipeline's keyword.
        cls: the class it is checked against (a model's config keys are checked against its ``__init__``).
        library: where diffusers finds ``cls`` (``"diffusers"``).
        optional: absent components are ``None`` (a saved folder then has no entry for it).
        ours: our classes by name that a saved ``["scratch_diffusion", <class>]`` entry may name.
        files: the files its folder must hold, relative to it.
        model: a model with weights (``config.json`` and safetensors files checked), not a scheduler.
        fits: ``fits(component, unet_config)`` raises ``ValueError`` where it does not fit the UNet.
        pixel_space: False where it changes what the UNet models (a VAE: latents), which the likelihood
            code refuses.
    """

    name: str
    cls: type
    library: str = "diffusers"
    optional: bool = True
    ours: Mapping[str, type] = field(default_factory=dict)
    files: tuple[str, ...] = MODEL_FILES
    model: bool = True
    fits: Callable[[object, Mapping], None] | None = None
    pixel_space: bool = True


# Our scheduler classes by name: what a saved ``["scratch_diffusion", <class>]`` scheduler entry may name.
SHIPPED_SCHEDULERS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        ScratchDDPMScheduler,
        ScratchDDIMScheduler,
        ScratchDPMSolverScheduler,
        ScratchFlowMatchScheduler,
        ScratchFlowMapScheduler,
    )
}

COMPONENTS: dict[str, Component] = {}
# Called with each new row (the pipeline class refreshes its signature and optional components).
_on_register: list[Callable[[Component], None]] = []


def register_component(component: Component) -> Component:
    """Add a row to :data:`COMPONENTS` (its name must be new) and tell the pipeline class."""
    if component.name in COMPONENTS:
        raise ValueError(f"a component named {component.name!r} is registered already; known: {list(COMPONENTS)}.")
    COMPONENTS[component.name] = component
    for listener in _on_register:
        listener(component)
    return component


def unregister_component(name: str) -> None:
    """Remove an optional row again (tests register throwaway components)."""
    component = COMPONENTS[name]
    if not component.optional:
        raise ValueError(f"{name!r} is a required component and cannot be removed.")
    del COMPONENTS[name]
    for listener in _on_register:
        listener(component)


def optional_components() -> list[str]:
    """The names of the optional components, in table order."""
    return [name for name, component in COMPONENTS.items() if component.optional]


def model_components() -> dict[str, type]:
    """Every model component (weights in its folder) and the class its config is checked against."""
    return {name: component.cls for name, component in COMPONENTS.items() if component.model}


def declares_components(pipeline_cls: type) -> type:
    """Class decorator: declare the table's components to diffusers, now and after every registration.

    diffusers finds a pipeline's components in ``__init__``'s signature and ``_optional_components``; each
    row the signature as written lacks becomes a keyword-only ``name=None`` there (``__init__`` takes it in
    ``**components``).
    """
    written = inspect.signature(pipeline_cls.__init__)

    def refresh(_component: Component | None = None) -> None:
        pipeline_cls._optional_components = optional_components()
        parameters = [p for p in written.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        declared = {p.name for p in parameters}
        parameters += [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
            for name in COMPONENTS
            if name not in declared
        ]
        pipeline_cls.__init__.__signature__ = written.replace(parameters=parameters)

    refresh()
    _on_register.append(refresh)
    return pipeline_cls


def listed_components(index: Mapping) -> list[Component]:
    """The components a saved ``model_index.json`` lists (absent and ``[null, null]`` entries left out)."""
    return [
        component
        for name, component in COMPONENTS.items()
        if isinstance(index.get(name), list) and index[name] and index[name][0] is not None
    ]


# A flow map (MeanFlow) is a UNet2DModel with a second time input: saved as ["scratch_diffusion", its class].
register_component(Component("unet", UNet2DModel, optional=False, ours={"FlowMapUNet2DModel": FlowMapUNet2DModel}))
register_component(
    Component(
        "scheduler",
        SchedulerMixin,
        optional=False,
        ours=SHIPPED_SCHEDULERS,
        files=("scheduler_config.json",),
        model=False,
    )
)
register_component(Component("vae", AutoencoderKL, fits=check_vae_fits_unet, pixel_space=False))
# Autoguidance's guide (Karras et al., 2024): a smaller or shorter-trained UNet of the same path and space.
register_component(Component("guide_unet", UNet2DModel, fits=check_guide_fits_unet))
# Classifier guidance's noise-aware classifier p_φ(y | x_t) (training/train_classifier.py trains one).
register_component(
    Component(
        "classifier", NoisyClassifier, ours={"NoisyClassifier": NoisyClassifier}, fits=check_classifier_fits_unet
    )
)
# ControlNet (Zhang et al., 2023): residuals for the UNet's skips and mid block from a control image.
register_component(
    Component(
        "controlnet",
        ControlNet2DModel,
        ours={"ControlNet2DModel": ControlNet2DModel},
        fits=check_controlnet_fits_unet,
    )
)


# ============================================================================================
# scratch_diffusion.control.residuals
# ============================================================================================

"""A control network's residuals added to a plain diffusers ``UNet2DModel`` for one call, by module hooks.

``UNet2DModel.forward`` accepts no extra residuals. Rather than a subclass with a copy of its forward, the
residuals go in through hooks installed for the duration of one call and removed in a ``finally``:

- each up block gets a forward pre-hook that replaces its ``res_hidden_states_tuple`` by skip + residual. The UNet
  hands up block i the *last* ``len(resnets)`` of the skips still unused (``UNet2DModel.forward``, step 5), so the
  residuals are split the same way: the last ``len(up_blocks[0].resnets)`` to the first up block, and so on;
- the mid block gets a forward hook adding the mid residual to its output (a UNet without a mid block: the first
  up block's input, which is what the mid block's output would have been).

So the saved UNet stays a plain ``UNet2DModel`` (every loading story loads it with diffusers' own class), and no
copy of diffusers' forward can drift from the installed one. The hooks live on the UNet's modules while the call
runs: do not call the same UNet from another thread meanwhile.
"""


from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from diffusers import UNet2DModel
from torch.utils.hooks import RemovableHandle



def _add_to_skips(up_index: int, residuals: tuple[torch.Tensor, ...]):
    """A forward pre-hook (with kwargs) for up block ``up_index``: its skips plus ``residuals``, in order."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        positional = "res_hidden_states_tuple" not in kwargs
        skips = args[1] if positional else kwargs["res_hidden_states_tuple"]
        shapes = [tuple(skip.shape) for skip in skips]
        if shapes != [tuple(residual.shape) for residual in residuals]:
            raise ValueError(
                f"up block {up_index} receives skips of shapes {shapes}, but the control network's residuals for it "
                f"have shapes {[tuple(r.shape) for r in residuals]}; pass residuals of a network made from this UNet."
            )
        added = tuple(skip + residual.to(skip.dtype) for skip, residual in zip(skips, residuals, strict=True))
        if positional:
            return (args[0], added, *args[2:]), kwargs
        return args, {**kwargs, "res_hidden_states_tuple": added}

    return hook


def _add_to_output(residual: torch.Tensor):
    """A forward hook adding ``residual`` to a module's output tensor."""

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + residual.to(output.dtype)

    return hook


def _add_to_input(residual: torch.Tensor):
    """A forward pre-hook (with kwargs) adding ``residual`` to a block's ``hidden_states`` (its first input)."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if "hidden_states" in kwargs:
            hidden = kwargs["hidden_states"]
            return args, {**kwargs, "hidden_states": hidden + residual.to(hidden.dtype)}
        return (args[0] + residual.to(args[0].dtype), *args[1:]), kwargs

    return hook


@contextmanager
def residuals_added(
    unet: UNet2DModel, down_block_res_samples: Sequence[torch.Tensor], mid_block_res_sample: torch.Tensor
) -> Iterator[UNet2DModel]:
    """Within the block, calling ``unet`` adds the residuals to its skips and mid block (module docstring).

    Raises:
        ValueError: before installing anything, if the number of residuals is not the number of skips the up
            blocks consume; during the call, if a residual's shape is not its skip's.
    """
    consumed = [len(block.resnets) for block in unet.up_blocks]
    if len(down_block_res_samples) != sum(consumed):
        raise ValueError(
            f"{len(down_block_res_samples)} down block residuals are not allowed for this UNet: its up blocks "
            f"consume {sum(consumed)} skips ({consumed} per block); pass a control network's residuals made from it."
        )
    remaining = tuple(down_block_res_samples)
    handles: list[RemovableHandle] = []
    try:
        for up_index, (block, count) in enumerate(zip(unet.up_blocks, consumed, strict=True)):
            mine, remaining = remaining[-count:], remaining[:-count]
            handles.append(block.register_forward_pre_hook(_add_to_skips(up_index, mine), with_kwargs=True))
        if unet.mid_block is not None:
            handles.append(unet.mid_block.register_forward_hook(_add_to_output(mid_block_res_sample)))
        else:
            hook = _add_to_input(mid_block_res_sample)
            handles.append(unet.up_blocks[0].register_forward_pre_hook(hook, with_kwargs=True))
        yield unet
    finally:
        for handle in handles:
            handle.remove()


class ControlledUNet:
    """A frozen ``UNet2DModel`` steered by a :class:`ControlNet2DModel`: ``(x_t, t, control_image) -> UNet output``.

    Each call runs the control network, then the plain ``unet`` within :func:`residuals_added`. Gradients reach
    the control network through the frozen UNet (whose parameters may have ``requires_grad=False``).

    Args:
        unet: the UNet (unchanged; nothing stays installed on it between calls).
        controlnet: a control network made from it (checked: :func:`check_controlnet_fits_unet`).
    """

    def __init__(self, unet: UNet2DModel, controlnet: ControlNet2DModel):
        check_controlnet_fits_unet(controlnet, unet.config)
        self.unet = unet
        self.controlnet = controlnet

    @property
    def config(self):
        """The UNet's config (what code reading ``unet.config`` expects)."""
        return self.unet.config

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        control_image: torch.Tensor,
        conditioning_scale: float | torch.Tensor = 1.0,
        **unet_kwargs,
    ):
        """``unet(sample, timestep, **unet_kwargs)`` with the control network's residuals added.

        Args:
            sample, timestep: as the UNet takes them.
            control_image: (B, conditioning_channels, f·H, f·W) in [0, 1] (checked before any evaluation).
            conditioning_scale: multiplies the residuals (0: the plain UNet's output); a number or one per example.
            unet_kwargs: the UNet's other keywords (``class_labels`` also goes to the control network,
                ``return_dict``).

        Returns:
            What the UNet returns (a ``UNet2DOutput``, or a tuple with ``return_dict=False``).
        """
        residuals = self.controlnet(
            sample, timestep, control_image, class_labels=unet_kwargs.get("class_labels"),
            conditioning_scale=conditioning_scale,
        )  # fmt: skip
        with residuals_added(self.unet, residuals.down_block_res_samples, residuals.mid_block_res_sample):
            return self.unet(sample, timestep, **unet_kwargs)


# ============================================================================================
# scratch_diffusion.pipelines.cross_path
# ============================================================================================

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


import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch



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


# ============================================================================================
# scratch_diffusion.pipelines.denoiser
# ============================================================================================

"""The denoiser: the pipeline's model as one callable D(x, i) at the points of a sampling plan.

k-diffusion calls its model through a wrapper ``D(x, σ)`` and puts guidance around it; flow_matching
wraps the model so a solver sees one velocity field. Here the solver is a diffusers scheduler, whose
``step(model_output, t, x)`` wants the model's prediction in *its* parametrisation at its point i, so
the denoiser is indexed by the plan position i (:class:`~.cross_path.ModelCalls`: a plan exists for
every run, of identity calls when the scheduler samples the model's own parametrisation). It knows both
points of each call, ``plan.calls[i].sampler`` and ``.model`` (a, b, λ), and for targets
``("sample", "epsilon")`` returns x̂0 and ε̂ at the sampler's point, as inversion asks.

One evaluation: the sample at the model's point of equal SNR (``scale_input``), cast to the model's
dtype (and device, where one is given), the bound guidance rules around the model call at the model's
point (:mod:`scratch_diffusion.guidance`, bound by :mod:`.guidance`), the output back in the sample's
dtype, read out as every target of the plan. Every model call is counted (:attr:`Denoiser.counter`):
a guided step that evaluates two halves in one batch counts two evaluations.

:class:`UNetModel` is the one place the pipeline's UNet is called: the call ``unet(x, t, **conditions)``
with its per-sample ``conditions`` (``class_labels`` today; a control residual or a second time input
would be further entries, which guidance expands along with the batch).
"""


from collections.abc import Mapping

import torch




class UNetModel:
    """A diffusers UNet as ``model(x, timestep, **conditions) -> output`` (its ``.sample``)."""

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, **conditions: torch.Tensor) -> torch.Tensor:
        return self.unet(x, timestep, **conditions).sample


class Denoiser:
    """D(x, i): the model's prediction at sampler point i of ``plan``, one tensor per ``plan.targets``.

    Args:
        model: the model callable (:class:`UNetModel`).
        plan: the run's model calls (:func:`~.cross_path.scheduler_model_calls`).
        conditions: per-sample model inputs (``class_labels``), for the sample batch.
        guidance: the run's bound guidance rules (:func:`~.guidance.bind_call_guidance`), or None.
        dtype: the model's dtype; device: where the model runs (None: where the sample is).
        counter: counts the evaluations of every model (one of the sample batch's size is made if None).
        interval_ends: a flow-map UNet's second time input r at each entry (:mod:`.flow_map`), or None (r = t).
    """

    def __init__(
        self,
        model: UNetModel,
        plan: ModelCalls,
        conditions: Mapping[str, torch.Tensor] | None = None,
        guidance: GuidedEvaluation | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
        counter: EvaluationCounter | None = None,
        interval_ends: torch.Tensor | None = None,
    ):
        self.model, self.plan, self.guidance, self.dtype, self.device = model, plan, guidance, dtype, device
        self.conditions = dict(conditions or {})
        self.counter = counter if counter is not None else EvaluationCounter(1)
        self.model_function = self.counter.counted("unet", self._call_model)
        self.interval_ends = interval_ends  # a flow map's r per entry (flow_map.py), or None
        self._interval_end: torch.Tensor | None = None

    def _call_model(self, x: torch.Tensor, timestep: torch.Tensor, conditions: Mapping) -> torch.Tensor:
        if self._interval_end is not None:  # the same r for every row, so it needs no expansion under guidance
            conditions = {**conditions, "r_timestep": self._interval_end}
        return self.model(x, timestep, **conditions)

    @property
    def memory_factor(self) -> int:
        """The model's batch per sample of the run's batch (2 under classifier-free guidance)."""
        return 1 if self.guidance is None else self.guidance.memory_factor

    def __call__(self, x: torch.Tensor, i: int) -> list[torch.Tensor]:
        """Every target of the plan at sampler point i for the sample ``x`` there (no value is read back)."""
        call = self.plan.calls[i]
        x_model = call.scale_input(x)
        self._interval_end = None if self.interval_ends is None else self.interval_ends[i]
        return call.read(self.evaluate(x_model, self.plan.timesteps[i], call.model), x_model)

    def evaluate(self, x_model: torch.Tensor, timestep: torch.Tensor, point=None) -> torch.Tensor:
        """The (guided) model output at ``x_model`` and the model's ``timestep`` (at its path ``point``).

        In ``x_model``'s dtype and device. Guidance needs the point (a, b, λ) of the call.
        """
        model_input = x_model.to(device=self.device, dtype=self.dtype)
        if self.guidance is None:
            output = self.model_function(model_input, timestep, self.conditions)
        else:
            output = self.guidance(self.model_function, model_input, timestep, point)
        return output.to(device=x_model.device, dtype=x_model.dtype)


# ============================================================================================
# scratch_diffusion.pipelines.inputs
# ============================================================================================

"""Checks of the arguments of ``ScratchDiffusionPipeline.__call__``, all made before any model evaluation.

Every error names the offending value and what is allowed. The memory check refuses a batch whose
sampling buffers alone could not fit; the output check reports NaN/inf samples that PIL would
silently turn black.
"""


import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import UNet2DModel

# "latent": the final sample before decoding and clamping (a latent pipeline's scaled VAE latents).
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# One call samples one batch in one forward pass per step. Larger requests are typos (10**6) or
# belong in several calls (the metrics CLI splits --num_samples into --batch_size chunks).
MAX_BATCH_SIZE = 65_536
# The sampling loop holds at least this many sample-sized tensors at once (latents, model input,
# model output, next latents): a lower bound on its memory, checked before anything is allocated.
SAMPLING_BUFFERS = 4


def _is_positive_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= 1


def check_call_arguments(
    batch_size: int,
    num_inference_steps: int,
    generator: torch.Generator | list[torch.Generator] | None,
    eta: float,
    guidance_scale: float,
    output_type: str,
) -> None:
    """Validate the arguments of ``__call__`` that do not depend on the UNet."""
    if not _is_positive_int(batch_size):
        raise ValueError(f"batch_size={batch_size!r} is not allowed; pass an integer ≥ 1.")
    if batch_size > MAX_BATCH_SIZE:
        raise ValueError(
            f"batch_size={batch_size} is not allowed; pass an integer ≤ {MAX_BATCH_SIZE} and sample larger sets "
            "in several calls."
        )
    if not _is_positive_int(num_inference_steps):
        raise ValueError(f"num_inference_steps={num_inference_steps!r} is not allowed; pass an integer ≥ 1.")
    generators = generator if isinstance(generator, list) else [generator]
    if any(g is not None and not isinstance(g, torch.Generator) for g in generators) or None in generators[1:]:
        raise TypeError(
            f"generator={generator!r} is not allowed; pass None, a torch.Generator, or a list of batch_size "
            "torch.Generator objects."
        )
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(
            f"got a list of {len(generator)} generators for batch_size={batch_size}; "
            "pass one generator, or exactly one per image."
        )
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} is not supported; choose one of {list(OUTPUT_TYPES)}.")
    if not isinstance(guidance_scale, numbers.Real) or not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale={guidance_scale!r} is not allowed; pass a finite number.")
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0 <= eta < math.inf:
        raise ValueError(f"eta={eta!r} is not allowed; pass a finite number ≥ 0 (0: deterministic DDIM).")


def check_conditioning(
    class_labels: int | Sequence[int] | torch.Tensor | None,
    rules: Sequence[object],
    num_classes: int | None,
    label_classes: int | None,
) -> None:
    """Class labels only where something takes them; every rule that guides towards labels gets them.

    ``rules`` are the call's guidance rules (``guidance.call_rules``); ``label_classes`` how many classes labels
    may name — the UNet's, or on an unconditional UNet a guiding classifier's (None: nothing takes labels).
    """
    if label_classes is None and class_labels is not None:
        raise ValueError(
            f"class_labels={class_labels!r} given, but the UNet is unconditional "
            "(unet.config.num_class_embeds is None) and no classifier guides it; allowed: class_labels=None "
            "(or guidance=ClassifierGuidance(...) with a classifier)."
        )
    for rule in rules:
        if rule.needs_labels and class_labels is None:
            reason = "the UNet is unconditional" if num_classes is None else "no class_labels were given"
            allowed = "guidance_scale=1.0" if rule.argument.startswith("guidance_scale") else "class_labels"
            raise ValueError(f"{rule.argument} needs class labels to guide towards, but {reason}; allowed: {allowed}.")


def check_callback_inputs(requested: Sequence[str], allowed: Sequence[str]) -> None:
    """Every tensor name requested for ``callback_on_step_end`` is one the loop provides."""
    unknown = [name for name in requested if name not in allowed]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs contains {unknown}; allowed: {list(allowed)}.")


def sample_shape(unet: UNet2DModel, batch_size: int) -> tuple[int, int, int, int]:
    """(batch, channels, height, width) of the samples ``unet`` denoises."""
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    return (batch_size, unet.config.in_channels, height, width)


def check_latents(latents: object, shape: tuple[int, ...]) -> None:
    """Given initial noise must be a floating-point tensor of the sample shape (its device and dtype are cast)."""
    if not isinstance(latents, torch.Tensor) or not latents.dtype.is_floating_point:
        raise ValueError(
            f"latents must be a floating-point torch.Tensor of shape {shape}; got {type(latents).__name__}"
            + (f" of dtype {latents.dtype}" if isinstance(latents, torch.Tensor) else "")
            + "."
        )
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents have shape {tuple(latents.shape)}; expected {shape} (batch_size, C, H, W).")


def check_sampling_memory(unet: UNet2DModel, batch_size: int, device: torch.device) -> None:
    """Refuse, before allocating, a batch whose sampling buffers alone exceed the device's free memory.

    The bound counts only :data:`SAMPLING_BUFFERS` sample-sized tensors (the UNet's activations
    come on top), so a batch refused here could never have run. Free memory is read where it is
    cheap to know: ``MemAvailable`` on a Linux CPU, ``torch.cuda.mem_get_info`` on CUDA; other
    devices are not checked.
    """
    per_sample = math.prod(sample_shape(unet, 1)) * unet.dtype.itemsize
    needed = SAMPLING_BUFFERS * batch_size * per_sample
    free = free_memory(device)
    if free is not None and needed > free:
        raise ValueError(
            f"batch_size={batch_size} needs at least {needed / 2**30:.1f} GiB for the sampling buffers alone "
            f"({SAMPLING_BUFFERS} tensors of {per_sample * batch_size / 2**30:.2f} GiB) but {device} has "
            f"{free / 2**30:.1f} GiB free; pass a smaller batch_size and sample in several calls."
        )


def free_memory(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes where it is cheap and reliable to read, else None."""
    try:
        if device.type == "cuda":
            return torch.cuda.mem_get_info(device)[0]
        if device.type == "cpu":
            with open("/proc/meminfo", encoding="ascii") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError):
        pass
    return None


def class_label_tensor(
    class_labels: int | Sequence[int] | torch.Tensor | None, batch_size: int, num_classes: int, device: torch.device
) -> torch.Tensor:
    """Class labels as a LongTensor of shape (batch_size,) on ``device``, checked to be in [0, num_classes).

    A single int applies to the whole batch. ``None`` samples every image with the null class
    (index ``num_classes``), i.e. unconditionally.
    """
    if class_labels is None:
        return torch.full((batch_size,), num_classes, dtype=torch.long, device=device)
    given = [int(class_labels)] * batch_size if isinstance(class_labels, numbers.Integral) else class_labels
    try:
        labels = torch.as_tensor(given).reshape(-1)
    except (TypeError, ValueError, RuntimeError):  # strings, ragged lists, objects
        labels = None
    if labels is None or labels.dtype.is_floating_point or labels.dtype == torch.bool or len(labels) != batch_size:
        raise ValueError(
            f"class_labels={class_labels!r} is not allowed; pass one int, or {batch_size} ints (one per image)."
        )
    if any(not 0 <= v < num_classes for v in labels.tolist()):  # host check before sampling starts
        raise ValueError(
            f"class_labels={class_labels!r} out of range; allowed: integers in [0, {num_classes - 1}] "
            f"(index {num_classes} is the null class used for guidance)."
        )
    return labels.to(device=device, dtype=torch.long)


def warn_if_not_finite(images: np.ndarray) -> None:
    """A NaN/inf sample (a diverged model or scheduler) is reported instead of silently saved as black."""
    bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if bad.any():
        warnings.warn(
            f"{int(bad.sum())} of {len(images)} sampled images contain NaN or inf values (the model output or the "
            "scheduler diverged); as PIL images they would come out black.",
            RuntimeWarning,
            stacklevel=3,
        )


def check_strength(strength: float) -> None:
    """Image-to-image and inpainting ``strength``: a real number in [0, 1] (0 keeps the input, 1 starts from noise)."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 <= strength <= 1:
        raise ValueError(
            f"strength={strength!r} is not allowed; pass a number in [0, 1] (0 returns the input, 1 starts from pure "
            "noise)."
        )


def check_resampling(jump_length: int, jump_n_sample: int) -> None:
    """RePaint's jump length j and resample count r (Lugmayr et al., 2022): integers ≥ 1 (r = 1: no resampling)."""
    for name, value in (("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
        if not _is_positive_int(value):
            raise ValueError(f"{name}={value!r} is not allowed; pass an integer ≥ 1.")


# ============================================================================================
# scratch_diffusion.pipelines.guidance
# ============================================================================================

"""The pipeline's guidance: the rules of one call, checked against its components and bound before sampling.

``guidance_scale`` keeps its meaning (plain classifier-free guidance, :class:`ClassifierFreeGuidance`); the
``guidance`` argument takes any rule of :mod:`scratch_diffusion.guidance` or a list of them. Both together are
one combining rule (classifier-free or autoguidance) and any gradient rules; the rules are bound to a
:class:`~scratch_diffusion.guidance.GuidanceSetup` made from the pipeline — its parametrisation and training
schedule, the ``guide_unet`` and ``classifier`` components, the VAE's decoder for loss guidance — so every
check runs before the first model evaluation. No rule reaches into the sampling loop: the denoiser
(:mod:`.denoiser`) calls the bound rules at each of its points.
"""


import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch




class ScaleGuidance(ClassifierFreeGuidance):
    """Classifier-free guidance asked for by ``guidance_scale`` (named so in error messages)."""

    @property
    def argument(self) -> str:
        return f"guidance_scale={self.scale!r}"


def call_rules(guidance_scale: float, guidance: Guidance | None) -> tuple[GuidanceRule, ...]:
    """The rules of a call: classifier-free guidance for ``guidance_scale`` ≠ 1, then those of ``guidance``."""
    rules = as_rules(guidance)
    if guidance_scale == 1:
        return rules
    if rules and rules[0].combines:
        raise ValueError(
            f"guidance_scale={guidance_scale!r} asks for classifier-free guidance and guidance= holds "
            f"{rules[0].argument}: pass one combining rule (guidance_scale=1.0, or no combining rule in guidance=)."
        )
    return (ScaleGuidance(guidance_scale), *rules)


def label_classes(rules: Sequence[GuidanceRule], num_classes: int | None, components: dict) -> int | None:
    """How many classes ``class_labels`` may name: the UNet's, else a guiding classifier's; None: no labels.

    A classifier without a ``config`` (a bare callable) states no count: any index ≥ 0 is passed on to it.
    """
    if num_classes is not None:
        return num_classes
    for rule in rules:
        if hasattr(rule, "resolve_classifier"):  # classifier guidance (ours, or the shipped copy's)
            config = getattr(rule.resolve_classifier(components), "config", None)
            classes = None if config is None else config.get("num_classes")
            return torch.iinfo(torch.long).max if classes is None else int(classes)
    return None


def training_log_snr_range(pipe) -> tuple[float, float]:
    """The λ the pipeline's UNet was trained on (the flow path covers every λ)."""
    model_path = ModelPath.of_schedule(pipe.trained_parametrization, pipe.config.noise_schedule)
    table = model_path.log_snr_table
    return (-math.inf, math.inf) if table is None else (float(np.min(table)), float(np.max(table)))


def bind_call_guidance(
    pipe,
    rules: Sequence[GuidanceRule],
    labels: torch.Tensor | None,
    conditions: Mapping[str, torch.Tensor],
    batch_size: int,
) -> tuple[GuidedEvaluation | None, EvaluationCounter]:
    """The call's rules bound to the pipeline (every check, no model evaluation) and the run's evaluation counter."""
    counter = EvaluationCounter(batch_size)
    if not rules:
        return None, counter
    vae = pipe.vae
    setup = GuidanceSetup(
        parametrization=pipe.trained_parametrization,
        sample_shape=sample_shape(pipe.unet, 1)[1:],
        labels=labels,
        model_conditions=dict(conditions),
        null_class=pipe.num_classes,
        noise_schedule=pipe.config.noise_schedule,
        log_snr_range=training_log_snr_range(pipe),
        components={name: getattr(pipe, name, None) for name in ("guide_unet", "classifier")},
        decode=None if vae is None else functools.partial(decode_differentiably, vae),
        decoded_shape=None if vae is None else decoded_shape(vae, sample_shape(pipe.unet, 1)[1:]),
        counter=counter,
    )
    return GuidedEvaluation(rules, setup), counter


# ============================================================================================
# scratch_diffusion.pipelines.inversion
# ============================================================================================

"""DDIM inversion: the noise that the deterministic sampler maps back to given images.

DDIM with η = 0 is the Euler discretisation of the probability-flow ODE (Song et al., 2021, §4.3),
so it can be run backwards: from the image at the sampler's last (cleanest) point, each step takes
the model's (x̂0, ε̂) at the current point and moves *up* to the next-noisier point of the same grid,
x_up = a_up·x̂0 + b_up·ε̂ (Eq. 12 from t to the next-higher timestep; DDIM §5.4). On the flow path
this is the Euler step of dx/dσ = u from σ = 0 to 1. The grid is the scheduler's own, so
``pipe(latents=pipe.invert(x))`` retraces it; the round trip is exact only as the steps shrink
(each direction evaluates the model at the other end of a step): DDIM's Table 2 reports a
per-dimension MSE of 0.014 at 10 steps falling to 0.0001 at 1000 on CIFAR-10.

The model is the pipeline's denoiser (:mod:`.denoiser`, guidance included) asked for (x̂0, ε̂) at each
point, so any model the pipeline can sample with a scheduler can also be inverted with it. The inverted
point is the sampler's first sample, given back as ``latents`` (unit-scale noise: the scheduler's
``init_noise_sigma`` must be 1).

A latent pipeline (one with a ``vae``) inverts in latent space: the images are encoded first (the
posterior mean, :func:`~.latents.encode_to_latents`), and the returned latents are the VAE-latent noise
that sampling decodes back. The round trip then reconstructs decode(encode(x)), not x itself: the
VAE's own reconstruction error comes on top of the inversion's.
"""


from collections.abc import Callable, Sequence

import numpy as np
import torch



# A tensor, an array, or one or more PIL images (not imported: the shipped bundle imports only torch, numpy, diffusers).
ImageInput = torch.Tensor | np.ndarray | object


def is_pil_image(image: object) -> bool:
    """Whether ``image`` is a PIL image, recognised without importing PIL."""
    return type(image).__module__.split(".")[0] == "PIL" and hasattr(image, "getbands")


def image_count(images: ImageInput) -> int:
    """The batch size of ``images`` (one PIL image counts as one)."""
    return 1 if is_pil_image(images) else len(images)


def check_invertible(scheduler: object) -> None:
    """Inversion returns the sampler's first sample as unit-scale ``latents``: ``init_noise_sigma`` must be 1."""
    init_noise_sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
    if init_noise_sigma != 1.0:
        raise ValueError(
            f"invert needs a scheduler whose samples lie on the path itself (init_noise_sigma = 1); "
            f"{type(scheduler).__name__} has init_noise_sigma={init_noise_sigma:g}. "
            "Use DDIM, DPM-Solver(++) or a flow-matching scheduler."
        )


def images_to_samples(
    images: ImageInput, shape: Sequence[int], device: torch.device, needed_by: str = "this UNet"
) -> torch.Tensor:
    """Images as the pipeline outputs them, as float32 samples in [−1, 1] of ``shape`` on ``device``.

    Accepted: a (B, C, H, W) tensor in [0, 1] (``output_type="pt"``), a (B, H, W, C) array in
    [0, 1] (``"np"``), or PIL images (``"pil"``: one or a list, 8-bit).
    """
    return images_to_unit_range(images, shape, device, needed_by) * 2 - 1


def images_to_unit_range(
    images: ImageInput, shape: Sequence[int], device: torch.device, needed_by: str = "this UNet"
) -> torch.Tensor:
    """Images as :func:`images_to_samples` takes them, as a float32 (B, C, H, W) tensor in [0, 1] on ``device``
    (the values as given: editing pastes them back exactly)."""
    if is_pil_image(images):
        images = [images]
    if isinstance(images, (list, tuple)) and images and all(is_pil_image(image) for image in images):
        arrays = [np.asarray(image, dtype=np.float32) / 255.0 for image in images]
        images = np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"images as an array must have shape (B, H, W, C); got shape {images.shape}.")
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point:
        raise ValueError(
            f"images of type {type(images).__name__} are not supported; pass a float tensor (B, C, H, W) in [0, 1], "
            "a float array (B, H, W, C) in [0, 1], or PIL images."
        )
    if tuple(images.shape) != tuple(shape):
        raise ValueError(f"images have shape {tuple(images.shape)}; {needed_by} needs {tuple(shape)} (B, C, H, W).")
    images = images.detach().to(device=device, dtype=torch.float32)
    low, high = images.aminmax()  # one read-back, before any model evaluation
    if not (torch.isfinite(low) and torch.isfinite(high) and low >= -1e-3 and high <= 1 + 1e-3):
        raise ValueError(f"images must lie in [0, 1] (as output_type 'pt'/'np' gives them); got [{low:g}, {high:g}].")
    return images


def inversion_levels(scheduler: object, levels: Sequence[tuple[float, float]], path: str) -> list[tuple[float, float]]:
    """The distinct sampler points (noisiest first) followed by the point the sampler ends at.

    ``levels`` are the points of ``scheduler.timesteps`` on its ``path`` (:func:`~.cross_path.sampler_levels`);
    repeated entries (Heun's predictor/corrector pairs) count once. The end is the last ``sigmas``
    entry where the scheduler has one per step plus one, ``final_alpha_cumprod`` for DDIM, else
    the clean point (a, b) = (1, 0).
    """
    distinct = [point for i, point in enumerate(levels) if i == 0 or point != levels[i - 1]]
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(scheduler.timesteps) + 1:
        last = float(sigmas[-1])
        end = (1 - last, last) if path == "flow" else (1 / np.hypot(1, last), last / np.hypot(1, last))
    else:
        alpha_bar = float(getattr(scheduler, "final_alpha_cumprod", 1.0))
        end = (alpha_bar**0.5, (1 - alpha_bar) ** 0.5)
    return [*distinct, end]


def invert_samples(
    x: torch.Tensor,
    levels: Sequence[tuple[float, float]],
    denoiser: Denoiser,
    progress: Callable[[int], object] = lambda _: None,
) -> torch.Tensor:
    """Run the DDIM update upwards from ``levels[-1]`` to ``levels[0]``: one model evaluation per step.

    ``denoiser(x, k)`` returns (x̂0, ε̂) at level k (targets ``sample`` and ``epsilon``). Works in float32.
    """
    for k in range(len(levels) - 1, 0, -1):
        x0, eps = denoiser(x, k)
        a_up, b_up = levels[k - 1]
        x = reverse_step(x0, eps, a_up, b_up**2, direction=b_up)
        progress(1)
    return x


def invert_images(
    pipe, images: ImageInput, num_inference_steps: int, class_labels, guidance_scale: float
) -> torch.Tensor:
    """``ScratchDiffusionPipeline.invert``: check everything, plan the model calls on a host grid, then invert."""
    batch_size = image_count(images)
    check_call_arguments(batch_size, num_inference_steps, None, 0.0, guidance_scale, "pt")
    rules = call_rules(guidance_scale, None)
    check_conditioning(class_labels, rules, pipe.num_classes, pipe.num_classes)
    check_invertible(pipe.scheduler)
    device = pipe._execution_device
    shape = sample_shape(pipe.unet, batch_size)
    vae = getattr(pipe, "vae", None)
    if vae is None:
        x = images_to_samples(images, shape, device)
    else:  # check the images against what the VAE decodes to, then invert their (scaled) posterior mean
        image_shape = (batch_size, *decoded_shape(vae, shape[1:]))
        x = images_to_samples(images, image_shape, device, needed_by="this pipeline's VAE")
        x = encode_to_latents(vae, x).to(device=device, dtype=torch.float32)
    conditions, guided, counter = pipe.prepare_guidance(rules, class_labels, batch_size, device)
    pipe.scheduler.set_timesteps(num_inference_steps)  # a host grid: planning reads nothing back
    sampled = pipe.check_parametrization()
    levels = inversion_levels(pipe.scheduler, sampler_levels(pipe.scheduler, sampled.path), sampled.path)
    denoiser = pipe.denoiser(sampled, ("sample", "epsilon"), conditions, guided, device, levels, counter)
    with pipe.progress_bar(total=len(levels) - 1) as bar:
        latents = invert_samples(x, levels, denoiser, bar.update)
    pipe.maybe_free_model_hooks()
    return latents


# ============================================================================================
# scratch_diffusion.pipelines.control
# ============================================================================================

"""A control image for the pipeline's optional ``controlnet`` component (Zhang et al., 2023).

``pipe(..., control_image=c, controlnet_conditioning_scale=s)`` — and the same keywords on ``img2img`` and
``inpaint`` — evaluates the UNet as ``ControlledUNet(unet, controlnet)``: the control network reads the sample and
the control image and its residuals, times s, are added to the frozen UNet's skip connections and mid block
(:mod:`scratch_diffusion.control`). The control image is one more per-sample input of the UNet call, next to the
class labels, so classifier-free guidance evaluates both halves with it (diffusers' ControlNet pipelines do the
same; a network trained with control dropout also knows the empty control). Autoguidance's guide is a plain UNet
and never sees it. ``pipe.evaluations["controlnet"]`` counts the control network's evaluations beside the UNet's.

The image is checked before any model evaluation: it needs a ``controlnet`` component, the network's
``conditioning_channels``, ``conditioning_downscale_factor`` times the UNet's sample size (the images' size:
``training/train_controlnet.py`` sets the factor to a latent pipeline's VAE scale factor, 1 without a VAE) and
values in [0, 1].
"""


import math
from dataclasses import dataclass

import torch




@dataclass(frozen=True)
class Control:
    """One call's control: the image (B, C_c, H_c, W_c) in [0, 1] on the device and the residuals' scale."""

    image: torch.Tensor
    scale: float


def prepare_control(
    pipe, control_image: ImageInput | None, scale: float, batch_size: int, device: torch.device
) -> Control | None:
    """``control_image`` checked against the pipeline's control network, as a :class:`Control`; None without one.

    Accepted as images everywhere in the pipeline: a (B, C, H, W) tensor in [0, 1], a (B, H, W, C) array in [0, 1]
    or PIL images; a batch of 1 serves every image. Raises ``ValueError`` naming the value and what is allowed.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"controlnet_conditioning_scale={scale!r} is not allowed; pass a finite number.")
    controlnet = getattr(pipe, "controlnet", None)
    if control_image is None:
        return None
    if controlnet is None:
        raise ValueError(
            "control_image was given, but this pipeline has no controlnet component; load one with "
            "ControlNet2DModel.from_pretrained(...) and pass controlnet=... (training/train_controlnet.py trains one)."
        )
    config = controlnet.config
    factor = int(config.conditioning_downscale_factor)
    height, width = pipe.unet.config.sample_size, pipe.unet.config.sample_size
    if isinstance(pipe.unet.config.sample_size, (tuple, list)):
        height, width = pipe.unet.config.sample_size
    channels = int(config.conditioning_channels)
    count = image_count(control_image)
    if count not in (1, batch_size):
        raise ValueError(f"control_image holds {count} images; pass 1 or one per image ({batch_size}).")
    shape = (count, channels, height * factor, width * factor)
    image = images_to_unit_range(control_image, shape, device, needed_by="this pipeline's control network")
    if count != batch_size:
        image = image.expand(batch_size, -1, -1, -1)
    return Control(image.to(dtype=controlnet.dtype), float(scale))


def model_conditions(labels: torch.Tensor | None, control: Control | None) -> dict[str, torch.Tensor]:
    """The UNet call's per-sample inputs: ``class_labels`` and, with a control, ``control_image`` and
    ``conditioning_scale`` (one scale per sample, so guidance expands it with the batch)."""
    conditions = {} if labels is None else {"class_labels": labels}
    if control is not None:
        batch_size = control.image.shape[0]
        scale = torch.full((batch_size,), control.scale, dtype=control.image.dtype, device=control.image.device)
        conditions.update(control_image=control.image, conditioning_scale=scale)
    return conditions


class ControlledUNetModel(UNetModel):
    """The UNet with the control network's residuals: ``model(x, t, control_image=c, conditioning_scale=s, ...)``.

    Each call counts one evaluation of the control network per row (``pipe.evaluations["controlnet"]``).
    """

    def __init__(self, unet: torch.nn.Module, controlnet: torch.nn.Module, counter: EvaluationCounter):
        super().__init__(unet)
        self.controlled = ControlledUNet(unet, controlnet)
        self.count = counter.counted("controlnet", lambda x: x)

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, **conditions: torch.Tensor) -> torch.Tensor:
        control_image = conditions.pop("control_image")
        return self.controlled(self.count(x), timestep, control_image, **conditions).sample


# ============================================================================================
# scratch_diffusion.pipelines.edit_images
# ============================================================================================

"""Images and masks into the editing methods and out again, in [0, 1] image space so given pixels return exactly.

Inputs come as the pipeline outputs them (``"pt"`` tensors (B, C, H, W), ``"np"`` arrays (B, H, W, C), PIL
images; :func:`~.inversion.images_to_unit_range`), masks as diffusers' inpainting pipelines take them: white
(≥ 0.5) = regenerate, black = keep. A latent pipeline's mask is carried to the latent grid by max-pooling, so a
latent cell regenerates if any of its pixels does. Outputs are made from [0, 1] images: a pixel taken from the
input is the input's float32 value itself, never a round trip through [−1, 1] or the VAE.
"""


import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline


# A (B, 1, H, W) / (B, H, W) tensor, a (B, H, W) / (B, H, W, 1) array, or one or more PIL images (mode "L").
MaskInput = torch.Tensor | np.ndarray | object


def unit_images(pipe, images: ImageInput, batch_size: int, device: torch.device) -> torch.Tensor:
    """``images`` as float32 (B, C, H, W) in [0, 1] on ``device``, checked against the images the pipeline makes."""
    needed_by = "this pipeline" if pipe.vae is None else "this pipeline's VAE"
    return images_to_unit_range(images, (batch_size, *pipe.image_shape), device, needed_by=needed_by)


def clean_samples(pipe, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as the UNet's clean samples x0 (float32): 2·x − 1, or a latent pipeline's scaled
    posterior mean (:func:`~.latents.encode_to_latents`)."""
    samples = images * 2 - 1
    if pipe.vae is None:
        return samples
    return encode_to_latents(pipe.vae, samples).to(device=images.device, dtype=torch.float32)


def regenerate_mask(
    mask_image: MaskInput, batch_size: int, height: int, width: int, device: torch.device
) -> torch.Tensor:
    """The region to regenerate as a bool (B, 1, H, W) tensor: ``mask_image`` ≥ 0.5 (white).

    Accepted: a float or bool tensor (B, 1, H, W) or (B, H, W); an array (B, H, W) or (B, H, W, 1); PIL images
    (converted to "L", 8-bit). One mask (batch 1) serves every image. Values must lie in [0, 1].
    """
    mask = mask_image
    if is_pil_image(mask):
        mask = [mask]
    if isinstance(mask, (list, tuple)) and mask and all(is_pil_image(m) for m in mask):
        mask = np.stack([np.asarray(m.convert("L"), dtype=np.float32) / 255.0 for m in mask])
    if isinstance(mask, np.ndarray):
        if mask.ndim == 4 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor) or not (mask.dtype.is_floating_point or mask.dtype == torch.bool):
        raise ValueError(
            f"mask_image of type {type(mask_image).__name__}"
            + (f" and dtype {mask.dtype}" if isinstance(mask, torch.Tensor) else "")
            + " is not supported; pass a float or bool tensor (B, 1, H, W) in [0, 1], an array (B, H, W[, 1]) in "
            "[0, 1], or PIL images (white = regenerate)."
        )
    if mask.ndim == 3:
        mask = mask[:, None]
    allowed = [(count, 1, height, width) for count in sorted({1, batch_size})]
    if tuple(mask.shape) not in allowed:
        raise ValueError(
            f"mask_image has shape {tuple(mask_image.shape) if hasattr(mask_image, 'shape') else tuple(mask.shape)}; "
            f"allowed for {batch_size} images of {height}×{width}: (B, 1, H, W) tensors of shape "
            f"{' or '.join(map(str, allowed))}, or (B, H, W) / (B, H, W, 1) arrays."
        )
    mask = mask.detach().to(device=device, dtype=torch.float32)
    low, high = mask.aminmax()  # one read-back, before any model evaluation
    if not (torch.isfinite(low) and torch.isfinite(high) and low >= 0 and high <= 1):
        raise ValueError(f"mask_image values must lie in [0, 1] (white ≥ 0.5 = regenerate); got [{low:g}, {high:g}].")
    return (mask >= 0.5).expand(batch_size, 1, height, width)


def latent_grid_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A pixel mask (B, 1, H, W) on the latent grid (B, 1, H/f, W/f): a cell is set if any of its f×f pixels is."""
    if factor == 1:
        return mask
    return F.max_pool2d(mask.float(), kernel_size=factor, stride=factor) > 0


def unit_images_to_output(images: torch.Tensor, output_type: str):
    """Images (B, C, H, W) in [0, 1] as ``output_type``: ``pt`` (as they are), ``np`` (B, H, W, C) float32, ``pil``."""
    if output_type == "pt":
        return images
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    warn_if_not_finite(array)
    return DiffusionPipeline.numpy_to_pil(array) if output_type == "pil" else array


# ============================================================================================
# scratch_diffusion.pipelines.edit_levels
# ============================================================================================

"""Where an edit starts, and the noise level of every timestep entry in the scheduler's own sample coordinates.

Image-to-image and inpainting put a clean input x0 on the sampler's path. :func:`~.cross_path.sampler_levels`
gives the point (a, b) of the *model input* at each entry of ``scheduler.timesteps`` (after ``scale_model_input``);
the scheduler's *sample* is the model input divided by c = ``scale_model_input(1, t)``. Two conventions exist:
c = 1 (DDPM, DDIM, DPM-Solver, UniPC, flow matching, ours: the sample is a·x0 + b·ε itself) and c = a (Euler,
Heun, KDPM2, LMS: the sample is x0 + σ·ε with σ = b/a, and ``init_noise_sigma`` > 1). :func:`edit_levels`
probes c on a copy of the scheduler and refuses one that follows neither; a clean input then lies at entry k as
x_k = (a_k·x0 + b_k·z)/c_k, which is the scheduler's own ``add_noise`` / ``scale_noise`` (tested against
diffusers' Euler, DDIM, DPM-Solver and flow-matching schedulers and ours).

**Steps and entries.** A schedule of n steps has n·order − (order − 1) entries: one per step for first-order
schedulers, and for second-order ones (Heun, KDPM2: ``order = 2``) a predictor and a corrector entry per step,
the last step a single Euler entry. Step m starts at entry m·order (diffusers' img2img slices
``timesteps[t_start * order:]``). A scheduler with another layout (PNDM's Runge–Kutta warm-up) can run a
whole schedule, but no edit can start or resume within it: :meth:`EditLevels.boundary` refuses, naming it.

**Strength** (diffusers' img2img convention): ``round(strength · n)`` steps are run, from step
t_start = n − round(strength · n); strength 1 starts from pure noise, drawn as ``__call__`` draws it.
"""


import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch



# c = scale_model_input(1, t) equals 1 or a to float32 rounding (a few u ≈ 6e-8 through σ² + 1 and a square root);
# 1e-4 tells the two conventions apart wherever they differ (a < 0.9999) and is far above that rounding.
SAMPLE_SCALE_TOLERANCE = 1e-4


def edit_step_count(strength: float, num_inference_steps: int) -> int:
    """Steps an edit of ``strength`` runs out of ``num_inference_steps``: ``round(strength · n)`` (Python's round)."""
    return round(strength * num_inference_steps)


def probe_sample_scale(scheduler: object, entry: int) -> float:
    """c = ``scale_model_input(1, t)`` at ``entry``, on a copy set to begin there (the scheduler is not touched)."""
    probe = copy.deepcopy(scheduler)
    if hasattr(probe, "set_begin_index"):
        probe.set_begin_index(entry)
    scale_model_input = getattr(probe, "scale_model_input", None)
    if scale_model_input is None:
        return 1.0
    timestep = torch.as_tensor(probe.timesteps)[entry]
    return float(scale_model_input(torch.ones(1, device=timestep.device), timestep).reshape(-1)[0])


@dataclass(frozen=True)
class StepLayout:
    """How a scheduler lays its n steps out as timestep entries (one model evaluation each).

    Attributes:
        num_entries: ``len(scheduler.timesteps)``; num_steps: n; order: the scheduler's ``order``;
        scheduler_name: for error messages.
    """

    num_entries: int
    num_steps: int
    order: int
    scheduler_name: str

    @classmethod
    def of(cls, scheduler: object, num_steps: int) -> StepLayout:
        """The layout of ``scheduler``'s current timesteps, set for ``num_steps`` steps."""
        order = int(getattr(scheduler, "order", 1))
        return cls(len(scheduler.timesteps), num_steps, order, type(scheduler).__name__)

    @property
    def regular(self) -> bool:
        """Whether there are n·order − (order − 1) entries, step m starting at entry m·order."""
        return self.num_entries == self.num_steps * self.order - (self.order - 1)

    def boundary(self, step: int) -> int:
        """The entry step ``step`` (0 … n) starts at; step n is the end (``num_entries``).

        Raises ``ValueError`` for an interior step of a schedule whose layout is not regular.
        """
        if step == self.num_steps:
            return self.num_entries
        if step == 0:
            return 0
        if not self.regular:
            raise ValueError(
                f"{self.scheduler_name} lays {self.num_steps} steps out as {self.num_entries} timestep entries "
                f"(order {self.order}), not n·order − (order − 1) = {self.num_steps * self.order - self.order + 1}, so "
                "an edit cannot start or jump within its schedule; allowed with it: strength=1.0 and jump_n_sample=1. "
                "Use a first-order scheduler (DDIM, DDPM, Euler, DPM-Solver, flow matching) or Heun for strength < 1 "
                "and RePaint resampling."
            )
        return step * self.order


@dataclass(frozen=True)
class EditLevels:
    """The entries of one schedule as points of the path, in the scheduler's sample coordinates.

    Attributes:
        levels: (a, b) of the model input at each entry (:func:`~.cross_path.sampler_levels`).
        end: (a, b) the last step lands on (clean (1, 0) for most schedulers; DDIM's ``final_alpha_cumprod``).
        scaled_samples: the sample is the model input / a (Euler-type schedulers), else the model input itself.
        layout: the schedule's steps and entries.
    """

    levels: Sequence[tuple[float, float]]
    end: tuple[float, float]
    scaled_samples: bool
    layout: StepLayout

    @property
    def num_entries(self) -> int:
        """Entries of ``scheduler.timesteps`` (one model evaluation each)."""
        return self.layout.num_entries

    def boundary(self, step: int) -> int:
        """The entry step ``step`` starts at (:meth:`StepLayout.boundary`)."""
        return self.layout.boundary(step)

    def point(self, entry: int) -> tuple[float, float, float]:
        """(a, b, c) at ``entry`` (``num_entries``: the end): model input = a·x0 + b·ε, sample = model input / c."""
        a, b = self.end if entry == self.num_entries else self.levels[entry]
        return a, b, (a if self.scaled_samples else 1.0)

    def noising(self, entry: int) -> tuple[float, float]:
        """(p, q) with p·x0 + q·z the clean ``x0`` noised to ``entry``'s level in sample coordinates (z ~ N(0, I))."""
        a, b, c = self.point(entry)
        return a / c, b / c

    def jump(self, x: torch.Tensor, source: int, target: int, noise: torch.Tensor) -> torch.Tensor:
        """The sample ``x`` at entry ``source`` carried forward (noised) to the noisier entry ``target`` (z: ``noise``).

        The forward transition from (a, b) to (a', b') is x' = (a'/a)·x + √(b'² − (a'·b/a)²)·z
        (:func:`~scratch_schedulers.samplers.raise_noise`): if x = a·x0 + b·ε then x' = a'·x0 + b'·ε' exactly in
        distribution (on the VP path it is DDPM's q(x_t | x_s) = N(√(ᾱ_t/ᾱ_s)·x_s, (1 − ᾱ_t/ᾱ_s)·I), Ho et al., 2020,
        Eq. 2 composed; RePaint jumps with it). It holds for any Gaussian path, so also in sample coordinates, where
        the points are (a/c, b/c) (:meth:`noising`).
        """
        return raise_noise(x, *self.noising(source), *self.noising(target), noise)


def edit_levels(scheduler: object, levels: Sequence[tuple[float, float]], path: str, num_steps: int) -> EditLevels:
    """The :class:`EditLevels` of ``scheduler``'s timesteps, set for ``num_steps`` steps (``levels`` on ``path``).

    c is probed at entry 0, where the conventions differ most (a ≈ 0): c = a makes every sample scaled by its a,
    c = 1 none. Raises ``ValueError`` naming the scheduler if c is neither (samples of unknown coordinates).
    """
    name = type(scheduler).__name__
    host = copy.deepcopy(scheduler)
    if torch.as_tensor(host.timesteps).device.type != "cpu":
        host.set_timesteps(num_steps)  # probe on a host grid: nothing read back from the device
    a0, _ = levels[0]
    c0 = probe_sample_scale(host, 0)
    if math.isclose(c0, 1.0, rel_tol=SAMPLE_SCALE_TOLERANCE):
        scaled = False
    elif math.isclose(c0, a0, rel_tol=SAMPLE_SCALE_TOLERANCE):
        scaled = True
    else:
        raise ValueError(
            f"{name}.scale_model_input scales its samples by c={c0:.6g} at the first timestep, where the path's "
            f"signal scale is a={a0:.6g}; editing needs c = 1 (samples on the path) or c = a (Euler-type samples "
            "x0 + σ·ε). Use DDPM, DDIM, DPM-Solver, Euler, Heun or a flow-matching scheduler."
        )
    end = tuple(inversion_levels(host, levels, path)[-1])
    return EditLevels(levels, end, scaled, StepLayout.of(scheduler, num_steps))


# ============================================================================================
# scratch_diffusion.pipelines.sampling_loop
# ============================================================================================

"""The sampling loop every sampling method of the pipeline runs: ``__call__``, image-to-image and inpainting.

For each entry i of a range of ``scheduler.timesteps`` (t = timesteps[i]): an optional replacement of part of the
sample (inpainting puts the known region back at entry i's noise level), ``scale_model_input``, one evaluation of
the pipeline's denoiser at plan position i (:mod:`.denoiser`: guidance, the path change and the evaluation count
live there), ``scheduler.step`` with the ``eta`` / ``generator`` it accepts, the progress bar, and diffusers'
``callback_on_step_end(pipeline, step_index, t, tensors)`` whose returned ``latents`` replace the sample.

A run may be several calls of :meth:`SamplingLoop.run` over consecutive or repeated ranges (RePaint goes back up
the schedule and down again): the step index passed to callbacks counts every step of the run, and the scheduler
is read at each call, so a caller may restore its state in place between calls.
"""


import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch


# (sample, entry) -> sample: applied before the model evaluation at that entry (inpainting's replacement).
Replacement = Callable[[torch.Tensor, int], torch.Tensor]


class SamplingLoop:
    """The loop of one pipeline call: its denoiser, step arguments, callback and optional replacement.

    Args:
        pipe: the pipeline (its ``scheduler``, ``progress_bar``; passed to the callback).
        denoiser: D(x, i) of the run (:meth:`ScratchDiffusionPipeline.denoiser`), indexed by timestep entry.
        step_kwargs: ``eta`` / ``generator`` for ``scheduler.step`` (:meth:`ScratchDiffusionPipeline.step_kwargs`).
        callback: ``callback_on_step_end`` or None; callback_inputs: the tensor names it receives.
        replace: called as ``replace(sample, i)`` before each model evaluation, or None.
    """

    def __init__(
        self,
        pipe,
        denoiser: Denoiser,
        step_kwargs: Mapping[str, object],
        callback: Callable | None = None,
        callback_inputs: Sequence[str] = ("latents",),
        replace: Replacement | None = None,
    ):
        self.pipe, self.denoiser, self.step_kwargs = pipe, denoiser, dict(step_kwargs)
        self.callback, self.callback_inputs, self.replace = callback, tuple(callback_inputs), replace
        self.steps_taken = 0
        self.advance_progress: Callable[[int], object] = lambda _: None

    def run(self, latents: torch.Tensor, entries: range) -> torch.Tensor:
        """Step ``latents`` through ``entries`` of ``scheduler.timesteps``: one model evaluation per entry."""
        scheduler = self.pipe.scheduler
        scale_model_input = getattr(scheduler, "scale_model_input", None)
        timesteps = scheduler.timesteps
        for i in entries:
            t = timesteps[i]
            if self.replace is not None:
                latents = self.replace(latents, i)
            model_input = latents if scale_model_input is None else scale_model_input(latents, t)
            model_output = self.denoiser(model_input, i)[0]
            latents = scheduler.step(model_output, t, latents, **self.step_kwargs, return_dict=False)[0]
            self.advance_progress(1)
            if self.callback is not None:
                tensors = {"latents": latents, "model_output": model_output}
                requested = {name: tensors[name] for name in self.callback_inputs}
                returned = self.callback(self.pipe, self.steps_taken, t, requested) or {}
                latents = returned.get("latents", latents)
            self.steps_taken += 1
        return latents

    @contextlib.contextmanager
    def progress(self, total: int) -> Iterator[None]:
        """Count the model evaluations of the runs inside the block on one progress bar of ``total``."""
        with self.pipe.progress_bar(total=total) as bar:
            self.advance_progress = bar.update
            try:
                yield
            finally:
                self.advance_progress = lambda _: None

    def sample(self, latents: torch.Tensor, entries: range) -> torch.Tensor:
        """:meth:`run` under a progress bar of ``len(entries)`` model evaluations."""
        with self.progress(len(entries)):
            return self.run(latents, entries)


# ============================================================================================
# scratch_diffusion.pipelines.edit_run
# ============================================================================================

"""What image-to-image and inpainting share: checked arguments, the schedule, the denoiser and the first sample.

An edit is a sampling run that starts at step t_start = n − round(strength·n) of an n-step schedule
(:mod:`.edit_levels`) from the clean input x0 noised to that level, or, at strength 1, from pure noise drawn
exactly as ``ScratchDiffusionPipeline.__call__`` draws it (so strength 1 reproduces ``pipe(...)``). The call's
arguments, the scheduler's parametrisation, sample coordinates and start step, and the guidance rules are checked
here, before any model evaluation.
"""


from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor




@dataclass
class EditRun:
    """One editing call, resolved: its schedule, denoiser and evaluation counter, and where it starts.

    ``levels`` is None for a run from pure noise that never puts the input on the path (image-to-image at strength 1).
    """

    pipe: object
    device: torch.device
    shape: tuple[int, ...]
    denoiser: Denoiser
    counter: EvaluationCounter
    levels: EditLevels | None
    start_step: int
    num_steps: int

    @property
    def from_noise(self) -> bool:
        """Whether the run starts at the first step, from pure noise (strength 1)."""
        return self.start_step == 0

    def start_entry(self) -> int:
        """The timestep entry the run starts at."""
        return 0 if self.from_noise else self.levels.boundary(self.start_step)

    def initial_sample(self, x0: torch.Tensor | None, generator) -> torch.Tensor:
        """z·``init_noise_sigma`` from the first step (as ``__call__``), else x0 noised to the start: (a·x0 + b·z)/c.

        z ~ N(0, I) is drawn as ``__call__`` draws it: ``randn_tensor`` of the sample shape, in the UNet's dtype.
        """
        unet = self.pipe.unet
        noise = randn_tensor(self.shape, generator=generator, device=self.device, dtype=unet.dtype)
        if self.from_noise:
            return noise * getattr(self.pipe.scheduler, "init_noise_sigma", 1.0)
        signal_scale, noise_scale = self.levels.noising(self.start_entry())
        return x0.to(dtype=unet.dtype) * signal_scale + noise * noise_scale

    def loop(
        self,
        generator,
        eta: float,
        callback,
        callback_inputs: Sequence[str],
        evaluated_entries: int,
        replace: Replacement | None = None,
    ) -> SamplingLoop:
        """The run's :class:`~.sampling_loop.SamplingLoop`; ``pipe.num_timesteps`` is set to ``evaluated_entries``
        first (diffusers' ``PipelineCallback`` reads it during the loop)."""
        self.pipe._num_timesteps = evaluated_entries
        step_kwargs = self.pipe.step_kwargs(generator, eta)
        return SamplingLoop(self.pipe, self.denoiser, step_kwargs, callback, callback_inputs, replace)

    def finish(self) -> None:
        """Record the run's evaluations per image on the pipeline (``pipe.evaluations``) and free offload hooks."""
        self.pipe._evaluations = self.counter.per_image()
        self.pipe.maybe_free_model_hooks()


def unchanged_output(pipe, images: torch.Tensor, output_type: str):
    """The input itself as the call's output (an edit of no step): no noise, no model evaluation recorded.

    ``images`` in [0, 1]; ``"latent"`` gives the clean samples (2·x − 1, or a latent pipeline's encoded input).
    """
    pipe._num_timesteps, pipe._evaluations = 0, {}
    if output_type == "latent":
        return clean_samples(pipe, images)
    return unit_images_to_output(images.clone(), output_type)


def callback_tensor_inputs(callback, requested: Sequence[str]) -> Sequence[str]:
    """The tensors a callback receives: a ``PipelineCallback``'s own ``tensor_inputs``, else ``requested``."""
    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        return callback.tensor_inputs
    return requested


@dataclass(frozen=True)
class EditCall:
    """The arguments ``img2img`` and ``inpaint`` share, as the methods take them (see ``EditingMixin``)."""

    num_inference_steps: int
    strength: float
    generator: torch.Generator | list[torch.Generator] | None
    eta: float
    class_labels: object
    guidance_scale: float
    guidance: Guidance | None
    output_type: str
    callback: object
    callback_inputs: Sequence[str]
    control_image: object = None
    controlnet_conditioning_scale: float = 1.0


@dataclass
class EditInputs:
    """An edit's checked inputs: the images in [0, 1] on the device, how many steps run, the scheduler's
    parametrisation, the guidance rules, the control (``control.py``) and the callback's tensor names."""

    images: torch.Tensor
    steps: int
    sampled: object
    rules: tuple
    control: Control | None
    callback_inputs: Sequence[str]

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]


def check_edit(pipe, image: ImageInput, call: EditCall) -> EditInputs:
    """Every check of an edit, before any model evaluation: ``__call__``'s (``pipe.check_inputs``), ``strength``,
    the control image and the images themselves (against the images the pipeline makes)."""
    batch_size = image_count(image)
    callback_inputs = callback_tensor_inputs(call.callback, call.callback_inputs)
    sampled, rules = pipe.check_inputs(
        batch_size,
        call.num_inference_steps,
        call.generator,
        call.class_labels,
        call.guidance_scale,
        call.output_type,
        callback_inputs,
        call.eta,
        call.guidance,
    )
    check_strength(call.strength)
    device = pipe._execution_device
    control = prepare_control(pipe, call.control_image, call.controlnet_conditioning_scale, batch_size, device)
    images = unit_images(pipe, image, batch_size, device)
    steps = edit_step_count(call.strength, call.num_inference_steps)
    return EditInputs(images, steps, sampled, rules, control, callback_inputs)


def begin_edit(pipe, edit: EditInputs, call: EditCall, needs_levels: bool = True) -> EditRun:
    """Bind the guidance, set the schedule (and its begin index), build the denoiser: an :class:`EditRun`.

    ``needs_levels`` False skips the sample-coordinate probe for a run from pure noise that never noises the input.
    Raises ``ValueError`` (before any model evaluation) for a scheduler that cannot start at step t_start.
    """
    device, n = pipe._execution_device, call.num_inference_steps
    conditions, guided, counter = pipe.prepare_guidance(
        edit.rules, call.class_labels, edit.batch_size, device, edit.control
    )
    points = pipe.set_timesteps(n, device, edit.sampled)
    levels = None
    if needs_levels or edit.steps < n:
        levels = edit_levels(pipe.scheduler, points, edit.sampled.path, n)
    denoiser = pipe.denoiser(edit.sampled, None, conditions, guided, device, points, counter)
    run = EditRun(
        pipe, device, sample_shape(pipe.unet, edit.batch_size), denoiser, counter, levels, n - edit.steps, edit.steps
    )
    start = run.start_entry()  # an irregular layout is refused here for strength < 1
    if hasattr(pipe.scheduler, "set_begin_index"):
        pipe.scheduler.set_begin_index(start)
    return run


# ============================================================================================
# scratch_diffusion.pipelines.postprocess
# ============================================================================================

"""From the sampler's last sample to what ``ScratchDiffusionPipeline.__call__`` returns.

In pixel space the sample is the image in [−1, 1]; in a latent pipeline it is the VAE's scaled latent
z and the image is ``decode_latents(vae, z)`` (``latents.py``). ``output_type="latent"`` returns the
sample itself, in both cases, before any decoding or clamping.
"""


import torch
from diffusers import DiffusionPipeline



def samples_to_images(samples: torch.Tensor, output_type: str, vae=None):
    """The final ``samples`` as ``output_type``: ``latent`` (unchanged), ``pt`` (B, C, H, W) in [0, 1],
    ``np`` (B, H, W, C) float32 in [0, 1], or ``pil`` (a list of PIL images); decoded by ``vae`` when given."""
    if output_type == "latent":
        return samples
    decoded = samples if vae is None else decode_latents(vae, samples)
    images = (decoded / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images
    images = images.cpu().permute(0, 2, 3, 1).float().numpy()
    warn_if_not_finite(images)  # on the host already: free to check (pil would hide NaN as black)
    return DiffusionPipeline.numpy_to_pil(images) if output_type == "pil" else images


# ============================================================================================
# scratch_diffusion.pipelines.img2img
# ============================================================================================

"""Image-to-image by SDEdit (Meng et al., 2022): noise the input to the level ``strength`` sets, then sample from there.

With n steps the run is the last round(strength·n) of them (diffusers' img2img convention; :mod:`.edit_levels`):
the input x0 (a latent pipeline's encoded posterior mean) is put at the start entry's point of the scheduler's
path in its own sample coordinates, x = (a·x0 + b·z)/c, and the pipeline's one sampling loop
(:mod:`.sampling_loop`) takes it from there with the scheduler's ``set_begin_index`` set where it has one. Two ends
are exact by construction: strength 0 (or any strength that rounds to 0 steps) returns the input itself with no
model evaluation, and strength 1 draws its noise and runs exactly as ``pipe(batch_size=B, ...)``, so the two agree
bit for bit — the input is then not used.
"""




def image_to_image(pipe, image: ImageInput, call: EditCall):
    """``EditingMixin.img2img`` without its ``return_dict``: the output images (or latents)."""
    edit = check_edit(pipe, image, call)
    if edit.steps == 0:  # the input, as it came
        return unchanged_output(pipe, edit.images, call.output_type)

    run = begin_edit(pipe, edit, call, needs_levels=False)
    x0 = None if run.from_noise else clean_samples(pipe, edit.images)
    latents = run.initial_sample(x0, call.generator)
    entries = range(run.start_entry(), len(pipe.scheduler.timesteps))
    loop = run.loop(call.generator, call.eta, call.callback, edit.callback_inputs, len(entries))
    latents = loop.sample(latents, entries)
    run.finish()
    return samples_to_images(latents, call.output_type, pipe.vae)


# ============================================================================================
# scratch_diffusion.pipelines.repaint
# ============================================================================================

"""RePaint's resampling schedule (Lugmayr et al., 2022, Alg. 1) as moves between steps, and its cost.

Counted in steps still to run, s (s = S at the start of a run of S steps, 0 at its end), RePaint jumps back at
s ∈ {0, j, 2j, …} with s < S − j (diffusers' ``RePaintScheduler``: jump length j = ``jump_length``): having
arrived at s, it noises the sample back up j steps and descends them again, r − 1 times (r = ``jump_n_sample``;
r = 1 is plain replacement). The moves here are in steps taken, m = S − s, so the jump points are m = S − s and
each jumps back to m − j ≥ 1 (never to the run's start). A descent of steps [m, m') costs the model evaluations
of its timestep entries (:class:`~.edit_levels.StepLayout`): one per step for first-order schedulers, two per
step (predictor and corrector) for second-order ones, whose last step to the end is a single Euler entry.

Model evaluations of one run of S steps, with J = |{0, j, 2j, …} ∩ [0, S − j)| jump points and order k:

    E(S, j, r, k) = k·S − (k − 1) + (r − 1)·(k·j·J − (k − 1)·[J > 0])          (E = 0 for S = 0)

— the descent, plus r − 1 re-descents of j steps per jump point, the one from the end (s = 0) ending in the
single-entry last step. First order: S + (r − 1)·j·J; diffusers' defaults S = 250, j = 10, r = 10 give 2,410.
"""




def repaint_jump_points(num_steps: int, jump_length: int) -> list[int]:
    """Steps taken (ascending) after which RePaint jumps back ``jump_length`` steps: S − s for s ∈ {0, j, …} < S − j."""
    return sorted(num_steps - s for s in range(0, num_steps - jump_length, jump_length))


def repaint_moves(num_steps: int, jump_length: int, jump_n_sample: int) -> list[tuple[int, int]]:
    """The run as moves (from, to) between steps taken 0 … S: a descent if to > from, else a jump back up.

    Descents are split at every jump target, so each resampled segment starts where a descent starts.
    """
    points = repaint_jump_points(num_steps, jump_length) if jump_n_sample > 1 else []
    moves, position = [], 0
    for point in points:
        target = point - jump_length
        if target > position:
            moves.append((position, target))
        moves.append((target, point))
        moves.extend([(point, target), (target, point)] * (jump_n_sample - 1))
        position = point
    if position < num_steps:
        moves.append((position, num_steps))
    return moves


def repaint_evaluations(num_steps: int, jump_length: int = 10, jump_n_sample: int = 1, order: int = 1) -> int:
    """Model evaluations of a RePaint run of ``num_steps`` steps: E(S, j, r, k) of the module docstring.

    ``order`` is the scheduler's (2 for Heun-type schedulers). Under classifier-free guidance each evaluation is
    two UNet halves in ``pipe.evaluations``.
    """
    if num_steps == 0:
        return 0
    jumps = len(range(0, num_steps - jump_length, jump_length)) if jump_n_sample > 1 else 0
    descent = order * num_steps - (order - 1)
    resampled = order * jump_length * jumps - (order - 1) * (jumps > 0)
    return descent + (jump_n_sample - 1) * resampled


def entry_moves(layout: StepLayout, start_step: int, moves: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``moves`` (steps taken since ``start_step``) as timestep entries (from, to) of ``layout``.

    Raises ``ValueError`` before any work where a move starts or ends inside a schedule of irregular layout.
    """
    return [(layout.boundary(start_step + source), layout.boundary(start_step + target)) for source, target in moves]


def descent_entries(moves: list[tuple[int, int]]) -> int:
    """Model evaluations of entry ``moves``: the entries of every descent."""
    return sum(target - source for source, target in moves if target > source)


# ============================================================================================
# scratch_diffusion.pipelines.inpainting
# ============================================================================================

"""Inpainting by replacement (imputation, Song et al., 2021; Lugmayr et al., 2022) with RePaint resampling.

The known region (mask 0) of the sample is, before each model evaluation at entry k, replaced by the input x0
noised to entry k's level with fresh noise, (a_k·x0 + b_k·z)/c_k in the scheduler's sample coordinates
(:mod:`.edit_levels`), and after the last step by x0 itself; the region to regenerate is sampled by the
pipeline's one loop (:mod:`.sampling_loop`), so every scheduler, both paths, guidance and class labels work as in
``__call__``. RePaint (:mod:`.repaint`) adds jumps: at its jump points the sample is carried forward j steps by
the exact forward transition (:meth:`~.edit_levels.EditLevels.jump`) and descends them again, r − 1 times.

**The scheduler across a jump.** Before each resampled segment the scheduler's state (``__dict__``, deep-copied)
is saved, and restored at every jump back to it: step indices, a Heun step's half-step state and a multistep
solver's history are those of the segment's start. For first-order schedulers (DDPM, DDIM, Euler, flow-matching
Euler) a step depends on the current sample alone, so each re-descent is exactly RePaint's chain. Multistep
solvers (DPM-Solver(++) 2M/3M, UniPC, DEIS) reuse, for the first order − 1 steps after a jump, model outputs of the
trajectory before the jump (the history at the segment's start): approximate there, consistent again after.
Second-order schedulers (Heun, KDPM2) jump only at full-step boundaries (entries m·order), where no half step is
pending, and a resampled step re-runs its predictor and corrector.
"""


import copy

import torch
from diffusers.utils.torch_utils import randn_tensor



class KnownRegion:
    """The input's known region put back on the path: a :data:`~.sampling_loop.Replacement` plus the final paste.

    Args:
        x0: the clean input in sample space (pixels in [−1, 1], or a latent pipeline's scaled latents).
        keep: bool (B, 1, h, w) on the sample grid, True where x0 is kept.
        levels: the run's :class:`~.edit_levels.EditLevels`; generator: draws the fresh noise of each replacement.
    """

    def __init__(self, x0: torch.Tensor, keep: torch.Tensor, levels: EditLevels, generator):
        self.x0, self.keep, self.levels, self.generator = x0, keep, levels, generator

    def __call__(self, latents: torch.Tensor, entry: int) -> torch.Tensor:
        """``latents`` with the known region at entry ``entry``'s level, (a·x0 + b·z)/c with fresh z."""
        signal_scale, noise_scale = self.levels.noising(entry)
        noise = randn_tensor(latents.shape, generator=self.generator, device=latents.device, dtype=latents.dtype)
        return torch.where(self.keep, self.x0 * signal_scale + noise * noise_scale, latents)

    def clean(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents`` with the known region set to the clean input (after the last step)."""
        return torch.where(self.keep, self.x0, latents)


def jump_up(latents: torch.Tensor, levels: EditLevels, source: int, target: int, generator) -> torch.Tensor:
    """The sample at entry ``source`` carried forward to the noisier entry ``target`` (RePaint's jump back):
    ``levels.jump`` with z ~ N(0, I) fresh."""
    noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    return levels.jump(latents, source, target, noise)


def restore_state(scheduler: object, state: dict) -> None:
    """Put ``scheduler`` (the same object) back into a state saved as ``copy.deepcopy(scheduler.__dict__)``."""
    scheduler.__dict__.clear()
    scheduler.__dict__.update(copy.deepcopy(state))


def inpaint_images(
    pipe, image: ImageInput, mask_image: MaskInput, jump_length: int, jump_n_sample: int, call: EditCall
):
    """``EditingMixin.inpaint`` without its ``return_dict``: the output images (or latents)."""
    check_resampling(jump_length, jump_n_sample)
    edit = check_edit(pipe, image, call)
    images, steps, generator = edit.images, edit.steps, call.generator
    regenerate = regenerate_mask(mask_image, edit.batch_size, *images.shape[-2:], images.device)
    if steps == 0:  # the input, as it came
        return unchanged_output(pipe, images, call.output_type)

    run = begin_edit(pipe, edit, call)
    moves = entry_moves(run.levels.layout, run.start_step, repaint_moves(steps, jump_length, jump_n_sample))
    x0 = clean_samples(pipe, images).to(dtype=pipe.unet.dtype)
    known = KnownRegion(x0, ~latent_grid_mask(regenerate, pipe.vae_scale_factor), run.levels, generator)
    latents = run.initial_sample(None if run.from_noise else x0, generator)
    total = descent_entries(moves)
    loop = run.loop(generator, call.eta, call.callback, edit.callback_inputs, total, replace=known)
    segment_starts = {target for source, target in moves if target < source}  # where jumps land
    saved: dict[int, dict] = {}  # the scheduler's state at each segment start, as the last descent left it
    with loop.progress(total):
        for index, (source, target) in enumerate(moves):
            if target < source:  # jump back up to a segment's start and restore the scheduler as it was there
                restore_state(pipe.scheduler, saved[target])
                latents = jump_up(latents, run.levels, source, target, generator)
                continue
            after_jump = index > 0 and moves[index - 1][1] < moves[index - 1][0]
            if source in segment_starts and not after_jump:
                saved[source] = copy.deepcopy(pipe.scheduler.__dict__)
            latents = loop.run(latents, range(source, target))
            if target == run.levels.num_entries:
                latents = known.clean(latents)
    run.finish()
    if call.output_type == "latent":
        return latents
    generated = samples_to_images(latents, "pt", pipe.vae)
    return unit_images_to_output(torch.where(regenerate, generated, images), call.output_type)


# ============================================================================================
# scratch_diffusion.pipelines.editing
# ============================================================================================

"""Editing methods of ``ScratchDiffusionPipeline``: image-to-image (SDEdit) and inpainting (replacement + RePaint).

They are methods of the one pipeline class rather than separate pipeline classes, so every loading story
(installed package, diffusers with the shipped code, a Hub repo id) that gives a ``ScratchDiffusionPipeline``
can edit with it, from the same saved folder. Each is a thin wrapper: the work is in :mod:`.img2img` and
:mod:`.inpainting`; both run the pipeline's one denoiser (counted: ``pipe.evaluations``) in its one sampling
loop (:mod:`.sampling_loop`).
"""


import copy
from collections.abc import Callable, Sequence

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback



StepCallback = (
    Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict] | PipelineCallback | MultiPipelineCallbacks | None
)


class EditingMixin:
    """``img2img`` and ``inpaint`` for a pipeline with a UNet, a scheduler and an optional VAE."""

    @torch.no_grad()
    def img2img(
        self,
        image: ImageInput,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        guidance: Guidance | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        control_image: ImageInput | None = None,
        controlnet_conditioning_scale: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        r"""Image-to-image by SDEdit (Meng et al., 2022): noise ``image`` to the level ``strength`` sets, then sample.

        Of an n-step schedule the last S = round(strength·n) steps run (Python's ``round``; diffusers' img2img
        convention), from step t_start = n − S: the input x0 is put at that step's point of the scheduler's path in
        the scheduler's own sample coordinates, (a·x0 + b·z)/c (``edit_levels.py``), and ``set_begin_index`` is
        called where the scheduler has it. Model evaluations: S for first-order schedulers, 2S − 1 for second-order
        ones (Heun), twice that in ``pipe.evaluations["unet"]`` under classifier-free guidance.

        - strength 0 (or one that rounds to 0 steps): the input itself, with no model evaluation (``"pt"``: its
          float32 values bit for bit; ``"latent"``: 2·x − 1, or a latent pipeline's encoded input).
        - strength 1: bit-identical to ``pipe(batch_size=B, generator=generator, ...)`` with the same arguments —
          the noise is drawn the same way, and the input is not used.

        Args:
            image: as ``invert`` takes it: a (B, C, H, W) tensor in [0, 1], a (B, H, W, C) array in [0, 1], or PIL
                images; the batch size is B. A latent pipeline encodes it (the posterior mean,
                ``latents.encode_to_latents``).
            strength: in [0, 1], how far up the path the input goes (0 keeps it, 1 starts from pure noise).
            num_inference_steps: steps n of the whole schedule.
            generator, eta, class_labels, guidance_scale, guidance, output_type, return_dict,
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in ``__call__``; the callback's step index
                counts from 0 at the first step run, and ``pipe.num_timesteps`` is the number of entries run.
            control_image, controlnet_conditioning_scale: a ``controlnet`` component's control, as in ``__call__``.

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` if ``return_dict`` is False.

        Raises:
            ValueError: for ``strength`` outside [0, 1], images of the wrong shape or range, any argument
                ``__call__`` refuses, or a scheduler that cannot start within its schedule (for strength < 1) —
                always before any model evaluation.
        """
        call = EditCall(
            num_inference_steps,
            strength,
            generator,
            eta,
            class_labels,
            guidance_scale,
            guidance,
            output_type,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            control_image,
            controlnet_conditioning_scale,
        )
        images = image_to_image(self, image, call)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    @torch.no_grad()
    def inpaint(
        self,
        image: ImageInput,
        mask_image: MaskInput,
        num_inference_steps: int = 50,
        strength: float = 1.0,
        jump_length: int = 10,
        jump_n_sample: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        guidance: Guidance | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        control_image: ImageInput | None = None,
        controlnet_conditioning_scale: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        r"""Regenerate the white region of ``mask_image``, keeping the rest of ``image`` (replacement + RePaint).

        Before each model evaluation at timestep entry k the known region (mask black) of the sample is replaced by
        the input noised to entry k's level with fresh noise, and after the last step by the clean input
        (``inpainting.py``). RePaint resampling (Lugmayr et al., 2022; names as diffusers' ``RePaintScheduler``): at
        its jump points the sample is noised j = ``jump_length`` steps back up the path by the exact forward
        transition and descends them again, r − 1 times (r = ``jump_n_sample``; r = 1 is plain replacement). The
        scheduler's state is restored to that of the segment's start at each jump: exact RePaint for first-order
        schedulers; for multistep solvers the first order − 1 steps after a jump reuse the history of the
        trajectory before it (approximate); second-order schedulers (Heun) jump at full-step boundaries only.

        **Model evaluations** of a run of S = round(strength·n) steps, J = |{0, j, 2j, …} ∩ [0, S − j)| jump
        points, scheduler order k (1; 2 for Heun): k·S − (k − 1) + (r − 1)·(k·j·J − (k − 1)·[J > 0]) — for
        first-order schedulers S + (r − 1)·j·J (``repaint.repaint_evaluations``; :meth:`inpaint_evaluations`
        computes it for this pipeline's scheduler before running). Under classifier-free guidance
        ``pipe.evaluations["unet"]`` counts two per evaluation.

        **Exactness.** The known region of the output equals the input exactly for ``"pt"`` (its float32 values),
        ``"np"`` and ``"pil"``: the result is composited in [0, 1] image space, generated pixels where the mask is
        white, the input's own pixels elsewhere. A latent pipeline denoises the encoded input (posterior mean) with
        the mask max-pooled to the latent grid (a latent cell is regenerated if any of its pixels is), decodes, and
        pastes the input's known pixels the same way, so the known pixels are exact there too; its ``"latent"``
        output holds the encoded input in the known cells, which decode to the input only up to the VAE's
        reconstruction error. A pixel pipeline's ``"latent"`` output holds 2·x − 1 there.

        Args:
            image: as in :meth:`img2img`.
            mask_image: white (≥ 0.5) = regenerate, black = keep: a float or bool tensor (B, 1, H, W) in [0, 1], an
                array (B, H, W) or (B, H, W, 1) in [0, 1], or PIL images ("L"); batch 1 serves every image.
            num_inference_steps: steps n of the whole schedule.
            strength: as diffusers' inpainting: 1 starts from pure noise; below 1 the run starts from the input
                noised to step n − round(strength·n), 0 returns the input with no model evaluation.
            jump_length, jump_n_sample: RePaint's j and r, integers ≥ 1.
            generator, eta, class_labels, guidance_scale, guidance, output_type, return_dict,
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in ``__call__``; the callback's step index
                counts every step of the run, re-descents included.
            control_image, controlnet_conditioning_scale: a ``controlnet`` component's control, as in ``__call__``.

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` if ``return_dict`` is False.

        Raises:
            ValueError: for a mask of the wrong shape or values outside [0, 1], ``strength`` outside [0, 1],
                ``jump_length`` or ``jump_n_sample`` < 1, any argument ``__call__`` refuses, or a scheduler whose
                timesteps are not laid out per step (PNDM) with strength < 1 or resampling — always before any model
                evaluation.
        """
        call = EditCall(
            num_inference_steps,
            strength,
            generator,
            eta,
            class_labels,
            guidance_scale,
            guidance,
            output_type,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            control_image,
            controlnet_conditioning_scale,
        )
        images = inpaint_images(self, image, mask_image, jump_length, jump_n_sample, call)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def inpaint_evaluations(
        self, num_inference_steps: int = 50, strength: float = 1.0, jump_length: int = 10, jump_n_sample: int = 1
    ) -> int:
        """Model evaluations per image that :meth:`inpaint` makes with these arguments and the current scheduler
        (before guidance doubles them), computed without running it: the moves of the RePaint schedule on the
        scheduler's timestep layout. Raises ``ValueError`` as :meth:`inpaint` would for the same arguments."""
        check_call_arguments(1, num_inference_steps, None, 0.0, 1.0, "pt")
        check_strength(strength)
        check_resampling(jump_length, jump_n_sample)
        steps = edit_step_count(strength, num_inference_steps)
        probe = copy.deepcopy(self.scheduler)
        probe.set_timesteps(num_inference_steps)
        layout = StepLayout.of(probe, num_inference_steps)
        moves = repaint_moves(steps, jump_length, jump_n_sample)
        return descent_entries(entry_moves(layout, num_inference_steps - steps, moves))


# ============================================================================================
# scratch_diffusion.pipelines.flow_map
# ============================================================================================

"""Flow maps in the pipeline: the second time input r of a flow-map UNet at each entry of a flow-map scheduler.

A flow-map UNet (:class:`~scratch_diffusion.few_step.FlowMapUNet2DModel`, MeanFlow) predicts the average velocity
u(x_t, r, t) over [r, t]; a flow-map scheduler steps x_r = x_t − (t − r)·u to the next level r of its grid
(:class:`~scratch_schedulers.ScratchFlowMapScheduler`, diffusers' ``FlowMapEulerDiscreteScheduler``). So at entry i
the UNet is called with ``r_timestep`` = the next grid level in model units. Any other scheduler samples the same
UNet as a flow model — r = t, the instantaneous velocity — and a plain UNet under a flow-map scheduler is that
scheduler's Euler (or consistency) step: neither needs anything here.
"""


import inspect

import torch


# diffusers' flow-map schedulers by name (ours say so with ``is_flow_map = True``)
FLOW_MAP_SCHEDULERS = ("FlowMapEulerDiscreteScheduler",)


def takes_interval(unet: torch.nn.Module) -> bool:
    """The UNet's forward takes a second time input ``r_timestep``: a flow map."""
    return "r_timestep" in inspect.signature(unet.forward).parameters


def interval_ends(
    scheduler: object, unet: torch.nn.Module, sampled: Parametrization, trained: Parametrization
) -> torch.Tensor | None:
    """``r_timestep`` for each entry of ``scheduler.timesteps``, in model units; None where r = t.

    Defined for a flow-map ``unet`` (:func:`takes_interval`) and a flow-map scheduler (its ``sigmas`` hold n + 1
    levels ending at 0) sampling the UNet's own flow parametrisation; the next level of entry i is ``sigmas[i + 1]·T``.
    """
    flow_map = getattr(scheduler, "is_flow_map", False) or type(scheduler).__name__ in FLOW_MAP_SCHEDULERS
    if not flow_map or not takes_interval(unet) or sampled != trained or trained.path != "flow":
        return None
    sigmas = torch.as_tensor(scheduler.sigmas)
    return (sigmas[1:] * scheduler.config.num_train_timesteps).to(torch.as_tensor(scheduler.timesteps).device)


# ============================================================================================
# scratch_diffusion.pipelines.latent_pipeline_support
# ============================================================================================

"""What a pipeline with an optional ``vae`` exposes about its two spaces: the UNet's samples and the images.

Without a VAE they are one space (``vae_scale_factor == 1``); with one, the UNet's samples are the VAE's
scaled latents and images are ``vae_scale_factor`` times larger along each side (``latents.py``).
"""




class LatentSpaceMixin:
    """``vae_scale_factor``, ``latent_shape`` and ``image_shape`` of a pipeline with ``unet`` and ``vae`` (or None)."""

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent along a side (diffusers' name): 2^(VAE blocks − 1); 1 without a VAE."""
        return 1 if self.vae is None else vae_downsampling_factor(self.vae)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the samples the UNet denoises: ``unet.config`` in_channels and sample_size."""
        return sample_shape(self.unet, 1)[1:]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the pipeline outputs: the latent shape, decoded by the VAE if there is one."""
        return self.latent_shape if self.vae is None else decoded_shape(self.vae, self.latent_shape)


# ============================================================================================
# scratch_diffusion.pipelines.parametrization
# ============================================================================================

"""What a pipeline's UNet was trained to predict, and whether its scheduler can sample it.

A parametrisation is a (noise path, prediction type) pair: ``vp`` with ``epsilon``, ``sample``
or ``v_prediction`` (Ho et al., 2020; Salimans & Ho, 2022), or ``flow`` with ``flow_velocity``
(Lipman et al., 2023). The pipeline records its UNet's, with the training ``noise_schedule``; a
scheduler of another parametrisation samples it through the exact change of variables
(``cross_path.py``), which needs that schedule.
"""


from collections.abc import Mapping



def resolve_parametrization(scheduler: object, prediction_type: str | None, noise_path: str | None) -> Parametrization:
    """The parametrisation a UNet was trained with: given explicitly, or that of its scheduler.

    ``prediction_type`` alone fixes the path (``flow_velocity`` ⇒ ``flow``, otherwise ``vp``);
    ``noise_path="flow"`` alone fixes ``flow_velocity``; ``noise_path="vp"`` alone takes the
    scheduler's prediction type, which must then be a VP one.
    """
    if noise_path is not None and noise_path not in PREDICTION_TYPES_BY_PATH:
        raise ValueError(f"noise_path={noise_path!r} is not supported; choose one of {list(PREDICTION_TYPES_BY_PATH)}.")
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type={prediction_type!r} is not supported; choose one of {list(PREDICTION_TYPES)}."
        )
    if prediction_type is None:
        if noise_path == "flow":
            prediction_type = "flow_velocity"
        else:
            of_scheduler = parametrization_of(scheduler)
            if noise_path is not None and of_scheduler.path != noise_path:
                raise ValueError(
                    f"noise_path={noise_path!r} but the scheduler samples the {of_scheduler.path!r} path; "
                    f"pass prediction_type too (one of {list(PREDICTION_TYPES_BY_PATH[noise_path])})."
                )
            prediction_type = of_scheduler.prediction_type
    if noise_path is None:
        noise_path = "flow" if prediction_type == "flow_velocity" else "vp"
    if prediction_type not in PREDICTION_TYPES_BY_PATH[noise_path]:
        raise ValueError(
            f"prediction_type={prediction_type!r} does not exist on the {noise_path!r} noise path; "
            f"choose one of {list(PREDICTION_TYPES_BY_PATH[noise_path])}."
        )
    return Parametrization(noise_path, prediction_type)


def check_scheduler_parametrization(
    scheduler: object, trained: Parametrization, noise_schedule: Mapping | None
) -> Parametrization:
    """The parametrisation ``scheduler`` samples with; ``ValueError`` if it cannot sample the ``trained`` model.

    The same parametrisation samples natively; any other one that ``noise_path.parametrization_of`` can
    describe goes through the change of variables, which needs the model's ``noise_schedule``.
    """
    sampled = parametrization_of(scheduler)
    if sampled != trained and noise_schedule is None:
        raise ValueError(
            f"{type(scheduler).__name__} samples the {sampled.path!r} path with "
            f"prediction_type={sampled.prediction_type!r}, but the UNet was trained on the {trained.path!r} "
            f"path to predict {trained.prediction_type!r}, and this pipeline does not record the training "
            "noise_schedule the conversion needs. Pass noise_schedule=... (the training scheduler's "
            "num_train_timesteps and β keys) or use a scheduler configured for "
            f"(noise_path={trained.path!r}, prediction_type={trained.prediction_type!r})."
        )
    return sampled


# ============================================================================================
# scratch_diffusion.pipelines.remote_code
# ============================================================================================

"""The saved format of :class:`ScratchDiffusionPipeline`: one folder that every diffusers loading path accepts.

diffusers 0.42 loads a pipeline class that is not part of diffusers only as remote code: a
``.py`` file shipped inside the saved folder, named by a list-valued ``_class_name`` in
``model_index.json``, and loaded with ``trust_remote_code=True``. A scheduler that is not part of
diffusers is likewise loadable from a Hub repo id only as a "custom component",
``<component>/<module>.py`` named by the component's entry (contract notes §3.4–3.5). So
:meth:`ScratchDiffusionPipeline.save_pretrained` writes::

    model_index.json          {"_class_name": ["scratch_diffusion", "ScratchDiffusionPipeline"],
                               "scheduler": ["scratch_diffusion", "ScratchDDIMScheduler"],
                               "unet": ["diffusers", "UNet2DModel"],
                               "prediction_type": "epsilon", "noise_path": "vp", ...}
    scratch_diffusion.py      this package's pipeline and scheduler code as one self-contained file
    scheduler/scratch_diffusion.py   the same file (only when the scheduler is one of ours)
    scheduler/scheduler_config.json, unet/...   as diffusers writes them
    vae/config.json, vae/diffusion_pytorch_model.safetensors   only a latent pipeline's, with an index entry
                                                               "vae": ["diffusers", "AutoencoderKL"]

The VAE is a diffusers class, so every loading story loads it with diffusers' own code (no custom
component); the shipped file carries the latent code (``latents.py``) with the pipeline. A pipeline
without a VAE writes no ``vae`` entry at all (not diffusers' ``[null, null]``), so its folder is the
same as before latent pipelines existed, and such older folders load with ``vae=None``.

The file is named after the package on purpose: with scratch-diffusion installed and imported,
the entry ``["scratch_diffusion", "ScratchDDIMScheduler"]`` also names the installed class, so
``ScratchDiffusionPipeline.from_pretrained`` loads the folder with the installed classes and never
runs the shipped file.

**Why one generated file rather than copies of the package's modules.** diffusers copies remote
code into a single flat namespace (``diffusers_modules.local``) shared by every local folder it
loads, and from a local folder it copies only the modules the loaded file imports *directly*
(``get_relative_imports``, not recursively), while ``dpm_stepping.py`` → ``samplers/dpm.py`` chains are
the norm in ``scratch_schedulers``. A Hub download of the pipeline likewise fetches only the
root ``<module>.py``. A single file with no relative imports sidesteps all three.

The file is generated by a build step, ``python -m scratch_diffusion.pipelines.build_shipped``
(``build_shipped.py``: the modules the pipeline imports, concatenated in dependency order with the
imports between them removed), and committed as ``pipelines/shipped-code/scratch_diffusion.py``; a test
fails while it differs from a fresh build. Saving only copies it, to the root and to ``scheduler/``:
diffusers loads a custom scheduler from ``scheduler/<library>.py`` and, for a Hub repo id, refuses
the repo without that file (contract notes §3.4), and both copies must be the same file because
both are loaded as the one module ``diffusers_modules.local.scratch_diffusion``.

A pipeline loaded *from* that file (stories B/C) re-saves by copying the file it runs from, so
save → load → save → load works with or without the package installed.
"""


import os
import re
from pathlib import Path

# Stem of the shipped file, and the library name written into model_index.json for our classes.
BUNDLE_MODULE = "scratch_diffusion"
BUNDLE_FILE = BUNDLE_MODULE + ".py"
# The installed packages whose code the shipped file contains.
BUNDLED_PACKAGES = ("scratch_schedulers", "scratch_diffusion")
# The folder of the generated file, next to this module in the installed package (package data).
SHIPPED_DIR = "shipped-code"  # not an identifier: package data, never an importable package


def running_from_bundle() -> bool:
    """True when this code runs from a shipped ``scratch_diffusion.py`` (diffusers remote code)."""
    return not __name__.startswith("scratch_diffusion.")


def is_shipped_class(cls: type) -> bool:
    """Whether ``cls`` is a scratch-diffusion class: installed, or loaded from a shipped file."""
    module = cls.__module__
    if module.split(".")[0] in BUNDLED_PACKAGES:
        return True
    return module.startswith("diffusers_modules.") and module.split(".")[-1] == BUNDLE_MODULE


# --------------------------------------------------------------------------------------------
# model_index.json, written and read
# --------------------------------------------------------------------------------------------


def shipped_model_index(index: dict, pipeline_cls: type, components: dict[str, object]) -> dict:
    """The model_index.json to write: our classes point at the shipped file.

    Args:
        index: the dict diffusers would write (``_class_name`` is the bare class name and each
            component is ``[library, class]``, where a class of ours has a module path as library).
        pipeline_cls: the pipeline's class.
        components: the pipeline's components by name (``unet``, ``scheduler``).

    Returns:
        A new dict with ``_class_name = ["scratch_diffusion", <class>]`` when the pipeline class is
        ours, ``["scratch_diffusion", <class>]`` for every component of ours, and without
        ``_name_or_path`` (a local path that means nothing to whoever loads the folder) or the
        entries of absent optional components (``"vae": [null, null]``).
    """
    index = dict(index)
    index.pop("_name_or_path", None)
    for name in getattr(pipeline_cls, "_optional_components", []):
        if components.get(name) is None:
            index.pop(name, None)
    if is_shipped_class(pipeline_cls):
        index["_class_name"] = [BUNDLE_MODULE, pipeline_cls.__name__]
    for name, component in components.items():
        if component is not None and is_shipped_class(type(component)):
            index[name] = [BUNDLE_MODULE, type(component).__name__]
    return index


def installed_model_index(index: dict) -> dict:
    """model_index.json as the installed package reads it: ``_class_name`` as a plain class name.

    The list form only tells ``DiffusionPipeline.from_pretrained`` which shipped file holds the
    pipeline class; ``ScratchDiffusionPipeline.from_pretrained`` *is* that class, and reading the
    list would make diffusers load the shipped copy instead (and demand ``trust_remote_code``).
    """
    class_name = index.get("_class_name")
    if isinstance(class_name, (list, tuple)) and len(class_name) == 2 and class_name[0] == BUNDLE_MODULE:
        index = {**index, "_class_name": class_name[1]}
    return index


def shipped_file() -> Path:
    """The ``scratch_diffusion.py`` that saving ships: the package's generated file, or this very file.

    Inside the shipped file (diffusers remote code) that is the file itself, so a pipeline loaded
    from it re-saves the code it runs.
    """
    here = Path(__file__)
    return here if running_from_bundle() else here.parent / SHIPPED_DIR / BUNDLE_FILE


def write_shipped_code(save_directory: str | os.PathLike, pipeline_cls: type, components: dict) -> None:
    """Copy ``scratch_diffusion.py`` to the root and into the folder of every component of ours.

    A ``scratch_diffusion.py`` left in a component folder by an earlier save is removed when that
    component is no longer ours (e.g. after swapping in a diffusers scheduler).

    Raises:
        FileNotFoundError: if the generated file is missing (run the build step).
        ValueError: if a component of ours is a class the file does not define.
    """
    root = Path(save_directory)
    root.mkdir(parents=True, exist_ok=True)
    ours = [type(c) for c in components.values() if c is not None and is_shipped_class(type(c))]
    if not ours and not is_shipped_class(pipeline_cls):
        source = None
    else:
        path = shipped_file()
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; generate it with `python -m scratch_diffusion.pipelines.build_shipped`."
            )
        source = path.read_bytes()
        defined = set(re.findall(rb"^class (\w+)", source, flags=re.MULTILINE))
        missing = sorted({cls.__name__ for cls in ours} - {name.decode() for name in defined})
        if missing:  # the folder would name classes that neither story A nor B could load
            raise ValueError(
                f"{missing} are scratch-diffusion classes the shipped {BUNDLE_FILE} does not contain; import "
                "them in a module the pipeline imports (saved_format.py) and rerun "
                "`python -m scratch_diffusion.pipelines.build_shipped`."
            )
    if is_shipped_class(pipeline_cls):
        (root / BUNDLE_FILE).write_bytes(source)
    for name, component in components.items():
        target = root / name / BUNDLE_FILE
        if component is not None and is_shipped_class(type(component)):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source)
        elif target.is_file():
            target.unlink()


# ============================================================================================
# scratch_diffusion.pipelines.saved_format
# ============================================================================================

"""Checks of a saved pipeline folder before diffusers reads it: every corrupt file is named.

diffusers' own errors for a truncated ``.safetensors`` file or a half-written JSON config point
into its internals; :func:`check_saved_folder` raises :class:`SavedPipelineError` naming the file
instead, refuses pickle-only model weights, and warns about config keys this version does not know.
The model folders checked are those of the component table (``components.py``) that the index lists:
``unet/`` and, for a latent pipeline, ``vae/``.
"""


import inspect
import json
import os
import warnings


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class SavedPipelineError(OSError):
    """A file of a saved pipeline folder is corrupt, truncated or of a refused kind; the message names it."""


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON object from ``path``, or a :class:`SavedPipelineError` naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SavedPipelineError(
            f"{path} is not valid JSON ({err}); the file is corrupt or truncated. Re-save or re-download the pipeline."
        ) from None
    if not isinstance(data, dict):
        raise SavedPipelineError(f"{path} holds a JSON {type(data).__name__}, not an object; it is not a config file.")
    return data


def _check_safetensors(path: str | os.PathLike) -> None:
    """The header of a safetensors file parses and the file is exactly as long as the header says."""
    size = os.path.getsize(path)
    problem = None
    with open(path, "rb") as f:
        head = f.read(8)
        header_length = int.from_bytes(head, "little") if len(head) == 8 else None
        if header_length is None or header_length > size - 8:
            problem = f"{size} bytes, shorter than its header"
        else:
            try:
                header = json.loads(f.read(header_length))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
                problem = f"unreadable header ({type(err).__name__})"
            else:
                if size != 8 + header_length + end:
                    problem = f"{size} bytes where its header says {8 + header_length + end}"
    if problem is not None:
        raise SavedPipelineError(
            f"{path} is truncated or not a safetensors file ({problem}); re-save or re-download the pipeline."
        )


def _warn_unknown_keys(path: str | os.PathLike, config: dict, known: set[str]) -> None:
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        import diffusers

        warnings.warn(
            f"{path}: keys {unknown} are not known to this version and are ignored; the file was probably written by "
            f"a newer version (its _diffusers_version is {config.get('_diffusers_version')!r}, installed "
            f"{diffusers.__version__}). Upgrade scratch-diffusion/diffusers if the pipeline misbehaves.",
            UserWarning,
            stacklevel=4,
        )


def _init_keys(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}


def check_saved_folder(folder: str | os.PathLike, pipeline_cls: type | None = None) -> None:
    """Check a saved pipeline folder before diffusers reads it; raise :class:`SavedPipelineError` naming the file.

    ``model_index.json``, ``scheduler/scheduler_config.json`` and the ``config.json`` of every model
    component of the table that the index lists (``unet/``; a latent pipeline's ``vae/``) must be JSON
    objects; each such folder must exist, and every ``*.safetensors`` file in it must be complete (header and
    length); a model with only pickle-based weights (``.bin``, ``.pt``, ``.ckpt``) is refused. Keys
    unknown to the installed classes (a folder from a newer version) are reported with a
    ``UserWarning``. Any other missing file is left to diffusers' own error.
    """
    root = os.fspath(folder)
    index_path = os.path.join(root, "model_index.json")
    if not os.path.isfile(index_path):
        return
    index = read_json_object(index_path)
    if pipeline_cls is not None:
        _warn_unknown_keys(index_path, index, _init_keys(pipeline_cls))
    scheduler_entry = index.get("scheduler")
    scheduler_config = os.path.join(root, "scheduler", "scheduler_config.json")
    if scheduler_entry is not None and os.path.isfile(scheduler_config):
        config = read_json_object(scheduler_config)
        scheduler_cls = SHIPPED_SCHEDULERS.get(scheduler_entry[1]) if isinstance(scheduler_entry, list) else None
        if scheduler_cls is not None and scheduler_entry[0] == BUNDLE_MODULE:
            _warn_unknown_keys(scheduler_config, config, _init_keys(scheduler_cls))
    for name, model_cls in model_components().items():
        entry = index.get(name)
        if isinstance(entry, list) and entry and entry[0] is not None:  # absent, or diffusers' [null, null]
            _check_model_folder(root, name, entry, model_cls)


def _check_model_folder(root: str, name: str, entry: object, model_cls: type) -> None:
    """``<root>/<name>/``: present with a JSON ``config.json``, complete safetensors weights, not pickle-only."""
    model_dir = os.path.join(root, name)
    if not os.path.isdir(model_dir):
        raise SavedPipelineError(
            f"model_index.json in {root} lists {name} {entry} but the folder {model_dir} is missing; "
            "the pipeline was saved or downloaded incompletely. Re-save or re-download it."
        )
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise SavedPipelineError(
            f"{model_dir} has no config.json, so {name} {entry} cannot be built; re-save or re-download the pipeline."
        )
    config = read_json_object(config_path)
    if entry == ["diffusers", model_cls.__name__]:
        _warn_unknown_keys(config_path, config, _init_keys(model_cls))
    names = sorted(os.listdir(model_dir))
    weights = [n for n in names if n.endswith(".safetensors")]
    for weight in weights:
        _check_safetensors(os.path.join(model_dir, weight))
    pickled = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if not weights and pickled:
        raise SavedPipelineError(
            f"{model_dir} holds only pickle-based weights {pickled}; scratch-diffusion loads weights only from "
            "safetensors files, because unpickling can run code. Convert them with a trusted tool and save "
            "with safe_serialization=True."
        )


# ============================================================================================
# scratch_diffusion.pipelines.loading
# ============================================================================================

"""Loading a saved pipeline: a local folder or a Hub repo id, with installed code wherever possible."""


import importlib
import os
from pathlib import Path

from diffusers import DiffusionPipeline



def looks_like_local_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a Hub repo id.

    Hub ids are ``'name'`` or ``'owner/name'``; anything absolute, starting with ``'.'`` or
    ``'~'``, or with more than one ``'/'`` is meant as a local path.
    """
    return os.path.isabs(name) or name.startswith((".", "/", "~")) or name.count("/") > 1


def installed_folder(pipeline_cls: type, name: str, kwargs: dict) -> str:
    """The local folder ``pipeline_cls.from_pretrained(name, **kwargs)`` loads with installed classes.

    Downloads a Hub repo id (diffusers' ``download``, which validates the repo and fetches every
    component folder, a ``vae/`` included), checks the folder (:func:`check_saved_folder`), and puts
    the installed class of ours into ``kwargs[<component>]`` for every component the folder names as one
    (``components.py``: today the scheduler's).
    """
    if not os.path.isdir(name) and looks_like_local_path(name):
        raise FileNotFoundError(
            f"{name!r}: no such folder; pass a saved pipeline folder or a Hub repo id ('name' or 'owner/name')."
        )
    folder = name if os.path.isdir(name) else pipeline_cls.download(name, **kwargs)
    check_saved_folder(folder, pipeline_cls)
    index = pipeline_cls.load_config(folder)
    for component in COMPONENTS.values():
        entry = index.get(component.name)
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[0] != BUNDLE_MODULE:
            continue
        class_name = entry[1]
        if class_name not in component.ours:
            raise ValueError(
                f"{name}: {component.name} class {class_name!r} is not part of this scratch-diffusion version; "
                f"known: {sorted(component.ours)}. Upgrade the package or load with "
                "DiffusionPipeline.from_pretrained(..., trust_remote_code=True)."
            )
        kwargs[component.name] = component.ours[class_name].from_pretrained(folder, subfolder=component.name)
    return folder


def load_pipeline(path: str | os.PathLike, trust_remote_code: bool = False) -> DiffusionPipeline:
    """A saved pipeline folder, loaded with installed code where its ``model_index.json`` allows.

    A custom pipeline names its class as ``[module, class]`` (ours: ``["scratch_diffusion",
    "ScratchDiffusionPipeline"]``); if that module is installed, its class loads the folder and no
    shipped code runs. Otherwise ``DiffusionPipeline.from_pretrained`` loads it (stock diffusers
    pipelines; shipped custom code only with ``trust_remote_code=True``). Weights load only from
    safetensors files; the folder is checked first (:func:`check_saved_folder`), so a corrupt or
    truncated file is named whichever class loads it. A ``vae/`` (latent pipelines) loads with the rest.
    """
    # Importing this module imported its parent package scratch_diffusion, the module diffusers
    # resolves our plugin components from (it looks only in imported modules).
    check_saved_folder(path)
    class_name = read_json_object(Path(path) / "model_index.json").get("_class_name")
    if isinstance(class_name, list) and len(class_name) == 2:
        try:
            pipeline_class = getattr(importlib.import_module(class_name[0]), class_name[1])
        except (ImportError, AttributeError):
            pipeline_class = None
        if isinstance(pipeline_class, type) and issubclass(pipeline_class, DiffusionPipeline):
            return pipeline_class.from_pretrained(str(path))
        return DiffusionPipeline.from_pretrained(str(path), trust_remote_code=trust_remote_code, use_safetensors=True)
    return DiffusionPipeline.from_pretrained(str(path), use_safetensors=True)


# ============================================================================================
# scratch_diffusion.pipelines.saved_pipeline
# ============================================================================================

"""Saving and loading of ``ScratchDiffusionPipeline``: the shipped code it writes, the installed classes it loads."""


import json
import os

from diffusers import DiffusionPipeline



class SavedPipelineMixin:
    """``save_pretrained`` writes ``model_index.json`` naming the shipped file; ``from_pretrained`` loads ours.

    Mixed into a ``DiffusionPipeline`` subclass (before it in the bases), whose methods ``super()`` reaches.
    """

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """Write ``model_index.json`` and the shipped code it names (see ``remote_code.py``).

        ``save_pretrained`` calls this after saving the components and before any upload.
        """
        write_shipped_code(save_directory, type(self), self.components)
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)

    def to_json_string(self) -> str:
        """``model_index.json`` as saved: ``_class_name`` and our components point at the shipped file."""
        index = shipped_model_index(json.loads(super().to_json_string()), type(self), self.components)
        return json.dumps(index, indent=2, sort_keys=True) + "\n"

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict:
        # diffusers reads model_index.json through this hook both in `download` and in `load_config`.
        return installed_model_index(super()._dict_from_json_file(json_file))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> DiffusionPipeline:
        """Load a saved pipeline from a folder or Hub repo id with the installed classes.

        No remote code is loaded or run: a scheduler saved as ``["scratch_diffusion", <class>]`` is
        built from the installed class of that name; everything else (download and its validation,
        the UNet and the optional VAE, dtype and device options) is diffusers' ``DiffusionPipeline.from_pretrained``.
        Weights load only from safetensors files (``use_safetensors=True`` unless given), and the
        folder is checked first (:func:`check_saved_folder`): a corrupt or truncated file raises
        :class:`SavedPipelineError` naming it; keys this version does not know are warned about.
        """
        if running_from_bundle() or "scheduler" in kwargs:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        kwargs.setdefault("use_safetensors", True)  # weights are never unpickled (.bin files are refused)
        name = str(pretrained_model_name_or_path)
        folder = installed_folder(cls, name, kwargs)  # also sets kwargs["scheduler"] to an installed class of ours
        pipeline = super().from_pretrained(folder, **kwargs)
        pipeline.register_to_config(_name_or_path=name)
        return pipeline


# ============================================================================================
# scratch_diffusion.pipelines.pipeline_scratch_diffusion
# ============================================================================================

"""ScratchDiffusionPipeline: unconditional or class-conditional sampling from a ``UNet2DModel``.

With an optional ``vae`` (a diffusers ``AutoencoderKL``) it is a latent diffusion pipeline (Rombach et
al., 2022): the loop runs on the VAE's scaled latents and the last sample is decoded (``latents.py``).

As thin as diffusers' ``DDPMPipeline`` — set up the noise, loop, postprocess — but it works with
any scheduler that speaks diffusers' API: it scales the initial noise by ``init_noise_sigma``,
calls ``scale_model_input`` every step, passes ``eta``/``generator`` only where ``step`` accepts
them, and iterates ``scheduler.timesteps`` as given (second-order schedulers such as Heun repeat
timesteps, one model evaluation per entry). The UNet is called through one denoiser
(``denoiser.py``) that every use shares — sampling, inversion, the likelihood code — with the call's
guidance rules bound around it (``guidance.py``; the rules are ``scratch_diffusion.guidance``):
``guidance_scale`` is classifier-free guidance (Ho & Salimans, 2022), ŷ = ŷ_∅ + w·(ŷ_c − ŷ_∅) with the
null class ∅ = ``num_class_embeds − 1``; ``guidance=`` adds a guidance interval, autoguidance,
classifier guidance (which steers an unconditional UNet) or loss guidance.

The pipeline records what its UNet was trained to predict (``prediction_type``) on which noise
path (``noise_path``) with which training schedule (``noise_schedule``) in ``model_index.json``.
A scheduler of another path or parametrisation samples it through the exact change of variables
(``cross_path.py``); :meth:`ScratchDiffusionPipeline.invert` runs the deterministic sampler
backwards (``inversion.py``); ``img2img`` (SDEdit) and ``inpaint`` (replacement + RePaint) edit images
(``editing.py``). Every sampling method runs one loop (``sampling_loop.py``). Arguments are checked in
``inputs.py``, saved folders in ``saved_format.py``, outputs made in ``postprocess.py``; the saved format is
described in ``remote_code.py``.
"""


import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor





@declares_components
class ScratchDiffusionPipeline(SavedPipelineMixin, LatentSpaceMixin, EditingMixin, DiffusionPipeline):
    r"""Sample images from a ``UNet2DModel`` with any diffusers-style scheduler.

    Args:
        unet: the denoiser; class-conditional if ``unet.config.num_class_embeds`` is set, in which
            case the last class index is the null class used for classifier-free guidance.
        scheduler: ours (``ScratchDDPMScheduler``, ``ScratchDDIMScheduler``,
            ``ScratchFlowMatchScheduler``) or a diffusers scheduler.
        vae: optional ``AutoencoderKL``; with it the UNet denoises its scaled latents
            z = (E(x) − shift_factor)·scaling_factor (its ``in_channels`` must be ``latent_channels``) and
            samples are decoded to images ``vae_scale_factor`` times larger (``latent_shape`` →
            ``image_shape``). Saved as ``vae/``.
        prediction_type: what the UNet was trained to predict: ``epsilon``, ``sample``,
            ``v_prediction`` or ``flow_velocity``. Defaults to the scheduler's.
        noise_path: the path it was trained on: ``vp`` or ``flow``. Defaults to the scheduler's.
        noise_schedule: the training path's config keys (``num_train_timesteps``; on the VP path also
            the β keys). Defaults to the scheduler's when it samples the trained path.

    The last three are saved in ``model_index.json``. A scheduler of another path or parametrisation
    samples the UNet through the exact change of variables (``cross_path.py``). Further optional
    components are the rows of the component table (``components.py``), passed by keyword.
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components: ClassVar[list[str]] = optional_components()  # kept current by @declares_components
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents", "model_output"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        vae: AutoencoderKL | None = None,
        prediction_type: str | None = None,
        noise_path: str | None = None,
        noise_schedule: Mapping | None = None,
        **components,
    ):
        super().__init__()
        components = {"unet": unet, "scheduler": scheduler, "vae": vae, **components}
        unknown = sorted(set(components) - set(COMPONENTS))
        if unknown:
            raise TypeError(f"unknown pipeline components {unknown}; the components are {list(COMPONENTS)}.")
        for name, component in components.items():
            fits = COMPONENTS[name].fits
            if component is not None and fits is not None:
                fits(component, unet.config)
        trained = resolve_parametrization(scheduler, prediction_type, noise_path)
        if noise_schedule is None:
            noise_schedule = noise_schedule_of(scheduler, trained.path)
        else:
            noise_schedule = dict(noise_schedule)
            ModelPath.from_schedule(trained, noise_schedule)  # a bad schedule fails here, naming the key
        self.register_modules(**{name: components.get(name) for name in COMPONENTS})
        self.register_to_config(
            prediction_type=trained.prediction_type, noise_path=trained.path, noise_schedule=noise_schedule
        )

    @property
    def trained_parametrization(self) -> Parametrization:
        """The (path, prediction type) the UNet was trained with, as recorded in the config."""
        return Parametrization(self.config.noise_path, self.config.prediction_type)

    # ---- input checks -----------------------------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        """Number of model evaluations of the last call (read by diffusers' ``PipelineCallback``)."""
        return getattr(self, "_num_timesteps", 0)

    @property
    def num_classes(self) -> int | None:
        """Number of real classes of a class-conditional UNet (the null class excluded), else None."""
        num_class_embeds = self.unet.config.num_class_embeds
        return None if num_class_embeds is None else num_class_embeds - 1

    def check_parametrization(self) -> Parametrization:
        """The scheduler's parametrisation; ``ValueError`` if it cannot sample the UNet (``parametrization.py``)."""
        return check_scheduler_parametrization(self.scheduler, self.trained_parametrization, self.config.noise_schedule)

    @property
    def evaluations(self) -> dict[str, float]:
        """Model evaluations per image of the last call, by model: ``unet`` (a classifier-free guidance step
        counts its two halves), ``guide_unet``, ``classifier`` (forward and backward), ``unet_backward``,
        ``controlnet`` (with a control image)."""
        return dict(getattr(self, "_evaluations", {}))

    def prepare_guidance(
        self,
        rules: Sequence[GuidanceRule],
        class_labels,
        batch_size: int,
        device: torch.device,
        control: Control | None = None,
    ) -> tuple[dict[str, torch.Tensor], GuidedEvaluation | None, EvaluationCounter]:
        """The UNet's per-sample inputs, the call's rules bound to the pipeline (``guidance.py``) and the run's counter.

        The inputs are the class labels of a class-conditional UNet and a ``control`` (``control.py``): its image
        and scale. Labels are checked against the classes they name — the UNet's, or a guiding classifier's.
        """
        components = {name: getattr(self, name, None) for name in ("classifier",)}
        classes = label_classes(rules, self.num_classes, components)
        labels = None if class_labels is None else class_label_tensor(class_labels, batch_size, classes, device)
        conditions = model_conditions(self.prepare_class_labels(class_labels, batch_size, device), control)
        guided, counter = bind_call_guidance(self, rules, labels, conditions, batch_size)
        return conditions, guided, counter

    def set_timesteps(self, num_inference_steps: int, device: torch.device, sampled: Parametrization) -> list:
        """Set the scheduler's timesteps for a run on ``device``; return their sampler points (a, b).

        The points are read on a host grid, so nothing is ever read back from the device; on an accelerator
        the grid is then set again there, for the loop (on the CPU the host grid is the loop's).
        """
        self.scheduler.set_timesteps(num_inference_steps)
        levels = sampler_levels(self.scheduler, sampled.path)
        if device.type != "cpu":
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        return levels

    def denoiser(
        self,
        sampled: Parametrization,
        targets: Sequence[str] | None,
        conditions: Mapping[str, torch.Tensor],
        guidance: GuidedEvaluation | None,
        device: torch.device,
        levels: Sequence[tuple[float, float]] | None = None,
        counter: EvaluationCounter | None = None,
    ) -> Denoiser:
        """The UNet as D(x, i) at the scheduler's current timesteps (or ``levels``), answering ``targets``.

        ``sampled`` is the scheduler's parametrisation (:meth:`check_parametrization`, resolved once per call);
        ``targets`` None asks for it, natively where it is the UNet's own (``cross_path.scheduler_model_calls``).
        ``conditions``: the UNet's per-sample inputs (:meth:`prepare_guidance`); with a control image the UNet is
        evaluated with the control network's residuals (``control.py``).
        """
        plan = scheduler_model_calls(
            self.scheduler, sampled, self.trained_parametrization, self.config.noise_schedule, targets, device, levels
        )
        counter = counter if counter is not None else EvaluationCounter(1)
        model = UNetModel(self.unet)
        if "control_image" in conditions:
            model = ControlledUNetModel(self.unet, self.controlnet, counter)
        ends = interval_ends(self.scheduler, self.unet, sampled, self.trained_parametrization)
        return Denoiser(model, plan, conditions, guidance, dtype=self.unet.dtype, counter=counter, interval_ends=ends)

    def check_inputs(
        self,
        batch_size: int,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
        class_labels: int | Sequence[int] | torch.Tensor | None,
        guidance_scale: float,
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str],
        eta: float = 0.0,
        guidance: Guidance | None = None,
    ) -> tuple[Parametrization, tuple[GuidanceRule, ...]]:
        """Validate the arguments of ``__call__`` (``inputs.py``); every error names the value and what is allowed.

        Returns the scheduler's parametrisation and the call's guidance rules, each resolved once here.
        """
        check_call_arguments(batch_size, num_inference_steps, generator, eta, guidance_scale, output_type)
        rules = call_rules(guidance_scale, guidance)
        components = {"classifier": getattr(self, "classifier", None)}
        check_conditioning(class_labels, rules, self.num_classes, label_classes(rules, self.num_classes, components))
        check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        sampled = self.check_parametrization()
        if self.vae is not None:
            warn_if_scheduler_clips(self.scheduler)
        self.check_memory(batch_size * max((rule.memory_factor for rule in rules), default=1))
        return sampled, rules

    def check_memory(self, batch_size: int) -> None:
        """Refuse a batch whose sampling buffers alone exceed the free memory (``inputs.check_sampling_memory``)."""
        check_sampling_memory(self.unet, batch_size, self._execution_device)

    def prepare_class_labels(
        self, class_labels: int | Sequence[int] | torch.Tensor | None, batch_size: int, device: torch.device
    ) -> torch.Tensor | None:
        """Class labels as a LongTensor of shape (batch_size,) on ``device``; None for an unconditional UNet.

        ``None`` on a class-conditional UNet samples every image with the null class.
        """
        if self.num_classes is None:
            return None
        return class_label_tensor(class_labels, batch_size, self.num_classes, device)

    def step_kwargs(self, generator: torch.Generator | list[torch.Generator] | None, eta: float) -> dict:
        """``eta`` and ``generator`` for ``scheduler.step``, each only if ``step`` accepts it."""
        accepted = inspect.signature(self.scheduler.step).parameters
        kwargs = {"eta": eta, "generator": generator}
        return {name: value for name, value in kwargs.items() if name in accepted}

    # ---- sampling ---------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        guidance: Guidance | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        latents: torch.Tensor | None = None,
        control_image: ImageInput | None = None,
        controlnet_conditioning_scale: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images.

        Args:
            batch_size: number of images.
            num_inference_steps: number of sampling steps n; a second-order scheduler (Heun)
                evaluates the UNet 2n − 1 times, and the progress bar counts evaluations.
            generator: a ``torch.Generator``, or a list with one per image, for reproducible noise.
            eta: DDIM's η (0 = deterministic); passed only to schedulers whose ``step`` takes it.
            class_labels: for a class-conditional UNet, one class index for all images or one per
                image, in [0, num_classes − 1]. ``None`` samples with the null class.
            guidance_scale: classifier-free guidance weight w; 1 disables guidance and skips the
                unconditional half of the batch.
            guidance: further guidance (``scratch_diffusion.guidance``): one rule or a list — at most one
                combining rule (``ClassifierFreeGuidance`` with an interval, ``AutoGuidance``), first, then
                ``ClassifierGuidance`` / ``LossGuidance``. With ``guidance_scale`` ≠ 1 no combining rule.
                Classifier guidance lets ``class_labels`` steer an unconditional UNet. ``pipe.evaluations``
                then reports what the call evaluated, per image.
            output_type: ``"pil"`` (list of PIL images), ``"np"`` (float array, shape
                (batch_size, H, W, C), values in [0, 1]), ``"pt"`` (tensor, shape
                (batch_size, C, H, W), values in [0, 1]) or ``"latent"``: the last sample as it
                leaves the loop, not decoded nor clamped — with a VAE its scaled latents
                (``decode_latents(pipe.vae, z)`` decodes them), without one the image in [−1, 1].
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
            callback_on_step_end: called as ``fn(pipeline, i, t, tensors)`` after each step, with
                ``tensors`` holding the names in ``callback_on_step_end_tensor_inputs``; a
                ``latents`` entry in its returned dict replaces the current sample.
            callback_on_step_end_tensor_inputs: names passed to the callback, from
                ``["latents", "model_output"]``.
            latents: the initial noise instead of drawing it, a float tensor of shape
                (batch_size, *latent_shape) (e.g. from :meth:`invert`); scaled by ``init_noise_sigma``
                as drawn noise is, and cast to the UNet's device and dtype.
            control_image: with a ``controlnet`` component, the control (Zhang et al., 2023) in [0, 1] at the images'
                size (the network's ``conditioning_channels``; ``control.py``), as ``invert`` takes images: one for
                all images or one per image. Classifier-free guidance evaluates both halves with it.
            controlnet_conditioning_scale: the factor of the control network's residuals (0 = the UNet alone).

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` if ``return_dict`` is False.

        Raises:
            ValueError: for an argument out of its allowed set, or a scheduler that cannot sample the
                UNet (``cross_path.py``) — always before any model evaluation.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        sampled, rules = self.check_inputs(
            batch_size,
            num_inference_steps,
            generator,
            class_labels,
            guidance_scale,
            output_type,
            callback_on_step_end_tensor_inputs,
            eta,
            guidance,
        )
        device = self._execution_device
        control = prepare_control(self, control_image, controlnet_conditioning_scale, batch_size, device)
        conditions, guided, counter = self.prepare_guidance(rules, class_labels, batch_size, device, control)

        shape = sample_shape(self.unet, batch_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        else:
            check_latents(latents, shape)
            latents = latents.to(device=device, dtype=self.unet.dtype)
        levels = self.set_timesteps(num_inference_steps, device, sampled)
        denoiser = self.denoiser(sampled, None, conditions, guided, device, levels, counter)
        latents = latents * getattr(self.scheduler, "init_noise_sigma", 1.0)
        self._num_timesteps = len(self.scheduler.timesteps)
        step_kwargs = self.step_kwargs(generator, eta)
        loop = SamplingLoop(self, denoiser, step_kwargs, callback_on_step_end, callback_on_step_end_tensor_inputs)
        latents = loop.sample(latents, range(self._num_timesteps))
        self._evaluations = counter.per_image()
        images = samples_to_images(latents, output_type, self.vae)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # ---- inversion ----------------------------------------------------------------------------

    @torch.no_grad()
    def invert(
        self,
        images: ImageInput,
        num_inference_steps: int = 50,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        r"""The noise that the deterministic sampler maps back to ``images`` (DDIM inversion; ``inversion.py``).

        ``pipe(latents=pipe.invert(x, num_inference_steps=n), num_inference_steps=n)`` reconstructs ``x``
        with the pipeline's (deterministic) scheduler and the same labels and guidance, up to an error
        that falls as n grows.

        Args:
            images: as the pipeline outputs them: a (B, C, H, W) tensor in [0, 1] (``"pt"``), a
                (B, H, W, C) array in [0, 1] (``"np"``), or PIL images (``"pil"``). With a VAE they
                are encoded first (the posterior mean, ``latents.encode_to_latents``).
            num_inference_steps: the sampler's steps n; n model evaluations (one per grid interval).
            class_labels, guidance_scale: as in ``__call__``.

        Returns:
            float32 latents of shape (B, *latent_shape) on the execution device.

        Raises:
            ValueError: for bad images or arguments, or a scheduler with ``init_noise_sigma`` ≠ 1 — before
                any model evaluation.
        """
        return invert_images(self, images, num_inference_steps, class_labels, guidance_scale)
