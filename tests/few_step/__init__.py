"""Tiny flow maps shared by the few-step tests: 8×8 UNets with attention, an interval embedding made live."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from scratch_diffusion.few_step import FlowMapUNet2DModel

from ..pipelines.helpers import tiny_unet

# tests/pipelines/helpers.py's tiny UNet (8×8 RGB, two levels, one resnet per block) with attention in the lower
# level and the mid block, so that every attention processor path is in the graph.
ATTENTION = dict(
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=4,
)
T = 1000  # timesteps per unit σ (num_train_timesteps)


def attention_unet(seed: int = 0, **overrides) -> UNet2DModel:
    """The tiny attention UNet (~50k parameters), eval mode."""
    return tiny_unet(seed, **{**ATTENTION, **overrides})


def with_live_interval_embedding(flow_map: FlowMapUNet2DModel, seed: int = 5) -> FlowMapUNet2DModel:
    """``flow_map`` with the interval embedding's zero last layer drawn at random (output then depends on r)."""
    generator = torch.Generator().manual_seed(seed)
    last = flow_map.interval_embedding.embedding.linear_2
    with torch.no_grad():
        for parameter in last.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return flow_map


def sample_for(flow_map: UNet2DModel, batch: int = 2, seed: int = 1, dtype: torch.dtype = torch.float32):
    """z of the model's shape, N(0, I)."""
    config = flow_map.config
    shape = (batch, config.in_channels, config.sample_size, config.sample_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
