"""Training objectives: DDPM-family (ε, v or x0 prediction, min-SNR-γ) and flow matching.

Noised inputs and velocity targets come from the schedulers' own ``add_noise`` and
``get_velocity``, so training and sampling share one definition of the noise path.

==============  ==========================================================================
``T``           ``num_train_timesteps``
``ᾱ_t``         ``scheduler.alphas_cumprod[t]``; SNR(t) = ᾱ_t / (1 − ᾱ_t)
``γ``           the min-SNR-γ cap (Hang et al., 2023, "Efficient Diffusion Training via Min-SNR Weighting")
``σ``           flow noise level, x_σ = (1 − σ)·x0 + σ·ε, timestep t = σ·T
``s``           flow time shift σ' = s·σ / (1 + (s − 1)·σ) (Esser et al., 2024, Eq. 23)
==============  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scratch_schedulers import ScratchDDPMScheduler, ScratchFlowMatchScheduler
from scratch_schedulers.noise_path import shift_sigmas

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B, C, H, W), t (B,)) → prediction


def per_example_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per example, in float32: shape (B,)."""
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    return error.mean(dim=tuple(range(1, error.ndim)))


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
class DDPMObjective:
    """E_{t, ε} ‖f(x_t, t) − target‖² with t ~ U{0..T−1} (Ho et al., 2020, Algorithm 1)."""

    scheduler: ScratchDDPMScheduler
    prediction_type: str = "epsilon"
    snr_gamma: float | None = None

    def loss(self, model_fn: ModelFn, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scalar loss of one batch ``x0`` (B, C, H, W); every draw comes from ``generator``."""
        batch, device = x0.shape[0], x0.device
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (batch,), generator=generator, device=device)
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
        x_t = self.scheduler.add_noise(x0, noise, t)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(x0, noise, t)
        else:
            target = x0
        losses = per_example_mse(model_fn(x_t, t), target)
        if self.snr_gamma is not None:
            alpha_bar = self.scheduler.alphas_cumprod.to(device)[t]
            losses = losses * min_snr_weights(alpha_bar, self.snr_gamma, self.prediction_type)
        return losses.mean()


@dataclass
class FlowMatchingObjective:
    """E_{σ, ε} ‖f(x_σ, σ·T) − (ε − x0)‖² (rectified flow; Lipman et al., 2023; Liu et al., 2022).

    σ is uniform, or logit-normal (Esser et al., 2024, §3.1: logit(σ) ~ N(mean, std²)), then
    shifted by the scheduler's ``shift`` so training and sampling see the same σ distribution.
    """

    scheduler: ScratchFlowMatchScheduler
    weighting_scheme: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def sample_sigmas(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """σ ∈ [0, 1) for a batch, shape (B,)."""
        device = generator.device
        if self.weighting_scheme == "uniform":
            u = torch.rand(batch, generator=generator, device=device)
        elif self.weighting_scheme == "logit_normal":
            u = torch.sigmoid(torch.randn(batch, generator=generator, device=device) * self.logit_std + self.logit_mean)
        else:
            raise ValueError(f"weighting_scheme={self.weighting_scheme!r}; choose uniform or logit_normal.")
        return shift_sigmas(u, self.scheduler.config.shift)

    def loss(self, model_fn: ModelFn, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scalar loss of one batch ``x0`` (B, C, H, W); every draw comes from ``generator``."""
        t = self.sample_sigmas(x0.shape[0], generator) * self.scheduler.config.num_train_timesteps
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.scheduler.add_noise(x0, noise, t)
        target = self.scheduler.get_velocity(x0, noise, t)
        return per_example_mse(model_fn(x_t, t), target).mean()


def make_objective(args) -> DDPMObjective | FlowMatchingObjective:
    """The objective and its noise scheduler from the command line."""
    if args.objective == "flow":
        scheduler = ScratchFlowMatchScheduler(num_train_timesteps=args.ddpm_num_steps, shift=args.flow_shift)
        return FlowMatchingObjective(scheduler, args.weighting_scheme, args.logit_mean, args.logit_std)
    scheduler = ScratchDDPMScheduler(
        num_train_timesteps=args.ddpm_num_steps,
        beta_schedule=args.ddpm_beta_schedule,
        prediction_type=args.prediction_type,
        rescale_betas_zero_snr=args.rescale_betas_zero_snr,
    )
    return DDPMObjective(scheduler, args.prediction_type, args.snr_gamma)
