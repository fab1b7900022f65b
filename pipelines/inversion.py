"""DDIM inversion: the noise that the deterministic sampler maps back to given images.

DDIM with η = 0 is the Euler discretisation of the probability-flow ODE (Song et al., 2021, §4.3),
so it can be run backwards: from the image at the sampler's last (cleanest) point, each step takes
the model's (x̂0, ε̂) at the current point and moves *up* to the next-noisier point of the same grid,
x_up = a_up·x̂0 + b_up·ε̂ (Eq. 12 from t to the next-higher timestep; DDIM §5.4). On the flow path
this is the Euler step of dx/dσ = u from σ = 0 to 1. The grid is the scheduler's own, so
``pipe(latents=pipe.invert(x))`` retraces it; the round trip is exact only as the steps shrink
(each direction evaluates the model at the other end of a step): DDIM's Table 2 reports a
per-dimension MSE of 0.014 at 10 steps falling to 0.0001 at 1000 on CIFAR-10.

The model is the pipeline's denoiser (:mod:`.denoiser`, guidance included) asked for (x̂0, ε̂) at each
point, so any model the pipeline can sample with a scheduler can also be inverted with it. The inverted
point is the sampler's first sample, given back as ``latents`` (unit-scale noise: the scheduler's
``init_noise_sigma`` must be 1).

A latent pipeline (one with a ``vae``) inverts in latent space: the images are encoded first (the
posterior mean, :func:`~.latents.encode_to_latents`), and the returned latents are the VAE-latent noise
that sampling decodes back. The round trip then reconstructs decode(encode(x)), not x itself: the
VAE's own reconstruction error comes on top of the inversion's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from scratch_schedulers.samplers import reverse_step

from .cross_path import sampler_levels
from .denoiser import Denoiser
from .guidance import call_rules
from .inputs import check_call_arguments, check_conditioning, sample_shape
from .latents import decoded_shape, encode_to_latents

# A tensor, an array, or one or more PIL images (not imported: the shipped bundle imports only torch, numpy, diffusers).
ImageInput = torch.Tensor | np.ndarray | object


def is_pil_image(image: object) -> bool:
    """Whether ``image`` is a PIL image, recognised without importing PIL."""
    return type(image).__module__.split(".")[0] == "PIL" and hasattr(image, "getbands")


def image_count(images: ImageInput) -> int:
    """The batch size of ``images`` (one PIL image counts as one)."""
    return 1 if is_pil_image(images) else len(images)


def check_invertible(scheduler: object) -> None:
    """Inversion returns the sampler's first sample as unit-scale ``latents``: ``init_noise_sigma`` must be 1."""
    init_noise_sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
    if init_noise_sigma != 1.0:
        raise ValueError(
            f"invert needs a scheduler whose samples lie on the path itself (init_noise_sigma = 1); "
            f"{type(scheduler).__name__} has init_noise_sigma={init_noise_sigma:g}. "
            "Use DDIM, DPM-Solver(++) or a flow-matching scheduler."
        )


def images_to_samples(
    images: ImageInput, shape: Sequence[int], device: torch.device, needed_by: str = "this UNet"
) -> torch.Tensor:
    """Images as the pipeline outputs them, as float32 samples in [−1, 1] of ``shape`` on ``device``.

    Accepted: a (B, C, H, W) tensor in [0, 1] (``output_type="pt"``), a (B, H, W, C) array in
    [0, 1] (``"np"``), or PIL images (``"pil"``: one or a list, 8-bit).
    """
    return images_to_unit_range(images, shape, device, needed_by) * 2 - 1


def images_to_unit_range(
    images: ImageInput, shape: Sequence[int], device: torch.device, needed_by: str = "this UNet"
) -> torch.Tensor:
    """Images as :func:`images_to_samples` takes them, as a float32 (B, C, H, W) tensor in [0, 1] on ``device``
    (the values as given: editing pastes them back exactly)."""
    if is_pil_image(images):
        images = [images]
    if isinstance(images, (list, tuple)) and images and all(is_pil_image(image) for image in images):
        arrays = [np.asarray(image, dtype=np.float32) / 255.0 for image in images]
        images = np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"images as an array must have shape (B, H, W, C); got shape {images.shape}.")
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point:
        raise ValueError(
            f"images of type {type(images).__name__} are not supported; pass a float tensor (B, C, H, W) in [0, 1], "
            "a float array (B, H, W, C) in [0, 1], or PIL images."
        )
    if tuple(images.shape) != tuple(shape):
        raise ValueError(f"images have shape {tuple(images.shape)}; {needed_by} needs {tuple(shape)} (B, C, H, W).")
    images = images.detach().to(device=device, dtype=torch.float32)
    low, high = images.aminmax()  # one read-back, before any model evaluation
    if not (torch.isfinite(low) and torch.isfinite(high) and low >= -1e-3 and high <= 1 + 1e-3):
        raise ValueError(f"images must lie in [0, 1] (as output_type 'pt'/'np' gives them); got [{low:g}, {high:g}].")
    return images


