"""average_velocity_and_time_derivative and the attention switch: du/dσ in σ units against a closed form and
against central differences in float64, the attention processors switched and restored, and the JVP's primal
output training the model like a plain forward."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0
from diffusers.models.embeddings import Timesteps
from torch import nn

from scratch_diffusion.few_step import (
    ContiguousAttnProcessor,
    FlowMapUNet2DModel,
    average_velocity_and_time_derivative,
    jvp_safe_attention,
)

from ..tolerances import U32, U64
from . import T, attention_unet, sample_for, with_live_interval_embedding

LABELS = torch.tensor([2, 0])
# (t, r) in timesteps: one pair with an interval, one with r = t
T_STEPS = torch.tensor([612.5, 300.25], dtype=torch.float64)
R_STEPS = torch.tensor([100.75, 300.25], dtype=torch.float64)
# Roundings behind one evaluation of the tiny UNet (or one backward pass): ~40 layers deep, each output a sum
# of ≤ 16 channels × 9 taps = 144 products, ≈ 6e3 successive roundings, rounded up: the error of an evaluation is
# ≤ γ_n·Σ|terms| ≈ ROUNDINGS·u·(largest magnitude involved) (tests/tolerances.py).
ROUNDINGS = 1e4


class Float64Sinusoids(nn.Module):
    """diffusers' ``Timesteps`` (DDPM's sinusoidal embedding) evaluated in float64.

    diffusers computes it in float32, whose rounding of the phase t·ω (|t| ≤ 1000, ω ≤ 1: ~6e-5 rad) would
    swamp a float64 central difference. The formula (sin/cos of t·10000^(−i/(half − shift)), cos first when
    flipped) is written out here and checked against diffusers' module by the first test.
    """

    def __init__(self, proj: Timesteps):
        super().__init__()
        assert proj.scale == 1 and proj.num_channels % 2 == 0
        self.num_channels = proj.num_channels
        self.flip_sin_to_cos = proj.flip_sin_to_cos
        self.shift = proj.downscale_freq_shift

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        index = torch.arange(half, dtype=torch.float64, device=timesteps.device)
        phase = timesteps.to(torch.float64)[:, None] * torch.exp(-math.log(10000) * index / (half - self.shift))
        parts = [phase.cos(), phase.sin()] if self.flip_sin_to_cos else [phase.sin(), phase.cos()]
        return torch.cat(parts, dim=-1)


def float64_flow_map(**overrides) -> FlowMapUNet2DModel:
    """The tiny attention flow map in float64 end to end (time sinusoids and attention scores included),
    interval embedding live, class-conditional."""
    flow_map = with_live_interval_embedding(
        FlowMapUNet2DModel.from_unet(attention_unet(num_class_embeds=3, **overrides))
    )
    flow_map = flow_map.to(torch.float64)
    flow_map.time_proj = Float64Sinusoids(flow_map.time_proj)
    flow_map.interval_embedding.proj = Float64Sinusoids(flow_map.interval_embedding.proj)
    for module in flow_map.modules():  # diffusers' math processor upcasts scores with .float(): float32, for fp16
        if isinstance(module, Attention):
            module.upcast_softmax = module.upcast_attention = False
    return flow_map


def timestep_units(flow_map: FlowMapUNet2DModel):
    """model_fn(z, r, t) with r, t in timesteps."""
    return lambda z, r, t: flow_map(z, t, class_labels=LABELS, r_timestep=r).sample


def attention_processors(model: nn.Module) -> list:
    return [module.processor for module in model.modules() if isinstance(module, Attention)]


def test_the_float64_sinusoids_are_diffusers_timesteps():
    proj = FlowMapUNet2DModel.from_unet(attention_unet()).time_proj
    times = torch.tensor([0.0, 3.0, 250.5, 999.0])
    # float32 phase t·ω: exponent −ln(1e4)·i/(half − shift) off by ≤ 3u, exp amplifies by |x| ≤ ln 1e4 ≈ 9.2 (28u)
    # plus 2u of its own, the product 1u: ≤ 31u relative, so ≤ 31u·t absolute (ω ≤ 1); sin/cos add ≤ 2u
    bound = 31 * U32 * times.max().item() + 2 * U32
    expected = Float64Sinusoids(proj)(times.double())
    torch.testing.assert_close(proj(times).double(), expected, rtol=0, atol=bound)


def test_sigma_units_against_a_closed_form():
    """u(z, r, t) = z·sin t + (t − r)·z² (σ units): du/dσ = v·sin t + z·cos t + z² + 2(t − r)·z·v, r held fixed.
    The same function in timesteps (dt/dσ = T) gives the same du/dσ."""
    generator = torch.Generator().manual_seed(0)
    z, v = torch.randn(2, 2, 2, 3, 3, generator=generator, dtype=torch.float64).unbind(0)
    sigma_t, sigma_r = torch.tensor([0.7, 0.3], dtype=torch.float64), torch.tensor([0.2, 0.3], dtype=torch.float64)
    per_example = lambda x: x[:, None, None, None]  # noqa: E731

    def model_sigma(z, r, t):
        return z * per_example(t).sin() + per_example(t - r) * z**2

    expected = (
        v * per_example(sigma_t).sin()
        + z * per_example(sigma_t).cos()
        + z**2
        + 2 * per_example(sigma_t - sigma_r) * z * v
    )
    u, du = average_velocity_and_time_derivative(model_sigma, z, sigma_r, sigma_t, v)
    # a few operations on O(1) values: float64 assert_close defaults (rtol 1e-7 ≫ 10·u64)
    torch.testing.assert_close(u, model_sigma(z, sigma_r, sigma_t))
    torch.testing.assert_close(du, expected)
    _, du_steps = average_velocity_and_time_derivative(
        lambda z, r, t: model_sigma(z, r / T, t / T), z, sigma_r * T, sigma_t * T, v, dt_dsigma=T
    )
    torch.testing.assert_close(du_steps, expected)
    # negative control: the timestep-unit model with σ's tangent gives du/dσ_t off by the missing factor T
    _, du_wrong = average_velocity_and_time_derivative(
        lambda z, r, t: model_sigma(z, r / T, t / T), z, sigma_r * T, sigma_t * T, v
    )
    assert (du_wrong - expected).abs().max() > 0.1


def test_jvp_matches_central_differences_in_float64():
    """du/dσ = T·dg/dh at h = 0 for g(h) = u(z + (h/T)·v, r, t + h) (t, r in timesteps: h moves σ by h/T).

    Central difference D(h) = T·(g(h) − g(−h))/(2h): |D − du/dσ| ≤ T·(h²/6·M3 + ε/h), with M3 = sup|g'''| on
    [−h, h] and ε the error of one float64 evaluation of g, ε ≤ ROUNDINGS·u64·max|g|. M3 is estimated by the
    third central difference (g(2H) − 2g(H) + 2g(−H) − g(−2H))/(2H³) and doubled (the phases move ≤ 1 rad per
    timestep, so g''' varies by well under 2× over 4H = 0.2 timesteps; the estimate's own error is O(H²·g⁽⁵⁾)).
    """
    flow_map = float64_flow_map()
    model_fn = timestep_units(flow_map)
    z = sample_for(flow_map, dtype=torch.float64)
    v = sample_for(flow_map, seed=2, dtype=torch.float64)
    originals = attention_processors(flow_map)
    assert all(type(processor) is AttnProcessor2_0 for processor in originals)
    with jvp_safe_attention(flow_map):
        assert all(type(processor) is ContiguousAttnProcessor for processor in attention_processors(flow_map))
        u, du = average_velocity_and_time_derivative(model_fn, z, R_STEPS, T_STEPS, v, dt_dsigma=T)
        _, du_without_t = average_velocity_and_time_derivative(model_fn, z, R_STEPS, T_STEPS, v, dt_dsigma=0.0)
    assert all(now is before for now, before in zip(attention_processors(flow_map), originals, strict=True))

    def g(h: float) -> torch.Tensor:
        with torch.no_grad():
            return model_fn(z + (h / T) * v, R_STEPS, T_STEPS + h)

    h, H = 1e-4, 5e-2
    finite_difference = T * (g(h) - g(-h)) / (2 * h)
    third = (g(2 * H) - 2 * g(H) + 2 * g(-H) - g(-2 * H)) / (2 * H**3)
    values = g(0.0)
    truncation = h**2 / 6 * 2 * third.abs().max()
    roundoff = ROUNDINGS * U64 * values.abs().max() / h
    bound = T * (truncation + roundoff) + ROUNDINGS * U64 * du.abs().max()  # + the JVP's own float64 error
    torch.testing.assert_close(du, finite_difference, rtol=0, atol=bound.item())
    torch.testing.assert_close(u.detach(), values, rtol=0, atol=(ROUNDINGS * U64 * values.abs().max()).item())
    # the check can fail: the bound is far below du, and below the part that moving t contributes
    assert bound < 1e-3 * du.abs().max()
    assert bound < 1e-2 * (du - du_without_t).abs().max()


def test_forward_ad_fails_through_the_default_and_the_plain_math_processor():
    """Why the switch (pins torch 2.13's limitations; if this starts failing, the workaround may be obsolete):
    no forward-AD rule for the fused attention kernel AttnProcessor2_0 calls, and diffusers' AttnProcessor returns
    a strided view whose tangent GroupNorm's forward-AD rule cannot ``view``."""
    flow_map = with_live_interval_embedding(FlowMapUNet2DModel.from_unet(attention_unet(num_class_embeds=3)))
    model_fn = timestep_units(flow_map)
    z, v = sample_for(flow_map), sample_for(flow_map, seed=2)
    r, t = R_STEPS.float(), T_STEPS.float()
    with pytest.raises(NotImplementedError, match="scaled_dot_product"):
        average_velocity_and_time_derivative(model_fn, z, r, t, v, dt_dsigma=T)
    for module in flow_map.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor())
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        average_velocity_and_time_derivative(model_fn, z, r, t, v, dt_dsigma=T)


