"""Few-step generation: a flow map u(z_t, r, t) on diffusers' UNet and the derivative its training needs.

- :class:`FlowMapUNet2DModel` (``flow_map_unet.py``): ``UNet2DModel`` with a second time input r (an interval
  embedding of t − r added to the time embedding by a hook for one call); no extra config keys; ``from_unet``.
- :func:`average_velocity_and_time_derivative`, :func:`jvp_safe_attention` / :func:`use_jvp_safe_attention`
  (``jvp.py``): (u, du/dσ_t) by one ``torch.func.jvp`` along (v, 0, dt/dσ) in (z, r, t), with attention on a
  math processor forward-mode AD can go through.
"""

from .flow_map_unet import FlowMapUNet2DModel, IntervalEmbedding
from .jvp import (
    ContiguousAttnProcessor,
    average_velocity_and_time_derivative,
    jvp_safe_attention,
    use_jvp_safe_attention,
)

__all__ = [
    "ContiguousAttnProcessor",
    "FlowMapUNet2DModel",
    "IntervalEmbedding",
    "average_velocity_and_time_derivative",
    "jvp_safe_attention",
    "use_jvp_safe_attention",
]
