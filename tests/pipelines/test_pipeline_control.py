"""``control_image`` / ``controlnet_conditioning_scale`` (pipelines/control.py) on every sampling method."""

from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

from scratch_diffusion import ControlNet2DModel, ScratchDiffusionPipeline
from scratch_diffusion.guidance import AutoGuidance
from scratch_schedulers import ScratchDDIMScheduler, ScratchFlowMatchScheduler

from .helpers import CallCounter, tiny_unet, tiny_vae

STEPS = 3


def perturbed(controlnet: ControlNet2DModel, seed: int = 1) -> ControlNet2DModel:
    """The control network with every weight moved (zero convolutions no longer zero): its residuals matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in controlnet.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return controlnet


def pipeline(scheduler=None, classes: int | None = 4, vae: bool = False, **components) -> ScratchDiffusionPipeline:
    unet = tiny_unet(num_class_embeds=classes) if not vae else tiny_unet(in_channels=4, out_channels=4)
    factor = 2 if vae else 1
    controlnet = ControlNet2DModel.from_unet(unet, conditioning_channels=3, conditioning_downscale_factor=factor)
    pipe = ScratchDiffusionPipeline(
        unet=unet,
        scheduler=scheduler or ScratchFlowMatchScheduler(),
        vae=tiny_vae() if vae else None,
        controlnet=controlnet,
        **components,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def control_for(pipe, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand((batch, *pipe.image_shape), generator=torch.Generator().manual_seed(seed))


def run(pipe, method: str = "__call__", **kwargs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    common = dict(num_inference_steps=STEPS, generator=generator, output_type="pt")
    if method == "__call__":
        return pipe(batch_size=2, **common, **kwargs).images
    image = torch.rand((2, *pipe.image_shape), generator=torch.Generator().manual_seed(5))
    if method == "img2img":
        return pipe.img2img(image, strength=0.7, **common, **kwargs).images
    mask = torch.zeros(1, 1, *pipe.image_shape[1:])
    mask[..., : pipe.image_shape[1] // 2] = 1
    return pipe.inpaint(image, mask, jump_length=1, jump_n_sample=2, **common, **kwargs).images


SCHEDULERS = {
    "flow": ScratchFlowMatchScheduler,
    "ddim": ScratchDDIMScheduler,
    "diffusers-euler": EulerDiscreteScheduler,
    "diffusers-dpm": DPMSolverMultistepScheduler,
}


@pytest.mark.parametrize("method", ["__call__", "img2img", "inpaint"])
@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_a_fresh_control_network_changes_nothing_bit_for_bit(scheduler, method):
    """Zero convolutions: the residuals are exactly 0, so skip + 0 is the skip and the output is the UNet's alone —
    under classifier-free guidance (both halves carry the control), with any scheduler and sampling method."""
    pipe = pipeline(SCHEDULERS[scheduler]())
    kwargs = dict(class_labels=[1, 2], guidance_scale=2.0)
    plain = run(pipe, method, **kwargs)
    assert "controlnet" not in pipe.evaluations
    controlled = run(pipe, method, control_image=control_for(pipe), controlnet_conditioning_scale=1.5, **kwargs)
    assert torch.equal(controlled, plain)
    assert pipe.evaluations["controlnet"] == pipe.evaluations["unet"] > 0


def test_a_trained_control_network_steers_and_its_scale_weighs_it():
    pipe = pipeline()
    perturbed(pipe.controlnet)
    plain = run(pipe)
    control = control_for(pipe)
    assert torch.equal(run(pipe, control_image=control, controlnet_conditioning_scale=0.0), plain)
    steered = run(pipe, control_image=control)
    assert not torch.equal(steered, plain)
    assert not torch.equal(run(pipe, control_image=control_for(pipe, seed=1)), steered)
    # one control image serves every image of the batch: the same as repeating it
    assert torch.equal(run(pipe, control_image=control[:1]), run(pipe, control_image=control[:1].repeat(2, 1, 1, 1)))


def test_the_control_network_sees_each_half_of_classifier_free_guidance():
    """Under CFG the UNet and its control network see the doubled batch: the control image repeated, the labels
    then the null class (the last class index)."""
    pipe = pipeline()
    perturbed(pipe.controlnet)
    seen = []
    hook = pipe.controlnet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[2].clone(), kwargs["class_labels"].clone())), with_kwargs=True
    )
    control = control_for(pipe)
    run(pipe, control_image=control, class_labels=[1, 2], guidance_scale=3.0)
    hook.remove()
    assert len(seen) == STEPS
    image, labels = seen[0]
    assert torch.equal(image, torch.cat([control, control]))
    assert labels.tolist() == [1, 2, 3, 3]  # num_class_embeds 4: the null class is 3


def test_a_latent_pipeline_takes_the_control_at_the_images_size():
    pipe = pipeline(classes=None, vae=True)
    assert pipe.image_shape == (3, 16, 16) and pipe.latent_shape == (4, 8, 8)
    plain = run(pipe)
    assert torch.equal(run(pipe, control_image=control_for(pipe)), plain)
    perturbed(pipe.controlnet)
    assert not torch.equal(run(pipe, control_image=control_for(pipe)), plain)


def test_autoguidance_guide_never_sees_the_control():
    """The guide is a plain UNet: only the main model's control network takes the control image."""
    guide = tiny_unet(seed=3, num_class_embeds=4)
    pipe = pipeline(guide_unet=guide)
    perturbed(pipe.controlnet)
    calls = CallCounter(guide)
    images = run(pipe, control_image=control_for(pipe), class_labels=[0, 1], guidance=AutoGuidance(2.0))
    calls.remove()
    assert len(calls.calls) == STEPS and torch.isfinite(images).all()
    assert pipe.evaluations == {"unet": STEPS, "controlnet": STEPS, "guide_unet": STEPS}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(control_image=torch.full((2, 3, 8, 8), 0.5), controlnet_conditioning_scale=float("nan")), "finite"),
        (dict(control_image=torch.full((2, 1, 8, 8), 0.5)), "needs (2, 3, 8, 8)"),
        (dict(control_image=torch.full((3, 3, 8, 8), 0.5)), "pass 1 or one per image (2)"),
        (dict(control_image=torch.full((2, 3, 8, 8), 2.0)), "must lie in [0, 1]"),
    ],
)
@pytest.mark.parametrize("method", ["__call__", "img2img", "inpaint"])
def test_a_bad_control_is_refused_before_any_evaluation(kwargs, message, method):
    pipe = pipeline()
    calls, control_calls = CallCounter(pipe.unet), CallCounter(pipe.controlnet)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        run(pipe, method, **kwargs)
    assert calls.calls == [] and control_calls.calls == []


def test_a_control_image_needs_a_control_network():
    pipe = pipeline()
    pipe.controlnet = None
    calls = CallCounter(pipe.unet)
    with pytest.raises(ValueError, match="no controlnet component"):
        run(pipe, control_image=torch.full((2, 3, 8, 8), 0.5))
    assert calls.calls == []
