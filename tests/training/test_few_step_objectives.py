"""The few-step objectives (issue 23): ``--objective meanflow`` and ``--objective consistency``.

The losses are checked against the equations computed here by hand with the same random draws (a generator with
the same seed replays them), on hand-made model functions whose derivatives are known in closed form; the trainer
runs (init from a flow pipeline, exact resume, the saved pipeline and card) are in ``test_few_step_training.py``.

Tolerances: both sides compute the same float32 expressions in possibly different association orders; each loss is
a mean of O(1) terms built from a handful of roundings, so the relative difference is a few float32 units,
u = 2⁻²⁴ ≈ 6e-8, times ~10 operations → 1e-6 relative (the `rel` below).
"""

from __future__ import annotations

import functools

import pytest
import torch
from diffusers import UNet2DModel

from scratch_diffusion.few_step.consistency import gap_fraction
from scratch_diffusion.training.cli import parse_args
from scratch_diffusion.training.objectives import ConsistencyObjective, MeanFlowObjective
from scratch_schedulers import ScratchFlowMatchScheduler

REL = 1e-6  # see the module docstring
T = 1000


def _meanflow(**kwargs) -> MeanFlowObjective:
    return MeanFlowObjective(ScratchFlowMatchScheduler(num_train_timesteps=T), **kwargs)


def _consistency(**kwargs) -> ConsistencyObjective:
    return ConsistencyObjective(ScratchFlowMatchScheduler(num_train_timesteps=T), **kwargs)


def _replayed_pairs(seed: int, batch: int, shape, objective: MeanFlowObjective):
    """The draws MeanFlowObjective.loss makes: two logit-normals, the r ≠ t mask, then ε."""
    g = torch.Generator().manual_seed(seed)
    draws = torch.sigmoid(torch.randn(2, batch, generator=g) * objective.logit_std + objective.logit_mean)
    t, r = draws.max(0).values, draws.min(0).values
    keep = torch.rand(batch, generator=g) < objective.interval_fraction
    r = torch.where(keep, r, t)
    noise = torch.randn(shape, generator=g)
    return t, r, noise


def _column(values: torch.Tensor, ndim: int = 4) -> torch.Tensor:
    return values.reshape(-1, *([1] * (ndim - 1)))


def test_step_count_defaults_follow_the_objective():
    few = parse_args(["--objective", "meanflow"])
    assert few.ddpm_num_inference_steps == 2 and few.eval_num_inference_steps == [2, 1, 4]
    assert parse_args(["--objective", "consistency", "--ddpm_num_inference_steps", "4"]).eval_num_inference_steps == [
        4,
        1,
    ]
    many = parse_args(["--objective", "flow"])
    assert many.ddpm_num_inference_steps == 50 and many.eval_num_inference_steps == [50]
    given = parse_args(["--objective", "meanflow", "--eval_num_inference_steps", "3", "1"])
    assert given.eval_num_inference_steps == [3, 1]


def test_meanflow_without_intervals_is_flow_matching():
    """interval fraction 0 and p = 0: every r = t, the target is v = ε − x0, the loss flow matching's MSE."""
    objective = _meanflow(interval_fraction=0.0, adaptive_power=0.0)
    x0 = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    seen = []

    def model_fn(x, t, r_timestep=None):
        seen.append((t.clone(), r_timestep.clone()))
        return torch.tanh(x) * (t / T).reshape(-1, 1, 1, 1)

    loss = objective.loss(model_fn, x0, torch.Generator().manual_seed(7))
    t, r, noise = _replayed_pairs(7, 6, x0.shape, objective)
    assert torch.equal(r, t)
    z = (1 - _column(t)) * x0 + _column(t) * noise
    expected = ((torch.tanh(z) * _column(t) - (noise - x0)) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=REL)
    assert len(seen) == 1  # no JVP evaluation: nothing has r ≠ t


def test_meanflow_target_uses_the_total_time_derivative():
    """u(z, r, t) = σ_t·z + σ_r: du/dt along (v, 0, 1) is σ_t·v + z, so u_tgt = v − (t − r)·(σ_t·v + z)."""
    objective = _meanflow(interval_fraction=0.6, adaptive_power=0.0)
    x0 = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(2))

    def model_fn(x, t, r_timestep=None):
        return x * _column(t / T) + _column(r_timestep / T)

    loss = objective.loss(model_fn, x0, torch.Generator().manual_seed(3))
    t, r, noise = _replayed_pairs(3, 8, x0.shape, objective)
    assert (r < t).any() and (r == t).any()  # both kinds in the batch
    z = (1 - _column(t)) * x0 + _column(t) * noise
    v = noise - x0
    target = v - _column(t - r) * (_column(t) * v + z)
    expected = ((z * _column(t) + _column(r) - target) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=REL)


