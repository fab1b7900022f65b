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

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .noise_path import (
    TIMESTEP_SPACINGS,
    VP_PREDICTION_TYPES,
    append_dims,
    make_betas,
    rescale_zero_terminal_snr,
    signal_noise_at,
    spaced_timesteps,
)
from .samplers import dynamic_threshold
from .scheduling_common import (
    ScratchScheduler,
    check_same_shape,
    check_step_timesteps,
    check_timestep_batch,
    is_host,
    per_example,
    timestep_tensor,
)
from .validation import check_choice, check_custom_timesteps, check_device, check_positive

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
