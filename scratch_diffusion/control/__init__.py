"""ControlNet for a frozen ``UNet2DModel`` (Zhang, Rao & Agrawala, 2023): the control network and its use.

- :class:`ControlNet2DModel` (``controlnet.py``): a trainable copy of the UNet's encoder with a conditioning encoder
  for the control image and zero-initialised 1×1 convolutions on every residual; ``from_unet(unet)``.
- :class:`ControlledUNet` / :func:`residuals_added` (``residuals.py``): the residuals added to a plain diffusers
  UNet's skips and mid block for one call, by hooks removed afterwards (the saved UNet stays a ``UNet2DModel``).
- :func:`low_resolution`, :func:`edge_map` (``transforms.py``): control images made from images, for training and use.
"""

from .controlnet import ControlNet2DModel, ControlNet2DOutput, check_controlnet_fits_unet
from .residuals import ControlledUNet, residuals_added
from .transforms import CONTROL_TRANSFORMS, edge_map, low_resolution

__all__ = [
    "CONTROL_TRANSFORMS",
    "ControlNet2DModel",
    "ControlNet2DOutput",
    "ControlledUNet",
    "check_controlnet_fits_unet",
    "edge_map",
    "low_resolution",
    "residuals_added",
]
