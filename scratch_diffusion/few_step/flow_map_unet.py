"""A flow map on diffusers' ``UNet2DModel``: the average velocity u(z_t, r, t) with a second time input r.

MeanFlow (Geng et al., 2025, "Mean Flows for One-step Generative Modeling") conditions the network on two times;
(t, t − r) is one of the conditionings its ablations compare. Here t enters through the UNet's own time
embedding, unchanged, and the interval t − r through one added submodule,

    emb = time_embedding(time_proj(t)) + interval_embedding(t − r)     (+ the class embedding, as before),

with ``interval_embedding`` = a sinusoidal projection with the settings of the UNet's ``time_proj`` (diffusers'
``Timesteps``) followed by a ``TimestepEmbedding`` MLP to the time-embedding width whose last linear layer starts
at zero. Both times are in the model's timestep units (timestep = σ·T on the flow path z_σ = (1 − σ)·x0 + σ·ε).

Why this shape:

- **No copy of diffusers' forward.** The sum goes in through a forward hook on ``self.time_embedding`` registered
  for one call and removed in a ``finally`` (as ``scratch_diffusion.control.residuals`` adds ControlNet residuals);
  the rest of ``UNet2DModel.forward`` is the installed one. The hook lives on the module while the call runs: do
  not call the same model from another thread meanwhile.
- **No extra config keys.** The class takes exactly ``UNet2DModel``'s constructor arguments, so
  ``FlowMapUNet2DModel.from_config(unet.config)`` builds it and ``save_pretrained``/``from_pretrained`` work as for
  any diffusers model (the saved config names ``_class_name: FlowMapUNet2DModel``).
- **A trained flow-matching UNet is the start.** At r = t, u is the instantaneous velocity v(z_t, t), which is what
  a flow-matching UNet predicts; :meth:`FlowMapUNet2DModel.from_unet` copies its weights, and the zero last layer
  makes the copy's output equal the UNet's bit for bit at every r until training moves it.

Loading a saved flow map with plain ``UNet2DModel.from_pretrained`` "works" and gives a different model: diffusers
warns that the checkpoint's ``interval_embedding.*`` weights were not used and drops them. What is left is the
flow map without its interval embedding, which is not even u(z, t, t) once training has made the embedding of
the interval 0 nonzero (it is u only while the last layer is still zero). Load flow maps with this class. Loading
a plain UNet folder with ``FlowMapUNet2DModel.from_pretrained`` gives what :meth:`FlowMapUNet2DModel.from_unet`
gives (a new zero interval embedding; diffusers warns that those weights were newly initialised).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import UNet2DModel
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

INTERVAL_EMBEDDING_PREFIX = "interval_embedding."
# The time embeddings a flow map can differentiate in t: a learned table (nn.Embedding) takes integer steps.
TIME_EMBEDDING_TYPES = ("positional", "fourier")


class IntervalEmbedding(nn.Module):
    """t − r (timestep units, (B,)) → (B, time-embedding width): sinusoids, then an MLP whose last layer is zero.

    Args:
        num_channels, flip_sin_to_cos, downscale_freq_shift: the settings of the UNet's sinusoidal ``time_proj``.
        time_embed_dim: the width of the UNet's time embedding.
    """

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, time_embed_dim: int):
        super().__init__()
        self.proj = Timesteps(num_channels, flip_sin_to_cos, downscale_freq_shift)
        self.embedding = TimestepEmbedding(num_channels, time_embed_dim)
        nn.init.zeros_(self.embedding.linear_2.weight)
        nn.init.zeros_(self.embedding.linear_2.bias)

    def forward(self, interval: torch.Tensor) -> torch.Tensor:
        """The embedding of ``interval`` (B,); the float32 sinusoids are cast to the MLP's dtype first."""
        return self.embedding(self.proj(interval).to(dtype=self.embedding.linear_1.weight.dtype))


def _per_example(value: torch.Tensor | float | int, batch: int, device: torch.device, name: str) -> torch.Tensor:
    """``value`` (a number, a 0-d tensor or shape (B,)) as a (B,) tensor on ``device``."""
    tensor = torch.as_tensor(value, device=device)
    if tensor.ndim == 0:
        tensor = tensor.reshape(1).expand(batch)
    if tuple(tensor.shape) != (batch,):
        raise ValueError(
            f"{name} of shape {tuple(tensor.shape)} is not allowed for a batch of {batch}: pass a number, a 0-d "
            f"tensor or a tensor of shape ({batch},)."
        )
    return tensor


