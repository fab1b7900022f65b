"""Control images computed from training images: the built-in controls of ``train_controlnet.py --control``.

A transform maps images (B, C, H, W) in [0, 1] to control images of the same shape in [0, 1], per image and
deterministically (no random draw), on the images' device, so a control network can be trained on the fly from
any image data and its outputs checked against the very control they were given (the control consistency
``MSE(transform(sample), control)``):

==================  ============================================================================================
``low_resolution``  factor×factor average pooling, upsampled back by repetition (nearest): what a factor-times
                    smaller image shows — the super-resolution control
``edges``           the Sobel gradient magnitude per channel, divided by the image's largest one (Kanopoulos
                    et al., 1988; the edge control of Zhang et al., 2023, with Sobel in place of Canny)
==================  ============================================================================================

:data:`CONTROL_TRANSFORMS` holds them by name (``--control`` takes these names).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["CONTROL_TRANSFORMS", "DEFAULT_LOW_RESOLUTION_FACTOR", "control_transform", "edge_map", "low_resolution"]

DEFAULT_LOW_RESOLUTION_FACTOR = 4


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        what = (
            f"a {images.ndim}-D {images.dtype} tensor of shape {tuple(images.shape)}"
            if isinstance(images, torch.Tensor)
            else f"a {type(images).__name__}"
        )
        raise ValueError(f"{name} takes a floating-point tensor (B, C, H, W) of images in [0, 1], got {what}.")


def low_resolution(images: torch.Tensor, factor: int = DEFAULT_LOW_RESOLUTION_FACTOR) -> torch.Tensor:
    """The images at ``factor`` times lower resolution, shown at the original size.

    Each factor×factor block is replaced by its mean (average pooling), then repeated back to factor×factor
    pixels (nearest upsampling): the result is constant on each block and has the same mean there.

    Args:
        images: (B, C, H, W) in [0, 1]; H and W multiples of ``factor``.
        factor: the block side, an integer ≥ 1 (1 returns the images unchanged).

    Returns:
        (B, C, H, W) in [0, 1], in the images' dtype and device.
    """
    _check_images(images, "low_resolution")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"low_resolution factor {factor!r} is not allowed; pass an integer ≥ 1.")
    height, width = images.shape[-2:]
    if height % factor or width % factor:
        divisors = [f for f in range(1, min(height, width) + 1) if height % f == 0 and width % f == 0]
        raise ValueError(
            f"low_resolution factor {factor} does not divide the images' {height}×{width} pixels; allowed: "
            f"{', '.join(map(str, divisors))}."
        )
    pooled = F.avg_pool2d(images, factor)
    return pooled.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def edge_map(images: torch.Tensor) -> torch.Tensor:
    """The Sobel gradient magnitude √(G_x² + G_y²) of each channel, normalised to [0, 1] per image.

    The borders are replicated (a constant image has no edges anywhere, its border included); each image is
    divided by its largest magnitude over all channels and pixels, so its strongest edge is 1. An image without
    any edge (constant) maps to zeros.

    Args:
        images: (B, C, H, W) in [0, 1].

    Returns:
        (B, C, H, W) in [0, 1], in the images' dtype and device.
    """
    _check_images(images, "edge_map")
    # Separable, by differences of neighbours: G_x = [1 2 1]ᵀ ∗ (x[j + 1] − x[j − 1]), G_y likewise. Equal
    # neighbours give exactly 0, so flat regions have no edge at all (not rounding noise that the
    # normalisation would blow up).
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")  # (B, C, H + 2, W + 2)
    dx = padded[..., :, 2:] - padded[..., :, :-2]  # (B, C, H + 2, W)
    dy = padded[..., 2:, :] - padded[..., :-2, :]  # (B, C, H, W + 2)
    gx = dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]
    gy = dy[..., :, :-2] + 2 * dy[..., :, 1:-1] + dy[..., :, 2:]
    magnitude = (gx.square() + gy.square()).sqrt()
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(peak > 0, magnitude / torch.where(peak > 0, peak, 1), 0)


CONTROL_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "low_resolution": low_resolution,
    "edges": edge_map,
}


def control_transform(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The transform called ``name`` in :data:`CONTROL_TRANSFORMS`; ``ValueError`` naming the allowed ones."""
    if name not in CONTROL_TRANSFORMS:
        raise ValueError(f"control transform {name!r} is not known; allowed: {', '.join(CONTROL_TRANSFORMS)}.")
    return CONTROL_TRANSFORMS[name]
