"""Shared helpers for the scheduler tests: a deterministic stand-in model and a relative error."""

from __future__ import annotations

import torch

from scratch_schedulers.noise_path import parametrization_of, signal_noise_at, target_for


def smooth_model(sample: torch.Tensor, timestep, variance_channels: str | None = None) -> torch.Tensor:
    """A deterministic, timestep-dependent 'model output' (no weights): 0.4·tanh(x) + 0.05·sin(t/97)."""
    t = torch.as_tensor(timestep, dtype=torch.float32)
    out = 0.4 * torch.tanh(sample) + 0.05 * torch.sin(t / 97.0)
    if variance_channels == "learned":  # a positive predicted variance
        return torch.cat([out, 0.01 * torch.sigmoid(sample)], dim=1)
    if variance_channels == "learned_range":  # a frac in [-1, 1]
        return torch.cat([out, torch.tanh(2 * sample)], dim=1)
    return out


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max|ours − reference| / max|reference| (the parity measure of issue 2)."""
    return float((ours - reference).abs().max() / reference.abs().max().clamp(min=1e-12))


def denoiser_model(scheduler, sample: torch.Tensor, timestep, variance_channels: str | None = None) -> torch.Tensor:
    """A model that behaves like a trained denoiser: x̂0 = 0.9·tanh(x) + 0.02·sin(t/97), with ε̂
    consistent with x_t, returned in the scheduler's parametrisation (its path coefficients come
    from the scheduler's own ᾱ, so ours and diffusers' see the same model)."""
    a, b = (c.to(torch.float32) for c in signal_noise_at(scheduler, timestep))
    x0 = 0.9 * torch.tanh(sample) + 0.02 * torch.sin(torch.as_tensor(timestep, dtype=torch.float32) / 97.0)
    eps = (sample - a * x0) / b
    out = target_for(parametrization_of(scheduler).prediction_type, x0, eps, a, b)
    if variance_channels == "learned":
        return torch.cat([out, 0.01 * torch.sigmoid(sample)], dim=1)
    if variance_channels == "learned_range":
        return torch.cat([out, torch.tanh(2 * sample)], dim=1)
    return out
