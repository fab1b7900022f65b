"""The schedule-building part of :class:`~scratch_schedulers.ScratchDPMSolverScheduler`: the config checks
and the grid of path points.

``_check_config`` makes every refusal at construction, before any model evaluation. ``set_timesteps`` builds the
grid in float64 on the host: the levels s = b/a of the VP path (diffusers' spacings and ``use_*_sigmas`` grids,
``time_grid``, ``tuned_grids``; :mod:`.dpm_grids` computes them) or σ of the flow path, the final point
(``final_sigmas_type``), and from them the path points (a_i, b_i, λ_i) and b_{i+1}/b_i that
:class:`~.dpm_stepping.DPMSolverStepping` steps between.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .dpm_grids import (
    TIME_GRIDS,
    beta_levels,
    checked_tuned_grids,
    exponential_levels,
    flow_levels,
    karras_levels,
    spaced_dpm_timesteps,
    time_grid_lambdas,
    timesteps_of_levels,
    tuned_grid_lambdas,
)
from .noise_path import shift_sigmas
from .scheduling_ddpm import VARIANCE_TYPES
from .validation import check_choice, check_custom_timesteps, check_device, check_inference_steps

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