def inversion_levels(scheduler: object, levels: Sequence[tuple[float, float]], path: str) -> list[tuple[float, float]]:
    """The distinct sampler points (noisiest first) followed by the point the sampler ends at.

    ``levels`` are the points of ``scheduler.timesteps`` on its ``path`` (:func:`~.cross_path.sampler_levels`);
    repeated entries (Heun's predictor/corrector pairs) count once. The end is the last ``sigmas``
    entry where the scheduler has one per step plus one, ``final_alpha_cumprod`` for DDIM, else
    the clean point (a, b) = (1, 0).
    """
    distinct = [point for i, point in enumerate(levels) if i == 0 or point != levels[i - 1]]
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(scheduler.timesteps) + 1:
        last = float(sigmas[-1])
        end = (1 - last, last) if path == "flow" else (1 / np.hypot(1, last), last / np.hypot(1, last))
    else:
        alpha_bar = float(getattr(scheduler, "final_alpha_cumprod", 1.0))
        end = (alpha_bar**0.5, (1 - alpha_bar) ** 0.5)
    return [*distinct, end]


def invert_samples(
    x: torch.Tensor,
    levels: Sequence[tuple[float, float]],
    denoiser: Denoiser,
    progress: Callable[[int], object] = lambda _: None,
) -> torch.Tensor:
    """Run the DDIM update upwards from ``levels[-1]`` to ``levels[0]``: one model evaluation per step.

    ``denoiser(x, k)`` returns (x̂0, ε̂) at level k (targets ``sample`` and ``epsilon``). Works in float32.
    """
    for k in range(len(levels) - 1, 0, -1):
        x0, eps = denoiser(x, k)
        a_up, b_up = levels[k - 1]
        x = reverse_step(x0, eps, a_up, b_up**2, direction=b_up)
        progress(1)
    return x


def invert_images(
    pipe, images: ImageInput, num_inference_steps: int, class_labels, guidance_scale: float
) -> torch.Tensor:
    """``ScratchDiffusionPipeline.invert``: check everything, plan the model calls on a host grid, then invert."""
    batch_size = image_count(images)
    check_call_arguments(batch_size, num_inference_steps, None, 0.0, guidance_scale, "pt")
    rules = call_rules(guidance_scale, None)
    check_conditioning(class_labels, rules, pipe.num_classes, pipe.num_classes)
    check_invertible(pipe.scheduler)
    device = pipe._execution_device
    shape = sample_shape(pipe.unet, batch_size)
    vae = getattr(pipe, "vae", None)
    if vae is None:
        x = images_to_samples(images, shape, device)
    else:  # check the images against what the VAE decodes to, then invert their (scaled) posterior mean
        image_shape = (batch_size, *decoded_shape(vae, shape[1:]))
        x = images_to_samples(images, image_shape, device, needed_by="this pipeline's VAE")
        x = encode_to_latents(vae, x).to(device=device, dtype=torch.float32)
    conditions, guided, counter = pipe.prepare_guidance(rules, class_labels, batch_size, device)
    pipe.scheduler.set_timesteps(num_inference_steps)  # a host grid: planning reads nothing back
    sampled = pipe.check_parametrization()
    levels = inversion_levels(pipe.scheduler, sampler_levels(pipe.scheduler, sampled.path), sampled.path)
    denoiser = pipe.denoiser(sampled, ("sample", "epsilon"), conditions, guided, device, levels, counter)
    with pipe.progress_bar(total=len(levels) - 1) as bar:
        latents = invert_samples(x, levels, denoiser, bar.update)
    pipe.maybe_free_model_hooks()
    return latents
