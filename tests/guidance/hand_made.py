"""Hand-made tensors and path points shared by the guidance rule tests (float64)."""

from __future__ import annotations

import torch

from scratch_diffusion.guidance import EvaluationPoint
from scratch_schedulers.path_change import point_log_snr

SHAPE = (2, 3, 4, 4)


def hand_made(seed: int, count: int = 3, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """``count`` standard normal tensors of SHAPE from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=generator, dtype=dtype) for _ in range(count)]


def point(a: float, b: float) -> EvaluationPoint:
    """The evaluation point x = a·x0 + b·ε, with its log-SNR."""
    return EvaluationPoint(a, b, point_log_snr(a, b))


def largest(*tensors: torch.Tensor) -> float:
    """max |t| over the tensors: the W of a rounding bound n·u·W."""
    return max(float(t.abs().max()) for t in tensors)