def test_processors_are_restored_after_an_error_and_foreign_ones_refused():
    flow_map = FlowMapUNet2DModel.from_unet(attention_unet())
    originals = attention_processors(flow_map)
    with pytest.raises(ZeroDivisionError), jvp_safe_attention(flow_map):
        1 / 0  # noqa: B018
    assert all(now is before for now, before in zip(attention_processors(flow_map), originals, strict=True))
    layers = [module for module in flow_map.modules() if isinstance(module, Attention)]
    layers[-1].set_processor(FusedAttnProcessor2_0())
    with pytest.raises(ValueError, match="FusedAttnProcessor2_0"), jvp_safe_attention(flow_map):
        pass
    assert all(type(module.processor) is AttnProcessor2_0 for module in layers[:-1])


def test_the_primal_output_trains_the_model_like_a_plain_forward():
    """A MeanFlow-style loss on the JVP's u has the gradient of the same loss on a plain forward's output.

    Both are float64 backward passes through the same expression (possibly other kernels for the dual forward):
    each off by ≤ ROUNDINGS·u64·(largest gradient magnitude)."""
    flow_map = float64_flow_map()
    model_fn = timestep_units(flow_map)
    z = sample_for(flow_map, dtype=torch.float64)
    v = sample_for(flow_map, seed=2, dtype=torch.float64)
    parameters = [parameter for parameter in flow_map.parameters() if parameter.requires_grad]
    with jvp_safe_attention(flow_map):
        u, du = average_velocity_and_time_derivative(model_fn, z, R_STEPS, T_STEPS, v, dt_dsigma=T)
        gap = ((T_STEPS - R_STEPS) / T)[:, None, None, None]
        target = v - gap * du
        assert not du.requires_grad and u.requires_grad
        from_jvp = torch.autograd.grad((u - target).square().mean(), parameters, allow_unused=True)
        plain = model_fn(z, R_STEPS, T_STEPS)
        from_plain = torch.autograd.grad((plain - target).square().mean(), parameters, allow_unused=True)
        with torch.no_grad():  # a caller that only wants the target may run the JVP without autograd
            u_no_grad, du_no_grad = average_velocity_and_time_derivative(model_fn, z, R_STEPS, T_STEPS, v, dt_dsigma=T)
    assert not u_no_grad.requires_grad
    largest = max(grad.abs().max() for grad in from_plain if grad is not None)
    bound = (ROUNDINGS * U64 * largest).item()
    for parameter_grad, plain_grad in zip(from_jvp, from_plain, strict=True):
        assert (parameter_grad is None) == (plain_grad is None)
        if plain_grad is not None:
            torch.testing.assert_close(parameter_grad, plain_grad, rtol=0, atol=bound)
    names = [name for name, parameter in flow_map.named_parameters() if parameter.requires_grad]
    reached = {name for name, grad in zip(names, from_jvp, strict=True) if grad is not None and grad.any()}
    assert {"conv_in.weight", "interval_embedding.embedding.linear_1.weight", "class_embedding.weight"} <= reached
    torch.testing.assert_close(du_no_grad, du, rtol=0, atol=(ROUNDINGS * U64 * du.abs().max()).item())


