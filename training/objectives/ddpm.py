"""The DDPM-family objective (``--objective ddpm``): ε, v or x0 prediction on the VP path, optional min-SNR-γ.

    L = E_{t, ε} w(t)·‖f(x_t, t) − target‖²,   x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε,   t ~ U{0..T−1}

(Ho et al., 2020, Algorithm 1), the target ε, v = √ᾱ_t·ε − √(1 − ᾱ_t)·x0 (Salimans & Ho, 2022) or x0, and
w(t) = 1 or the min-SNR-γ weight (Hang et al., 2023, "Efficient Diffusion Training via Min-SNR Weighting"),
SNR(t) = ᾱ_t / (1 − ᾱ_t). Noised inputs and v targets come from the scheduler's own ``add_noise`` and
``get_velocity``, so training and sampling share one definition of the path. The saved pipeline samples
with DDIM (same β schedule and prediction type, ``trailing`` spacing), which samples well in 50 steps;
``ScratchDDPMScheduler.from_config`` swaps ancestral sampling back in.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

import torch

from scratch_schedulers import ScratchDDIMScheduler, ScratchDDPMScheduler
from scratch_schedulers.model_fn import ModelFn
from scratch_schedulers.noise_path import VP_PREDICTION_TYPES

from ..errors import check
from .base import Objective, per_example_mse

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


def min_snr_weights(alpha_bar: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al., 2023, Eq. 8 and Table 1) for a batch of ᾱ_t.

    The weight is min(SNR, γ) on the x0 loss; on the ε loss it is min(SNR, γ)/SNR = min(1, γ/SNR)
    (finite at zero terminal SNR), and on the v loss min(SNR, γ)/(SNR + 1).
    """
    alpha_bar = alpha_bar.to(torch.float64)
    snr = alpha_bar / (1 - alpha_bar)
    capped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        weights = torch.clamp(gamma / snr, max=1.0)
    elif prediction_type == "v_prediction":
        weights = capped / (snr + 1)
    elif prediction_type == "sample":
        weights = capped
    else:
        raise ValueError(f"min-SNR weights are defined for epsilon, v_prediction and sample, not {prediction_type!r}.")
    return weights.to(torch.float32)


@dataclass
class DDPMObjective(Objective):
    """E_{t, ε} ‖f(x_t, t) − target‖² with t ~ U{0..T−1} (Ho et al., 2020, Algorithm 1)."""

    name: ClassVar[str] = "ddpm"
    title: ClassVar[str] = "--objective ddpm: ε, v or x0 prediction on the VP path (Ho et al., 2020)"
    tag: ClassVar[str] = "ddpm"
    # a diffusers train_unconditional.py command line trains DDPM
    implied_by: ClassVar[tuple[str, ...]] = ("prediction_type", "ddpm_beta_schedule", "rescale_betas_zero_snr",
                                             "snr_gamma")  # fmt: skip
    float_arguments: ClassVar[tuple[str, ...]] = ("snr_gamma",)
    few_step_path: ClassVar[dict] = {"use_flow_sigmas": False}

    scheduler: ScratchDDPMScheduler
    prediction_type: str = "epsilon"
    snr_gamma: float | None = None

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--prediction_type",
            choices=VP_PREDICTION_TYPES,
            help="what a ddpm UNet predicts; unset: epsilon (flow always predicts the velocity ε − x0)",
        )
        group.add_argument("--ddpm_beta_schedule", choices=BETA_SCHEDULES, help="β schedule; unset: linear")
        group.add_argument("--rescale_betas_zero_snr", action="store_true", help="zero terminal SNR")
        group.add_argument("--snr_gamma", type=float, help="min-SNR-γ loss weighting (Hang et al., 2023)")

    @classmethod
    def fill_defaults(cls, args: argparse.Namespace) -> None:
        args.prediction_type = args.prediction_type or "epsilon"
        args.ddpm_beta_schedule = args.ddpm_beta_schedule or "linear"

    @classmethod
    def validate(cls, args: argparse.Namespace) -> None:
        check(args.snr_gamma is None or args.snr_gamma > 0, f"--snr_gamma must be > 0, got {args.snr_gamma}.")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DDPMObjective:
        scheduler = ScratchDDPMScheduler(
            num_train_timesteps=args.ddpm_num_steps,
            beta_schedule=args.ddpm_beta_schedule,
            prediction_type=args.prediction_type,
            rescale_betas_zero_snr=args.rescale_betas_zero_snr,
        )
        return cls(scheduler, args.prediction_type, args.snr_gamma)

    def noised(self, x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """t ~ U{0..T−1}, then ε ~ N(0, I); x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε (the scheduler's ``add_noise``)."""
        batch, device = x0.shape[0], x0.device
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (batch,), generator=generator, device=device)
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
        return t, noise, self.scheduler.add_noise(x0, noise, t)

    def loss(self, model_fn: ModelFn, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scalar loss of one batch ``x0`` (B, C, H, W); every draw comes from ``generator``."""
        t, noise, x_t = self.noised(x0, generator)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(x0, noise, t)
        else:
            target = x0
        losses = per_example_mse(model_fn(x_t, t), target)
        if self.snr_gamma is not None:
            alpha_bar = self.scheduler.alphas_cumprod.to(x0.device)[t]
            losses = losses * min_snr_weights(alpha_bar, self.snr_gamma, self.prediction_type)
        return losses.mean()

    @classmethod
    def describe(cls, args: argparse.Namespace) -> str:
        snr = f", min-SNR-{args.snr_gamma:g} weighting" if args.snr_gamma else ""
        return f"the DDPM objective ({args.prediction_type} prediction, {args.ddpm_beta_schedule} β schedule{snr})"

    def sampling_scheduler(self, latent: bool = False) -> ScratchDDIMScheduler:
        """DDIM on the training β schedule, ``trailing`` spacing; no x̂0 clipping to ±1 on latents.

        diffusers' default ``clip_sample=True`` is right for images; a VAE's scaled latents are not confined
        to [−1, 1] (Stable Diffusion's configs switch it off too).
        """
        return ScratchDDIMScheduler.from_config(
            self.scheduler.config, timestep_spacing="trailing", **({"clip_sample": False} if latent else {})
        )
