"""The objectives: noise from the schedulers' add_noise, exact targets, min-SNR-γ, σ sampling."""

from __future__ import annotations

import pytest
import torch

from scratch_diffusion.training.cli import parse_args
from scratch_diffusion.training.data import drop_labels
from scratch_diffusion.training.objectives import DDPMObjective, FlowMatchingObjective, make_objective
from scratch_diffusion.training.objectives.ddpm import min_snr_weights
from scratch_schedulers import ScratchDDPMScheduler, ScratchFlowMatchScheduler


def _x0(batch=16):
    return torch.rand(batch, 2, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _oracle(scheduler, x0, prediction_type):
    """A model that knows x0 and answers exactly in ``prediction_type``, from (x_t, t) alone."""
    ac = scheduler.alphas_cumprod.to(torch.float64)

    def model_fn(x_t, t):
        a = ac[t].sqrt().view(-1, 1, 1, 1)
        b = (1 - ac[t]).sqrt().view(-1, 1, 1, 1)
        eps = (x_t.double() - a * x0.double()) / b
        return {"epsilon": eps, "sample": x0.double(), "v_prediction": a * eps - b * x0.double()}[prediction_type]

    return model_fn


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_ddpm_targets_are_exact(prediction_type, beta_schedule):
    scheduler = ScratchDDPMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type)
    objective = DDPMObjective(scheduler, prediction_type, snr_gamma=5.0)
    x0 = _x0()
    loss = objective.loss(_oracle(scheduler, x0, prediction_type), x0, torch.Generator().manual_seed(0))
    # the oracle's target recomputed in float32 (≤ 4 roundings of values ≤ 4/b, b ≥ 0.01 → ≤ 1e-4 per element at worst,
    # typically ≤ 1e-6), squared and averaged: ≪ 1e-9; a zero model's loss is the target's variance, ≥ 1e-3
    assert loss.item() < 1e-9
    wrong = objective.loss(lambda x_t, t: torch.zeros_like(x_t), x0, torch.Generator().manual_seed(0))
    assert wrong.item() > 1e-3


def test_training_noise_comes_from_the_scheduler(monkeypatch):
    """One source of truth: the UNet sees exactly what the scheduler's add_noise returned."""
    for objective in (
        DDPMObjective(ScratchDDPMScheduler(), "v_prediction"),
        FlowMatchingObjective(ScratchFlowMatchScheduler(shift=3.0), "logit_normal"),
    ):
        calls, seen = [], []
        original = objective.scheduler.add_noise

        def recording(x0, noise, t, original=original, calls=calls):
            out = original(x0, noise, t)
            calls.append(out)
            return out

        monkeypatch.setattr(objective.scheduler, "add_noise", recording)
        objective.loss(lambda x_t, t, seen=seen: seen.append(x_t) or x_t, _x0(), torch.Generator().manual_seed(0))
        assert len(calls) == 1 and seen[0] is calls[0]


def test_min_snr_weights_closed_form():
    gamma = 5.0
    alpha_bar = torch.tensor([0.0, 0.5, 5 / 6, 0.99])  # SNR 0, 1, 5, 99
    snr = torch.tensor([0.0, 1.0, 5.0, 99.0])
    eps = min_snr_weights(alpha_bar, gamma, "epsilon")
    torch.testing.assert_close(eps, torch.tensor([1.0, 1.0, 1.0, 5 / 99]))
    v = min_snr_weights(alpha_bar, gamma, "v_prediction")
    torch.testing.assert_close(v, torch.minimum(snr, torch.tensor(gamma)) / (snr + 1))
    x0 = min_snr_weights(alpha_bar, gamma, "sample")
    torch.testing.assert_close(x0, torch.tensor([0.0, 1.0, 5.0, 5.0]))
    assert torch.isfinite(eps).all() and torch.isfinite(v).all()