def test_mixed_precision():
    """Under bfloat16 autocast the JVP runs with autocast off (forward AD through autocast's float32 group_norm
    fails), so it is the float32 JVP exactly; bfloat16 weights differentiate in bfloat16."""
    flow_map = with_live_interval_embedding(FlowMapUNet2DModel.from_unet(attention_unet(num_class_embeds=3)))
    model_fn = timestep_units(flow_map)
    z, v = sample_for(flow_map), sample_for(flow_map, seed=2)
    r, t = R_STEPS.float(), T_STEPS.float()
    with jvp_safe_attention(flow_map):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            u, du = average_velocity_and_time_derivative(model_fn, z, r, t, v, dt_dsigma=T)
        # negative control: the same JVP under autocast, as torch.func.jvp alone
        with (
            pytest.raises(RuntimeError, match=r"should be the same|expected scalar type"),
            torch.autocast("cpu", dtype=torch.bfloat16),
        ):
            torch.func.jvp(model_fn, (z, r, t), (v, torch.zeros_like(r), torch.full_like(t, T)))
        u_float32, du_float32 = average_velocity_and_time_derivative(model_fn, z, r, t, v, dt_dsigma=T)
    assert torch.equal(u, u_float32) and torch.equal(du, du_float32)
    u.square().mean().backward()
    assert flow_map.conv_in.weight.grad.isfinite().all() and flow_map.conv_in.weight.grad.any()

    flow_map.to(torch.bfloat16)
    with jvp_safe_attention(flow_map):
        u_bf16, du_bf16 = average_velocity_and_time_derivative(model_fn, z.bfloat16(), r, t, v, dt_dsigma=T)
    assert u_bf16.dtype == du_bf16.dtype == torch.bfloat16 and du_bf16.isfinite().all()


