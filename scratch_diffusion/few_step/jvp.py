"""The total time derivative of a flow map by forward-mode AD, for MeanFlow's target (Geng et al., 2025).

On the flow path z_σ = (1 − σ)·x0 + σ·ε the trajectory moves at dz/dσ = v, so with r held fixed

    du/dσ_t = ∂_z u · v + ∂_σt u,

one Jacobian-vector product of (z, r, t) ↦ u(z, r, t) with tangent (v, 0, dt/dσ) (``torch.func.jvp``).

Units: the derivative returned is always du/dσ_t, the one MeanFlow's target needs in σ units,
u_tgt = v − (σ_t − σ_r)·du/dσ_t (``meanflow.meanflow_target``). ``model_fn`` takes r and t in its own units and
``dt_dsigma`` says which: 1 for σ (a wrapper that multiplies by T before calling the UNet; the default), T =
``num_train_timesteps`` for the UNet's timestep units t = σ_t·T.

Gradients: ``torch.func.jvp``'s primal output u keeps its autograd graph to the parameters the model closes over
(tested: its loss's gradient equals a plain forward's), so one evaluation serves both the loss on u and the
target; the derivative comes back detached (the target's stop-gradient). Under ``torch.no_grad()`` the JVP still
runs (u then has no graph). With gradient checkpointing (``enable_gradient_checkpointing``) u's backward fails
(``CheckpointError``: the recomputation does not redo the tangents): there, take the derivative under
``torch.no_grad()`` and the loss from a plain forward.

Attention: forward-mode AD is not implemented for PyTorch's fused ``scaled_dot_product_attention`` kernels
(pytorch#128971; on the CPU too: ``_scaled_dot_product_flash_attention_for_cpu``), which diffusers' default
``AttnProcessor2_0`` calls. :func:`jvp_safe_attention` switches every attention layer to diffusers' math
``AttnProcessor`` for the duration, with one change: its (B, C, H, W) output is a strided view of a transposed
tensor, and the GroupNorm of the next resnet block has a forward-AD rule that ``view``s its input's tangent, which
fails on those strides ("view size is not compatible with input tensor's size and stride", torch 2.13); the
output is made contiguous (:class:`ContiguousAttnProcessor`). The same function up to rounding (where a layer has
``upcast_softmax``, as UNet2DModel's do, the math processor takes the softmax in float32 even for float64).

Mixed precision: forward-mode AD through autocast's float32 ops leaves tangents in the wrong dtype (a UNet under
bfloat16 autocast: "Input type (torch.FloatTensor) and weight type (CPUBFloat16Type) should be the same" after a
``group_norm``; torch 2.13, CPU), so autocast is switched off for the JVP, which then runs in the weights' dtype
(float32 weights under autocast: a float32 JVP; bfloat16 weights work as they are).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    AttnProcessorNPU,
    SlicedAttnProcessor,
    XFormersAttnProcessor,
)
from torch import nn


class ContiguousAttnProcessor(AttnProcessor):
    """diffusers' math ``AttnProcessor`` with a contiguous output (forward-mode AD through the next GroupNorm)."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        output = super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return output.contiguous()


# Processors computing softmax(QKᵀ/√d)·V from the layer's own to_q/to_k/to_v, whatever the kernel: the math
# processor computes the same function. Others (fused QKV weights, added KV projections, trainable processors
# such as IP-adapters) would change the function, so they are refused rather than replaced.
REPLACEABLE_PROCESSORS = (AttnProcessor, AttnProcessor2_0, AttnProcessorNPU, SlicedAttnProcessor, XFormersAttnProcessor)


def use_jvp_safe_attention(model: nn.Module) -> dict[str, object]:
    """Switch every diffusers ``Attention`` layer of ``model`` to :class:`ContiguousAttnProcessor`, for good.

    Returns:
        The processors replaced, by layer name (what :func:`jvp_safe_attention` restores).

    Raises:
        ValueError: before changing anything, if a layer's processor is not one of ``REPLACEABLE_PROCESSORS``.
    """
    layers = {name: module for name, module in model.named_modules() if isinstance(module, Attention)}
    originals = {name: module.processor for name, module in layers.items()}
    for name, processor in originals.items():
        if not isinstance(processor, REPLACEABLE_PROCESSORS):
            raise ValueError(
                f"attention layer {name!r} uses {type(processor).__name__}, which is not allowed here: the math "
                f"processor computes a different function; allowed: {[p.__name__ for p in REPLACEABLE_PROCESSORS]}."
            )
    math_processor = ContiguousAttnProcessor()
    for module in layers.values():
        module.set_processor(math_processor)
    return originals


@contextmanager
def jvp_safe_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model``'s attention layers use :class:`ContiguousAttnProcessor`.

    The original processors (the same objects) are restored on exit, also when the block raises.

    Raises:
        ValueError: as :func:`use_jvp_safe_attention`, before changing anything.
    """
    originals = use_jvp_safe_attention(model)
    try:
        yield model
    finally:
        layers = dict(model.named_modules())
        for name, processor in originals.items():
            layers[name].set_processor(processor)


def average_velocity_and_time_derivative(
    model_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    r: torch.Tensor,
    t: torch.Tensor,
    v: torch.Tensor,
    *,
    dt_dsigma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, du/dσ_t): the flow map at (z, r, t) and its total derivative along the path (module docstring).

    One ``torch.func.jvp`` with tangent (v, 0, dt/dσ) in (z, r, t). Call it within :func:`jvp_safe_attention`
    (or after :func:`use_jvp_safe_attention`) for a model with attention layers.

    Args:
        model_fn: ``(z, r, t) -> u`` with r and t in its own units: σ (then ``dt_dsigma`` = 1), e.g.
            ``lambda z, r, t: flow_map(z, t * T, r_timestep=r * T).sample``, or timesteps (``dt_dsigma`` = T),
            e.g. ``lambda z, r, t: flow_map(z, t, r_timestep=r).sample``.
        z: z_t, (B, C, H, W).
        r, t: r and t in ``model_fn``'s units, floating point, (B,).
        v: dz/dσ, the tangent of z: ε − x0 (or the guided velocity), z's shape.
        dt_dsigma: the tangent of t, dt/dσ: 1 for σ units, T = ``num_train_timesteps`` for timestep units.

    Returns:
        u (with its autograd graph: a loss on it trains the model) and du/dσ_t (detached), both z's shape.

    Raises:
        ValueError: if r or t is not floating point, or v's shape is not z's.
    """
    for name, time in (("r", r), ("t", t)):
        if not time.is_floating_point():
            raise ValueError(f"{name} of dtype {time.dtype} is not allowed: forward-mode AD needs floating times.")
    if v.shape != z.shape:
        raise ValueError(f"v of shape {tuple(v.shape)} is not allowed: it is z's tangent, shape {tuple(z.shape)}.")
    tangents = (v.to(z.dtype), torch.zeros_like(r), torch.full_like(t, float(dt_dsigma)))
    with torch.autocast(z.device.type, enabled=False):  # module docstring: Mixed precision
        u, du_dsigma = torch.func.jvp(model_fn, (z, r, t), tangents)
    return u, du_dsigma.detach()
