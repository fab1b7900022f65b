"""What training hands over: the pipeline (saved with EMA weights), sample grids and the usage snippet.

The scheduler the pipeline is saved with is the objective's (``Objective.sampling_scheduler``,
``training/objectives/``): DDIM for a ddpm-trained UNet, the flow-matching Euler scheduler for a flow one.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from PIL import Image

from scratch_diffusion.pipelines import ScratchDiffusionPipeline

GRID_MIN_CELL_PX = 64  # small images are upscaled (nearest) so a grid stays readable


def build_pipeline(unet, scheduler, **components) -> ScratchDiffusionPipeline:
    """The pipeline of ``unet`` (e.g. holding EMA weights) with the sampling ``scheduler``.

    ``components``: the optional ones by name (``pipelines/components.py``), None for absent; with ``vae`` (a
    latent run's ``AutoencoderKL``, its latent scale in its config) the pipeline samples latents and decodes them.
    """
    present = {name: component for name, component in components.items() if component is not None}
    pipeline = ScratchDiffusionPipeline(unet=unet, scheduler=scheduler, **present)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def save_pipeline(pipeline: ScratchDiffusionPipeline, output_dir: str) -> None:
    """Write ``model_index.json``, ``unet/``, ``scheduler/`` (and a latent run's ``vae/``) into ``output_dir``."""
    pipeline.save_pretrained(output_dir)


def attach_component(pipeline_dir: str, name: str, component) -> None:
    """Save ``component`` into the saved pipeline at ``pipeline_dir`` as its ``name`` (e.g. ``guide_unet``).

    The pipeline is loaded, given the component (its row's fit check runs: a guide of another size, space or
    classes is refused) and saved back, so ``model_index.json`` lists it and every loading story finds it.
    """
    pipeline = ScratchDiffusionPipeline.from_pretrained(pipeline_dir)
    components = {**pipeline.components, name: component}
    ScratchDiffusionPipeline(**components, **_recorded_path(pipeline)).save_pretrained(pipeline_dir)


def _recorded_path(pipeline: ScratchDiffusionPipeline) -> dict:
    """The trained parametrisation and schedule a pipeline records (to rebuild it with another component)."""
    return {key: pipeline.config[key] for key in ("prediction_type", "noise_path", "noise_schedule")}


def sample_class_labels(num_images: int, num_classes: int | None) -> list[int] | None:
    """Labels 0, 1, …, K−1, 0, 1, … for a class-conditional grid; None when unconditional."""
    return None if num_classes is None else [i % num_classes for i in range(num_images)]


@torch.no_grad()
def generate_samples(
    pipeline: ScratchDiffusionPipeline, num_images: int, num_inference_steps: int, seed: int
) -> np.ndarray:
    """Images (N, H, W, C) in [0, 1] from a fixed seed, so grids are comparable across steps.

    The generator is private: sampling never touches the global RNG or the training draws.
    """
    generator = torch.Generator(device=pipeline.unet.device).manual_seed(seed)
    labels = sample_class_labels(num_images, pipeline.num_classes)
    return pipeline(
        batch_size=num_images,
        num_inference_steps=num_inference_steps,
        generator=generator,
        class_labels=labels,
        output_type="np",
    ).images


def image_grid(images: np.ndarray, padding: int = 2) -> Image.Image:
    """A near-square grid of images (N, H, W, C) in [0, 1], on a white background."""
    n, h, w, c = images.shape
    scale = max(1, math.ceil(GRID_MIN_CELL_PX / max(h, w)))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pixels = (images * 255).round().clip(0, 255).astype(np.uint8)
    if scale > 1:
        pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    ch, cw = h * scale, w * scale
    grid = np.full((rows * (ch + padding) + padding, cols * (cw + padding) + padding, c), 255, np.uint8)
    for i, image in enumerate(pixels):
        top, left = padding + (i // cols) * (ch + padding), padding + (i % cols) * (cw + padding)
        grid[top : top + ch, left : left + cw] = image
    return Image.fromarray(grid[..., 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")


def usage_snippet(model_id: str, num_classes: int | None, num_inference_steps: int) -> str:
    """Python that loads ``model_id`` (a Hub repo id or a folder) and samples 16 images.

    ``model_id`` is written as an escaped string literal (a folder name may hold quotes), so the
    snippet never runs anything but what it shows.
    """
    labels = "" if num_classes is None else f"\n    class_labels=[i % {num_classes} for i in range(16)],"
    return f"""import torch
from scratch_diffusion.pipelines import ScratchDiffusionPipeline

pipeline = ScratchDiffusionPipeline.from_pretrained({json.dumps(model_id)})
images = pipeline(
    batch_size=16,
    num_inference_steps={num_inference_steps},{labels}
    generator=torch.Generator().manual_seed(0),
).images
images[0].save("sample.png")
"""
