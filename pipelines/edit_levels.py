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

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from scratch_schedulers.samplers import raise_noise

from .inversion import inversion_levels

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
