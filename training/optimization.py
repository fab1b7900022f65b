"""The optimizer and the EMA of the weights (Polyak averaging with warm-up) the trainer builds."""

from __future__ import annotations

import contextlib

import torch
from diffusers import UNet2DModel
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


def make_ema(unet: UNet2DModel, args) -> EMAModel | None:
    """EMA weights with decay 1 − (1 + step/γ)^−power capped at ``--ema_max_decay``; None with ``--no-use_ema``."""
    if not args.use_ema:
        return None
    return EMAModel(
        unet.parameters(),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
        foreach=True,
        model_cls=UNet2DModel,
        model_config=unet.config,
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
