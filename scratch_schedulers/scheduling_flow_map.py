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

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' loader looks it up here)
from diffusers.utils.torch_utils import randn_tensor

from .flow_forward import FlowForwardProcess
from .noise_path import shift_sigmas, velocity_to_x0
from .samplers import euler_step
from .scheduling_common import (
    Generators,
    ScratchScheduler,
    StepResult,
    check_step_shapes,
    check_step_timesteps,
    in_working_precision,
    is_host,
    per_example,
    step_result,
    timestep_tensor,
)
from .validation import (
    check_custom_timesteps,
    check_device,
    check_inference_steps,
    check_num_train_timesteps,
    check_positive,
)

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
