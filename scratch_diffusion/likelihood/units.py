"""Units of likelihood for 8-bit images scaled to [−1, 1]: dequantisation, nats and bits per dimension.

**The data.** An 8-bit value k ∈ {0, …, 255} is stored as x = k/127.5 − 1, so neighbouring values are
Δ = 2/255 apart and value k owns the bin [x − Δ/2, x + Δ/2] = [x − 1/255, x + 1/255] (the bins of the
discretised decoder of Ho et al., 2020, Eq. 13). A discrete model assigns each image a probability
P(x) = ∫_bins p(y) dy; its negative log-likelihood in nats is −log P(x).

**Bits per dimension** of D = C·H·W values: ``bpd = −log P(x) / (D·log 2)``. The variational bound
gives −log P(x) directly (its decoder is discrete): :func:`bits_per_dim`.

**Continuous models and uniform dequantisation** (Theis et al., 2016; Song et al., 2021, App. D). The
ODE gives a *density* p(y). With y = x + Δ·(u − ½), u ~ U[0, 1)^D (:func:`dequantize`), Jensen gives

    −log P(x) = −log E_u[p(y)·Δ^D] ≤ E_u[−log p(y)] − D·log Δ,

so ``bpd ≤ (−log p(y) − D·log Δ)/(D·log 2) = −log p(y)/(D·log 2) − log₂ Δ`` averaged over u
(:func:`dequantized_bits_per_dim`). For Δ = 2/255, −log₂ Δ = log₂ 127.5 ≈ 6.994. This is the
variational-dequantisation-free convention of the literature: score-SDE scales 8-bit data to [0, 1]
as (k + u)/256 and adds 8 bits (Δ = 1/256); our Δ = 2/255 keeps the bins of the bound's decoder, so the
two methods bound the same discrete probabilities P(x).
"""

from __future__ import annotations

import math

import torch

NUM_LEVELS = 256
BIN_WIDTH_8BIT = 2.0 / (NUM_LEVELS - 1)  # Δ: spacing of k/127.5 − 1


def nats_to_bits_per_dim(nats: torch.Tensor | float, num_dims: int) -> torch.Tensor:
    """A per-example negative log-likelihood in nats → bits per dimension, ``nats / (D·log 2)``."""
    if num_dims < 1:
        raise ValueError(f"num_dims={num_dims}; it must be ≥ 1 (C·H·W of one example).")
    return torch.as_tensor(nats, dtype=torch.float64) / (num_dims * math.log(2.0))


def bits_per_dim(nll_nats: torch.Tensor | float, num_dims: int) -> torch.Tensor:
    """Bits/dim of a *discrete* negative log-likelihood (e.g. the variational bound): :func:`nats_to_bits_per_dim`."""
    return nats_to_bits_per_dim(nll_nats, num_dims)


def dequantized_nll(log_density: torch.Tensor, num_dims: int, bin_width: float = BIN_WIDTH_8BIT) -> torch.Tensor:
    """``−log p(y) − D·log Δ``: the uniform-dequantisation bound on −log P(x) in nats (module docstring)."""
    if not bin_width > 0:
        raise ValueError(f"bin_width={bin_width}; it must be > 0 (2/255 for 8-bit data in [−1, 1]).")
    return -torch.as_tensor(log_density, dtype=torch.float64) - num_dims * math.log(bin_width)


def dequantized_bits_per_dim(
    log_density: torch.Tensor, num_dims: int, bin_width: float = BIN_WIDTH_8BIT
) -> torch.Tensor:
    """Bits/dim from a density of dequantised data: ``−log p(y)/(D·log 2) − log₂ Δ`` (+6.994 for Δ = 2/255)."""
    return nats_to_bits_per_dim(dequantized_nll(log_density, num_dims, bin_width), num_dims)


def check_on_8bit_grid(images: torch.Tensor, tolerance: float = 1e-3) -> torch.Tensor:
    """``images`` snapped to the 8-bit grid k/127.5 − 1; ``ValueError`` if a value is off it by > tolerance·Δ.

    The bound's decoder and the dequantisation both assume the 8-bit values exactly (a float32 round
    trip is within tolerance).
    """
    x = torch.as_tensor(images)
    levels = ((x.to(torch.float64) + 1) * 127.5).round()
    error = ((x.to(torch.float64) + 1) * 127.5 - levels).abs()
    if x.numel() and (float(error.max()) > tolerance or float(x.min()) < -1 - 1e-6 or float(x.max()) > 1 + 1e-6):
        raise ValueError(
            f"images are not 8-bit values k/127.5 − 1 in [−1, 1] (largest offset {float(error.max()):.3g} of a "
            f"level, range [{float(x.min()):.3g}, {float(x.max()):.3g}]); likelihoods in bits/dim need 8-bit data."
        )
    return (levels / 127.5 - 1).to(x.dtype if x.is_floating_point() else torch.float32)


def dequantize(
    images: torch.Tensor, generator: torch.Generator | None = None, bin_width: float = BIN_WIDTH_8BIT
) -> torch.Tensor:
    """Uniform dequantisation ``y = x + Δ·(u − ½)``, u ~ U[0, 1)^D: a point of x's bin (same dtype)."""
    x = torch.as_tensor(images)
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64)
    return (x.to(torch.float64) + bin_width * (u - 0.5)).to(x.dtype).to(x.device)
