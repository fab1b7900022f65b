"""Image-to-image (SDEdit): strength 0 is the input, strength 1 is sampling, in between the scheduler's own noising."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.utils.torch_utils import randn_tensor

from scratch_diffusion import (
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchDiffusionPipeline,
    ScratchDPMSolverScheduler,
    ScratchFlowMatchScheduler,
)
from scratch_diffusion.guidance import ClassifierFreeGuidance
from scratch_diffusion.pipelines.latents import encode_to_latents
from scratch_schedulers.oracle import GaussianMixture

from .helpers import CallCounter, ExactUNet, tiny_pipeline

SCHEDULERS = {
    "scratch-ddpm": ScratchDDPMScheduler,
    "scratch-ddim": ScratchDDIMScheduler,
    "scratch-dpmsolver": ScratchDPMSolverScheduler,
    "scratch-flow-euler": ScratchFlowMatchScheduler,
    "scratch-flow-heun": lambda: ScratchFlowMatchScheduler(solver="heun"),
    "diffusers-ddpm": DDPMScheduler,
    "diffusers-ddim": DDIMScheduler,
    "diffusers-euler": EulerDiscreteScheduler,
    "diffusers-heun": HeunDiscreteScheduler,
    "diffusers-dpmsolver": DPMSolverMultistepScheduler,
    "diffusers-flowmatch-euler": FlowMatchEulerDiscreteScheduler,
}


def input_images(pipe, batch_size: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand((batch_size, *pipe.image_shape), generator=torch.Generator().manual_seed(seed))


def entries_of(scheduler, steps: int) -> int:
    """Model evaluations of ``steps`` steps: 2·steps − 1 for a second-order (Heun) scheduler."""
    return scheduler.order * steps - (scheduler.order - 1)


# ---- strength 0: the input ------------------------------------------------------------------------


@pytest.mark.parametrize("vae", [False, True], ids=["pixel", "latent"])
def test_strength_zero_returns_the_input_exactly_without_a_model_evaluation(vae):
    pipe = tiny_pipeline(vae=vae)
    counter = CallCounter(pipe.unet)
    images = input_images(pipe)
    out = pipe.img2img(images, strength=0.0, num_inference_steps=10, output_type="pt").images
    assert torch.equal(out, images) and out is not images
    array = images.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(pipe.img2img(array, strength=0.0, output_type="np").images, array)
    pil = [PIL.Image.fromarray((image * 255).round().astype(np.uint8)) for image in array]
    returned = pipe.img2img(pil, strength=0.0, output_type="pil").images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(returned, pil, strict=True))
    # a strength that rounds to no step (round(0.04 · 10) = 0) is strength 0
    assert torch.equal(pipe.img2img(images, strength=0.04, num_inference_steps=10, output_type="pt").images, images)
    latent = pipe.img2img(images, strength=0.0, output_type="latent").images
    expected = images * 2 - 1 if not vae else encode_to_latents(pipe.vae, images * 2 - 1)
    assert torch.equal(latent, expected)
    assert counter.calls == [] and pipe.evaluations == {} and pipe.num_timesteps == 0


# ---- strength 1: sampling -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "scratch-ddpm",
        "scratch-dpmsolver",
        "scratch-flow-heun",
        "diffusers-ddpm",
        "diffusers-euler",
        "diffusers-heun",
        "diffusers-dpmsolver",
        "diffusers-flowmatch-euler",
    ],
)
def test_strength_one_is_bit_identical_to_sampling(name):
    pipe = tiny_pipeline(ScratchDDIMScheduler())
    pipe.scheduler = SCHEDULERS[name]()  # the flow schedulers sample the VP UNet through the path change
    images = input_images(pipe)
    one = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    per_image = lambda: [torch.Generator().manual_seed(s) for s in (4, 5)]  # noqa: E731
    for generator in (one, per_image):
        sampled = pipe(batch_size=2, num_inference_steps=4, generator=generator(), eta=0.7, output_type="pt").images
        edited = pipe.img2img(
            images, strength=1.0, num_inference_steps=4, generator=generator(), eta=0.7, output_type="pt"
        ).images
        assert torch.equal(edited, sampled), name


def test_strength_one_is_sampling_with_classes_guidance_and_a_vae():
    pipe = tiny_pipeline(DPMSolverMultistepScheduler(), vae=True, num_class_embeds=4)
    images = input_images(pipe, batch_size=3)
    kwargs = dict(num_inference_steps=3, class_labels=[0, 1, 2], guidance_scale=2.5, output_type="pt")
    sampled = pipe(batch_size=3, generator=torch.Generator().manual_seed(1), **kwargs).images
    edited = pipe.img2img(images, strength=1.0, generator=torch.Generator().manual_seed(1), **kwargs).images
    assert torch.equal(edited, sampled)
    assert pipe.evaluations == {"unet": 6.0}  # 3 steps, each evaluating the conditional and unconditional halves


# ---- in between: round(strength · n) steps from the scheduler's own noising ----------------------


@pytest.mark.parametrize(
    "name",
    [
        "scratch-ddim",
        "scratch-flow-heun",
        "diffusers-ddim",
        "diffusers-euler",
        "diffusers-heun",
        "diffusers-dpmsolver",
        "diffusers-flowmatch-euler",
    ],
)
def test_evaluations_are_round_strength_times_steps(name):
    pipe = tiny_pipeline(SCHEDULERS[name]())  # the UNet's own parametrisation: the UNet sees the scheduler's t
    counter = CallCounter(pipe.unet)
    seen = []
    for strength in (0.3, 0.5, 0.75, 0.99):  # n = 8: round(2.4) = 2, 4, 6, round(7.92) = 8 steps
        steps = round(strength * 8)
        counter.calls.clear()
        pipe.img2img(
            input_images(pipe),
            strength=strength,
            num_inference_steps=8,
            output_type="pt",
            callback_on_step_end=lambda _pipe, i, t, tensors: seen.append((i, t)) or {},
        )
        entries = entries_of(pipe.scheduler, steps)
        assert pipe.evaluations == {"unet": float(entries)} and pipe.num_timesteps == entries == len(counter.calls)
        schedule = pipe.scheduler.timesteps
        start = len(schedule) - entries  # t_start · order
        torch.testing.assert_close(
            torch.stack([t for _, t in counter.calls]).float(), schedule[start:].float(), rtol=0, atol=0
        )
        assert [i for i, _ in seen] == list(range(entries))
        seen.clear()


@pytest.mark.parametrize(
    "name",
    [
        "scratch-ddpm",
        "scratch-ddim",
        "scratch-dpmsolver",
        "scratch-flow-euler",
        "diffusers-ddpm",
        "diffusers-ddim",
        "diffusers-euler",
        "diffusers-dpmsolver",
        "diffusers-flowmatch-euler",
    ],
)
def test_the_noised_start_is_the_schedulers_own_forward_process(name):
    """x = (a·x0 + b·z)/c at t_start equals the scheduler's add_noise (scale_noise), then scale_model_input, for
    schedulers whose samples are on the path (c = 1) and Euler's x0 + σ·z (c = a)."""
    pipe = tiny_pipeline(SCHEDULERS[name]())
    counter = CallCounter(pipe.unet)
    images, steps = input_images(pipe), 6
    pipe.img2img(
        images, strength=0.5, num_inference_steps=steps, generator=torch.Generator().manual_seed(7), output_type="pt"
    )
    reference = SCHEDULERS[name]()
    reference.set_timesteps(steps)
    start = steps - round(0.5 * steps)
    t = reference.timesteps[start]
    x0, z = images * 2 - 1, randn_tensor(images.shape, generator=torch.Generator().manual_seed(7))
    batch_t = t.repeat(len(images))
    if isinstance(reference, FlowMatchEulerDiscreteScheduler):
        noisy = reference.scale_noise(x0, batch_t, z)
    else:
        noisy = reference.add_noise(x0, z, batch_t)
    if hasattr(reference, "set_begin_index"):
        reference.set_begin_index(start)
    expected = reference.scale_model_input(noisy, t) if hasattr(reference, "scale_model_input") else noisy
    # both sides round a·x0 + b·z (|x0| ≤ 1, |z| ≲ 5; Euler then divides x0 + σz by √(σ² + 1)) in a few float32
    # operations from coefficients rounded in float32 or float64: ≤ ~10 u · 6 ≈ 4e-6 apart
    torch.testing.assert_close(counter.inputs[0], expected, rtol=0, atol=4e-6, msg=name)
    torch.testing.assert_close(counter.calls[0][1].float(), t.float(), rtol=0, atol=0)


