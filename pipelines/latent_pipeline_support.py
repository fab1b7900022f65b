"""What a pipeline with an optional ``vae`` exposes about its two spaces: the UNet's samples and the images.

Without a VAE they are one space (``vae_scale_factor == 1``); with one, the UNet's samples are the VAE's
scaled latents and images are ``vae_scale_factor`` times larger along each side (``latents.py``).
"""

from __future__ import annotations

from .inputs import sample_shape
from .latents import decoded_shape, vae_downsampling_factor


class LatentSpaceMixin:
    """``vae_scale_factor``, ``latent_shape`` and ``image_shape`` of a pipeline with ``unet`` and ``vae`` (or None)."""

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent along a side (diffusers' name): 2^(VAE blocks − 1); 1 without a VAE."""
        return 1 if self.vae is None else vae_downsampling_factor(self.vae)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the samples the UNet denoises: ``unet.config`` in_channels and sample_size."""
        return sample_shape(self.unet, 1)[1:]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the pipeline outputs: the latent shape, decoded by the VAE if there is one."""
        return self.latent_shape if self.vae is None else decoded_shape(self.vae, self.latent_shape)
