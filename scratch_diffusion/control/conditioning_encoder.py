"""ControlNet's conditioning encoder E: a control image at pixel resolution → features on the UNet's first grid.

Zhang, Rao & Agrawala (2023, §3.2) encode a 512×512 control image to Stable Diffusion's 64×64 latent grid with
"a tiny network E(·) of four convolution layers" with stride 2. Here the sample may be pixels (the control image
has the sample's size, ``downscale_factor`` 1) or a VAE's latents (the control image is ``downscale_factor`` =
the VAE's scale factor times larger), so the number of stride-2 convolutions is log2(downscale_factor). The last
convolution is zero-initialised: at initialisation E(c) = 0 and the control network's stream equals the UNet's.
"""

from __future__ import annotations

import torch
from torch import nn


def is_power_of_two(value: object) -> bool:
    """Whether ``value`` is an integer 2^k, k ≥ 0 (bools excluded)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1 and value & (value - 1) == 0


class ConditioningEncoder(nn.Module):
    """E: (B, C_c, f·H, f·W) → (B, C_out, H, W) with 3×3 convolutions and SiLU, the last one zero-initialised.

    Layers: a 3×3 conv to ``widths[0]``; one 3×3 conv to each further width, the first log2(f) of them with
    stride 2; further stride-2 convs at ``widths[-1]`` while the factor needs more halvings; then the zero conv to
    ``out_channels``. A stride-2 conv with padding 1 halves an even side exactly.

    Args:
        conditioning_channels: C_c, the control image's channels.
        out_channels: C_out, the channels of the UNet's ``conv_in`` output the features are added to.
        downscale_factor: f, a power of 2: the control image is f times the sample's height and width.
        widths: the encoder's hidden widths (at least one).
    """

    def __init__(self, conditioning_channels: int, out_channels: int, downscale_factor: int, widths: tuple[int, ...]):
        super().__init__()
        halvings = downscale_factor.bit_length() - 1
        plan = [*widths[1:], *[widths[-1]] * max(0, halvings - (len(widths) - 1))]
        layers: list[nn.Module] = [nn.Conv2d(conditioning_channels, widths[0], kernel_size=3, padding=1), nn.SiLU()]
        width = widths[0]
        for index, next_width in enumerate(plan):
            stride = 2 if index < halvings else 1
            layers += [nn.Conv2d(width, next_width, kernel_size=3, padding=1, stride=stride), nn.SiLU()]
            width = next_width
        self.layers = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(width, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # the paper's zero convolution: E(c) = 0 at initialisation
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, control_image: torch.Tensor) -> torch.Tensor:
        """Features (B, C_out, H, W) of ``control_image`` (B, C_c, f·H, f·W)."""
        return self.conv_out(self.layers(control_image))
