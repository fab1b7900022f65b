"""What a trained VAE is measured by: reconstruction PSNR, the Fréchet distance of reconstructions, the latent scale.

* **Evaluation images**: ``--num_validation_images`` images held out of training by a seeded
  permutation (:func:`split_validation`), or, with 0, a seeded subset of the training images.
* **PSNR** of each reconstruction (posterior mean → decoder, clamped to [−1, 1]) on the [0, 1] scale,
  10·log10(1 / MSE), averaged over images.
* **Reconstruction FD**: :func:`scratch_diffusion.metrics.evaluate_samples` splits the evaluation images
  into a reference (30 %) and the rest; the reconstructions of the rest are scored against the reference,
  beside the same rest unreconstructed (the real baseline, same images and n): FD ≈ baseline means the
  reconstructions are as close to the data as the data itself, in that feature space. KID comes alongside.
* **Latent scale** (LDM §4.3.2, Rombach et al., 2022): 1 / std of the posterior means of up to
  ``--latent_scale_num_images`` training images, over every element; written as ``scaling_factor``.

Everything runs on private generators under ``private_randomness``: training and exact resume never see it.
"""

from __future__ import annotations

import math
import time

import torch
from torch.utils.data import Dataset, Subset

from scratch_diffusion.metrics import evaluate_samples, reference_split

from ..data import DataError
from ..evaluation import reference_images
from ..randomness import derive_seed

CHUNK = 64  # images per VAE call while evaluating


def validation_size(requested: int | None, num_images: int, default_share: float, default_max: int) -> int:
    """The number of held-out images: ``requested``, or ``default_share`` of the data (at most ``default_max``)."""
    size = min(default_max, int(default_share * num_images)) if requested is None else requested
    if size and not (4 <= size <= num_images - 1):
        raise DataError(
            f"--num_validation_images {size} does not fit {num_images} images: hold out between 4 and "
            f"{num_images - 1}, or pass 0 to evaluate on training images."
        )
    return size


def split_validation(dataset: Dataset, size: int, seed: int) -> tuple[Dataset, Dataset | None]:
    """(training, held-out) subsets by a permutation seeded by (``seed``, "vae-validation"); (dataset, None) for 0."""
    if size == 0:
        return dataset, None
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(derive_seed(seed, "vae-validation")))
    held_out, kept = order[:size].sort().values.tolist(), order[size:].sort().values.tolist()
    return Subset(dataset, kept), Subset(dataset, held_out)


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor) -> torch.Tensor:
    """Images in [−1, 1] → reconstructions from the posterior mean, clamped to [−1, 1], on the CPU in float32."""
    out = []
    for start in range(0, len(images), CHUNK):
        x = images[start : start + CHUNK].to(device=vae.device, dtype=vae.dtype)
        out.append(vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1).cpu())
    return torch.cat(out)


def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB on the [0, 1] scale (images in [−1, 1]): 10·log10(1 / MSE)."""
    mse = ((images.float() - reconstructions.float()) / 2).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def evaluate_reconstructions(vae, images: torch.Tensor, feature_extractor, seed: int) -> dict:
    """PSNR over ``images`` and the FD / KID of reconstructions vs. the real baseline (see the module docstring)."""
    start = time.perf_counter()
    values = psnr(images, reconstruct(vae, images))
    split = reference_split(images)
    frechet = evaluate_samples(
        reconstruct(vae, split.pool),
        reference_images=images,
        feature_extractor=feature_extractor,
        seed=seed,
        baseline_draws=1,  # the baseline is the whole rest, unreconstructed: one draw is all of it
    )
    return {
        "psnr": float(values.mean()),
        "psnr_std": float(values.std()) if len(values) > 1 else None,
        "mse": float((10 ** (-values / 10)).mean()),  # mean per-image MSE on the [0, 1] scale
        "n_images": len(images),
        "fd": frechet["fd"],
        "fd_real_baseline": frechet["fd_real_baseline"],
        "fd_ratio": frechet["fd_ratio"],
        "kid": frechet["kid"],
        "kid_std": frechet["kid_std"],  # over subsets: KID is noisy at small n, the paired FD is the main number
        "kid_real_baseline": frechet["kid_real_baseline"],
        "feature_space": frechet["feature_space"],
        "n_reconstructed": frechet["n"],
        "n_reference": frechet["n_reference"],
        "seconds": time.perf_counter() - start,
    }


def evaluation_images(train_set: Dataset, held_out: Dataset | None, max_images: int, resolution: int, seed: int):
    """The evaluation images ``(N, C, R, R)`` in [−1, 1] (centre-cropped) and which set they come from."""
    source, which = (held_out, "held-out") if held_out is not None else (train_set, "training")
    return reference_images(source, min(max_images, len(source)), resolution, seed), which


@torch.no_grad()
def measure_latent_scale(vae, dataset: Dataset, max_images: int, resolution: int, seed: int) -> dict:
    """``scaling_factor`` = 1 / std of the posterior means of up to ``max_images`` images (all elements).

    The images are a subset seeded by (``seed``, "latent-scale"), centre-cropped, encoded ``CHUNK`` at a
    time; the moments are accumulated in float64.
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, "latent-scale"))
    chosen = torch.randperm(len(dataset), generator=generator)[:max_images].sort().values.tolist()
    count, total, total_sq = 0, 0.0, 0.0
    for start in range(0, len(chosen), CHUNK):
        part = Subset(dataset, chosen[start : start + CHUNK])
        x = reference_images(part, len(part), resolution, seed).to(device=vae.device, dtype=vae.dtype)
        mean = vae.encode(x).latent_dist.mean.double()
        count, total, total_sq = count + mean.numel(), total + float(mean.sum()), total_sq + float(mean.square().sum())
    latent_mean = total / count
    latent_std = math.sqrt(max(total_sq / count - latent_mean**2, 0.0))
    if not latent_std > 0:
        raise ValueError("the posterior means are constant: the latent scale 1/std is undefined.")
    return {
        "scaling_factor": 1.0 / latent_std,
        "latent_std": latent_std,
        "latent_mean": latent_mean,
        "n_images": len(chosen),
    }


def reconstruction_pairs(vae, images: torch.Tensor):
    """(N, H, 2W, C) numpy images in [0, 1]: each real image beside its reconstruction ("real | reconstruction")."""
    pairs = torch.cat([images.float().cpu(), reconstruct(vae, images)], dim=-1)
    return ((pairs + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