def test_meanflow_folds_guidance_into_the_target_for_labelled_examples():
    """ṽ = ω·v + (1 − ω)·u(z, t, t | ∅) where the label is not the null class (κ = 0)."""
    objective = _meanflow(interval_fraction=0.0, adaptive_power=0.0, guidance_scale=2.0)
    objective.null_class = 3
    labels = torch.tensor([0, 3, 1, 2])
    x0 = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(4))

    def model(x, t, r_timestep=None, class_labels=None):
        return x * 0.5 + class_labels.float().reshape(-1, 1, 1, 1)

    loss = objective.loss(functools.partial(model, class_labels=labels), x0, torch.Generator().manual_seed(5))
    t, _, noise = _replayed_pairs(5, 4, x0.shape, objective)
    z = (1 - _column(t)) * x0 + _column(t) * noise
    v = noise - x0
    unconditional = z * 0.5 + 3
    guided = torch.where(_column(labels != 3), 2 * v - unconditional, v)
    expected = ((z * 0.5 + _column(labels.float()) - guided) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=REL)


def test_meanflow_prepares_a_flow_map_equal_to_the_unet():
    from scratch_diffusion.few_step.flow_map_unet import FlowMapUNet2DModel
    from scratch_diffusion.few_step.jvp import jvp_safe_attention

    attention = {"down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
                 "up_block_types": ("AttnUpBlock2D", "UpBlock2D")}  # fmt: skip
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, attention_head_dim=4, num_class_embeds=3, **attention)  # fmt: skip
    objective = _meanflow()
    flow_map = objective.prepare_unet(unet)
    assert isinstance(flow_map, FlowMapUNet2DModel) and objective.null_class == 2
    x, labels = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    with torch.no_grad(), jvp_safe_attention(unet):  # the same attention arithmetic: equal bit for bit
        expected = unet(x, torch.tensor([300.0, 700.0]), class_labels=labels).sample
        got = flow_map(x, torch.tensor([300.0, 700.0]), class_labels=labels, r_timestep=torch.tensor([0.0, 500.0]))
    assert torch.equal(got.sample, expected)
    from diffusers.models.attention_processor import Attention

    from scratch_diffusion.few_step.jvp import ContiguousAttnProcessor

    layers = [m for m in flow_map.modules() if isinstance(m, Attention)]
    assert layers and all(isinstance(m.processor, ContiguousAttnProcessor) for m in layers)


@pytest.mark.parametrize(
    ("step", "expected"), [(0, 1.0), (99, 1.0), (100, 0.5), (299, 0.25), (599, 1 / 32), (10_000, 1 / 32)]
)
def test_the_gap_halves_at_equal_stages(step, expected):
    assert gap_fraction(step, 600, 6, 2.0) == expected


def test_consistency_first_stage_is_denoising_against_the_data():
    """Gap 1: r = 0, f(x_0, 0) = x0, so L = mean (1/σ_t)·‖x_t − σ_t·v − x0‖² and the model is called once."""
    objective = _consistency(logit_mean=0.0, logit_std=1.0)
    objective.begin_step(0, 100)
    x0 = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(6))
    calls = []

    def model_fn(x, t):
        calls.append(t)
        return torch.sin(x)

    loss = objective.loss(model_fn, x0, torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(8)
    sigma = torch.sigmoid(torch.randn(5, generator=g))
    noise = torch.randn(x0.shape, generator=g)
    x_t = (1 - _column(sigma)) * x0 + _column(sigma) * noise
    x0_hat = x_t - _column(sigma) * torch.sin(x_t)
    expected = (((x0_hat - x0) ** 2).mean(dim=(1, 2, 3)) / sigma).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=REL) and len(calls) == 1


def test_consistency_later_stages_compare_two_points_of_one_path():
    """Gap d: r = t·(1 − d), x_r shares x0 and ε, the target f(x_r, r) carries no gradient, w = 1/(σ_t − σ_r)."""
    objective = _consistency(stages=4, ratio=2.0, logit_mean=0.0, logit_std=1.0, distance="pseudo_huber", huber_c=0.1)
    objective.begin_step(75, 100)  # the last of 4 stages: d = 1/8
    assert objective.gap == 0.125
    weight = torch.tensor(0.7, requires_grad=True)
    x0 = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(9))

    def model_fn(x, t):
        return weight * x * _column(t / T)

    loss = objective.loss(model_fn, x0, torch.Generator().manual_seed(10))
    g = torch.Generator().manual_seed(10)
    s_t = torch.sigmoid(torch.randn(5, generator=g))
    noise = torch.randn(x0.shape, generator=g)
    s_r = s_t * (1 - 0.125)

    def f(s, w):
        x = (1 - _column(s)) * x0 + _column(s) * noise
        return x - _column(s) * (w * x * _column(s))

    distance = torch.sqrt(((f(s_t, weight) - f(s_r, 0.7)) ** 2).mean(dim=(1, 2, 3)) + 0.01) - 0.1
    expected = (distance / (s_t - s_r)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=REL)
    (grad,) = torch.autograd.grad(loss, weight)
    (expected_grad,) = torch.autograd.grad(expected, weight)
    assert grad.item() == pytest.approx(expected_grad.item(), rel=1e-5)  # sums of ~80 products: 1e-5 relative
