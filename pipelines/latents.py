"""Latent space of an ``AutoencoderKL``: the one place images become latents and back (Rombach et al., 2022).

The UNet of a latent pipeline sees ``z = (E(x) − shift) · scale``, with ``scale`` the VAE config's
``scaling_factor`` (LDM §4.3: 1 / the latents' standard deviation, so that z has unit variance like the
noise) and ``shift`` its ``shift_factor`` (0 when the config has none); decoding inverts it:
``x = D(z / scale + shift)``. The trainer (encoding the dataset), the pipeline (decoding samples) and DDIM
inversion (encoding images) all call these functions.
"""

from __future__ import annotations

import warnings

import torch


def latent_scaling(vae) -> tuple[float, float]:
    """``(scale, shift)`` of ``vae``'s latent space, from its config (``shift_factor`` None → 0)."""
    scale = getattr(vae.config, "scaling_factor", None)
    if scale is None or not scale > 0:
        raise ValueError(f"the VAE's scaling_factor is {scale!r}; allowed: a positive number.")
    shift = getattr(vae.config, "shift_factor", None)
    return float(scale), float(shift or 0.0)


def vae_downsampling_factor(vae) -> int:
    """How many pixels one latent spans along a side: 2^(number of encoder blocks − 1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_to_latents(
    vae, images: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Images in [−1, 1] (N, C, H, W) → scaled latents: the posterior mean, or a draw from it with ``sample``."""
    scale, shift = latent_scaling(vae)
    posterior = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist
    latents = posterior.sample(generator=generator) if sample else posterior.mean
    return (latents - shift) * scale


def decode_differentiably(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents → images (N, C, H, W), nominally in [−1, 1], in the caller's grad mode (loss guidance)."""
    scale, shift = latent_scaling(vae)
    return vae.decode(latents.to(device=vae.device, dtype=vae.dtype) / scale + shift).sample


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents → images (N, C, H, W), nominally in [−1, 1] (not clamped)."""
    return decode_differentiably(vae, latents)


def check_vae_fits_unet(vae, unet_config) -> None:
    """A latent pipeline's UNet must denoise the VAE's latents: ``in_channels == latent_channels``, and
    ``out_channels`` the same (or twice as many for a learned variance, Nichol & Dhariwal, 2021); the VAE
    must record a positive ``scaling_factor``. Raises ``ValueError`` naming both numbers."""
    latent_channels = vae.config.latent_channels
    in_channels = unet_config.get("in_channels")
    out_channels = unet_config.get("out_channels", in_channels)
    if in_channels != latent_channels:
        raise ValueError(
            f"the UNet takes in_channels={in_channels} but the VAE's latents have latent_channels={latent_channels}; "
            f"build the UNet with in_channels={latent_channels} to denoise this VAE's latents."
        )
    if out_channels not in (latent_channels, 2 * latent_channels):
        raise ValueError(
            f"the UNet has out_channels={out_channels} for the VAE's latent_channels={latent_channels}; allowed: "
            f"{latent_channels}, or {2 * latent_channels} for a UNet that also predicts a (learned) variance."
        )
    latent_scaling(vae)  # a missing or non-positive scaling_factor fails here, naming it


def warn_if_scheduler_clips(scheduler) -> None:
    """Warn when ``scheduler`` clips x̂0 (``clip_sample``) or thresholds it: a VAE's scaled latents are not in ±1.

    diffusers' DDIM/DDPM default to ``clip_sample=True``, right for images in [−1, 1]; on latents (unit variance, so
    beyond ±1 often) it distorts every sample. Stable Diffusion's scheduler configs set it False for that reason.
    """
    config = scheduler.config
    if config.get("clip_sample", False) or config.get("thresholding", False):
        warnings.warn(
            f"{type(scheduler).__name__} has clip_sample={config.get('clip_sample')}, thresholding="
            f"{config.get('thresholding')}: it clamps x̂0 to ±{config.get('clip_sample_range', 1.0)}, but this "
            "pipeline's UNet denoises a VAE's scaled latents, which are not bounded by it; set clip_sample=False "
            "(e.g. DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)).",
            stacklevel=3,
        )


def decoded_shape(vae, latent_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(channels, height, width) of the images ``vae`` decodes latents of ``latent_shape`` (C, h, w) to."""
    factor = vae_downsampling_factor(vae)
    _, height, width = latent_shape
    return (vae.config.out_channels, height * factor, width * factor)
