"""Each combining and gradient rule equals its formula, on hand-made models and tensors (float64 unless a UNet
is involved); the shift they share is checked in ``test_shift.py``.

Rounding: an expression of n roundings of float64 operands bounded by W is off by ≤ n·u·W (u = 2⁻⁵³,
``tests/tolerances.py``); each tolerance below names its n and W. Where ours and the reference perform the very
same operations in the same order the results are compared with ``torch.equal``.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.guiders import AutoGuidance as DiffusersAutoGuidance
from diffusers.guiders import ClassifierFreeGuidance as DiffusersClassifierFreeGuidance

from scratch_diffusion.guidance import (
    AutoGuidance,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    LossGuidance,
    as_rules,
    guided_model,
    noise_level,
)
from scratch_schedulers import ScratchDDIMScheduler, ScratchFlowMatchScheduler
from scratch_schedulers.noise_path import signal_noise_at, split_prediction

from ..pipelines.helpers import tiny_unet
from ..tolerances import U64
from .hand_made import SHAPE, hand_made, largest, point

NUM_CLASSES, NULL_CLASS = 3, 3  # a class-conditional model of classes 0..2 with the null class ∅ = 3
LABELS = torch.tensor([0, 2])


def labelled_model(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
    """A class-conditional stand-in (elementwise in x, so a batched call equals the per-half calls bit for bit)."""
    per_class = 1 + 0.25 * class_labels.to(x.dtype).reshape(-1, 1, 1, 1)
    return torch.sin(per_class * x) + 1e-3 * torch.as_tensor(t, dtype=x.dtype)


class Recorder:
    """A model callable that records the batch size and timestep of each call."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **conditions) -> torch.Tensor:
        self.calls.append((x.shape[0], float(t)))
        return self.model(x, t, **conditions)


# --- classifier-free guidance, with and without an interval --------------------------------------------------


def cfg_model(rule, scheduler, recorder=None):
    return guided_model(recorder or labelled_model, scheduler, rule, LABELS, conditional=True, null_class=NULL_CLASS)


def test_cfg_is_uncond_plus_w_times_the_difference_as_diffusers_guider():
    scheduler = ScratchDDIMScheduler()
    x = hand_made(2, 1)[0]
    t = torch.tensor(500)
    conditional = labelled_model(x, t, LABELS)
    unconditional = labelled_model(x, t, torch.full_like(LABELS, NULL_CLASS))
    for w in (0.0, 2.5, 7.5):
        guided = cfg_model(ClassifierFreeGuidance(w), scheduler)
        output = guided(x, t)
        assert torch.equal(output, unconditional + w * (conditional - unconditional))
        assert guided.evaluations == {"model": 2.0}  # both halves in one batched call
        # diffusers' guider (the Imagen convention ŷ_∅ + w·(ŷ_c − ŷ_∅), as ours) makes the same operations
        theirs = DiffusersClassifierFreeGuidance(guidance_scale=w).forward(conditional, unconditional).pred
        assert torch.equal(output, theirs)
        # use_original_formulation: ŷ_c + w′·(ŷ_c − ŷ_∅) is ours at w = w′ + 1 (3 roundings each on terms
        # ≤ |ŷ_c| + |ŷ_∅| + (w + 1)·|ŷ_c − ŷ_∅|; diffusers switches itself off at w′ = 0, returning ŷ_c)
        original = DiffusersClassifierFreeGuidance(guidance_scale=w - 1, use_original_formulation=True)
        terms = largest(conditional) + largest(unconditional) + (abs(w) + 1) * largest(conditional - unconditional)
        theirs_original = original.forward(conditional, unconditional).pred
        torch.testing.assert_close(theirs_original, output, rtol=0, atol=6 * U64 * terms)


def independent_sigma(scheduler, t: torch.Tensor) -> float:
    """σ = b/a: √((1 − ᾱ_t)/ᾱ_t) on VP, σ_f/(1 − σ_f) with σ_f = t/T on the flow path."""
    if hasattr(scheduler, "alphas_cumprod"):
        alpha_bar = float(scheduler.alphas_cumprod[int(t)])
        return math.sqrt((1 - alpha_bar) / alpha_bar)
    sigma = float(t) / scheduler.config.num_train_timesteps
    return math.inf if sigma == 1 else sigma / (1 - sigma)


