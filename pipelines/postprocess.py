"""From the sampler's last sample to what ``ScratchDiffusionPipeline.__call__`` returns.

In pixel space the sample is the image in [−1, 1]; in a latent pipeline it is the VAE's scaled latent
z and the image is ``decode_latents(vae, z)`` (``latents.py``). ``output_type="latent"`` returns the
sample itself, in both cases, before any decoding or clamping.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline

from .inputs import warn_if_not_finite
from .latents import decode_latents


def samples_to_images(samples: torch.Tensor, output_type: str, vae=None):
    """The final ``samples`` as ``output_type``: ``latent`` (unchanged), ``pt`` (B, C, H, W) in [0, 1],
    ``np`` (B, H, W, C) float32 in [0, 1], or ``pil`` (a list of PIL images); decoded by ``vae`` when given."""
    if output_type == "latent":
        return samples
    decoded = samples if vae is None else decode_latents(vae, samples)
    images = (decoded / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images
    images = images.cpu().permute(0, 2, 3, 1).float().numpy()
    warn_if_not_finite(images)  # on the host already: free to check (pil would hide NaN as black)
    return DiffusionPipeline.numpy_to_pil(images) if output_type == "pil" else images
