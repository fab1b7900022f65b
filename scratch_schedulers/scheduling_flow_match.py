"""Flow matching / rectified flow (Lipman et al., 2023; Liu et al., 2022).

Path x_σ = (1 − σ)·x0 + σ·ε, σ ∈ [0, 1], timestep t = σ·T; the model predicts the velocity
u = dx/dσ = ε − x0 and sampling integrates the ODE from σ = 1 to 0 with Euler or Heun steps.
Config keys follow diffusers' ``FlowMatchEulerDiscreteScheduler`` (shift, dynamic shifting with
μ, shift_terminal, stochastic_sampling); ``solver="heun"`` is second order with diffusers' Heun
convention (``order = 2``, interior timesteps repeated) so a plain ``for t in timesteps`` works.
``s_churn > 0`` makes either one EDM's stochastic sampler (Karras et al., 2022, Alg. 2; :mod:`.flow_churn`):
the timesteps are then the churned levels σ̂_i where the model is evaluated.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' loader looks it up here)
from diffusers.utils.torch_utils import randn_tensor

from .flow_churn import ChurnPlan, check_churn, per_example_churn_error
from .flow_forward import FlowForwardProcess
from .noise_path import (
    TIME_SHIFT_TYPES,
    TimeShiftType,
    shift_sigmas,
    stretch_to_terminal,
    time_shift,
    velocity_to_eps,
    velocity_to_x0,
)
from .samplers import euler_step, heun_step, reverse_step
from .scheduling_common import (
    Generators,
    ScratchScheduler,
    check_step_shapes,
    check_step_timesteps,
    in_working_precision,
    is_host,
    per_example,
    timestep_tensor,
)
from .validation import (
    check_choice,
    check_custom_timesteps,
    check_device,
    check_inference_steps,
    check_num_train_timesteps,
    check_positive,
)

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
