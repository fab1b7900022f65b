"""Flow maps (``--objective meanflow``; MeanFlow, Geng et al., 2025): the average velocity u(z_t, r, t) over [r, t].

    L = E sg(w)·‖u_θ(z_t, r, t) − sg(v − (t − r)·du/dt)‖²,   du/dt = JVP of u_θ along (v, 0, 1)

(``scratch_diffusion.few_step.meanflow``: time pairs, target, adaptive weights, guidance folded into the target;
``scratch_diffusion.few_step.jvp``: the Jacobian-vector product). The UNet is a
:class:`~scratch_diffusion.few_step.FlowMapUNet2DModel` — diffusers' ``UNet2DModel`` plus a zero-initialised
embedding of t − r — so a flow pipeline's UNet (``--init_from``) starts as exactly that flow model (r = t is flow
matching), and training from scratch works too. Only the examples with r ≠ t pay for the JVP (at r = t the target
is v). The saved pipeline samples with :class:`~scratch_schedulers.ScratchFlowMapScheduler`:
z_r = z_t − (t − r)·u(z_t, r, t).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

import torch

from scratch_diffusion.few_step.flow_map_unet import FlowMapUNet2DModel
from scratch_diffusion.few_step.jvp import average_velocity_and_time_derivative, use_jvp_safe_attention
from scratch_diffusion.few_step.meanflow import (
    adaptive_weighted_loss,
    guided_velocity,
    meanflow_target,
    sample_time_pairs,
)
from scratch_schedulers import ScratchFlowMapScheduler, ScratchFlowMatchScheduler
from scratch_schedulers.model_fn import ModelFn

from ..errors import check
from .base import Objective, per_example_mse


def unwrapped(model_fn: ModelFn) -> ModelFn:
    """``model_fn`` calling its UNet's class ``forward`` directly: without the wrappers a trainer puts around it.

    Accelerate's mixed precision replaces the instance's ``forward`` with an autocast one, and forward-mode AD does
    not go through autocast (nor is DDP's gradient bookkeeping wanted for a stop-gradient target); the JVP runs
    on the plain module in its own precision. A ``functools.partial`` of a ``UNetModel`` (the trainer's) keeps its
    bound keywords; any other callable (a test's function) is returned as it is.
    """
    model = getattr(model_fn, "func", model_fn)
    unet = getattr(model, "unet", None)
    if unet is None:
        return model_fn
    unet = getattr(unet, "module", unet)  # DistributedDataParallel
    forward = type(unet).forward.__get__(unet)
    bound = dict(getattr(model_fn, "keywords", {}))
    return lambda x, t, **conditions: forward(x, t, **{**bound, **conditions}).sample


@dataclass
class MeanFlowObjective(Objective):
    """MeanFlow on the flow path (module docstring)."""

    name: ClassVar[str] = "meanflow"
    title: ClassVar[str] = "--objective meanflow: flow maps, the average velocity over [r, t] (Geng et al., 2025)"
    tag: ClassVar[str] = "meanflow"
    float_arguments: ClassVar[tuple[str, ...]] = (
        "meanflow_interval_fraction", "meanflow_logit_mean", "meanflow_logit_std", "meanflow_adaptive_power",
        "meanflow_guidance_scale",
    )  # fmt: skip
    foreign_hints: ClassVar[dict[str, str]] = {"prediction_type": "a flow map predicts an average velocity"}
    few_step_path: ClassVar[dict] = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
    few_step: ClassVar[bool] = True
    model_description: ClassVar[str] = "a `FlowMapUNet2DModel` (diffusers' `UNet2DModel` with a second time input)"

    scheduler: ScratchFlowMatchScheduler
    interval_fraction: float = 0.25
    logit_mean: float = -0.4
    logit_std: float = 1.0
    adaptive_power: float = 1.0
    guidance_scale: float = 1.0
    null_class: int | None = None  # the class index of "no label" (guidance folded into the target)

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--meanflow_interval_fraction", type=float, default=0.25, help="fraction of examples with r ≠ t"
        )
        group.add_argument("--meanflow_logit_mean", type=float, default=-0.4, help="mean of logit(t), logit(r)")
        group.add_argument("--meanflow_logit_std", type=float, default=1.0, help="std of logit(t), logit(r)")
        group.add_argument(
            "--meanflow_adaptive_power", type=float, default=1.0, help="p of the weights 1/(‖Δ‖² + c)^p (0: MSE)"
        )
        group.add_argument(
            "--meanflow_guidance_scale",
            type=float,
            default=1.0,
            help="ω of classifier-free guidance folded into the target (1: none; needs class labels and dropout)",
        )

    @classmethod
    def validate(cls, args: argparse.Namespace) -> None:
        fraction = args.meanflow_interval_fraction
        check(0 <= fraction <= 1, f"--meanflow_interval_fraction must be in [0, 1], got {fraction}.")
        check(args.meanflow_logit_std > 0, f"--meanflow_logit_std must be > 0, got {args.meanflow_logit_std}.")
        power = args.meanflow_adaptive_power
        check(power >= 0, f"--meanflow_adaptive_power must be ≥ 0, got {power}.")
        scale = args.meanflow_guidance_scale
        check(scale >= 1, f"--meanflow_guidance_scale must be ≥ 1 (1: no guidance), got {scale}.")
        check(
            scale == 1 or (args.class_conditional and args.class_dropout_prob > 0),
            f"--meanflow_guidance_scale {scale} needs --class_conditional and --class_dropout_prob > 0 (the "
            f"unconditional velocity), got class_conditional={args.class_conditional}, "
            f"class_dropout_prob={args.class_dropout_prob}.",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MeanFlowObjective:
        return cls(
            ScratchFlowMatchScheduler(num_train_timesteps=args.ddpm_num_steps),
            args.meanflow_interval_fraction,
            args.meanflow_logit_mean,
            args.meanflow_logit_std,
            args.meanflow_adaptive_power,
            args.meanflow_guidance_scale,
        )

    def prepare_unet(self, unet: torch.nn.Module) -> FlowMapUNet2DModel:
        """A flow-map UNet (a plain UNet becomes one: its outputs unchanged), attention the JVP can go through."""
        if not isinstance(unet, FlowMapUNet2DModel):
            unet = FlowMapUNet2DModel.from_unet(unet)
        if unet.config.num_class_embeds is not None:
            self.null_class = unet.config.num_class_embeds - 1
        use_jvp_safe_attention(unet)
        return unet

    def noised(self, x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """t (the later time of each pair, model units), ε, z_t."""
        t, _ = sample_time_pairs(x0.shape[0], generator, self.logit_mean, self.logit_std, self.interval_fraction)
        t = t * self.scheduler.config.num_train_timesteps
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return t, noise, self.scheduler.add_noise(x0, noise, t)

    def loss(self, model_fn: ModelFn, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """MeanFlow's loss of one batch. ``model_fn(x, t, r_timestep=…, class_labels=…)``: the flow-map UNet.

        The class labels, where guidance is folded in, are read from ``model_fn``'s bound ``class_labels`` (the
        trainer passes ``functools.partial(model, class_labels=labels)``).
        """
        T = self.scheduler.config.num_train_timesteps
        batch = x0.shape[0]
        sigma_t, sigma_r = sample_time_pairs(
            batch, generator, self.logit_mean, self.logit_std, self.interval_fraction
        )
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        z_t = self.scheduler.add_noise(x0, noise, sigma_t * T)
        velocity = noise - x0
        labels = getattr(model_fn, "keywords", {}).get("class_labels")
        if self.guidance_scale != 1 and labels is not None:
            with torch.no_grad():
                null = torch.full_like(labels, self.null_class)
                unconditional = model_fn(z_t, sigma_t * T, class_labels=null)
            velocity = guided_velocity(velocity, unconditional, self.guidance_scale, labels != self.null_class)
        derivative = torch.zeros_like(velocity)
        interval = sigma_r < sigma_t
        if bool(interval.any()):
            index = interval.nonzero().squeeze(1)
            extra = {} if labels is None else {"class_labels": labels[index]}

            plain = unwrapped(model_fn)

            def average_velocity(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return plain(z, t * T, r_timestep=r * T, **extra)

            with torch.no_grad():
                _, d_u = average_velocity_and_time_derivative(
                    average_velocity, z_t[index], sigma_r[index], sigma_t[index], velocity[index]
                )
            derivative[index] = d_u.to(derivative.dtype)
        target = meanflow_target(velocity, sigma_t, sigma_r, derivative).detach()
        prediction = model_fn(z_t, sigma_t * T, r_timestep=sigma_r * T)
        return adaptive_weighted_loss(per_example_mse(prediction, target), self.adaptive_power).mean()

    @classmethod
    def describe(cls, args: argparse.Namespace) -> str:
        guidance = (
            f", classifier-free guidance ω = {args.meanflow_guidance_scale:g} folded into the target"
            if args.meanflow_guidance_scale != 1
            else ""
        )
        return (
            f"MeanFlow (Geng et al., 2025: {args.meanflow_interval_fraction:.0%} of the examples with r ≠ t, "
            f"adaptive weight power {args.meanflow_adaptive_power:g}{guidance}), for sampling in "
            f"{args.ddpm_num_inference_steps} step(s)"
        )

    @classmethod
    def unused_arguments(cls, args: argparse.Namespace) -> set[str]:
        return set()

    def sampling_scheduler(self, latent: bool = False) -> ScratchFlowMapScheduler:
        """z_r = z_t − (t − r)·u(z_t, r, t) on an even σ grid, any number of steps (1 included)."""
        return ScratchFlowMapScheduler(num_train_timesteps=self.scheduler.config.num_train_timesteps)
