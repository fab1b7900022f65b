"""Latent training data: the dataset encoded once by a frozen ``AutoencoderKL``, cached, and read per batch.

Latent diffusion (Rombach et al., 2022) trains the UNet on ``z = (E(x) − shift) · s`` instead of ``x``.

* **What is encoded.** Each training image's centre crop at ``--resolution`` (a random crop would need an
  encoding per epoch), in [-1, 1]. The cache holds the raw posterior mean — and its std with
  ``--vae_sample_posterior`` — so the latent scale can change without re-encoding. With ``--random_flip``
  the mirror image is encoded too, and each step picks one of the two per example with the step's seeded
  generator (the same draw ``augment`` makes in pixel space).
* **Mean or a draw.** By default the UNet trains on the posterior mean. With ``--vae_sample_posterior`` it
  trains on ``mean + std · ε`` with ε drawn per batch from the step's counter-based generator: a new draw per
  example per epoch, identical in a resumed run.
* **Precision.** Encoding runs under ``--mixed_precision``'s dtype on a GPU unless the VAE config says
  ``force_upcast`` (then, and on the CPU, in float32); the dtype is part of the cache key. The VAE itself
  stays float32, as loaded, and is saved so.
* **The cache.** One safetensors file per (VAE weights and config, data content, resolution, crop, encoding),
  in ``--latent_cache_dir`` (default ``$SCRATCH_DIFFUSION_CACHE/latents``, else
  ``~/.cache/scratch-diffusion/latents``), written atomically (temporary file + rename). With several
  processes the main one encodes and writes it while the others wait, then they read it.
* **The scale** ``s``: :func:`resolve_scale` (``--latent_scaling_factor``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.logging import get_logger
from torch.utils.data import Dataset

from scratch_diffusion.pipelines.latents import latent_scaling, vae_downsampling_factor

from .cli_latents import parse_scale
from .data import LazyImageDataset, TensorImageDataset, TrainingData, centre_crop
from .errors import ConfigError
from .vae_loading import VaeSource, load_vae, load_vae_config, vae_fingerprint, vae_source

logger = get_logger(__name__)

CACHE_FORMAT = 1  # bump when the cached tensors change meaning
CACHE_SUBDIR = "latents"
MIXED_PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Encoding:
    """How the dataset is encoded: the tensors the cache holds follow from it."""

    sample_posterior: bool
    flips: bool
    dtype: torch.dtype

    @property
    def keys(self) -> tuple[str, ...]:
        moments = ("mean", "std") if self.sample_posterior else ("mean",)
        return moments + tuple(f"{m}_flipped" for m in moments if self.flips)

    def as_dict(self) -> dict:
        return {"sample_posterior": self.sample_posterior, "flips": self.flips, "dtype": str(self.dtype)}


def encoding_dtype(mixed_precision: str, vae, device: torch.device) -> torch.dtype:
    """float16/bfloat16 under ``--mixed_precision`` on a GPU where the VAE allows it, else float32."""
    if device.type != "cuda" or vae.config.get("force_upcast", False):
        return torch.float32
    return MIXED_PRECISION_DTYPES.get(mixed_precision, torch.float32)


def data_identity(dataset: Dataset) -> str:
    """A digest of the data as decoded: every image's pixels (decoded-once data) or the datasets fingerprint."""
    digest = hashlib.sha256()
    if isinstance(dataset, TensorImageDataset):
        images = [dataset.images] if isinstance(dataset.images, torch.Tensor) else dataset.images
        for image in images:
            digest.update(f"{tuple(image.shape)}".encode())
            digest.update(image.contiguous().numpy().tobytes())
    elif isinstance(dataset, LazyImageDataset):  # too large to hash each run: datasets' own content fingerprint
        parts = (dataset.hf_dataset._fingerprint, dataset.image_column, dataset.num_channels, len(dataset))
        digest.update(json.dumps(parts).encode())
    else:
        raise TypeError(f"cannot fingerprint a {type(dataset).__name__}; expected a training dataset of data.py.")
    return digest.hexdigest()


def default_latent_cache_dir() -> Path:
    """``latents/`` in the package cache (``$SCRATCH_DIFFUSION_CACHE``, else ``~/.cache/scratch-diffusion``)."""
    from scratch_diffusion.metrics.cache import default_cache_dir

    return default_cache_dir() / CACHE_SUBDIR


