"""The one type of a denoiser as a plain callable: ``model_fn(x_t, t) → prediction``.

``x_t`` (B, C, H, W) is a point of a noise path x_t = a_t·x0 + b_t·ε; ``t`` the model's timestep (a
scalar for the whole batch, or one per example, shape (B,)); the result has ``x_t``'s shape and is what
the model was trained to predict (ε, x0, v or the flow velocity ε − x0). The training objectives, the
likelihood code and the pipeline's model calls all take a model in this form.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ModelFn = Callable[[torch.Tensor, "int | float | torch.Tensor"], torch.Tensor]

__all__ = ["ModelFn"]
