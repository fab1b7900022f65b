"""A control network for a frozen ``UNet2DModel`` (ControlNet: Zhang, Rao & Agrawala, 2023).

The network is a trainable copy of the UNet's encoder — ``conv_in``, the time (and class) embedding, the down
blocks and the mid block — whose input is the noisy sample plus the encoded control image,
h₀ = conv_in(x_t) + E(c) (``conditioning_encoder.py``). Every tensor the UNet keeps for a skip connection (conv_in's
output and each resnet / downsampler output of the down blocks, the ``down_block_res_samples`` of
``UNet2DModel.forward``) and the mid block's output pass through a zero-initialised 1×1 convolution Z; the results,
times ``conditioning_scale``, are the residuals ``ControlledUNet`` adds to the frozen UNet's skips and mid block:
y_c = F(x; Θ) + Z(F(x + Z(c; Θ_z1); Θ_c); Θ_z2) (the paper's Eq. 2). At initialisation every Z is zero, so the
residuals are exactly zero and the controlled UNet's output is the UNet's bit for bit.

The copied parts are not rebuilt here: ``__init__`` builds a ``UNet2DModel`` from the copied config keys
(:data:`COPIED_UNET_KEYS`) and keeps its modules, so they are diffusers' own blocks with diffusers' construction.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from .conditioning_encoder import ConditioningEncoder, is_power_of_two

# The UNet2DModel config keys that define the copied path (everything but the up path and out_channels).
COPIED_UNET_KEYS = (
    "sample_size", "in_channels", "center_input_sample", "time_embedding_type", "time_embedding_dim", "freq_shift",
    "flip_sin_to_cos", "down_block_types", "mid_block_type", "block_out_channels", "layers_per_block",
    "mid_block_scale_factor", "downsample_padding", "downsample_type", "dropout", "act_fn", "attention_head_dim",
    "norm_num_groups", "attn_norm_num_groups", "norm_eps", "resnet_time_scale_shift", "add_attention",
    "class_embed_type", "num_class_embeds", "num_train_timesteps",
)  # fmt: skip
# The UNet2DModel modules the control network copies (weights included, by ``from_unet``).
COPIED_UNET_MODULES = ("conv_in", "time_proj", "time_embedding", "class_embedding", "down_blocks", "mid_block")
# Down blocks whose skip tensors are one per resnet plus one after the downsampler (UNet2DModel's 2-D blocks).
CONTROL_DOWN_BLOCK_TYPES = (
    "DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D", "SkipDownBlock2D", "AttnSkipDownBlock2D",
)  # fmt: skip
UNET_CONFIG_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(UNet2DModel.__init__).parameters.items()
    if name != "self"
}


@dataclass
class ControlNet2DOutput(BaseOutput):
    """The residuals of :class:`ControlNet2DModel`, already scaled by ``conditioning_scale``.

    Args:
        down_block_res_samples: one per skip tensor of ``UNet2DModel.forward``, in the order it collects them.
        mid_block_res_sample: added to the mid block's output.
    """

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor


def zero_conv(channels: int) -> nn.Conv2d:
    """A 1×1 convolution with zero weight and bias (the paper's zero convolution Z)."""
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def check_control_image(
    control_image: object, sample_shape: tuple[int, ...], conditioning_channels: int, downscale_factor: int
) -> None:
    """``control_image`` is a tensor (B, C_c, f·H, f·W) for a sample (B, C, H, W); raises naming both shapes."""
    if not isinstance(control_image, torch.Tensor):
        raise TypeError(f"controlnet_cond of type {type(control_image).__name__} is not allowed; pass a tensor.")
    batch, _, height, width = sample_shape
    needed = (batch, conditioning_channels, height * downscale_factor, width * downscale_factor)
    if tuple(control_image.shape) != needed:
        raise ValueError(
            f"controlnet_cond of shape {tuple(control_image.shape)} is not allowed with a sample of shape "
            f"{tuple(sample_shape)}; the control network needs {needed}: the sample's batch, "
            f"conditioning_channels={conditioning_channels} and conditioning_downscale_factor={downscale_factor} "
            "times the sample's height and width."
        )


def _as_saved(value: object) -> object:
    """A config value with tuples as lists (a saved config reads back lists)."""
    return [_as_saved(item) for item in value] if isinstance(value, (list, tuple)) else value


def check_controlnet_fits_unet(controlnet: object, unet_config: Mapping) -> None:
    """The ``controlnet`` component was made from a UNet of ``unet_config`` (pipeline row check).

    Raises:
        ValueError: naming the first of :data:`COPIED_UNET_KEYS` that differs.
    """
    config = controlnet.config
    for key in COPIED_UNET_KEYS:
        made_from = _as_saved(config.get(key, UNET_CONFIG_DEFAULTS[key]))
        unet_value = _as_saved(unet_config.get(key, UNET_CONFIG_DEFAULTS[key]))
        if made_from != unet_value:
            raise ValueError(
                f"the control network was made from a UNet with {key}={made_from!r}, but this UNet has "
                f"{key}={unet_value!r}; allowed: ControlNet2DModel.from_unet(unet) of this UNet (equal {key})."
            )


class ControlNet2DModel(ModelMixin, ConfigMixin):
    """Residuals for a frozen ``UNet2DModel``'s skips and mid block from a control image (module docstring).

    Args:
        sample_size … num_train_timesteps: as ``UNet2DModel``'s (:data:`COPIED_UNET_KEYS`; the same defaults);
            ``down_block_types`` from :data:`CONTROL_DOWN_BLOCK_TYPES`.
        conditioning_channels: the control image's channels.
        conditioning_downscale_factor: a power of 2; the control image is that many times the sample's height and
            width (1 for pixel pipelines, the VAE scale factor for latent ones).
        conditioning_embedding_channels: the conditioning encoder's hidden widths.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns: ClassVar[list[str]] = ["norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
        conditioning_channels: int = 3,
        conditioning_downscale_factor: int = 1,
        conditioning_embedding_channels: tuple[int, ...] = (16, 32),
    ):
        super().__init__()
        arguments = locals()
        unet_config = {key: arguments[key] for key in COPIED_UNET_KEYS}
        checks = (
            (all(kind in CONTROL_DOWN_BLOCK_TYPES for kind in down_block_types),
             f"down_block_types={list(down_block_types)}", f"types from {list(CONTROL_DOWN_BLOCK_TYPES)}"),
            (isinstance(conditioning_channels, int) and conditioning_channels >= 1,
             f"conditioning_channels={conditioning_channels!r}", "an integer ≥ 1"),
            (is_power_of_two(conditioning_downscale_factor),
             f"conditioning_downscale_factor={conditioning_downscale_factor!r}", "a power of 2 (1, 2, 4, 8, …)"),
            (len(conditioning_embedding_channels) >= 1
             and all(isinstance(w, int) and w >= 1 for w in conditioning_embedding_channels),
             f"conditioning_embedding_channels={list(conditioning_embedding_channels)}",
             "one or more positive integer widths"),
        )  # fmt: skip
        for holds, value, allowed in checks:
            if not holds:
                raise ValueError(f"{value} is not allowed; pass {allowed}.")
        # diffusers builds the copied path; the up path it also builds (one plain block per level) is dropped.
        unet = UNet2DModel(**unet_config, up_block_types=("UpBlock2D",) * len(down_block_types))
        self.conv_in = unet.conv_in
        self.time_proj = unet.time_proj
        self.time_embedding = unet.time_embedding
        self.class_embedding = unet.class_embedding
        self.down_blocks = unet.down_blocks
        self.mid_block = unet.mid_block
        self.conditioning_encoder = ConditioningEncoder(
            conditioning_channels, block_out_channels[0], conditioning_downscale_factor,
            tuple(conditioning_embedding_channels),
        )  # fmt: skip
        skip_channels = [block_out_channels[0]]
        for block in self.down_blocks:  # one skip per resnet, one after the downsampler (CONTROL_DOWN_BLOCK_TYPES)
            count = len(block.resnets) + (block.downsamplers is not None)
            skip_channels += [block.resnets[-1].out_channels] * count
        self.down_zero_convs = nn.ModuleList(zero_conv(channels) for channels in skip_channels)
        self.mid_zero_conv = zero_conv(block_out_channels[-1])

    def embedding(
        self, sample: torch.Tensor, timestep: torch.Tensor | float | int, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The time (plus class) embedding the blocks receive, computed as ``UNet2DModel.forward`` does.

        A Python number becomes an integer tensor (as the UNet does); a 0-d or 1-element timestep is broadcast to
        the batch.
        """
        if not torch.is_tensor(timestep):
            timesteps = torch.tensor([timestep], dtype=torch.long, device=sample.device)
        else:
            timesteps = timestep.reshape(-1).to(sample.device) if timestep.ndim == 0 else timestep
        if timesteps.ndim != 1 or len(timesteps) not in (1, sample.shape[0]):
            raise ValueError(
                f"timestep of shape {tuple(timesteps.shape)} is not allowed for a batch of {sample.shape[0]}; "
                "pass a scalar or one timestep per example."
            )
        timesteps = timesteps.expand(sample.shape[0])
        # the projection has no weights and answers float32; the embedding may run in another dtype
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=self.dtype))
        if self.class_embedding is None:
            if class_labels is not None:
                raise ValueError(
                    "class_labels are not allowed: this control network (like its UNet) is unconditional "
                    "(class_embed_type=None, num_class_embeds=None); pass class_labels=None."
                )
            return emb
        if class_labels is None:
            raise ValueError("class_labels=None is not allowed: this control network's UNet is class-conditional.")
        if self.config.class_embed_type == "timestep":
            class_labels = self.time_proj(class_labels)
        return emb + self.class_embedding(class_labels).to(dtype=self.dtype)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        controlnet_cond: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        conditioning_scale: float | torch.Tensor = 1.0,
        return_dict: bool = True,
    ) -> ControlNet2DOutput | tuple:
        """The scaled residuals for the UNet's skips and mid block.

        Args:
            sample: the noisy sample (B, C, H, W) the UNet is given.
            timestep: the UNet's timestep (a number, a 0-d tensor or one per example).
            controlnet_cond: the control image (B, conditioning_channels, f·H, f·W) in [0, 1], cast to the
                network's dtype.
            class_labels: the UNet's class labels (a class-conditional UNet's network needs them).
            conditioning_scale: multiplies every residual: a number, or a tensor (B,) of one scale per example.
            return_dict: a :class:`ControlNet2DOutput`, else the tuple ``(down_block_res_samples, mid)``.
        """
        check_control_image(
            controlnet_cond, tuple(sample.shape), self.config.conditioning_channels,
            self.config.conditioning_downscale_factor,
        )  # fmt: skip
        if isinstance(conditioning_scale, torch.Tensor) and conditioning_scale.ndim == 1:
            if len(conditioning_scale) != sample.shape[0]:
                raise ValueError(
                    f"conditioning_scale of shape {tuple(conditioning_scale.shape)} is not allowed for a batch of "
                    f"{sample.shape[0]}; pass a number or one scale per example."
                )
            conditioning_scale = conditioning_scale[:, None, None, None]
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = self.embedding(sample, timestep, class_labels)
        skip_sample = sample
        hidden = self.conv_in(sample) + self.conditioning_encoder(controlnet_cond.to(self.dtype))
        skips = [hidden]
        for block in self.down_blocks:
            if hasattr(block, "skip_conv"):  # NCSN++'s skip blocks also carry the downsampled input
                hidden, states, skip_sample = block(hidden_states=hidden, temb=emb, skip_sample=skip_sample)
            else:
                hidden, states = block(hidden_states=hidden, temb=emb)
            skips += states
        if self.mid_block is not None:
            hidden = self.mid_block(hidden, emb)
        down = tuple(conv(skip) * conditioning_scale for conv, skip in zip(self.down_zero_convs, skips, strict=True))
        mid = self.mid_zero_conv(hidden) * conditioning_scale
        if not return_dict:
            return down, mid
        return ControlNet2DOutput(down_block_res_samples=down, mid_block_res_sample=mid)

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DModel,
        conditioning_channels: int | None = None,
        conditioning_downscale_factor: int = 1,
        conditioning_embedding_channels: tuple[int, ...] = (16, 32),
        load_weights_from_unet: bool = True,
    ) -> ControlNet2DModel:
        """A control network for ``unet``: its copied path's config, and (by default) its weights copied exactly.

        Args:
            unet: the frozen UNet.
            conditioning_channels: the control image's channels (None: the UNet's ``in_channels``, right for a pixel
                pipeline; pass the image's channels for a latent one).
            conditioning_downscale_factor: 1 for a pixel pipeline, the VAE scale factor for a latent one.
            conditioning_embedding_channels: the conditioning encoder's widths.
            load_weights_from_unet: copy the UNet's weights into the copied modules (else diffusers' fresh init).

        Returns:
            A float32 network on the UNet's device (a trainable copy, whatever the UNet's dtype).
        """
        config = {key: unet.config.get(key, UNET_CONFIG_DEFAULTS[key]) for key in COPIED_UNET_KEYS}
        controlnet = cls(
            **config,
            conditioning_channels=unet.config.in_channels if conditioning_channels is None else conditioning_channels,
            conditioning_downscale_factor=conditioning_downscale_factor,
            conditioning_embedding_channels=tuple(conditioning_embedding_channels),
        )
        if load_weights_from_unet:
            for name in COPIED_UNET_MODULES:
                source = getattr(unet, name)
                if source is not None:
                    getattr(controlnet, name).load_state_dict(source.state_dict())
        return controlnet.to(unet.device)
