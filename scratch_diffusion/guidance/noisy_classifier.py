"""A noise-aware classifier p_φ(y | x_t): the down half of a ``UNet2DModel`` with a pooling head.

Classifier guidance (Dhariwal & Nichol, 2021, §4 and App. F) needs log p_φ(y | x_t) at every noise level the
sampler visits, so the classifier sees the noisy sample *and* its timestep, exactly as the diffusion UNet does:
the same sinusoidal timestep embedding (``Timesteps`` → ``TimestepEmbedding``), diffusers' own down blocks
(``get_down_block``) and mid block (``UNetMidBlock2D``), then ADM's "adaptive" head — GroupNorm, activation,
global average pooling and a linear layer to the logits (zero-initialised, so an untrained classifier answers
the uniform distribution). The timestep is the UNet's own: t ∈ [0, T) on the VP path, σ·T on the flow path.

The config records the path (``noise_path``) and training schedule (``noise_schedule``, the dict a
``ScratchDiffusionPipeline`` records) the classifier was trained on, so guidance can refuse a classifier whose
timesteps mean other noise levels. :meth:`NoisyClassifier.from_unet_config` builds one "like" a pipeline's UNet.
``training/train_classifier.py`` trains it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block
from torch import nn

from scratch_schedulers import Parametrization
from scratch_schedulers.model_path import VP_SCHEDULE_DEFAULTS, ModelPath
from scratch_schedulers.noise_path import NOISE_PATHS

# The UNet2DModel down blocks that take a timestep embedding and no skip sample (the skip blocks are NCSN++'s).
DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D")
# The keys of a UNet2DModel config that from_unet_config copies (the classifier's input and encoder).
MIRRORED_UNET_KEYS = (
    "sample_size", "in_channels", "block_out_channels", "layers_per_block", "down_block_types", "norm_num_groups",
    "attention_head_dim", "add_attention", "norm_eps", "act_fn", "downsample_type", "flip_sin_to_cos", "freq_shift",
    "dropout",
)  # fmt: skip
# Any prediction type of the path: a ModelPath is used here only for its clock (λ ↔ timestep), never its outputs.
_ANY_PREDICTION = {"vp": "epsilon", "flow": "flow_velocity"}


def check_noise_schedule(noise_path: str, noise_schedule: Mapping | None) -> None:
    """``noise_schedule`` is None or a schedule of ``noise_path`` (``cross_path.noise_schedule_of``'s keys)."""
    if noise_schedule is None:
        return
    if not isinstance(noise_schedule, Mapping):
        raise ValueError(f"noise_schedule={noise_schedule!r} is not allowed; pass a dict (or None).")
    allowed = {"num_train_timesteps"} if noise_path == "flow" else set(VP_SCHEDULE_DEFAULTS)
    unknown = sorted(set(noise_schedule) - allowed)
    if unknown or "num_train_timesteps" not in noise_schedule:
        raise ValueError(
            f"noise_schedule={dict(noise_schedule)} is not a {noise_path!r} schedule (unknown keys {unknown}); "
            f"allowed keys: {sorted(allowed)}, num_train_timesteps required."
        )
    try:
        ModelPath.from_schedule(Parametrization(noise_path, _ANY_PREDICTION[noise_path]), noise_schedule)
    except (ValueError, TypeError) as err:
        raise ValueError(f"noise_schedule={dict(noise_schedule)} is not allowed: {err}") from None


class NoisyClassifier(ModelMixin, ConfigMixin):
    """logits = f_φ(x_t, t) of shape (B, num_classes): a UNet2DModel's encoder, mid block and a pooling head.

    Args:
        sample_size: the sample side (pixels, or latents on a latent pipeline), divisible by 2^(levels − 1).
        in_channels: the sample's channels.
        num_classes: classes K ≥ 2.
        block_out_channels, layers_per_block, down_block_types, norm_num_groups, attention_head_dim, add_attention,
            norm_eps, act_fn, downsample_type, flip_sin_to_cos, freq_shift, dropout: as ``UNet2DModel``'s.
        noise_path: ``"vp"`` or ``"flow"``, the path of the timesteps it is given.
        noise_schedule: the path's training schedule (a pipeline's ``noise_schedule``); None: unknown.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 16,
        in_channels: int = 1,
        num_classes: int = 10,
        block_out_channels: tuple[int, ...] = (32, 64),
        layers_per_block: int = 1,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D"),
        norm_num_groups: int = 8,
        attention_head_dim: int | None = 8,
        add_attention: bool = True,
        norm_eps: float = 1e-5,
        act_fn: str = "silu",
        downsample_type: str = "conv",
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        dropout: float = 0.0,
        noise_path: str = "flow",
        noise_schedule: dict | None = None,
    ):
        super().__init__()
        levels = len(block_out_channels)
        checks = (
            (isinstance(num_classes, int) and num_classes >= 2, f"num_classes={num_classes!r}", "an integer ≥ 2"),
            (noise_path in NOISE_PATHS, f"noise_path={noise_path!r}", f"one of {list(NOISE_PATHS)}"),
            (isinstance(in_channels, int) and in_channels >= 1, f"in_channels={in_channels!r}", "an integer ≥ 1"),
            (isinstance(layers_per_block, int) and layers_per_block >= 1, f"layers_per_block={layers_per_block!r}",
             "an integer ≥ 1"),
            (levels >= 1 and len(down_block_types) == levels,
             f"block_out_channels={list(block_out_channels)} with down_block_types={list(down_block_types)}",
             "one down block type per width (at least one)"),
            (all(kind in DOWN_BLOCK_TYPES for kind in down_block_types), f"down_block_types={list(down_block_types)}",
             f"types from {list(DOWN_BLOCK_TYPES)}"),
            (all(isinstance(w, int) and w >= 1 and w % norm_num_groups == 0 for w in block_out_channels),
             f"block_out_channels={list(block_out_channels)} with norm_num_groups={norm_num_groups}",
             "positive widths divisible by norm_num_groups"),
            (isinstance(sample_size, int) and sample_size >= 1 and sample_size % 2 ** (levels - 1) == 0,
             f"sample_size={sample_size!r}", f"a positive multiple of {2 ** (levels - 1)} ({levels} levels)"),
        )  # fmt: skip
        for holds, value, allowed in checks:
            if not holds:
                raise ValueError(f"{value} is not allowed; pass {allowed}.")
        check_noise_schedule(noise_path, noise_schedule)

        time_dim = block_out_channels[0] * 4
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_dim)
        self.down_blocks = nn.ModuleList()
        for i, (kind, width) in enumerate(zip(down_block_types, block_out_channels, strict=True)):
            self.down_blocks.append(
                get_down_block(
                    kind,
                    num_layers=layers_per_block,
                    in_channels=block_out_channels[max(i - 1, 0)],
                    out_channels=width,
                    temb_channels=time_dim,
                    add_downsample=i < levels - 1,
                    resnet_eps=norm_eps,
                    resnet_act_fn=act_fn,
                    resnet_groups=norm_num_groups,
                    attention_head_dim=attention_head_dim if attention_head_dim is not None else width,
                    downsample_padding=1,
                    downsample_type=downsample_type,
                    dropout=dropout,
                )
            )
        width = block_out_channels[-1]
        self.mid_block = UNetMidBlock2D(
            in_channels=width,
            temb_channels=time_dim,
            dropout=dropout,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            attention_head_dim=attention_head_dim if attention_head_dim is not None else width,
            resnet_groups=norm_num_groups,
            add_attention=add_attention,
        )
        self.norm_out = nn.GroupNorm(norm_num_groups, width, eps=norm_eps)
        self.act_out = get_activation(act_fn)
        self.classify = nn.Linear(width, num_classes)
        nn.init.zeros_(self.classify.weight)  # ADM's zero_module: uniform p(y | x_t) before training
        nn.init.zeros_(self.classify.bias)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int) -> torch.Tensor:
        """Logits (B, num_classes) of ``sample`` (B, C, H, W) at ``timestep`` (a scalar or one per example)."""
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(sample.shape[0])
        elif timesteps.shape != (sample.shape[0],):
            raise ValueError(
                f"timestep of shape {tuple(timesteps.shape)} is not allowed for a batch of {sample.shape[0]}; "
                "pass a scalar or one timestep per example."
            )
        emb = self.time_embedding(self.time_proj(timesteps).to(self.dtype))  # the projection is float32
        hidden = self.conv_in(sample)
        for block in self.down_blocks:
            hidden, _ = block(hidden_states=hidden, temb=emb)
        hidden = self.act_out(self.norm_out(self.mid_block(hidden, emb)))
        return self.classify(hidden.mean(dim=(-2, -1)))

    @property
    def model_path(self) -> ModelPath:
        """Its path with the clock from a log-SNR λ to its timestep (``ModelPath.point``); needs ``noise_schedule``."""
        path, schedule = self.config.noise_path, self.config.noise_schedule
        if schedule is None:
            raise ValueError("this classifier records no noise_schedule, so its timesteps' noise levels are unknown.")
        return ModelPath.of_schedule(Parametrization(path, _ANY_PREDICTION[path]), dict(schedule))

    @classmethod
    def from_unet_config(
        cls,
        unet_config: Mapping,
        num_classes: int,
        noise_path: str,
        noise_schedule: Mapping | None,
        **overrides,
    ) -> NoisyClassifier:
        """A fresh classifier with a UNet2DModel's input and encoder (:data:`MIRRORED_UNET_KEYS`; the UNet's
        defaults where its config is silent); ``overrides`` (any argument of :class:`NoisyClassifier`) win."""
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"overrides {unknown} are not NoisyClassifier arguments; allowed: {sorted(known)}.")
        unet_defaults = {
            name: parameter.default for name, parameter in inspect.signature(UNet2DModel.__init__).parameters.items()
        }
        mirrored = {key: unet_config.get(key, unet_defaults[key]) for key in MIRRORED_UNET_KEYS}
        schedule = None if noise_schedule is None else dict(noise_schedule)
        arguments = {**mirrored, "num_classes": num_classes, "noise_path": noise_path, "noise_schedule": schedule}
        return cls(**{**arguments, **overrides})
