"""Consistency tuning (``--objective consistency``; ECT, Geng et al., 2024) of a flow-matching UNet.

    L = E w(t, r)·d(f_θ(x_t, t), sg f_θ(x_r, r)),   f(x_σ, σ) = x_σ − σ·v_θ(x_σ, σ),   r = t·(1 − d_k)

(``scratch_diffusion.few_step.consistency``: the pairs, the annealed gap d_k, the weights and distances). The UNet is
the teacher's, unchanged (``--init_from`` a flow pipeline: the tuning starts at the teacher, and its first stage is
the teacher's own denoising objective); from scratch the first stage is pretraining. The saved pipeline samples
with :class:`~scratch_schedulers.ScratchFlowMapScheduler`: x̂0 = f(x_t, t), then re-noised to the next level
(multistep consistency sampling, Song et al., 2023, Algorithm 1) or, with ``--no-consistency_renoise``, the
deterministic step x_r = x_t − (t − r)·v.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

import torch

from scratch_diffusion.few_step.consistency import (
    DISTANCES,
    annealed_r,
    consistency_distance,
    gap_fraction,
    pair_weights,
)
from scratch_schedulers import ScratchFlowMapScheduler, ScratchFlowMatchScheduler
from scratch_schedulers.model_fn import ModelFn
from scratch_schedulers.noise_path import velocity_to_x0

from ..errors import check
from .base import Objective

# The saved sampler's grid shift: on the demo's digits a consistency-tuned model (400 steps, pseudo-Huber) sampled in
# 2 steps scored FD ratio 2.03 / 1.76 / 1.72 / 2.06 / 2.20 at shift 1 / 2 / 3 / 5 / 8 (its second level at σ = 0.5 …
# 0.89), lower levels (shift 0.5, 0.3) worse still; the recipe's model (800 steps, ECT's σ below) 1.58 / 1.54 / 1.44 at
# shift 1 / 2 / 3 (one draw of n = 1000 each; the study's "sampler shift 1" lever re-measures it).
SAMPLING_SHIFT = 3.0
# σ_t: ECT's log-normal(−1.1, 2.0) on the EDM level σ_EDM = b/a, which on the flow path is σ/(1 − σ): a logit-normal σ
# with the same mean and std. On the digits (800 steps, lr 3e-4, one draw of n = 1000) it took the 1-step FD ratio
# from 2.34× (logit-normal(−0.4, 1)) to 1.80×, the 2-step one (sampler shift 1) from 1.89× to 1.58×.
LOGIT_MEAN, LOGIT_STD = -1.1, 2.0


@dataclass
class ConsistencyObjective(Objective):
    """ECT-style consistency tuning in flow form (module docstring)."""

    name: ClassVar[str] = "consistency"
    title: ClassVar[str] = "--objective consistency: consistency tuning of a flow model (ECT; Geng et al., 2024)"
    tag: ClassVar[str] = "consistency-model"
    float_arguments: ClassVar[tuple[str, ...]] = (
        "consistency_ratio", "consistency_huber_c", "consistency_logit_mean", "consistency_logit_std",
        "consistency_sampling_shift",
    )  # fmt: skip
    foreign_hints: ClassVar[dict[str, str]] = {"prediction_type": "consistency tuning keeps the flow velocity"}
    few_step_path: ClassVar[dict] = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
    few_step: ClassVar[bool] = True

    scheduler: ScratchFlowMatchScheduler
    stages: int = 6
    ratio: float = 2.0
    distance: str = "l2"
    huber_c: float = 0.03
    logit_mean: float = LOGIT_MEAN
    logit_std: float = LOGIT_STD
    renoise: bool = True
    sampling_shift: float = SAMPLING_SHIFT
    gap: float = 1.0  # d_k of the current step (begin_step)

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--consistency_stages", type=int, default=6, help="stages of the gap schedule: r = t·(1 − q^−stage)"
        )
        group.add_argument("--consistency_ratio", type=float, default=2.0, help="q: the gap shrinks q-fold per stage")
        group.add_argument(
            "--consistency_distance", choices=DISTANCES, default="l2", help="d: squared error or pseudo-Huber (ECT)"
        )
        group.add_argument("--consistency_huber_c", type=float, default=0.03, help="pseudo-Huber c (per element)")
        group.add_argument(
            "--consistency_logit_mean", type=float, default=LOGIT_MEAN, help="mean of logit(σ_t) (ECT's −1.1)"
        )
        group.add_argument(
            "--consistency_logit_std", type=float, default=LOGIT_STD, help="std of logit(σ_t) (ECT's 2.0)"
        )
        group.add_argument(
            "--consistency_renoise",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="the saved sampler re-noises x̂0 at each step (multistep consistency sampling)",
        )
        group.add_argument(
            "--consistency_sampling_shift",
            type=float,
            default=SAMPLING_SHIFT,
            help="the saved sampler's grid shift s (σ' = sσ/(1 + (s − 1)σ)): 3 puts 2 steps' second level at σ = 0.75",
        )

    @classmethod
    def validate(cls, args: argparse.Namespace) -> None:
        check(args.consistency_stages >= 1, f"--consistency_stages must be ≥ 1, got {args.consistency_stages}.")
        check(args.consistency_ratio > 1, f"--consistency_ratio must be > 1, got {args.consistency_ratio}.")
        check(args.consistency_huber_c > 0, f"--consistency_huber_c must be > 0, got {args.consistency_huber_c}.")
        check(args.consistency_logit_std > 0, f"--consistency_logit_std must be > 0, got {args.consistency_logit_std}.")
        shift = args.consistency_sampling_shift
        check(shift > 0, f"--consistency_sampling_shift must be > 0, got {shift}.")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ConsistencyObjective:
        return cls(
            ScratchFlowMatchScheduler(num_train_timesteps=args.ddpm_num_steps),
            args.consistency_stages,
            args.consistency_ratio,
            args.consistency_distance,
            args.consistency_huber_c,
            args.consistency_logit_mean,
            args.consistency_logit_std,
            args.consistency_renoise,
            args.consistency_sampling_shift,
        )

    def begin_step(self, step: int, total_steps: int) -> None:
        self.gap = gap_fraction(step, total_steps, self.stages, self.ratio)

    def sample_sigmas(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """σ_t ~ logit-normal, (B,)."""
        noise = torch.randn(batch, generator=generator, device=generator.device)
        return torch.sigmoid(noise * self.logit_std + self.logit_mean)

    def noised(self, x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self.sample_sigmas(x0.shape[0], generator) * self.scheduler.config.num_train_timesteps
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return t, noise, self.scheduler.add_noise(x0, noise, t)

    def loss(self, model_fn: ModelFn, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """E w(t, r)·d(f(x_t, t), sg f(x_r, r)) for one batch, the pair sharing x0 and ε."""
        T = self.scheduler.config.num_train_timesteps
        t, noise, x_t = self.noised(x0, generator)
        sigma_t = t / T
        sigma_r = annealed_r(sigma_t, self.gap)
        shape = (-1, *([1] * (x0.ndim - 1)))
        prediction = velocity_to_x0(model_fn(x_t, t), x_t, sigma_t.reshape(shape).to(x_t.dtype))
        if self.gap == 1:  # r = 0: f(x_0, 0) = x0
            target = x0
        else:
            x_r = self.scheduler.add_noise(x0, noise, sigma_r * T)
            with torch.no_grad():
                target = velocity_to_x0(model_fn(x_r, sigma_r * T), x_r, sigma_r.reshape(shape).to(x_r.dtype))
        distances = consistency_distance(prediction, target.detach(), self.distance, self.huber_c)
        return (pair_weights(sigma_t, sigma_r) * distances).mean()

    @classmethod
    def describe(cls, args: argparse.Namespace) -> str:
        distance = "pseudo-Huber" if args.consistency_distance == "pseudo_huber" else "squared-error"
        return (
            f"consistency tuning (ECT, Geng et al., 2024: {distance} distance, the gap r = t·(1 − "
            f"{args.consistency_ratio:g}^−k) over {args.consistency_stages} stages), for sampling in "
            f"{args.ddpm_num_inference_steps} step(s)"
        )

    @classmethod
    def unused_arguments(cls, args: argparse.Namespace) -> set[str]:
        return set() if args.consistency_distance == "pseudo_huber" else {"consistency_huber_c"}

    def sampling_scheduler(self, latent: bool = False) -> ScratchFlowMapScheduler:
        """One to four steps: x̂0 = x_t − σ·v, re-noised to the next level (``--consistency_renoise``)."""
        return ScratchFlowMapScheduler(
            num_train_timesteps=self.scheduler.config.num_train_timesteps,
            shift=self.sampling_shift,
            stochastic_sampling=self.renoise,
        )