@contextmanager
def _added_to_time_embedding(time_embedding: nn.Module, addition: torch.Tensor) -> Iterator[None]:
    """Within the block, ``time_embedding``'s output is its own plus ``addition`` (cast to the output's dtype)."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + addition.to(output.dtype)

    handle = time_embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class FlowMapUNet2DModel(UNet2DModel):
    """``UNet2DModel`` with a second time input: u(z_t, r, t), the average velocity over [r, t] (module docstring).

    Takes ``UNet2DModel``'s constructor arguments and no others (its config is a UNet's); ``time_embedding_type``
    must be one of ``TIME_EMBEDDING_TYPES`` (the interval projection is sinusoidal either way).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.config.time_embedding_type not in TIME_EMBEDDING_TYPES:
            raise ValueError(
                f"time_embedding_type={self.config.time_embedding_type!r} is not allowed for a flow map: MeanFlow "
                f"differentiates u in t, which a learned embedding table does not allow; use one of "
                f"{TIME_EMBEDDING_TYPES}."
            )
        self.interval_embedding = self._new_interval_embedding()

    # ConfigMixin reads the constructor's keys from its signature (from_config, from_pretrained): UNet2DModel's.
    __init__.__signature__ = inspect.signature(UNet2DModel.__init__)

    def _new_interval_embedding(self) -> IntervalEmbedding:
        """An interval embedding for this UNet (float32, on the CPU or the ``meta`` device being initialised on)."""
        return IntervalEmbedding(
            num_channels=self.config.block_out_channels[0],
            flip_sin_to_cos=self.config.flip_sin_to_cos,
            downscale_freq_shift=self.config.freq_shift,
            time_embed_dim=self.time_embedding.linear_2.out_features,
        )

    @classmethod
    def from_unet(cls, unet: UNet2DModel) -> FlowMapUNet2DModel:
        """A flow map with ``unet``'s config and weights and a zero interval embedding (equal to ``unet`` at any r).

        Keeps ``unet``'s device, dtype and train/eval mode; ``unet`` itself is not changed.
        """
        flow_map = cls.from_config(unet.config)
        missing, unexpected = flow_map.load_state_dict(unet.state_dict(), strict=False)
        stray = [key for key in missing if not key.startswith(INTERVAL_EMBEDDING_PREFIX)]
        if stray or unexpected:
            raise ValueError(f"{type(unet).__name__} does not match its own config: missing {stray}, unexpected "
                             f"{list(unexpected)}; pass a UNet2DModel.")  # fmt: skip
        if flow_map.dtype != unet.dtype:  # ModelMixin.to warns about fp32 modules whenever a dtype is passed
            flow_map = flow_map.to(unet.dtype)
        return flow_map.to(unet.device).train(unet.training)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> FlowMapUNet2DModel:
        """``ModelMixin.from_pretrained``; a plain UNet's checkpoint loads too, with a new zero interval embedding.

        (diffusers would leave the weights a checkpoint lacks on the ``meta`` device; they are made anew here, on
        the device and in the dtype of the loaded ``conv_in``.)
        """
        flow_map = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if any(parameter.is_meta for parameter in flow_map.interval_embedding.parameters()):
            weight = flow_map.conv_in.weight
            flow_map.interval_embedding = flow_map._new_interval_embedding().to(weight.device, weight.dtype)
        return flow_map

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        r_timestep: torch.Tensor | float | int | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple:
        """u(z_t, r, t): ``UNet2DModel.forward`` with the interval embedding of t − r added to the time embedding.

        Args:
            sample: z_t, (B, C, H, W).
            timestep: t in the model's timestep units (σ_t·T on the flow path), a number or (B,); passed to
                ``UNet2DModel.forward`` unchanged (which truncates a Python float to an integer: pass a tensor
                for fractional times; the interval t − r uses the same t).
            class_labels: as ``UNet2DModel`` takes them.
            r_timestep: r in the same units, a number or (B,); ``None`` means r = t (interval 0: the
                instantaneous velocity).
            return_dict: as ``UNet2DModel``.

        Returns:
            What ``UNet2DModel.forward`` returns: a ``UNet2DOutput``, or ``(sample,)`` with ``return_dict=False``.

        Raises:
            ValueError: if ``timestep`` or ``r_timestep`` is neither a number nor of shape (B,).
        """
        batch, device = sample.shape[0], sample.device
        # t as UNet2DModel.forward embeds it: a Python number becomes an integer (long) tensor there
        t = _per_example(timestep if torch.is_tensor(timestep) else int(timestep), batch, device, "timestep")
        r = t if r_timestep is None else _per_example(r_timestep, batch, device, "r_timestep")
        interval_emb = self.interval_embedding(t - r)
        with _added_to_time_embedding(self.time_embedding, interval_emb):
            return super().forward(sample, timestep, class_labels=class_labels, return_dict=return_dict)
