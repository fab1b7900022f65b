"""Tiny UNets of every kind the control network copies, their inputs, and UNet2DModel.forward re-traced by hand."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from torch import nn

from scratch_diffusion.control import ControlNet2DModel

from ..pipelines.helpers import tiny_unet

ATTENTION = dict(
    block_out_channels=(8, 16, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=4,
)
# Overrides of tests/pipelines/helpers.py's tiny UNet (8×8 RGB, two levels, one resnet per block).
CONFIGS = {
    "plain": {},
    "class_conditional": dict(num_class_embeds=5),
    "attention": ATTENTION,
    "attention_resnet_sampling": dict(
        ATTENTION, downsample_type="resnet", upsample_type="resnet", resnet_time_scale_shift="scale_shift"
    ),
    "two_resnets_per_block": dict(
        layers_per_block=2,
        down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
        up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
    ),
    "fourier_centred": dict(time_embedding_type="fourier", center_input_sample=True),
    "ncsnpp_skip_blocks": dict(  # the skip blocks' attention norms take 32 groups... of 32 channels at least
        time_embedding_type="fourier",
        block_out_channels=(32, 32),
        norm_num_groups=8,
        attention_head_dim=4,
        down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
        up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"),
    ),
    "timestep_class_embedding": dict(class_embed_type="timestep"),
    "learned_time_embedding": dict(time_embedding_type="learned", num_train_timesteps=1000),
    "no_mid_block": dict(mid_block_type=None),
}
# The configurations UNet2DModel.forward takes an integer timestep and no skip sample in (reference_forward's).
POSITIONAL = ["plain", "class_conditional", "attention", "attention_resnet_sampling", "two_resnets_per_block",
              "no_mid_block"]  # fmt: skip


def unet_of(name: str, seed: int = 0, **overrides) -> UNet2DModel:
    return tiny_unet(seed, **{**CONFIGS[name], **overrides})


def inputs_for(unet: UNet2DModel, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(sample, timestep, UNet keywords) for ``unet``: σ ∈ (0, 1) for Fourier embeddings, integer steps otherwise."""
    generator = torch.Generator().manual_seed(seed)
    config = unet.config
    sample = torch.randn(batch, config.in_channels, config.sample_size, config.sample_size, generator=generator)
    if config.time_embedding_type == "fourier":
        timestep = torch.rand(batch, generator=generator) * 0.9 + 0.05
    else:
        timestep = torch.randint(0, 1000, (batch,), generator=generator)
    keywords = {}
    if config.num_class_embeds is not None:
        keywords["class_labels"] = torch.randint(0, config.num_class_embeds, (batch,), generator=generator)
    elif config.class_embed_type == "timestep":
        keywords["class_labels"] = torch.randint(0, 10, (batch,), generator=generator)
    return sample, timestep, keywords


def control_image_for(controlnet: ControlNet2DModel, sample: torch.Tensor, seed: int = 2) -> torch.Tensor:
    """A control image in [0, 1] of the shape ``controlnet`` needs for ``sample``."""
    factor = controlnet.config.conditioning_downscale_factor
    batch, _, height, width = sample.shape
    shape = (batch, controlnet.config.conditioning_channels, height * factor, width * factor)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def randomised(controlnet: ControlNet2DModel, seed: int = 3) -> ControlNet2DModel:
    """``controlnet`` with its zero convolutions (the residuals' and the encoder's last) drawn at random."""
    generator = torch.Generator().manual_seed(seed)
    zero_convs = [*controlnet.down_zero_convs, controlnet.mid_zero_conv, controlnet.conditioning_encoder.conv_out]
    with torch.no_grad():
        for conv in zero_convs:
            for parameter in conv.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return controlnet


def unet_skips(unet: UNet2DModel, sample: torch.Tensor, timestep, **keywords) -> dict[str, object]:
    """What the UNet's up path receives in a plain call: the skips in the order UNet2DModel.forward collects them,
    the mid block's output and the blocks' time embedding ``temb`` (read by hooks, then removed)."""
    consumed: list[tuple[torch.Tensor, ...]] = []
    seen: dict[str, torch.Tensor] = {}

    def keep_temb(module, args, kwargs) -> None:
        seen["temb"] = kwargs["temb"]

    def keep_mid(module, args, output) -> None:
        seen["mid"] = output

    handles = [block.register_forward_pre_hook(lambda m, a: consumed.append(a[1])) for block in unet.up_blocks]
    handles.append(unet.down_blocks[0].register_forward_pre_hook(keep_temb, with_kwargs=True))
    if unet.mid_block is not None:
        handles.append(unet.mid_block.register_forward_hook(keep_mid))
    try:
        unet(sample, timestep, **keywords)
    finally:
        for handle in handles:
            handle.remove()
    # up block i takes the last len(resnets) skips left: the collected order is the up blocks' tuples reversed
    skips = [skip for taken in reversed(consumed) for skip in taken]
    return {"skips": skips, **seen}


def reference_forward(
    unet: UNet2DModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    down_residuals: list[torch.Tensor],
    mid_residual: torch.Tensor,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """UNet2DModel.forward re-traced module by module (an integer timestep, no skip blocks, no centring) with the
    residuals added by hand: skip k + ``down_residuals[k]`` in the order the down path collects them, and the mid
    block's output (the down path's, without a mid block) + ``mid_residual``."""
    timesteps = torch.as_tensor(timestep).reshape(-1).expand(len(sample))
    emb = unet.time_embedding(unet.time_proj(timesteps).to(unet.dtype))
    if class_labels is not None:
        emb = emb + unet.class_embedding(class_labels).to(unet.dtype)
    hidden = unet.conv_in(sample)
    skips = [hidden]
    for block in unet.down_blocks:
        hidden, states = block(hidden_states=hidden, temb=emb)
        skips += states
    skips = [skip + residual for skip, residual in zip(skips, down_residuals, strict=True)]
    if unet.mid_block is not None:
        hidden = unet.mid_block(hidden, emb)
    hidden = hidden + mid_residual
    for block in unet.up_blocks:
        taken = len(block.resnets)
        hidden = block(hidden, tuple(skips[-taken:]), emb)
        skips = skips[:-taken]
    assert not skips
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
