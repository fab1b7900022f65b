"""The Gaussian noise path shared by every scheduler: x_t = a_t·x0 + b_t·ε.

Following "Step-by-Step Diffusion" (Nakkiran et al., 2024), DDPM, DDIM and flow matching are
one family of reverse samplers over a Gaussian path; they differ only in the path and in how
they step along it. This module holds everything about the *path*; ``samplers.py`` holds the
update rules and the three scheduler classes are thin diffusers-API views over both.

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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]
PredictionType = Literal["epsilon", "sample", "v_prediction", "flow_velocity"]

BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
TIMESTEP_SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")
VP_PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample", "v_prediction")
FLOW_PREDICTION_TYPES: tuple[str, ...] = ("flow_velocity",)
# The one list of parametrisations, by path: every other module (pipeline, trainer, harness) reads it here.
PREDICTION_TYPES_BY_PATH: dict[str, tuple[str, ...]] = {"vp": VP_PREDICTION_TYPES, "flow": FLOW_PREDICTION_TYPES}
PREDICTION_TYPES: tuple[str, ...] = (*VP_PREDICTION_TYPES, *FLOW_PREDICTION_TYPES)
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


# --------------------------------------------------------------------------------------------
# β schedules of the discrete VP chain
# --------------------------------------------------------------------------------------------


def cosine_alpha_bar(t: float) -> float:
    """ᾱ(t) of the cosine schedule, Nichol & Dhariwal (2021) Eq. (17), with s = 0.008."""
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def make_betas(
    beta_schedule: str,
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
        if betas.ndim != 1 or len(betas) != num_train_timesteps:
            raise ValueError(
                f"trained_betas has {tuple(betas.shape)} values but num_train_timesteps={num_train_timesteps}; "
                "pass exactly one beta per training timestep."
            )
        if not bool(((betas > 0) & (betas < 1)).all()):
            bad = betas[~((betas > 0) & (betas < 1))][:3].tolist()
            raise ValueError(f"trained_betas must lie in the open interval (0, 1); got values such as {bad}.")
        return betas
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    if beta_schedule != "squaredcos_cap_v2":  # the others ramp from beta_start to beta_end
        for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value < 1:
                raise ValueError(
                    f"{name}={value!r} is not allowed for beta_schedule={beta_schedule!r}; "
                    "β must lie in [0, 1) (the defaults are beta_start=0.0001, beta_end=0.02)."
                )
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
    spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 0
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


# --------------------------------------------------------------------------------------------
# Flow-matching σ grids (the time-shift family of SD3 / Flux)
# --------------------------------------------------------------------------------------------


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Static resolution shift σ' = s·σ / (1 + (s − 1)·σ) (Esser et al., 2024, Eq. 23)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(sigmas: np.ndarray, mu: float, kind: str = "exponential") -> np.ndarray:
    """Dynamic shift with μ: e^μ/(e^μ + (1/σ − 1)) (``exponential``) or μ/(μ + (1/σ − 1)) (``linear``)."""
    check_choice("time_shift_type", kind, ("exponential", "linear"))
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


def target_for(prediction_type: str, x0: torch.Tensor, eps: torch.Tensor, a=None, b=None) -> torch.Tensor:
    """The regression target of a parametrisation: ε, x0, v = a·ε − b·x0, or u = ε − x0."""
    check_choice("prediction_type", prediction_type, (*VP_PREDICTION_TYPES, "flow_velocity"))
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "flow_velocity":
        return eps - x0
    return a * eps - b * x0


def split_prediction(
    model_output: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor, b: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x̂0, ε̂) from a model output of the given parametrisation at path point (a, b)."""
    if prediction_type == "epsilon":
        return eps_to_x0(model_output, x_t, a, b), model_output
    if prediction_type == "sample":
        return model_output, x0_to_eps(model_output, x_t, a, b)
    if prediction_type == "v_prediction":
        return v_to_x0(model_output, x_t, a, b), v_to_eps(model_output, x_t, a, b)
    if prediction_type == "flow_velocity":
        return velocity_to_x0(model_output, x_t, b), velocity_to_eps(model_output, x_t, b)
    raise ValueError(
        f"prediction_type={prediction_type!r} is not supported; choose one of "
        f"{[*VP_PREDICTION_TYPES, 'flow_velocity']}."
    )


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

    path: Literal["vp", "flow"]
    prediction_type: PredictionType


def parametrization_of(scheduler: object) -> Parametrization:
    """The path and parametrisation a scheduler (ours or any diffusers one) samples with.

    Flow-matching schedulers expose ``sigmas`` but no ``alphas_cumprod``; VP schedulers expose
    ``alphas_cumprod`` and a ``prediction_type`` in their config.
    """
    config = getattr(scheduler, "config", {})
    if hasattr(scheduler, "alphas_cumprod"):
        return Parametrization("vp", config.get("prediction_type", "epsilon"))
    if hasattr(scheduler, "sigmas") or "FlowMatch" in type(scheduler).__name__:
        return Parametrization("flow", "flow_velocity")
    raise ValueError(
        f"cannot tell the noise path of {type(scheduler).__name__}: expected a VP scheduler "
        "(with alphas_cumprod) or a flow-matching scheduler (with sigmas)."
    )


def signal_noise_at(scheduler: object, timestep: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_t, b_t) of ``scheduler``'s path at ``timestep`` (float64 tensors, broadcast like ``timestep``)."""
    t = torch.as_tensor(timestep).detach().cpu()
    if parametrization_of(scheduler).path == "flow":
        sigma = t.to(torch.float64) / scheduler.config.num_train_timesteps
        return 1 - sigma, sigma
    alpha_bar = torch.as_tensor(scheduler.alphas_cumprod).detach().cpu().to(torch.float64)[t.long()]
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample ``x`` broadcasts against ``ndim``-D tensors."""
    return x.reshape(*x.shape, *([1] * (ndim - x.ndim)))