def test_min_snr_weighting_is_applied():
    scheduler = ScratchDDPMScheduler()
    x0 = _x0(64)
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731 - loss = weighted mean of ‖ε‖²
    plain = DDPMObjective(scheduler, "epsilon").loss(zero, x0, torch.Generator().manual_seed(3))
    weighted = DDPMObjective(scheduler, "epsilon", snr_gamma=1.0).loss(zero, x0, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (64,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    per = noise.pow(2).mean(dim=(1, 2, 3))
    ac = scheduler.alphas_cumprod[t].double()
    w = torch.clamp(1.0 / (ac / (1 - ac)), max=1.0).float()
    torch.testing.assert_close(plain, per.mean())
    torch.testing.assert_close(weighted, (per * w).mean())


def test_zero_terminal_snr_stays_finite():
    scheduler = ScratchDDPMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    assert scheduler.alphas_cumprod[-1] == 0
    for prediction_type in ("epsilon", "v_prediction", "sample"):
        objective = DDPMObjective(scheduler, prediction_type, snr_gamma=5.0)
        loss = objective.loss(lambda x_t, t: torch.zeros_like(x_t), _x0(), torch.Generator().manual_seed(0))
        assert torch.isfinite(loss)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("scheme", ["uniform", "logit_normal"])
def test_flow_target_is_the_velocity(scheme, shift):
    scheduler = ScratchFlowMatchScheduler(shift=shift)
    objective = FlowMatchingObjective(scheduler, scheme)
    x0 = _x0()
    oracle = lambda x_t, t: (x_t.double() - x0.double()) / (t.double() / 1000).view(-1, 1, 1, 1)  # noqa: E731
    # the float64 oracle's velocity differs from the float32 target by rounding ≤ 4u·|x_t|/σ ≤ 1e-4 (σ ≥ 0.01 drawn
    # rarely), squared into the mean: < 1e-8
    assert objective.loss(oracle, x0, torch.Generator().manual_seed(0)).item() < 1e-8


def test_flow_sigma_distributions():
    g = torch.Generator().manual_seed(0)
    uniform = FlowMatchingObjective(ScratchFlowMatchScheduler()).sample_sigmas(20000, g)
    assert uniform.min() >= 0 and uniform.max() < 1 and abs(uniform.mean().item() - 0.5) < 0.01
    logit = FlowMatchingObjective(ScratchFlowMatchScheduler(), "logit_normal", 0.5, 0.7).sample_sigmas(20000, g)
    assert abs(torch.logit(logit).mean().item() - 0.5) < 0.02 and abs(torch.logit(logit).std().item() - 0.7) < 0.02
    shifted = FlowMatchingObjective(ScratchFlowMatchScheduler(shift=3.0)).sample_sigmas(20000, g)
    assert abs(shifted.median().item() - 3 * 0.5 / (1 + 2 * 0.5)) < 0.01  # s·σ/(1 + (s − 1)·σ) at σ = ½


def test_make_objective_from_the_command_line():
    ddpm = make_objective(parse_args(["--prediction_type", "v_prediction", "--ddpm_beta_schedule", "scaled_linear"]))
    assert isinstance(ddpm, DDPMObjective) and ddpm.scheduler.config.prediction_type == "v_prediction"
    assert ddpm.scheduler.config.beta_schedule == "scaled_linear"
    flow = make_objective(
        parse_args(["--objective", "flow", "--flow_shift", "2", "--weighting_scheme", "logit_normal"])
    )
    assert isinstance(flow, FlowMatchingObjective) and flow.scheduler.config.shift == 2.0


def test_label_dropout():
    labels = torch.arange(1000) % 10
    assert drop_labels(None, 0.5, 10, torch.Generator()) is None
    assert torch.equal(drop_labels(labels, 0.0, 10, torch.Generator()), labels)
    dropped = drop_labels(labels, 0.2, 10, torch.Generator().manual_seed(0))
    again = drop_labels(labels, 0.2, 10, torch.Generator().manual_seed(0))
    assert torch.equal(dropped, again)
    null = dropped == 10
    assert 0.15 < null.float().mean() < 0.25 and torch.equal(dropped[~null], labels[~null])