POINT = torch.tensor([[0.3, -0.5]])
POINT_STD = 1e-4


@pytest.mark.parametrize(
    ("path", "prediction_type", "scheduler"),
    [
        ("vp", "epsilon", lambda: ScratchDDIMScheduler(clip_sample=False)),
        ("flow", "flow_velocity", ScratchFlowMatchScheduler),
    ],
)
def test_an_exact_denoiser_of_a_point_mass_returns_the_input(path, prediction_type, scheduler):
    mixture = GaussianMixture(weights=torch.tensor([1.0]), means=POINT, stds=torch.tensor([POINT_STD]))
    pipe = ScratchDiffusionPipeline(unet=ExactUNet(mixture, path, prediction_type), scheduler=scheduler())
    pipe.set_progress_bar_config(disable=True)
    images = (POINT.reshape(1, 2, 1, 1).expand(4, 2, 1, 1) + 1) / 2
    out = pipe.img2img(
        images, strength=0.6, num_inference_steps=10, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    assert pipe.unet.calls == 6
    # the exact x̂0 of N(μ, s²) at x = a·μ + r is μ + a·s²·r/(a²s² + b²), within s·|r|/(2b) ≤ s·|z|/2 of μ (AM–GM),
    # and the last step returns it: ≤ 1e-4 · 5/2 in [−1, 1], half that in [0, 1]; float32 adds ~1e-6
    torch.testing.assert_close(out, images, rtol=0, atol=POINT_STD * 5 / 4 + 1e-5)


def test_guidance_the_path_change_and_a_latent_pipeline():
    pipe = tiny_pipeline(ScratchDDIMScheduler(), num_class_embeds=3)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler()  # the VP UNet on the flow path
    kwargs = dict(strength=0.5, num_inference_steps=6, class_labels=1, output_type="np")
    seed = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    out = pipe.img2img(input_images(pipe), guidance_scale=3.0, generator=seed(), **kwargs).images
    assert out.shape == (2, 8, 8, 3) and np.isfinite(out).all() and pipe.evaluations == {"unet": 6.0}
    # guidance= rules reach the same denoiser: the rule guidance_scale stands for gives the same images, and an
    # interval guides only the steps whose σ = b/a lies in it (σ = 1 at the start, → 0 at the end of this run)
    rule = pipe.img2img(input_images(pipe), guidance=ClassifierFreeGuidance(3.0), generator=seed(), **kwargs).images
    assert np.array_equal(rule, out)
    pipe.img2img(input_images(pipe), guidance=ClassifierFreeGuidance(3.0, interval=(0.5, 2.0)), **kwargs)
    assert 3.0 < pipe.evaluations["unet"] < 6.0

    latent = tiny_pipeline(DDIMScheduler(clip_sample=False), vae=True)
    counter = CallCounter(latent.unet)
    images = input_images(latent)
    latent.img2img(images, strength=0.5, num_inference_steps=4, generator=torch.Generator().manual_seed(2))
    a_bar = latent.scheduler.alphas_cumprod[counter.calls[0][1]]
    z = randn_tensor((2, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    expected = a_bar.sqrt() * encode_to_latents(latent.vae, images * 2 - 1) + (1 - a_bar).sqrt() * z
    # as above: a·x0 + b·z rounded twice in float32 (|x0| ≲ 3 for these latents): 10 u · 8 ≈ 5e-6
    torch.testing.assert_close(counter.inputs[0], expected, rtol=0, atol=5e-6)
    assert len(counter.calls) == 2


class HalvingDDIMScheduler(DDIMScheduler):
    """A VP scheduler whose samples are neither on the path (c = 1) nor Euler's x0 + σ·z (c = a)."""

    def scale_model_input(self, sample, timestep=None):
        return sample * 0.5


# ---- refused before any work ----------------------------------------------------------------------


def test_bad_arguments_fail_before_any_model_evaluation():
    pipe = tiny_pipeline()
    counter = CallCounter(pipe.unet)
    images = input_images(pipe)
    for strength in (-0.1, 1.01, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"strength=.* is not allowed; pass a number in \[0, 1\]"):
            pipe.img2img(images, strength=strength)
    with pytest.raises(ValueError, match=r"images have shape \(2, 3, 4, 4\); this pipeline needs \(2, 3, 8, 8\)"):
        pipe.img2img(images[..., :4, :4])
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        pipe.img2img(images * 2 - 1)
    with pytest.raises(ValueError, match="output_type='png' is not supported"):
        pipe.img2img(images, output_type="png")
    pipe.scheduler = HalvingDDIMScheduler(clip_sample=False)
    with pytest.raises(ValueError, match=r"HalvingDDIMScheduler.scale_model_input scales its samples by c=0\.5"):
        pipe.img2img(images, strength=0.5)
    pipe.scheduler = PNDMScheduler()  # Runge–Kutta warm-up: 14 entries for 5 steps
    with pytest.raises(ValueError, match=r"PNDMScheduler lays 5 steps out as 14 timestep entries .*strength=1\.0"):
        pipe.img2img(images, strength=0.5, num_inference_steps=5)
    assert counter.calls == []
    pipe.img2img(images, strength=1.0, num_inference_steps=5)  # a whole schedule runs as __call__ runs it
    assert len(counter.calls) == len(pipe.scheduler.timesteps)