@pytest.mark.parametrize("factory", [ScratchDDIMScheduler, ScratchFlowMatchScheduler], ids=["vp", "flow"])
def test_interval_cfg_is_full_cfg_inside_and_the_conditional_model_outside(factory):
    scheduler = factory()
    steps = 10
    scheduler.set_timesteps(steps)
    sigmas = [independent_sigma(scheduler, t) for t in scheduler.timesteps]
    first, last = 3, 6  # guide at steps 3..6: an interval with its ends between neighbouring noise levels
    high, low = math.sqrt(sigmas[first - 1] * sigmas[first]), math.sqrt(sigmas[last] * sigmas[last + 1])
    w = 3.0
    recorder = Recorder(labelled_model)
    interval_guided = cfg_model(ClassifierFreeGuidance(w, interval=(low, high)), scheduler, recorder)
    full = cfg_model(ClassifierFreeGuidance(w), scheduler)
    theirs = DiffusersClassifierFreeGuidance(guidance_scale=w, start=(first + 0.5) / steps, stop=(last + 1.5) / steps)
    x = hand_made(4, 1)[0]
    for step, t in enumerate(scheduler.timesteps):
        a, b = (float(v) for v in signal_noise_at(scheduler, t))
        inside = low < sigmas[step] <= high
        assert inside == (first <= step <= last)
        if a > 0:
            assert math.isclose(noise_level(point(a, b)), b / a, rel_tol=8 * U64 * (1 + abs(math.log(a / b))))
        output = interval_guided(x, t)
        conditional = labelled_model(x, t, LABELS)
        assert torch.equal(output, full(x, t) if inside else conditional)
        assert recorder.calls[-1][0] == (2 if inside else 1) * len(x)
        theirs.set_state(step, steps, t)
        unconditional = labelled_model(x, t, torch.full_like(LABELS, NULL_CLASS))
        assert torch.equal(output, theirs.forward(conditional, unconditional).pred)  # diffusers' step-range form
    inside_count = last - first + 1
    assert interval_guided.evaluations == {"model": 2 * inside_count + (steps - inside_count)}


def test_an_interval_must_be_ordered_finite_and_meet_the_schedule():
    for bad in [(3.0, 1.0), (1.0, 1.0), (-1.0, 2.0), (math.nan, 1.0), (1.0, math.nan)]:
        with pytest.raises(ValueError, match="interval="):
            ClassifierFreeGuidance(2.0, interval=bad)
    scheduler = ScratchDDIMScheduler()  # linear β: σ = b/a spans [0.0100, 157.0]
    for outside in [(200.0, 1e4), (0.0, 0.005)]:
        recorder = Recorder(labelled_model)
        guided = cfg_model(ClassifierFreeGuidance(2.0, interval=outside), scheduler, recorder)
        with pytest.raises(ValueError, match=r"lies outside the model's schedule, whose noise levels σ = b/a span"):
            guided(hand_made(5, 1)[0], torch.tensor(500))
        assert recorder.calls == [] and guided.evaluations == {}


# --- autoguidance ------------------------------------------------------------------------------------------


def main_model(x: torch.Tensor, t: torch.Tensor, **conditions) -> torch.Tensor:
    return torch.tanh(x) + 1e-3 * torch.as_tensor(t, dtype=x.dtype)


def bad_guide(x: torch.Tensor, t: torch.Tensor, **conditions) -> torch.Tensor:
    return 0.7 * torch.tanh(1.2 * x)


def test_autoguidance_is_guide_plus_w_times_the_difference_for_an_unconditional_model():
    scheduler = ScratchDDIMScheduler()
    x, t, w = hand_made(6, 1)[0], torch.tensor(300), 2.0
    guided = guided_model(main_model, scheduler, AutoGuidance(w, guide=bad_guide))
    main, guide = main_model(x, t), bad_guide(x, t)
    output = guided(x, t)
    assert torch.equal(output, guide + w * (main - guide))
    assert guided.evaluations == {"model": 1.0, "guide_unet": 1.0}
    theirs = DiffusersAutoGuidance(guidance_scale=w, auto_guidance_layers=[0], dropout=1.0).forward(main, guide).pred
    assert torch.equal(output, theirs)  # diffusers' combination: pred_uncond (the guide) + w·(pred_cond − it)


