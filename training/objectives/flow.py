"""The flow-matching objective (``--objective flow``, the default): the velocity on the straight path.

    L = E_{σ, ε} ‖f(x_σ, σ·T) − (ε − x0)‖²,   x_σ = (1 − σ)·x0 + σ·ε

(rectified flow; Lipman et al., 2023; Liu et al., 2022). σ is uniform, or logit-normal (Esser et al., 2024,
§3.1: logit(σ) ~ N(mean, std²)), then shifted, σ' = s·σ / (1 + (s − 1)·σ) (Esser et al., 2024, Eq. 23), by the
scheduler's ``shift``, so training and sampling see the same σ distribution. The saved pipeline samples with
the training ``ScratchFlowMatchScheduler`` (Euler, the training shift).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

import torch

from scratch_schedulers import ScratchFlowMatchScheduler
from scratch_schedulers.model_fn import ModelFn
from scratch_schedulers.noise_path import shift_sigmas

from ..errors import check
from .base import Objective, per_example_mse

WEIGHTING_SCHEMES = ("uniform", "logit_normal")


@dataclass
class FlowMatchingObjective(Objective):
    """E_{σ, ε} ‖f(x_σ, σ·T) − (ε − x0)‖² (rectified flow; Lipman et al., 2023; Liu et al., 2022).

    σ is uniform, or logit-normal (Esser et al., 2024, §3.1: logit(σ) ~ N(mean, std²)), then
    shifted by the scheduler's ``shift`` so training and sampling see the same σ distribution.
    """

    name: ClassVar[str] = "flow"
    title: ClassVar[str] = "--objective flow: the velocity ε − x0 on the straight path (Lipman et al., 2023)"
    tag: ClassVar[str] = "flow-matching"
    float_arguments: ClassVar[tuple[str, ...]] = ("logit_mean", "logit_std", "flow_shift")
    foreign_hints: ClassVar[dict[str, str]] = {"prediction_type": "flow matching predicts the velocity ε − x0"}
    few_step_path: ClassVar[dict] = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}

    scheduler: ScratchFlowMatchScheduler
    weighting_scheme: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--weighting_scheme",
            choices=WEIGHTING_SCHEMES,
            help="how σ is sampled in training (diffusers' SD3 scripts' name); unset: logit_normal",
        )
        group.add_argument("--logit_mean", type=float, default=0.0, help="logit_normal: mean of logit(σ)")
        group.add_argument("--logit_std", type=float, default=1.0, help="logit_normal: std of logit(σ)")
        group.add_argument("--flow_shift", type=float, default=1.0, help="time shift s of σ (training and sampling)")

    @classmethod
    def fill_defaults(cls, args: argparse.Namespace) -> None:
        if args.weighting_scheme is None:
            args.weighting_scheme = "logit_normal"

    @classmethod
    def validate(cls, args: argparse.Namespace) -> None:
        check(args.flow_shift > 0, f"--flow_shift must be > 0, got {args.flow_shift}.")
        check(args.logit_std > 0, f"--logit_std must be > 0, got {args.logit_std}.")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FlowMatchingObjective:
        scheduler = ScratchFlowMatchScheduler(num_train_timesteps=args.ddpm_num_steps, shift=args.flow_shift)
        return cls(scheduler, args.weighting_scheme, args.logit_mean, args.logit_std)

    def sample_sigmas(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """σ ∈ [0, 1) for a batch, shape (B,)."""
        device = generator.device
        if self.weighting_scheme == "uniform":
            u = torch.rand(batch, generator=generator, device=device)
        elif self.weighting_scheme == "logit_normal":
            u = torch.sigmoid(torch.randn(batch, generator=generator, device=device) * self.logit_std + self.logit_mean)
        else:
            raise ValueError(f"weighting_scheme={self.weighting_scheme!r}; choose one of {list(WEIGHTING_SCHEMES)}.")
        return shift_sigmas(u, self.scheduler.config.shift)

    def noised(self, x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """σ (:meth:`sample_sigmas`), t = σ·T, then ε ~ N(0, I); x_t = (1 − σ)·x0 + σ·ε (``add_noise``)."""
        t = self.sample_sigmas(x0.shape[0], generator) * self.scheduler.config.num_train_timesteps
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return t, noise, self.scheduler.add_noise(x0, noise, t)

    def loss(self, model_fn: ModelFn, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scalar loss of one batch ``x0`` (B, C, H, W); every draw comes from ``generator``."""
        t, noise, x_t = self.noised(x0, generator)
        target = self.scheduler.get_velocity(x0, noise, t)
        return per_example_mse(model_fn(x_t, t), target).mean()

    @classmethod
    def describe(cls, args: argparse.Namespace) -> str:
        shift = f", shift {args.flow_shift:g}" if args.flow_shift != 1 else ""
        return f"flow matching (velocity ε − x0, {args.weighting_scheme} σ{shift})"

    @classmethod
    def unused_arguments(cls, args: argparse.Namespace) -> set[str]:
        return {"logit_mean", "logit_std"} if args.weighting_scheme == "uniform" else set()

    def sampling_scheduler(self, latent: bool = False) -> ScratchFlowMatchScheduler:
        """The training ``ScratchFlowMatchScheduler`` (Euler, the training shift); latents need no change."""
        return ScratchFlowMatchScheduler.from_config(self.scheduler.config)
