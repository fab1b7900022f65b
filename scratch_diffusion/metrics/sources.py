"""Where the evaluated images come from: a folder of image files, or samples of a saved pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from scratch_diffusion.images import IMAGE_EXTENSIONS, list_image_files
from scratch_diffusion.metrics.data import NUM_CLASSES, RESOLUTION, images_from_numpy
from scratch_diffusion.pipelines.loading import load_pipeline


def load_image_folder(folder: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every image under ``folder`` (recursively, sorted) → grayscale 16×16 in [-1, 1].

    If every image sits in a subfolder named ``0`` … ``9``, that name is its requested class.
    """
    from PIL import Image

    root = Path(folder)
    files = list_image_files(root)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {str(root)!r}.")
    arrays = []
    for path in files:
        with Image.open(path) as image:
            gray = image.convert("L")
            if gray.size != (RESOLUTION, RESOLUTION):
                gray = gray.resize((RESOLUTION, RESOLUTION), Image.Resampling.BILINEAR)
            arrays.append(np.asarray(gray, dtype=np.float32))
    images = torch.from_numpy(np.stack(arrays))[:, None] / 127.5 - 1
    parents = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) == 2 else None for p in files]
    labels = None
    if all(name is not None and name.isdigit() and int(name) < NUM_CLASSES for name in parents):
        labels = torch.tensor([int(name) for name in parents])
    return images, labels


@torch.no_grad()
def sample_pipeline(
    path: str | os.PathLike,
    num_samples: int,
    num_inference_steps: int,
    seed: int = 0,
    batch_size: int = 256,
    guidance_scale: float = 1.0,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``num_samples`` images from a saved pipeline, in [-1, 1]; class-conditional ones cycle 0, 1, …, K−1."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(path, trust_remote_code).to(device)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    return sample_from(pipe, num_samples, num_inference_steps, generator, batch_size, guidance_scale)


@torch.no_grad()
def sample_from(
    pipe,
    num_samples: int,
    num_inference_steps: int,
    generator: torch.Generator,
    batch_size: int = 256,
    guidance_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``num_samples`` images ``(N, C, H, W)`` in [-1, 1] from a loaded pipeline, in chunks of ``batch_size``.

    Class-conditional pipelines get labels cycling 0, 1, …, K−1 (returned; None when unconditional).
    """
    num_classes = getattr(pipe, "num_classes", None)
    labels = torch.arange(num_samples) % num_classes if num_classes else None
    chunks = []
    for start in range(0, num_samples, batch_size):
        size = min(batch_size, num_samples - start)
        kwargs = {}
        if labels is not None:
            kwargs = {"class_labels": labels[start : start + size].tolist(), "guidance_scale": guidance_scale}
        output = pipe(
            batch_size=size, num_inference_steps=num_inference_steps, generator=generator, output_type="np", **kwargs
        )
        chunks.append(images_from_numpy(output.images))
    return torch.cat(chunks), labels
