"""A control image for the pipeline's optional ``controlnet`` component (Zhang et al., 2023).

``pipe(..., control_image=c, controlnet_conditioning_scale=s)`` — and the same keywords on ``img2img`` and
``inpaint`` — evaluates the UNet as ``ControlledUNet(unet, controlnet)``: the control network reads the sample and
the control image and its residuals, times s, are added to the frozen UNet's skip connections and mid block
(:mod:`scratch_diffusion.control`). The control image is one more per-sample input of the UNet call, next to the
class labels, so classifier-free guidance evaluates both halves with it (diffusers' ControlNet pipelines do the
same; a network trained with control dropout also knows the empty control). Autoguidance's guide is a plain UNet
and never sees it. ``pipe.evaluations["controlnet"]`` counts the control network's evaluations beside the UNet's.

The image is checked before any model evaluation: it needs a ``controlnet`` component, the network's
``conditioning_channels``, ``conditioning_downscale_factor`` times the UNet's sample size (the images' size:
``training/train_controlnet.py`` sets the factor to a latent pipeline's VAE scale factor, 1 without a VAE) and
values in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from scratch_diffusion.control.residuals import ControlledUNet
from scratch_diffusion.guidance.setup import EvaluationCounter

from .denoiser import UNetModel
from .inversion import ImageInput, image_count, images_to_unit_range


@dataclass(frozen=True)
class Control:
    """One call's control: the image (B, C_c, H_c, W_c) in [0, 1] on the device and the residuals' scale."""

    image: torch.Tensor
    scale: float


def prepare_control(
    pipe, control_image: ImageInput | None, scale: float, batch_size: int, device: torch.device
) -> Control | None:
    """``control_image`` checked against the pipeline's control network, as a :class:`Control`; None without one.

    Accepted as images everywhere in the pipeline: a (B, C, H, W) tensor in [0, 1], a (B, H, W, C) array in [0, 1]
    or PIL images; a batch of 1 serves every image. Raises ``ValueError`` naming the value and what is allowed.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"controlnet_conditioning_scale={scale!r} is not allowed; pass a finite number.")
    controlnet = getattr(pipe, "controlnet", None)
    if control_image is None:
        return None
    if controlnet is None:
        raise ValueError(
            "control_image was given, but this pipeline has no controlnet component; load one with "
            "ControlNet2DModel.from_pretrained(...) and pass controlnet=... (training/train_controlnet.py trains one)."
        )
    config = controlnet.config
    factor = int(config.conditioning_downscale_factor)
    height, width = pipe.unet.config.sample_size, pipe.unet.config.sample_size
    if isinstance(pipe.unet.config.sample_size, (tuple, list)):
        height, width = pipe.unet.config.sample_size
    channels = int(config.conditioning_channels)
    count = image_count(control_image)
    if count not in (1, batch_size):
        raise ValueError(f"control_image holds {count} images; pass 1 or one per image ({batch_size}).")
    shape = (count, channels, height * factor, width * factor)
    image = images_to_unit_range(control_image, shape, device, needed_by="this pipeline's control network")
    if count != batch_size:
        image = image.expand(batch_size, -1, -1, -1)
    return Control(image.to(dtype=controlnet.dtype), float(scale))


def model_conditions(labels: torch.Tensor | None, control: Control | None) -> dict[str, torch.Tensor]:
    """The UNet call's per-sample inputs: ``class_labels`` and, with a control, ``control_image`` and
    ``conditioning_scale`` (one scale per sample, so guidance expands it with the batch)."""
    conditions = {} if labels is None else {"class_labels": labels}
    if control is not None:
        batch_size = control.image.shape[0]
        scale = torch.full((batch_size,), control.scale, dtype=control.image.dtype, device=control.image.device)
        conditions.update(control_image=control.image, conditioning_scale=scale)
    return conditions


class ControlledUNetModel(UNetModel):
    """The UNet with the control network's residuals: ``model(x, t, control_image=c, conditioning_scale=s, ...)``.

    Each call counts one evaluation of the control network per row (``pipe.evaluations["controlnet"]``).
    """

    def __init__(self, unet: torch.nn.Module, controlnet: torch.nn.Module, counter: EvaluationCounter):
        super().__init__(unet)
        self.controlled = ControlledUNet(unet, controlnet)
        self.count = counter.counted("controlnet", lambda x: x)

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, **conditions: torch.Tensor) -> torch.Tensor:
        control_image = conditions.pop("control_image")
        return self.controlled(self.count(x), timestep, control_image, **conditions).sample
