"""Argument checks shared by the schedulers: each raises naming the offending value and what is allowed.

They run on the host, on config values and host-side arguments only; nothing here reads a tensor
back from an accelerator.
"""

from __future__ import annotations

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
