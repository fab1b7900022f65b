"""DDPM ancestral sampling (Ho et al., 2020, "Denoising Diffusion Probabilistic Models").

x_{t−1} = μ̃_t(x_t, x̂0) + s_t·z, where μ̃_t is the posterior mean of Eq. (7) — DDIM's
:func:`~scratch_schedulers.samplers.reverse_step` at η = 1, see
:func:`~scratch_schedulers.samplers.posterior_mean` — and s_t the noise scale chosen by
``variance_type``. The config is key-for-key diffusers' ``DDPMScheduler``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' loader looks it up here)
from diffusers.utils.torch_utils import randn_tensor

from .noise_path import BetaSchedule, TimestepSpacing, VPPredictionType, split_prediction
from .samplers import ddpm_posterior_coefficients, posterior_mean
from .scheduling_common import (
    Generators,
    check_step_shapes,
    in_working_precision,
    is_host,
    per_example,
    timestep_tensor,
)
from .scheduling_vp import DiscreteVPScheduler
from .validation import check_choice

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
