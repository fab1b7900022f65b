"""DDIM (Song et al., 2021, "Denoising Diffusion Implicit Models").

x_next = √ᾱ_next·x̂0 + √(1 − ᾱ_next − σ_t²)·ε̂ + σ_t·z with σ_t = η·√β̃_t (Eqs. 12 and 16);
η = 0 is the deterministic sampler, η = 1 has DDPM's posterior. The config is key-for-key
diffusers' ``DDIMScheduler``; ``set_timesteps`` additionally takes custom ``timesteps``, and
every step goes to the schedule's real next timestep (diffusers assumes t − T//n, #11347).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' loader looks it up here)
from diffusers.utils.torch_utils import randn_tensor

from .noise_path import BetaSchedule, TimestepSpacing, VPPredictionType, split_prediction, x0_to_eps
from .samplers import ddim_noise_std, reverse_step
from .scheduling_common import Generators, StepResult, check_step_shapes, in_working_precision, step_result
from .scheduling_vp import DiscreteVPScheduler


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