def cache_file(cache_dir: str | os.PathLike | None, key: dict) -> Path:
    """The cache file of ``key``: ``latents-<first 20 hex digits of SHA-256(key as sorted JSON)>.safetensors``."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_latent_cache_dir()
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return directory / f"latents-{name}.safetensors"


def read_cache(path: Path, encoding: Encoding, num_examples: int) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None when there is no usable file (missing, unreadable, or not what is expected)."""
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        tensors = load_file(path)
    except Exception as err:  # a damaged file is re-encoded and replaced
        logger.warning(f"Ignoring the unreadable latent cache {path} ({type(err).__name__}: {err}); re-encoding.")
        return None
    if set(tensors) != set(encoding.keys) or any(t.shape[0] != num_examples for t in tensors.values()):
        logger.warning(f"Ignoring the latent cache {path}: it does not hold {encoding.keys} for {num_examples} images.")
        return None
    return tensors


def write_cache(path: Path, tensors: dict[str, torch.Tensor], key: dict) -> None:
    """Write ``tensors`` to ``path`` atomically (temporary file + rename), with ``key`` in the metadata."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"key": json.dumps(key)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@torch.no_grad()
def encode_dataset(vae, dataset: Dataset, resolution: int, encoding: Encoding, batch_size: int):
    """The raw posterior moments of every image (and mirror): float32 (N, C, h, w) tensors on the CPU."""
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in encoding.keys}
    autocast = (
        torch.autocast(vae.device.type, dtype=encoding.dtype)
        if encoding.dtype != torch.float32
        else contextlib.nullcontext()
    )
    for start in range(0, len(dataset), batch_size):
        indices = list(range(start, min(start + batch_size, len(dataset))))
        x = centre_crop(dataset.__getitems__(indices)["images"], resolution).to(vae.device)
        if encoding.flips:
            x = torch.cat([x, x.flip(-1)])
        with autocast:
            posterior = vae.encode(x).latent_dist
        moments = {"mean": posterior.mean, "std": posterior.std}
        for key in encoding.keys:
            value = moments[key.removesuffix("_flipped")]
            value = value[len(indices) :] if key.endswith("_flipped") else value[: len(indices)]
            parts[key].append(value.float().cpu())
    # Contiguous, as read back from the cache: the UNet's convolutions pick kernels by memory layout, so a
    # run that encodes must see exactly the bits that a run reading the cache sees.
    return {key: torch.cat(chunks).contiguous() for key, chunks in parts.items()}


def measured_scale(tensors: dict[str, torch.Tensor]) -> float:
    """1 / std of the training latents (LDM §4.3, over every element of the un-mirrored images).

    The UNet sees the posterior mean, or with ``std`` a draw from N(mean, std²), whose variance over the
    data is Var(mean) + E[std²] exactly — no draw needed.
    """
    mean = tensors["mean"].double()
    variance = mean.var() + (tensors["std"].double() ** 2).mean() if "std" in tensors else mean.var()
    if not variance > 0:
        raise ConfigError(f"the dataset's latents have variance {float(variance)}; cannot measure a latent scale.")
    return float(variance.rsqrt())


def resolve_scale(choice: str, raw_config: dict, tensors: dict[str, torch.Tensor]) -> tuple[float, str]:
    """``(s, where it came from)`` for ``--latent_scaling_factor`` ``choice``: a number, auto or measure.

    ``auto`` takes ``scaling_factor`` from the VAE's config.json only if the file states it.
    """
    value = parse_scale(choice)
    if isinstance(value, float):
        return value, "given by --latent_scaling_factor"
    stated = raw_config.get("scaling_factor")
    if value == "auto" and stated is not None:
        return float(stated), "the scaling_factor of the VAE's config.json"
    why = "--latent_scaling_factor measure" if value == "measure" else "the VAE's config.json states none"
    return measured_scale(tensors), f"measured as 1/std of this dataset's latents ({why})"


class LatentDataset(Dataset):
    """Scaled latents (and std, mirrors) with the labels: one slice per batch, like ``TensorImageDataset``."""

    def __init__(self, tensors: dict[str, torch.Tensor], labels: torch.Tensor | None):
        self.tensors, self.labels = tensors, labels

    def __len__(self) -> int:
        return len(self.tensors["mean"])

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> dict:
        index = torch.as_tensor(indices)
        batch = {key: value[index] for key, value in self.tensors.items()}
        if self.labels is not None:
            batch["labels"] = self.labels[index]
        return batch


def latent_input(batch: dict, random_flip: bool, generator: torch.Generator) -> torch.Tensor:
    """The batch's training latents: the image's or its mirror's (``random_flip``), the mean or a draw."""
    device = generator.device
    mean, std = batch["mean"].to(device), batch.get("std")
    std = None if std is None else std.to(device)
    if random_flip:
        flip = (torch.rand(mean.shape[0], generator=generator, device=device) < 0.5)[:, None, None, None]
        mean = torch.where(flip, batch["mean_flipped"].to(device), mean)
        std = None if std is None else torch.where(flip, batch["std_flipped"].to(device), std)
    if std is None:
        return mean
    return mean + std * torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype)


