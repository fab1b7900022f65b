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

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from .noise_path import append_dims


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
