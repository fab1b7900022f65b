"""Images and masks into the editing methods and out again, in [0, 1] image space so given pixels return exactly.

Inputs come as the pipeline outputs them (``"pt"`` tensors (B, C, H, W), ``"np"`` arrays (B, H, W, C), PIL
images; :func:`~.inversion.images_to_unit_range`), masks as diffusers' inpainting pipelines take them: white
(≥ 0.5) = regenerate, black = keep. A latent pipeline's mask is carried to the latent grid by max-pooling, so a
latent cell regenerates if any of its pixels does. Outputs are made from [0, 1] images: a pixel taken from the
input is the input's float32 value itself, never a round trip through [−1, 1] or the VAE.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline

from .inputs import warn_if_not_finite
from .inversion import ImageInput, images_to_unit_range, is_pil_image
from .latents import encode_to_latents

# A (B, 1, H, W) / (B, H, W) tensor, a (B, H, W) / (B, H, W, 1) array, or one or more PIL images (mode "L").
MaskInput = torch.Tensor | np.ndarray | object


def unit_images(pipe, images: ImageInput, batch_size: int, device: torch.device) -> torch.Tensor:
    """``images`` as float32 (B, C, H, W) in [0, 1] on ``device``, checked against the images the pipeline makes."""
    needed_by = "this pipeline" if pipe.vae is None else "this pipeline's VAE"
    return images_to_unit_range(images, (batch_size, *pipe.image_shape), device, needed_by=needed_by)


def clean_samples(pipe, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as the UNet's clean samples x0 (float32): 2·x − 1, or a latent pipeline's scaled
    posterior mean (:func:`~.latents.encode_to_latents`)."""
    samples = images * 2 - 1
    if pipe.vae is None:
        return samples
    return encode_to_latents(pipe.vae, samples).to(device=images.device, dtype=torch.float32)


def regenerate_mask(
    mask_image: MaskInput, batch_size: int, height: int, width: int, device: torch.device
) -> torch.Tensor:
    """The region to regenerate as a bool (B, 1, H, W) tensor: ``mask_image`` ≥ 0.5 (white).

    Accepted: a float or bool tensor (B, 1, H, W) or (B, H, W); an array (B, H, W) or (B, H, W, 1); PIL images
    (converted to "L", 8-bit). One mask (batch 1) serves every image. Values must lie in [0, 1].
    """
    mask = mask_image
    if is_pil_image(mask):
        mask = [mask]
    if isinstance(mask, (list, tuple)) and mask and all(is_pil_image(m) for m in mask):
        mask = np.stack([np.asarray(m.convert("L"), dtype=np.float32) / 255.0 for m in mask])
    if isinstance(mask, np.ndarray):
        if mask.ndim == 4 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor) or not (mask.dtype.is_floating_point or mask.dtype == torch.bool):
        raise ValueError(
            f"mask_image of type {type(mask_image).__name__}"
            + (f" and dtype {mask.dtype}" if isinstance(mask, torch.Tensor) else "")
            + " is not supported; pass a float or bool tensor (B, 1, H, W) in [0, 1], an array (B, H, W[, 1]) in "
            "[0, 1], or PIL images (white = regenerate)."
        )
    if mask.ndim == 3:
        mask = mask[:, None]
    allowed = [(count, 1, height, width) for count in sorted({1, batch_size})]
    if tuple(mask.shape) not in allowed:
        raise ValueError(
            f"mask_image has shape {tuple(mask_image.shape) if hasattr(mask_image, 'shape') else tuple(mask.shape)}; "
            f"allowed for {batch_size} images of {height}×{width}: (B, 1, H, W) tensors of shape "
            f"{' or '.join(map(str, allowed))}, or (B, H, W) / (B, H, W, 1) arrays."
        )
    mask = mask.detach().to(device=device, dtype=torch.float32)
    low, high = mask.aminmax()  # one read-back, before any model evaluation
    if not (torch.isfinite(low) and torch.isfinite(high) and low >= 0 and high <= 1):
        raise ValueError(f"mask_image values must lie in [0, 1] (white ≥ 0.5 = regenerate); got [{low:g}, {high:g}].")
    return (mask >= 0.5).expand(batch_size, 1, height, width)


def latent_grid_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A pixel mask (B, 1, H, W) on the latent grid (B, 1, H/f, W/f): a cell is set if any of its f×f pixels is."""
    if factor == 1:
        return mask
    return F.max_pool2d(mask.float(), kernel_size=factor, stride=factor) > 0


def unit_images_to_output(images: torch.Tensor, output_type: str):
    """Images (B, C, H, W) in [0, 1] as ``output_type``: ``pt`` (as they are), ``np`` (B, H, W, C) float32, ``pil``."""
    if output_type == "pt":
        return images
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    warn_if_not_finite(array)
    return DiffusionPipeline.numpy_to_pil(array) if output_type == "pil" else array