def test_with_gradient_checkpointing_the_derivative_comes_from_a_no_grad_jvp():
    """Checkpointed blocks recompute their forward for the backward pass without the tangents: u's backward
    fails, the JVP under no_grad works and gives the derivative of the model without checkpointing."""
    flow_map = with_live_interval_embedding(FlowMapUNet2DModel.from_unet(attention_unet(num_class_embeds=3)))
    model_fn = timestep_units(flow_map)
    z, v = sample_for(flow_map), sample_for(flow_map, seed=2)
    r, t = R_STEPS.float(), T_STEPS.float()
    with jvp_safe_attention(flow_map), torch.no_grad():
        _, expected = average_velocity_and_time_derivative(model_fn, z, r, t, v, dt_dsigma=T)
    flow_map.enable_gradient_checkpointing()
    flow_map.train()  # diffusers checkpoints only in training mode with gradients on
    with jvp_safe_attention(flow_map):
        with torch.no_grad():
            _, du = average_velocity_and_time_derivative(model_fn, z, r, t, v, dt_dsigma=T)
        u, _ = average_velocity_and_time_derivative(model_fn, z, r, t, v, dt_dsigma=T)
        with pytest.raises(torch.utils.checkpoint.CheckpointError):
            u.square().mean().backward()
    assert torch.equal(du, expected)  # no dropout: training mode computes the same function


def test_bad_inputs_are_refused():
    model_fn = lambda z, r, t: z * t[:, None, None, None]  # noqa: E731
    z = torch.ones(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"t of dtype torch\.int64"):
        average_velocity_and_time_derivative(model_fn, z, torch.zeros(2), torch.tensor([1, 2]), z)
    with pytest.raises(ValueError, match=r"v of shape \(1, 1, 2, 2\)"):
        average_velocity_and_time_derivative(model_fn, z, torch.zeros(2), torch.ones(2), z[:1])
