"""The optimizer, its LR schedule and the EMA of the weights (Polyak averaging with warm-up) the trainers build."""

from __future__ import annotations

import contextlib

import torch
from diffusers import ModelMixin
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel


def make_optimizer(params: list[torch.nn.Parameter], args) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this device has one, else the foreach implementation."""
    hyper = dict(
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    with contextlib.suppress(RuntimeError, ValueError):
        return torch.optim.AdamW(params, fused=True, **hyper)
    return torch.optim.AdamW(params, **hyper)  # torch picks foreach where the device supports it


def make_lr_scheduler(optimizer: torch.optim.Optimizer, args, num_training_steps: int):
    """``--lr_scheduler`` with ``--lr_warmup_steps`` over ``num_training_steps`` optimizer updates.

    It is not given to ``accelerator.prepare`` (which would step it once per process): the loop steps it once
    per update on every process, and it is registered for checkpointing.
    """
    return get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=num_training_steps
    )


def make_ema(model: ModelMixin, args) -> EMAModel | None:
    """EMA weights with decay 1 − (1 + step/γ)^−power capped at ``--ema_max_decay``; None with ``--no-use_ema``.

    ``model`` is the diffusers model trained (a ``UNet2DModel``, an ``AutoencoderKL``, …): its class and config
    are recorded, so ``EMAModel.save_pretrained`` writes a folder of that class.
    """
    if not args.use_ema:
        return None
    return EMAModel(
        model.parameters(),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
        foreach=True,
        model_cls=type(model),
        model_config=model.config,
    )


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, model: torch.nn.Module):
    """Temporarily swap the EMA weights into ``model`` (no-op without EMA)."""
    if ema is None:
        yield model
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield model
    finally:
        ema.restore(model.parameters())


def keep_ema_weights(ema: EMAModel | None, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (the trained module itself, out of accelerate's wrapper) with the EMA weights copied into it for
    good, as a run's output; unchanged with ``--no-use_ema`` (``ema`` None). :func:`ema_weights` swaps them in for
    a while instead."""
    if ema is not None:
        ema.copy_to(model.parameters())
    return model