def test_autoguidance_gives_a_class_conditional_guide_the_labels_and_skips_it_outside_the_interval():
    scheduler = ScratchDDIMScheduler()
    seen = []

    def guide(x, t, class_labels):
        seen.append(class_labels)
        return 0.5 * labelled_model(x, t, class_labels)

    x, w = hand_made(7, 1)[0], 1.5
    guided = guided_model(
        labelled_model, scheduler, AutoGuidance(w, guide=guide, interval=(1.0, math.inf)), LABELS, conditional=True
    )
    noisy, clean = torch.tensor(900), torch.tensor(10)  # σ = b/a ≈ 61 (inside) and ≈ 0.047 (outside)
    main = labelled_model(x, noisy, LABELS)
    assert torch.equal(guided(x, noisy), 0.5 * main + w * (main - 0.5 * main))
    assert torch.equal(guided(x, clean), labelled_model(x, clean, LABELS))
    assert len(seen) == 1 and torch.equal(seen[0], LABELS)
    assert guided.evaluations == {"model": 2.0, "guide_unet": 1.0}


def test_a_guide_unet_of_the_same_space_is_called_as_the_model():
    main_unet, guide_unet = tiny_unet(0), tiny_unet(1)
    scheduler = ScratchDDIMScheduler()
    x, t, w = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(8)), torch.tensor(400), 2.0

    def model(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return main_unet(sample, timestep).sample

    guided = guided_model(model, scheduler, AutoGuidance(w, guide_unet))
    with torch.no_grad():
        main, guide = main_unet(x, t).sample, guide_unet(x, t).sample
        assert torch.equal(guided(x, t), guide + w * (main - guide))
    assert guided.evaluations == {"model": 1.0, "guide_unet": 1.0}


@pytest.mark.parametrize(
    ("guide_overrides", "conditional", "message"),
    [
        ({"sample_size": 16}, False, "sample_size=16"),
        ({"in_channels": 1}, False, "in_channels=1"),
        ({"out_channels": 6}, False, "outputs 6 channels"),
        ({"num_class_embeds": 5}, True, "num_class_embeds=5"),
        ({"num_class_embeds": 4}, False, "an unconditional model"),
    ],
    ids=["sample-size", "in-channels", "out-channels", "classes", "conditional-guide"],
)
def test_a_guide_unet_of_another_space_or_classes_is_refused_before_any_evaluation(
    guide_overrides: dict, conditional: bool, message: str
):
    guide = tiny_unet(1, **guide_overrides)
    guide_calls = []
    guide.register_forward_pre_hook(lambda module, args: guide_calls.append(1))
    recorder = Recorder(lambda x, t, **conditions: torch.zeros_like(x))
    guided = guided_model(
        recorder,
        ScratchDDIMScheduler(),
        AutoGuidance(2.0, guide),
        LABELS if conditional else None,
        conditional=conditional,
        null_class=NULL_CLASS if conditional else None,
    )
    with pytest.raises(ValueError, match=message):
        guided(torch.zeros(2, 3, 8, 8), torch.tensor(500))
    assert recorder.calls == [] and guide_calls == [] and guided.evaluations == {}


# --- loss guidance -----------------------------------------------------------------------------------------

LOSS_TARGET = hand_made(9, 1)[0]


def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A nonlinear ε-model (its Jacobian is not I): what DPS back-propagates through."""
    return 0.5 * torch.tanh(x) + 0.1 * x.square()


def squared_distance(images: torch.Tensor) -> torch.Tensor:
    return (images - LOSS_TARGET.to(images.dtype)).square().flatten(1).sum(1)


@pytest.mark.numerics
@pytest.mark.parametrize("through_model", [False, True])
def test_loss_guidance_moves_x0_down_the_loss_gradient(through_model: bool):
    scheduler = ScratchDDIMScheduler()
    t, scale = torch.tensor(300), 0.3
    a, b = (float(v) for v in signal_noise_at(scheduler, t))
    x = hand_made(10, 1)[0]
    guided = guided_model(eps_model, scheduler, LossGuidance(squared_distance, scale, through_model=through_model))
    x0_guided = split_prediction(guided(x, t), x, a, b, "epsilon")[0]
    x_grad = x.clone().requires_grad_(True)
    x0 = split_prediction(eps_model(x_grad, t), x_grad, a, b, "epsilon")[0]
    if through_model:  # DPS: ∇_x L(x̂0(x)) through the model
        (gradient,) = torch.autograd.grad(squared_distance(x0).sum(), x_grad)
    else:  # ∂x̂0/∂x ≈ I/a: ∇_{x̂0} L / a = 2·(x̂0 − target)/a
        gradient = 2 * (x0.detach() - LOSS_TARGET) / a
    expected = x0.detach() - scale * (b * b / a) * gradient
    # ≤ 24 roundings (the model, x̂0, the loss gradient, the shift, the read-out) of terms ≤ W = (|x| + b·|ε̂′|)/a,
    # the read-out x̂0 = (x − b·ε̂′)/a dividing by a ≈ 0.63 here.
    eps_shifted = eps_model(x, t) + b * scale * gradient
    tolerance = 24 * U64 * (largest(x) + b * largest(eps_shifted) + largest(expected)) / a
    torch.testing.assert_close(x0_guided, expected, rtol=0, atol=tolerance)
    backward = {"unet_backward": 1.0} if through_model else {}
    assert guided.evaluations == {"model": 1.0, **backward}


@pytest.mark.parametrize("loss", [lambda images: images.square().sum(), lambda images: images.flatten(1)[:, :1]])
def test_a_loss_that_is_not_one_value_per_example_is_refused_at_bind_time(loss):
    recorder = Recorder(lambda x, t: eps_model(x, t))
    guided = guided_model(recorder, ScratchDDIMScheduler(), LossGuidance(loss))
    with pytest.raises(ValueError, match=r"the loss must return one scalar per example, shape \(B,\)"):
        guided(hand_made(11, 1)[0], torch.tensor(500))
    assert recorder.calls == [] and guided.evaluations == {}


# --- composition -------------------------------------------------------------------------------------------

CLASSIFIER_WEIGHTS = torch.linspace(-1, 1, NUM_CLASSES * math.prod(SHAPE[1:]), dtype=torch.float64).reshape(
    NUM_CLASSES, -1
)


def linear_classifier(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return x.flatten(1) @ CLASSIFIER_WEIGHTS.T


def test_as_rules_takes_one_combining_rule_and_only_first():
    classifier_rule = ClassifierGuidance(1.0, linear_classifier)
    assert as_rules(None) == () and as_rules(classifier_rule) == (classifier_rule,)
    for rules in (
        [ClassifierFreeGuidance(2.0), AutoGuidance(2.0, guide=bad_guide)],
        [classifier_rule, ClassifierFreeGuidance(2.0)],
    ):
        with pytest.raises(ValueError, match="at most one of ClassifierFreeGuidance/AutoGuidance, first"):
            as_rules(rules)
    with pytest.raises(TypeError, match="guidance='cfg' is not allowed"):
        as_rules("cfg")


@pytest.mark.numerics
def test_cfg_then_classifier_then_loss_guidance_apply_in_order():
    scheduler = ScratchDDIMScheduler()
    t, w, classifier_scale, loss_scale = torch.tensor(400), 2.0, 0.5, 0.2
    a, b = (float(v) for v in signal_noise_at(scheduler, t))
    rules = [
        ClassifierFreeGuidance(w),
        ClassifierGuidance(classifier_scale, linear_classifier),
        LossGuidance(squared_distance, loss_scale, through_model=False),
    ]
    guided = cfg_model(rules, scheduler)
    x = hand_made(12, 1)[0]
    output = guided(x, t)
    # by hand: the combination, then the classifier's shift of ε̂, then the loss evaluated at that x̂0
    conditional = labelled_model(x, t, LABELS)
    unconditional = labelled_model(x, t, torch.full_like(LABELS, NULL_CLASS))
    combined = unconditional + w * (conditional - unconditional)
    probabilities = torch.softmax(linear_classifier(x, t), dim=-1)
    score = (CLASSIFIER_WEIGHTS[LABELS] - probabilities @ CLASSIFIER_WEIGHTS).reshape(SHAPE)  # ∇ log softmax_y
    with_classifier = combined - b * classifier_scale * score
    x0 = (x - b * with_classifier) / a
    expected = with_classifier - b * (-loss_scale * 2 * (x0 - LOSS_TARGET) / a)
    # ≤ 32 roundings (the softmax and its gradient over 48 inputs counted as 8, the shifts, x̂0) of terms
    # ≤ W = |x| + |ε̂′| + |x̂0| + |score|, magnified by up to b/a² (≈ 4.6 here: the loss term's 2·b·(x̂0 − y)/a).
    terms = largest(x) + largest(with_classifier) + largest(expected) + largest(x0) + largest(score)
    torch.testing.assert_close(output, expected, rtol=0, atol=32 * U64 * terms * max(1.0, b / a**2))
    assert guided.evaluations == {"model": 2.0, "classifier": 1.0}
