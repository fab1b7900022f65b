"""The guidance rules in ScratchDiffusionPipeline: the same objects as on a bare model, honest counts, early errors."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from scratch_diffusion import ScratchDiffusionPipeline
from scratch_diffusion.guidance import (
    AutoGuidance,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    LossGuidance,
    noise_level,
)
from scratch_diffusion.pipelines import load_pipeline
from scratch_schedulers import ScratchDDIMScheduler, ScratchFlowMatchScheduler
from scratch_schedulers.noise_path import signal_noise_at, split_prediction, target_for

from ..pipelines.helpers import CallCounter, tiny_unet, tiny_vae

STEPS = 4


def pipeline(scheduler=None, seed: int = 0, **components) -> ScratchDiffusionPipeline:
    unet_overrides = components.pop("unet_overrides", {})
    pipe = ScratchDiffusionPipeline(
        unet=tiny_unet(seed, **unet_overrides), scheduler=scheduler or ScratchDDIMScheduler(), **components
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, **kwargs) -> torch.Tensor:
    kwargs = {"batch_size": 2, "num_inference_steps": STEPS, "output_type": "latent", **kwargs}
    return pipe(generator=torch.manual_seed(0), **kwargs).images


def linear_classifier(num_classes: int = 3, channels: int = 3):
    """A fixed differentiable ``fn(x, t) -> logits``: logits_y = ⟨W_y, mean over pixels of x⟩ (t ignored)."""
    weights = torch.linspace(-1, 1, num_classes * channels).reshape(num_classes, channels)
    return lambda x, t: x.mean(dim=(2, 3)) @ weights.T.to(x.dtype)


def test_guidance_scale_and_the_classifier_free_rule_are_one_thing_and_count_two_halves():
    pipe = pipeline(unet_overrides={"num_class_embeds": 4})
    by_scale = sample(pipe, class_labels=[0, 2], guidance_scale=2.5)
    assert pipe.evaluations == {"unet": 2 * STEPS}
    by_rule = sample(pipe, class_labels=[0, 2], guidance=ClassifierFreeGuidance(2.5))
    assert torch.equal(by_scale, by_rule) and pipe.evaluations == {"unet": 2 * STEPS}
    sample(pipe, class_labels=[0, 2])
    assert pipe.evaluations == {"unet": STEPS}


def test_an_interval_skips_the_unconditional_half_outside_it():
    pipe = pipeline(unet_overrides={"num_class_embeds": 4})
    pipe.scheduler.set_timesteps(STEPS)
    levels = [noise_level(_Point(*signal_noise_at(pipe.scheduler, t))) for t in pipe.scheduler.timesteps]
    low, high = sorted(levels)[1] * 0.999, sorted(levels)[2] * 1.001  # the middle two of four points
    counter = CallCounter(pipe.unet)
    sample(pipe, class_labels=1, guidance=ClassifierFreeGuidance(2.0, interval=(low, high)))
    inside = [low < level <= high for level in levels]
    assert [batch for batch, _ in counter.calls] == [4 if i else 2 for i in inside] and sum(inside) == 2
    assert pipe.evaluations == {"unet": 2 * 2 + 1 * 2}
    everywhere = sample(pipe, class_labels=1, guidance=ClassifierFreeGuidance(2.0, interval=(0, math.inf)))
    assert torch.equal(everywhere, sample(pipe, class_labels=1, guidance_scale=2.0))


class _Point:
    def __init__(self, a, b):
        self.a, self.b = float(a), float(b)
        self.lam = math.log(self.a / self.b)


def test_autoguidance_with_the_guide_component_equals_its_formula_in_a_plain_loop(tmp_path):
    pipe = pipeline(guide_unet=tiny_unet(seed=1))
    guided = sample(pipe, guidance=AutoGuidance(2.0))
    assert pipe.evaluations == {"unet": STEPS, "guide_unet": STEPS}
    scheduler, main, guide = ScratchDDIMScheduler(), pipe.unet, pipe.guide_unet
    scheduler.set_timesteps(STEPS)
    x = randn_tensor((2, 3, 8, 8), generator=torch.manual_seed(0))
    with torch.no_grad():
        for t in scheduler.timesteps:
            d_main, d_guide = main(x, t).sample, guide(x, t).sample
            x = scheduler.step(d_guide + 2.0 * (d_main - d_guide), t, x).prev_sample
    torch.testing.assert_close(guided, x, rtol=0, atol=0)
    pipe.save_pretrained(tmp_path)
    for loaded in (ScratchDiffusionPipeline.from_pretrained(tmp_path), load_pipeline(tmp_path)):
        loaded.set_progress_bar_config(disable=True)
        assert torch.equal(sample(loaded, guidance=AutoGuidance(2.0)), guided)


def test_a_guide_equal_to_the_model_changes_nothing_through_the_change_of_variables():
    """D_g + w·(D − D_g) with D_g = D is D: on a VP ε-UNet sampled by the flow scheduler (cross_path)."""
    pipe = pipeline(ScratchDDIMScheduler())
    pipe.scheduler = ScratchFlowMatchScheduler()
    unguided = sample(pipe)
    assert torch.equal(sample(pipe, guidance=AutoGuidance(3.0, guide=pipe.unet)), unguided)
    assert torch.equal(sample(pipe, guidance=ClassifierGuidance(0.0, linear_classifier()), class_labels=1), unguided)


def test_classifier_guidance_steers_an_unconditional_unet_by_its_formula():
    pipe = pipeline()
    classifier = linear_classifier()
    guided = sample(pipe, guidance=ClassifierGuidance(3.0, classifier), class_labels=[2, 0])
    assert pipe.evaluations == {"unet": STEPS, "classifier": STEPS}
    scheduler, labels = ScratchDDIMScheduler(), torch.tensor([2, 0])
    scheduler.set_timesteps(STEPS)
    x = randn_tensor((2, 3, 8, 8), generator=torch.manual_seed(0))
    for t in scheduler.timesteps:
        a, b = (float(v) for v in signal_noise_at(scheduler, t))
        with torch.no_grad():
            eps = pipe.unet(x, t).sample
        x_grad = x.clone().requires_grad_(True)
        log_p = torch.log_softmax(classifier(x_grad, t), -1).gather(1, labels[:, None]).sum()
        (score,) = torch.autograd.grad(log_p, x_grad)
        x0, eps_hat = split_prediction(eps, x, a, b, "epsilon")
        guided_eps = target_for("epsilon", x0 + (b * b / a) * 3.0 * score, eps_hat - b * 3.0 * score, a, b)
        x = scheduler.step(guided_eps, t, x).prev_sample
    # the pipeline adds target_for(Δx̂0, Δε̂) to ε̂ (one rounding of ε̂ + Δ) where the reference rebuilds ε from x̂0:
    # both are ε̂ − 3·b·∇ up to a few float32 roundings per step (|ε| ≲ 4, 4 steps: 4·4·2⁻²⁴·3·4 ≈ 1e-5)
    torch.testing.assert_close(guided, x, rtol=0, atol=1e-5)


def test_loss_guidance_on_a_latent_pipeline_differentiates_through_the_decoder():
    vae = tiny_vae()
    pipe = pipeline(unet_overrides={"in_channels": 4, "out_channels": 4}, vae=vae)
    pipe.scheduler = ScratchDDIMScheduler(clip_sample=False)
    bright = LossGuidance(lambda images: (images - 1).square().mean(dim=(1, 2, 3)), scale=5.0)
    guided, unguided = sample(pipe, guidance=bright, output_type="pt"), sample(pipe, output_type="pt")
    assert pipe.evaluations == {"unet": STEPS}
    sample(pipe, guidance=bright, output_type="pt")
    assert pipe.evaluations == {"unet": STEPS, "unet_backward": STEPS}
    assert guided.mean() > unguided.mean()  # pulled towards white


BAD_CALLS = [
    (dict(guidance=AutoGuidance(2.0)), {}, "has no guide"),
    (dict(guidance=AutoGuidance(2.0, guide=tiny_unet(sample_size=16))), {}, "sample_size=16"),
    (dict(guidance=AutoGuidance(2.0, guide=tiny_unet(in_channels=4, out_channels=4))), {}, "in_channels=4"),
    (dict(guidance=ClassifierGuidance(1.0, linear_classifier())), {}, r"ClassifierGuidance\(scale=1.0\) needs class"),
    (dict(guidance=ClassifierGuidance(1.0)), {"class_labels": 1}, "has no classifier"),
    (dict(guidance=ClassifierFreeGuidance(2.0)), {"class_labels": None}, "needs class labels"),
    (dict(guidance=LossGuidance(lambda x: x.sum())), {}, r"one scalar per example.*returned \(\)"),
    (dict(guidance=[AutoGuidance(2.0), ClassifierFreeGuidance(2.0)]), {}, "at most one"),
    (dict(guidance="cfg"), {}, "pass one rule or a list"),
    (dict(guidance=ClassifierGuidance(1.0, linear_classifier())), {"class_labels": 1, "guidance_scale": 2.0},
     "guidance_scale=2.0 needs a class-conditional model"),
    (dict(class_labels=1), {}, "no classifier guides it"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "extra", "message"), BAD_CALLS)
def test_bad_guidance_is_refused_before_any_model_evaluation(call, extra, message):
    pipe = pipeline()
    counter = CallCounter(pipe.unet)
    with pytest.raises((ValueError, TypeError), match=message):
        pipe(batch_size=2, num_inference_steps=2, **call, **extra)
    assert counter.calls == []


def test_a_conditional_pipeline_refuses_a_combining_rule_beside_guidance_scale_and_a_bad_interval():
    pipe = pipeline(unet_overrides={"num_class_embeds": 4})
    counter = CallCounter(pipe.unet)
    with pytest.raises(ValueError, match="pass one combining rule"):
        pipe(class_labels=1, guidance_scale=2.0, guidance=AutoGuidance(2.0, guide=tiny_unet()))
    with pytest.raises(ValueError, match=r"lies outside the model's schedule.*\[0\.01"):
        pipe(class_labels=1, guidance=ClassifierFreeGuidance(2.0, interval=(500, 1000)))
    with pytest.raises(ValueError, match="0 ≤ low < high"):
        ClassifierFreeGuidance(2.0, interval=(3, 1))
    with pytest.raises(ValueError, match="num_class_embeds=7"):
        pipe(class_labels=1, guidance=AutoGuidance(2.0, guide=tiny_unet(num_class_embeds=7)))
    assert counter.calls == []


def test_guided_loops_never_read_back_to_the_host():
    """On the meta device every host read raises: interval CFG, autoguidance and classifier guidance run there."""
    conditional = pipeline(unet_overrides={"num_class_embeds": 4}, guide_unet=tiny_unet(1, num_class_embeds=4))
    conditional.to("meta")
    for guidance in (ClassifierFreeGuidance(2.0, interval=(0.5, 20.0)), AutoGuidance(2.0)):
        images = conditional(batch_size=2, num_inference_steps=3, class_labels=[1, 2], guidance=guidance,
                             output_type="pt").images  # fmt: skip
        assert images.device.type == "meta"
    plain = pipeline().to("meta")
    classifier = linear_classifier()
    images = plain(batch_size=2, num_inference_steps=3, class_labels=1, output_type="pt",
                   guidance=ClassifierGuidance(2.0, classifier)).images  # fmt: skip
    assert images.device.type == "meta" and plain.evaluations == {"unet": 3, "classifier": 3}


def test_a_guide_and_a_classifier_load_and_guide_with_diffusers_alone(tmp_path):
    """Story B (diffusers only, the code the folder ships): both components load and the shipped rules use them."""
    from scratch_diffusion.guidance import NoisyClassifier

    from ..pipelines.helpers import run_python, subprocess_env

    unet = tiny_unet()
    classifier = NoisyClassifier.from_unet_config(unet.config, 4, "vp", None, block_out_channels=(8, 16))
    ScratchDiffusionPipeline(
        unet=unet, scheduler=ScratchDDIMScheduler(), guide_unet=tiny_unet(seed=1), classifier=classifier
    ).save_pretrained(tmp_path / "guided")
    code = """
        import sys
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained("guided", trust_remote_code=True)
        shipped = sys.modules[type(pipe).__module__]  # the rules come with the pipeline's own code
        assert "scratch_diffusion" not in sys.modules and type(pipe.classifier).__name__ == "NoisyClassifier"
        rules = [shipped.AutoGuidance(2.0), shipped.ClassifierGuidance(1.0)]
        pipe(batch_size=2, num_inference_steps=2, class_labels=[0, 3], guidance=rules)
        assert pipe.evaluations == {"unet": 2, "guide_unet": 2, "classifier": 2}, pipe.evaluations
    """
    run_python(code, tmp_path, package_installed=False, env=subprocess_env(tmp_path / "hf"))


def test_a_classifier_of_other_classes_or_another_path_is_refused_before_any_evaluation():
    from scratch_diffusion.guidance import NoisyClassifier

    unet = tiny_unet()
    four_classes = NoisyClassifier.from_unet_config(unet.config, 4, "vp", None, block_out_channels=(8, 16))
    plain = pipeline()
    counter = CallCounter(plain.unet)
    with pytest.raises(ValueError, match=r"class_labels=7 out of range; allowed: integers in \[0, 3\]"):
        plain(class_labels=7, guidance=ClassifierGuidance(1.0, four_classes))
    flow_classifier = NoisyClassifier.from_unet_config(unet.config, 4, "flow", None, block_out_channels=(8, 16))
    with pytest.raises(ValueError, match="trained on the 'flow' path, the model on 'vp'"):
        plain(class_labels=1, guidance=ClassifierGuidance(1.0, flow_classifier))
    conditional = pipeline(unet_overrides={"num_class_embeds": 6})  # 5 classes and the null class
    conditional_counter = CallCounter(conditional.unet)
    with pytest.raises(ValueError, match="the classifier knows 4 classes, the class-conditional model 5"):
        conditional(class_labels=1, guidance=ClassifierGuidance(1.0, four_classes))
    with pytest.raises(ValueError, match="the classifier knows 4 classes, the class-conditional UNet 5"):
        ScratchDiffusionPipeline(unet=conditional.unet, scheduler=ScratchDDIMScheduler(), classifier=four_classes)
    assert counter.calls == [] and conditional_counter.calls == []
