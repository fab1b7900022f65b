"""DDIM inversion: pipe(latents=pipe.invert(x)) reconstructs x, with an error that falls as steps grow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from scratch_diffusion import (
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchDiffusionPipeline,
    ScratchDPMSolverScheduler,
    ScratchFlowMatchScheduler,
)
from scratch_schedulers.oracle import GaussianMixture

from .helpers import ExactUNet, tiny_unet, two_template_images

# A mixture inside the image range: inverted "images" are its samples mapped from [−1, 1] to [0, 1].
SMALL_MIXTURE = GaussianMixture(
    weights=torch.tensor([0.5, 0.5]), means=torch.tensor([[0.4, 0.4], [-0.4, -0.3]]), stds=torch.tensor([0.15, 0.1])
)


def round_trip_mse(pipe, images: torch.Tensor, steps: int, **kwargs) -> float:
    """Per-dimension MSE (images in [0, 1]) of sample(invert(images)) against images."""
    latents = pipe.invert(images, num_inference_steps=steps, **kwargs)
    assert latents.shape == images.shape and latents.dtype == torch.float32
    reconstruction = pipe(
        batch_size=len(images), latents=latents, num_inference_steps=steps, output_type="pt", **kwargs
    ).images
    return float((reconstruction - images).square().mean())


def mixture_images(n: int = 256) -> torch.Tensor:
    x = SMALL_MIXTURE.sample(n, torch.Generator().manual_seed(0)).clamp(-1, 1).float()
    return (x / 2 + 0.5).reshape(n, 2, 1, 1)


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("path", "prediction_type", "scheduler"),
    [
        ("vp", "epsilon", lambda: ScratchDDIMScheduler(clip_sample=False, timestep_spacing="trailing")),
        ("vp", "sample", lambda: ScratchDDIMScheduler(clip_sample=False, prediction_type="sample")),
        ("flow", "flow_velocity", lambda: ScratchFlowMatchScheduler()),
        ("vp", "epsilon", lambda: ScratchFlowMatchScheduler()),  # inverted on the flow path, through the conversion
    ],
    ids=["vp-ddim-trailing", "vp-x0-ddim-leading", "flow-euler", "vp-model-flow-euler"],
)
def test_exact_denoiser_round_trip_error_falls_with_steps(path, prediction_type, scheduler):
    unet = ExactUNet(SMALL_MIXTURE, path, prediction_type)
    trained = ScratchDDPMScheduler(prediction_type=prediction_type) if path == "vp" else ScratchFlowMatchScheduler()
    pipe = ScratchDiffusionPipeline(unet=unet, scheduler=trained)
    pipe.scheduler = scheduler()
    pipe.set_progress_bar_config(disable=True)
    images = mixture_images()
    errors = [round_trip_mse(pipe, images, steps) for steps in (5, 20, 100)]  # about 2e-2, 2e-3, 2e-4
    # first-order invert + sample: endpoint error ∝ 1/n, MSE ∝ 1/n², 16× from 5 to 20 steps and 25× from 20 to 100;
    # ≥ 4× asks for MSE ∝ 1/n at least. At 100 steps the MSE ≈ 2e-2·(5/100)^1.5 ≈ 2e-4 at the measured rate; 5e-4
    # also holds at the slowest rate allowed above (2e-3/4), while float32 rounding (~1e-12 in MSE) plays no part
    assert errors[1] < errors[0] / 4 and errors[2] < errors[1] / 4, errors
    assert errors[2] < 5e-4, errors


def test_invert_evaluates_the_model_once_per_step_and_accepts_np_and_pil():
    unet = ExactUNet(SMALL_MIXTURE, "flow", "flow_velocity")
    pipe = ScratchDiffusionPipeline(unet=unet, scheduler=ScratchFlowMatchScheduler(solver="heun"))
    pipe.set_progress_bar_config(disable=True)
    images = mixture_images(8)
    latents = pipe.invert(images, num_inference_steps=6)
    assert unet.calls == 6
    array = images.permute(0, 2, 3, 1).numpy()
    torch.testing.assert_close(pipe.invert(array, num_inference_steps=6), latents)  # same floats in: bit-identical
    rgb = ScratchDiffusionPipeline(unet=tiny_unet(), scheduler=ScratchDDIMScheduler())
    rgb.set_progress_bar_config(disable=True)
    pil = rgb(batch_size=2, num_inference_steps=2, output_type="pil").images
    as_tensor = torch.from_numpy(np.stack([np.asarray(image) for image in pil]) / 255).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(rgb.invert(pil, num_inference_steps=3), rgb.invert(as_tensor, num_inference_steps=3))


def test_pipeline_round_trip_with_a_trained_tiny_unet(trained_tiny_unets):
    """A tiny trained VP v-model with ε-DDIM and a flow model with flow Euler and DPM-Solver++ reconstruct its data."""
    data = (two_template_images(16, torch.Generator().manual_seed(3)).clamp(-1, 1) + 1) / 2
    cases = [
        ("v_prediction", ScratchDDPMScheduler(prediction_type="v_prediction"), ScratchDDIMScheduler(clip_sample=False)),
        ("flow", ScratchFlowMatchScheduler(), ScratchFlowMatchScheduler()),
        (
            "flow",
            ScratchFlowMatchScheduler(),
            ScratchDPMSolverScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"),
        ),
    ]
    for objective, trained, sampler in cases:
        pipe = ScratchDiffusionPipeline(unet=trained_tiny_unets[objective], scheduler=trained)
        pipe.scheduler = sampler
        pipe.set_progress_bar_config(disable=True)
        errors = [round_trip_mse(pipe, data, steps) for steps in (5, 50)]
        # a first-order round trip at 50 steps: MSE ≈ (C/50)² with C ≲ 1 for these [0, 1] images → ≤ 4e-4; 1e-3 leaves
        # the trained model's own error (not exact) room, and a broken invert is off by O(0.1)
        assert errors[1] < errors[0] and errors[1] < 1e-3, (objective, type(sampler).__name__, errors)


def test_latents_argument_replaces_the_drawn_noise():
    unet = ExactUNet(SMALL_MIXTURE, "vp", "epsilon")
    pipe = ScratchDiffusionPipeline(unet=unet, scheduler=ScratchDDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    noise = randn_tensor((3, 2, 1, 1), generator=torch.manual_seed(5))
    drawn = pipe(batch_size=3, num_inference_steps=4, generator=torch.manual_seed(5), output_type="pt").images
    given = pipe(batch_size=3, num_inference_steps=4, latents=noise.double(), output_type="pt").images
    torch.testing.assert_close(given, drawn, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"latents have shape \(2, 2, 1, 1\); expected \(3, 2, 1, 1\)"):
        pipe(batch_size=3, latents=noise[:2])
    with pytest.raises(ValueError, match=r"latents must be a floating-point torch\.Tensor"):
        pipe(batch_size=3, latents=noise.long())


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        (torch.rand(2, 2, 2, 2), {}, r"images have shape \(2, 2, 2, 2\); this UNet needs \(2, 2, 1, 1\)"),
        (torch.full((2, 2, 1, 1), 3.0), {}, r"images must lie in \[0, 1\]"),
        (np.zeros((2, 2, 1)), {}, "images as an array must have shape"),
        (torch.rand(2, 2, 1, 1), {"num_inference_steps": 0}, "num_inference_steps=0 is not allowed"),
        (torch.rand(2, 2, 1, 1), {"class_labels": 1}, "the UNet is unconditional"),
    ],
)
def test_invert_refuses_bad_input_before_any_model_evaluation(images, kwargs, message):
    unet = ExactUNet(SMALL_MIXTURE, "vp", "epsilon")
    pipe = ScratchDiffusionPipeline(unet=unet, scheduler=ScratchDDIMScheduler())
    with pytest.raises(ValueError, match=message):
        pipe.invert(images, **kwargs)
    pipe.scheduler = EulerDiscreteScheduler()
    with pytest.raises(ValueError, match="init_noise_sigma = 1"):
        pipe.invert(torch.rand(2, 2, 1, 1))
    assert unet.calls == 0
