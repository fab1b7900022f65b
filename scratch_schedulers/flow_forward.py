"""The forward process of the flow path, x_σ = (1 − σ)·x0 + σ·ε with t = σ·T, for every flow scheduler.

``add_noise`` (training, image-to-image), diffusers' ``scale_noise`` name for it, and the training target
``get_velocity`` = ε − x0: one definition that ``ScratchFlowMatchScheduler`` and ``ScratchFlowMapScheduler`` share.
"""

from __future__ import annotations

import torch

from .noise_path import append_dims
from .scheduling_common import check_same_shape, check_timestep_batch


class FlowForwardProcess:
    """Mixin: the flow path's forward process for a scheduler with ``config.num_train_timesteps``."""

    def _sigma(self, timesteps: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
        """σ = t/T for a scalar or a batch of timesteps, broadcast against ``like``."""
        T = self.config.num_train_timesteps
        check_timestep_batch(timesteps, like)
        t = torch.as_tensor(timesteps)
        if t.device.type == "cpu" and not bool(((t >= 0) & (t <= T)).all()):  # host check only: no sync; NaN fails
            raise ValueError(f"flow timesteps must lie in [0, {T}], got {t.flatten()[:8].tolist()}.")
        sigma = t.to(device=like.device, dtype=torch.float32) / T
        return append_dims(sigma, like.ndim).to(like.dtype)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x_σ = (1 − σ)·x0 + σ·ε for a batch of timesteps t = σ·T (any real t in [0, T])."""
        check_same_shape(original_samples, noise, "original_samples", "noise")
        sigma = self._sigma(timesteps, original_samples)
        return (1 - sigma) * original_samples + sigma * noise

    def scale_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor | float, noise: torch.Tensor
    ) -> torch.Tensor:
        """diffusers' name for the forward process (img2img): σ·noise + (1 − σ)·sample."""
        return self.add_noise(sample, noise, timestep)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps=None) -> torch.Tensor:
        """The training target u = ε − x0 (independent of t on this path)."""
        check_same_shape(sample, noise, "sample", "noise")
        return noise - sample