@dataclass
class LatentTraining:
    """What the trainer needs of a latent run: the VAE (scale recorded), the latent data and its shape."""

    vae: object  # diffusers.AutoencoderKL, float32, frozen, on the training device
    dataset: LatentDataset
    channels: int
    size: int
    factor: int
    scale: float
    scale_source: str
    source: VaeSource
    cache_path: Path
    encoded: bool  # this process encoded the data (False: read from the cache)
    sample_posterior: bool
    flips: bool

    @property
    def description(self) -> str:
        return f"{self.channels}×{self.size}×{self.size} latents ({self.factor}× downsampling) of {self.source.name}"


def prepare_latent_training(args, data: TrainingData, accelerator) -> LatentTraining:
    """Load the VAE, encode the data (main process first) or read the cache, and fix the latent scale.

    Raises :class:`ConfigError` for a VAE that does not load or whose input channels differ from the data's.
    """
    raw_config = load_vae_config(args.vae_name_or_path, args.vae_subfolder)
    vae = load_vae(args.vae_name_or_path, args.vae_subfolder)
    if vae.config.in_channels != data.num_channels:
        raise ConfigError(
            f"--vae_name_or_path {args.vae_name_or_path!r} encodes {vae.config.in_channels}-channel images, but "
            f"{data.description} has {data.num_channels} channel(s); use a VAE for {data.num_channels}-channel data."
        )
    device = accelerator.device
    dtype = encoding_dtype(accelerator.mixed_precision, vae, device)
    encoding = Encoding(args.vae_sample_posterior, args.random_flip, dtype)
    key = {
        "format": CACHE_FORMAT,
        "vae": vae_fingerprint(vae),
        "data": data_identity(data.dataset),
        "resolution": args.resolution,
        "center_crop": args.center_crop,
        "crop": "centre",
        **encoding.as_dict(),
    }
    path = cache_file(args.latent_cache_dir, key)
    vae.to(device)
    encoded = False
    with accelerator.main_process_first():  # the main process encodes and writes; the others then read
        tensors = read_cache(path, encoding, len(data.dataset))
        if tensors is None:
            if not accelerator.is_main_process:
                logger.warning(f"Process {accelerator.process_index}: no latent cache at {path}; encoding here too.")
            start = time.perf_counter()
            tensors = encode_dataset(vae, data.dataset, args.resolution, encoding, args.vae_batch_size)
            encoded = True
            try:
                write_cache(path, tensors, key)
            except OSError as err:
                logger.warning(f"Could not write the latent cache {path} ({type(err).__name__}: {err}).")
            logger.info(
                f"Encoded {len(data.dataset)} images{' and their mirrors' if encoding.flips else ''} with the VAE in "
                f"{time.perf_counter() - start:.1f} s ({encoding.dtype}); cached in {path}.",
                main_process_only=True,
            )
        else:
            logger.info(f"Read the latents of {len(data.dataset)} images from {path}.", main_process_only=True)
    scale, scale_source = resolve_scale(args.latent_scaling_factor, raw_config, tensors)
    source = vae_source(args.vae_name_or_path, args.vae_subfolder)
    # The saved vae/config.json carries the scale used, and no local path (a Hub id or the folder's name).
    vae.register_to_config(scaling_factor=scale, _name_or_path=source.name)
    scale, shift = latent_scaling(vae)
    scaled = {k: (v - shift) * scale if k.startswith("mean") else v * scale for k, v in tensors.items()}
    channels, size = scaled["mean"].shape[1], scaled["mean"].shape[-1]
    logger.info(f"Latent scale {scale:.6g}: {scale_source}.", main_process_only=True)
    return LatentTraining(
        vae=vae,
        dataset=LatentDataset(scaled, data.dataset.labels),
        channels=channels,
        size=size,
        factor=vae_downsampling_factor(vae),
        scale=scale,
        scale_source=scale_source,
        source=source,
        cache_path=path,
        encoded=encoded,
        sample_posterior=args.vae_sample_posterior,
        flips=args.random_flip,
    )
