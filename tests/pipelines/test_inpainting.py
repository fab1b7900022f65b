"""Inpainting: replacement + RePaint — the known region exact, the schedule diffusers' RePaint, the cost as stated."""

from __future__ import annotations

import math

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
    RePaintScheduler,
)
from diffusers.configuration_utils import FrozenDict
from diffusers.utils.torch_utils import randn_tensor

from scratch_diffusion import (
    ScratchDDIMScheduler,
    ScratchDDPMScheduler,
    ScratchDiffusionPipeline,
    ScratchDPMSolverScheduler,
    ScratchFlowMatchScheduler,
)
from scratch_diffusion.pipelines.cross_path import sampler_levels
from scratch_diffusion.pipelines.edit_images import latent_grid_mask
from scratch_diffusion.pipelines.edit_levels import edit_levels
from scratch_diffusion.pipelines.inpainting import jump_up
from scratch_diffusion.pipelines.latents import encode_to_latents
from scratch_diffusion.pipelines.repaint import repaint_evaluations
from scratch_schedulers.oracle import GaussianMixture

from .helpers import CallCounter, ExactUNet, tiny_pipeline


def inputs(pipe, batch_size: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and a random mask of values in [0, 1] (≥ 0.5: regenerate) for ``pipe``."""
    generator = torch.Generator().manual_seed(seed)
    channels, height, width = pipe.image_shape
    images = torch.rand((batch_size, channels, height, width), generator=generator)
    return images, torch.rand((batch_size, 1, height, width), generator=generator)


def diffusers_repaint_steps(num_steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The steps diffusers' RePaint evaluates the model at, in order, as steps taken (0 = the noisiest).

    RePaintPipeline evaluates its UNet at each timestep below the previous one (``t < t_last``) and jumps otherwise.
    """
    scheduler = RePaintScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(num_steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
    spacing = 1000 // num_steps
    evaluated, last = [], int(scheduler.timesteps[0]) + 1
    for t in scheduler.timesteps.tolist():
        if t < last:
            evaluated.append(num_steps - 1 - t // spacing)
        last = t
    return evaluated


def expected_entries(steps: list[int], start_step: int, num_steps: int, order: int) -> list[int]:
    """Timestep entries of the evaluated ``steps`` (offset by ``start_step``): a second-order step m is entries
    2m and 2m + 1, except the last step, one Euler entry."""
    entries = []
    for step in steps:
        absolute = start_step + step
        entries.extend([order * absolute + k for k in range(order if absolute < num_steps - 1 else 1)])
    return entries


# ---- the known region is the input, exactly ----------------------------------------------------------


@pytest.mark.parametrize("vae", [False, True], ids=["pixel", "latent"])
def test_the_known_region_is_the_input_exactly_for_every_output_type(vae):
    pipe = tiny_pipeline(vae=vae)
    images, mask = inputs(pipe)
    keep = (mask < 0.5).expand_as(images)
    kwargs = dict(num_inference_steps=4, jump_length=2, jump_n_sample=2, generator=torch.Generator().manual_seed(0))
    out = pipe.inpaint(images, mask, output_type="pt", **kwargs).images
    assert torch.equal(out[keep], images[keep])
    assert (out[~keep] != images[~keep]).float().mean() > 0.9  # the white region is generated
    array, mask_array = images.permute(0, 2, 3, 1).numpy(), mask[:, 0].numpy()
    out_np = pipe.inpaint(array, mask_array[..., None], output_type="np", **kwargs).images
    assert np.array_equal(out_np[keep.permute(0, 2, 3, 1).numpy()], array[keep.permute(0, 2, 3, 1).numpy()])
    pil = [PIL.Image.fromarray((image * 255).round().astype(np.uint8)) for image in array]
    pil_masks = [PIL.Image.fromarray((m * 255).round().astype(np.uint8), mode="L") for m in mask_array]
    out_pil = pipe.inpaint(pil, pil_masks, output_type="pil", **kwargs).images
    for given, returned, m in zip(pil, out_pil, pil_masks, strict=True):
        kept = np.asarray(m) < 128
        assert np.array_equal(np.asarray(returned)[kept], np.asarray(given)[kept])


def test_a_latent_cell_regenerates_if_any_of_its_pixels_does():
    mask = torch.zeros(1, 1, 4, 6, dtype=torch.bool)
    mask[0, 0, 3, 2] = True  # pixel (3, 2) lies in the 2×2 cell (1, 1)
    pooled = latent_grid_mask(mask, 2)
    assert pooled.shape == (1, 1, 2, 3) and pooled.nonzero().tolist() == [[0, 0, 1, 1]]

    pipe = tiny_pipeline(vae=True)
    images, _ = inputs(pipe, batch_size=1)
    pixel_mask = torch.zeros(1, 1, 16, 16)
    pixel_mask[0, 0, 5, 6] = 1.0  # one white pixel: latent cell (2, 3) of the 8×8 grid
    latents = pipe.inpaint(images, pixel_mask, num_inference_steps=3, output_type="latent").images
    known = encode_to_latents(pipe.vae, images * 2 - 1)
    cell = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    cell[0, 0, 2, 3] = True
    cell = cell.expand_as(known)
    assert torch.equal(latents[~cell], known[~cell]) and not torch.equal(latents[cell], known[cell])


# ---- the RePaint schedule and its cost ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_steps", "jump_length", "jump_n_sample"), [(250, 10, 10), (20, 3, 4), (10, 10, 3), (25, 4, 1), (50, 7, 2)]
)
def test_the_evaluation_formula_is_diffusers_repaint_schedule(num_steps, jump_length, jump_n_sample):
    expected = diffusers_repaint_steps(num_steps, jump_length, jump_n_sample)
    assert repaint_evaluations(num_steps, jump_length, jump_n_sample) == len(expected)
    if (num_steps, jump_length, jump_n_sample) == (250, 10, 10):
        assert len(expected) == 2410  # the cost of RePaintScheduler's defaults


@pytest.mark.parametrize(
    ("scheduler", "num_steps", "strength", "jump_length", "jump_n_sample"),
    [
        (DDIMScheduler, 10, 1.0, 3, 3),
        (EulerDiscreteScheduler, 10, 1.0, 2, 2),
        (DPMSolverMultistepScheduler, 8, 0.75, 2, 3),  # strength < 1: 6 of 8 steps, jumps within them
        (HeunDiscreteScheduler, 6, 1.0, 2, 3),  # second order: jumps at full-step boundaries
        (HeunDiscreteScheduler, 8, 0.5, 1, 2),
    ],
)
def test_the_run_follows_diffusers_repaint_schedule_and_the_stated_count(
    scheduler, num_steps, strength, jump_length, jump_n_sample
):
    """Each step lands where diffusers' RePaint would evaluate next: the scheduler's own step index after every
    step (restored at each jump), the UNet's timesteps, and the count = the formula = ``inpaint_evaluations``."""
    pipe = tiny_pipeline(scheduler())
    counter = CallCounter(pipe.unet)
    steps = round(strength * num_steps)
    order = pipe.scheduler.order
    entries = expected_entries(
        diffusers_repaint_steps(steps, jump_length, jump_n_sample), num_steps - steps, num_steps, order
    )
    step_indices = []

    def record_step_index(p, i, t, tensors):
        step_indices.append(getattr(p.scheduler, "_step_index", None))
        return {}

    images, mask = inputs(pipe)
    pipe.inpaint(
        images,
        mask,
        num_inference_steps=num_steps,
        strength=strength,
        jump_length=jump_length,
        jump_n_sample=jump_n_sample,
        output_type="pt",
        callback_on_step_end=record_step_index,
    )
    if hasattr(pipe.scheduler, "_step_index"):  # stateful schedulers; DDIM steps from the timestep alone
        assert step_indices == [entry + 1 for entry in entries]
    torch.testing.assert_close(
        torch.stack([t for _, t in counter.calls]).float(), pipe.scheduler.timesteps[entries].float(), rtol=0, atol=0
    )
    count = repaint_evaluations(steps, jump_length, jump_n_sample, order)
    assert count == len(entries) == pipe.evaluations["unet"] == pipe.num_timesteps
    assert pipe.inpaint_evaluations(num_steps, strength, jump_length, jump_n_sample) == count


@pytest.mark.parametrize(
    "scheduler",
    [
        ScratchDDPMScheduler,
        ScratchDPMSolverScheduler,
        lambda: ScratchFlowMatchScheduler(solver="heun"),
        FlowMatchEulerDiscreteScheduler,
    ],
)
def test_our_schedulers_and_the_path_change_resample_at_the_stated_cost(scheduler):
    pipe = tiny_pipeline(ScratchDDIMScheduler(clip_sample=False))
    pipe.scheduler = scheduler()  # flow schedulers sample the VP UNet through the path change
    counter = CallCounter(pipe.unet)
    images, mask = inputs(pipe)
    out = pipe.inpaint(images, mask, num_inference_steps=6, jump_length=2, jump_n_sample=3, output_type="pt").images
    keep = (mask < 0.5).expand_as(images)
    assert torch.equal(out[keep], images[keep]) and torch.isfinite(out).all()
    expected = repaint_evaluations(6, 2, 3, pipe.scheduler.order)
    assert len(counter.calls) == pipe.evaluations["unet"] == expected == pipe.inpaint_evaluations(6, 1.0, 2, 3)
    assert expected == (25 if pipe.scheduler.order == 2 else 14)  # 6 + 2·2·2; Heun 11 + 2·(2·2·2 − 1)


def test_generator_lists_class_labels_and_guidance():
    pipe = tiny_pipeline(DDPMScheduler(), num_class_embeds=3)
    images, mask = inputs(pipe)
    kwargs = dict(num_inference_steps=6, jump_length=2, jump_n_sample=2, guidance_scale=2.0, output_type="pt")
    both = pipe.inpaint(
        images, mask, class_labels=[0, 1], generator=[torch.Generator().manual_seed(s) for s in (1, 2)], **kwargs
    ).images
    assert pipe.evaluations == {"unet": 2.0 * repaint_evaluations(6, 2, 2)}  # two halves per guided evaluation
    alone = pipe.inpaint(
        images[1:], mask[1:], class_labels=[1], generator=[torch.Generator().manual_seed(2)], **kwargs
    ).images
    # image 1 draws all its noise from its own generator, so alone it is the same image up to the UNet's batch-size
    # dependent summation order (~100 u ≈ 1e-5 relative per evaluation) carried through 20 evaluations
    torch.testing.assert_close(alone, both[1:], rtol=0, atol=5e-4)


# ---- the jump back up ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", [DDIMScheduler, EulerDiscreteScheduler], ids=["samples-on-path", "euler-x0+σz"])
def test_a_jump_up_has_the_forward_marginal(scheduler):
    """x = a·x0 + b·ε carried from entry 7 to entry 5 is a'·x0 + b'·ε' (in model coordinates, c·sample)."""
    reference = scheduler()
    reference.set_timesteps(10)
    levels = edit_levels(reference, sampler_levels(reference, "vp"), "vp", 10)
    (a, b, c), (a_up, b_up, c_up) = levels.point(7), levels.point(5)
    n = 2**18
    x0 = torch.full((n,), 0.4)
    model_input = a * x0 + b * torch.randn(n, generator=torch.Generator().manual_seed(0))
    up = jump_up(model_input / c, levels, 7, 5, torch.Generator().manual_seed(1)) * c_up
    # sample mean and variance of n Gaussian draws: standard errors b'/√n and b'²·√(2/n); 5 of them
    assert abs(float(up.mean()) - a_up * 0.4) < 5 * b_up / math.sqrt(n)
    assert abs(float(up.var()) / b_up**2 - 1) < 5 * math.sqrt(2 / n)
    # from the clean end (a, b) = (1, 0) the jump is a'·x + b'·z exactly
    end = levels.num_entries
    assert levels.point(end)[:2] == (1.0, 0.0)
    clean = torch.rand(64, generator=torch.Generator().manual_seed(2))
    jumped = jump_up(clean, levels, end, 5, torch.Generator().manual_seed(3)) * c_up
    z = randn_tensor((64,), generator=torch.Generator().manual_seed(3))
    # coefficients a'·c/c' and √(b'²)/c' round to float32 (2 u), then one multiply-add: ≤ 4 u · (1 + 4) ≈ 1.2e-6
    torch.testing.assert_close(jumped, a_up * clean + b_up * z, rtol=0, atol=1.2e-6)


# ---- replacement: the known region at every entry's level; RePaint makes the completion coherent -----


@pytest.mark.parametrize("scheduler", [DDIMScheduler, EulerDiscreteScheduler], ids=["samples-on-path", "euler-x0+σz"])
def test_the_known_region_enters_each_evaluation_noised_to_its_level(scheduler):
    """Before evaluation k the UNet sees the known pixels as the scheduler's own add_noise(x0, z_k, t_k) (then
    scale_model_input), z_k fresh: drawn from the generator after the initial noise, one per entry."""
    pipe = tiny_pipeline(scheduler())
    counter = CallCounter(pipe.unet)
    images, mask = inputs(pipe)
    pipe.inpaint(images, mask, num_inference_steps=4, generator=torch.Generator().manual_seed(5), output_type="pt")
    generator = torch.Generator().manual_seed(5)
    randn_tensor(images.shape, generator=generator)  # the initial noise
    keep = (mask < 0.5).expand_as(images)
    for k in range(4):
        reference = scheduler()  # fresh at each entry: Euler's add_noise and scale_model_input keep a step index
        reference.set_timesteps(4)
        t = reference.timesteps[k]
        noisy = reference.add_noise(images * 2 - 1, randn_tensor(images.shape, generator=generator), t.repeat(2))
        if hasattr(reference, "set_begin_index"):
            reference.set_begin_index(k)
        expected = reference.scale_model_input(noisy, t)
        # a·x0 + b·z in float32 either way (|x0| ≤ 1, |z| ≲ 5): ≤ ~10 u · 6 ≈ 4e-6 apart, as in test_img2img
        torch.testing.assert_close(counter.inputs[k][keep], expected[keep], rtol=0, atol=4e-6)


def test_resampling_makes_an_exact_denoisers_completions_coherent():
    """Two components ±0.6 in 16 pixels (std 0.1): the known left half names the component, so the exact
    conditional puts weight 1 − e^(−50) on it. Replacement alone samples the hole without seeing where the known
    half is going and can pick the other one (Lugmayr et al., 2022); resampling harmonises."""
    pattern = torch.full((16,), 0.6)
    mixture = GaussianMixture(
        weights=torch.tensor([0.5, 0.5]), means=torch.stack([pattern, -pattern]), stds=torch.tensor([0.1, 0.1])
    )
    unet = ExactUNet(mixture, "vp", "epsilon")
    unet.config = FrozenDict(sample_size=4, in_channels=1, num_class_embeds=None)  # the 16 dimensions as 1×4×4
    pipe = ScratchDiffusionPipeline(unet=unet, scheduler=ScratchDDPMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    sign = torch.tensor([1.0, -1.0] * 64)
    noise = 0.1 * torch.randn(128, 16, generator=torch.Generator().manual_seed(0))
    images = ((mixture.means[(sign < 0).long()].float() + noise).clamp(-1, 1) + 1) / 2
    images = images.reshape(128, 1, 4, 4)
    mask = torch.zeros(128, 1, 4, 4)
    mask[..., 2:] = 1  # regenerate the right half
    errors = {}
    for jump_n_sample in (1, 3):
        out = pipe.inpaint(
            images,
            mask,
            num_inference_steps=20,
            jump_length=3,
            jump_n_sample=jump_n_sample,
            generator=torch.Generator().manual_seed(1),
            output_type="pt",
        ).images
        errors[jump_n_sample] = ((out[..., 2:] * 2 - 1).mean((1, 2, 3)) - 0.6 * sign).abs()
    # a coherent completion's mean is within a few std/√8 ≈ 0.035 of its ±0.6; the other component is 1.2 away
    assert torch.all(errors[3] < 0.2), errors[3].max()
    assert errors[3].mean() < errors[1].mean(), (errors[3].mean(), errors[1].mean())


# ---- refused before any work -------------------------------------------------------------------------


def test_bad_arguments_fail_before_any_model_evaluation():
    pipe = tiny_pipeline()
    counter = CallCounter(pipe.unet)
    images, mask = inputs(pipe)
    bad = [
        (dict(mask_image=mask * 1.5), r"mask_image values must lie in \[0, 1\] .*got \[.*, 1\.\d+\]"),
        (dict(mask_image=mask - 0.2), r"mask_image values must lie in \[0, 1\]"),
        (dict(mask_image=mask * float("nan")), r"mask_image values must lie in \[0, 1\]"),
        (dict(mask_image=mask[:, :, :4]), r"mask_image has shape \(2, 1, 4, 8\); allowed for 2 images of 8×8"),
        (dict(mask_image=torch.cat([mask, mask])), r"mask_image has shape \(4, 1, 8, 8\)"),
        (dict(mask_image=(mask > 0.5).long()), "mask_image of type Tensor and dtype torch.int64 is not supported"),
        (dict(jump_length=0), r"jump_length=0 is not allowed; pass an integer ≥ 1"),
        (dict(jump_n_sample=0), r"jump_n_sample=0 is not allowed; pass an integer ≥ 1"),
        (dict(jump_n_sample=1.5), r"jump_n_sample=1\.5 is not allowed"),
        (dict(strength=2), r"strength=2 is not allowed; pass a number in \[0, 1\]"),
    ]
    for overrides, message in bad:
        with pytest.raises(ValueError, match=message):
            pipe.inpaint(**{"image": images, "mask_image": mask, **overrides})
    pipe.scheduler = PNDMScheduler()
    with pytest.raises(ValueError, match="PNDMScheduler lays 5 steps out as 14 timestep entries"):
        pipe.inpaint(images, mask, num_inference_steps=5, jump_length=1, jump_n_sample=2)
    assert counter.calls == []
    # replacement alone over a whole schedule needs no step boundaries; strength 0 is the input
    out = pipe.inpaint(images, mask[:1] > 0.5, num_inference_steps=5, output_type="pt").images  # one bool mask
    assert len(counter.calls) == 14 and torch.equal(
        out[(mask[:1] <= 0.5).expand_as(images)], images[(mask[:1] <= 0.5).expand_as(images)]
    )
    counter.calls.clear()
    assert torch.equal(pipe.inpaint(images, mask, strength=0.0, output_type="pt").images, images)
    assert counter.calls == [] and pipe.evaluations == {}
