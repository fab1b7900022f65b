"""The latent-diffusion arguments of ``train.py`` (``--vae_name_or_path`` …) and their checks.

With ``--vae_name_or_path`` the UNet is trained on the latents of a frozen diffusers ``AutoencoderKL``
(Rombach et al., 2022): the dataset is encoded once and cached (``latent_data.py``), the UNet is built for
the latent shape, and the saved pipeline holds the VAE, so it samples latents and decodes them.
"""

from __future__ import annotations

import argparse
import math

from .errors import check as _check
from .models import min_resolution
from .vae_loading import load_vae_config

SCALE_CHOICES = ("auto", "measure")  # or a positive number
DEFAULT_VAE_BATCH_SIZE = 64

__all__ = ["SCALE_CHOICES", "add_latent_arguments", "parse_scale", "validate_latent_args"]


def add_latent_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--vae_*`` / ``--latent_*`` group (``latent_data.py`` and ``vae_loading.py`` do the work)."""
    group = p.add_argument_group(
        "latent diffusion",
        "Train on the latents of a frozen AutoencoderKL: each image is encoded once (its centre crop at "
        "--resolution; with --random_flip its mirror too, and each step picks one per example), the latents are "
        "cached on disk (keyed by the VAE's weights and config, the data, the resolution and the encoding) and "
        "reused by later and resumed runs. The saved pipeline holds the VAE and decodes its samples.",
    )
    group.add_argument(
        "--vae_name_or_path", help="a diffusers AutoencoderKL: a local folder or a Hub repo id (unset: pixel space)"
    )
    group.add_argument("--vae_subfolder", help="the VAE's subfolder in that folder or repo (e.g. 'vae')")
    group.add_argument(
        "--vae_sample_posterior",
        action="store_true",
        help="train on one draw z ~ N(mean, std²) of the posterior per example per epoch (drawn from the step's "
        "seeded generator, so resume stays exact); without it: the posterior mean",
    )
    group.add_argument(
        "--latent_scaling_factor",
        default="auto",
        help="the latent scale s (z = (E(x) − shift)·s): 'auto' (the VAE's config.json scaling_factor if the file "
        "states one, else measured), 'measure' (1/std of this dataset's latents, LDM §4.3) or a positive number; "
        "the value used is written to the saved vae/config.json",
    )
    group.add_argument(
        "--latent_cache_dir",
        help="where encoded latents are cached (unset: $SCRATCH_DIFFUSION_CACHE/latents, else "
        "~/.cache/scratch-diffusion/latents)",
    )
    group.add_argument(
        "--vae_batch_size", type=int, default=DEFAULT_VAE_BATCH_SIZE, help="images per VAE call when encoding"
    )


def parse_scale(value: str) -> str | float:
    """``--latent_scaling_factor`` as ``'auto'``, ``'measure'`` or a positive finite float (else ``ConfigError``)."""
    if value in SCALE_CHOICES:
        return value
    try:
        scale = float(value)
    except ValueError:
        scale = math.nan
    _check(
        math.isfinite(scale) and scale > 0,
        f"--latent_scaling_factor {value!r} is not allowed; pass 'auto', 'measure' or a positive number.",
    )
    return scale


def validate_latent_args(args: argparse.Namespace, unet_config: dict) -> None:
    """The latent checks that need only config files; raises :class:`ConfigError` before any data or weights.

    Without ``--vae_name_or_path`` the other latent arguments must keep their defaults. With it: the VAE's
    config must load (local folder, or a Hub repo online / from the cache offline) and describe an
    ``AutoencoderKL``; ``--resolution`` must divide by its downsampling factor; the UNet config must not fix
    ``in_channels`` / ``out_channels`` to anything but the latent channels; and the UNet must downsample the
    latent side. The VAE's input channels are checked against the data once it is loaded (``latent_data.py``).
    """
    _check(args.vae_batch_size >= 1, f"--vae_batch_size must be ≥ 1, got {args.vae_batch_size}.")
    parse_scale(args.latent_scaling_factor)
    if args.vae_name_or_path is None:
        for name, default in (("vae_subfolder", None), ("vae_sample_posterior", False),
                              ("latent_scaling_factor", "auto"), ("latent_cache_dir", None)):  # fmt: skip
            _check(getattr(args, name) == default, f"--{name} needs --vae_name_or_path (a latent run).")
        return
    config = load_vae_config(args.vae_name_or_path, args.vae_subfolder)
    factor = 2 ** (len(config["block_out_channels"]) - 1)  # as vae_downsampling_factor(vae)
    _check(
        args.resolution % factor == 0,
        f"--resolution {args.resolution} does not divide by the VAE's downsampling factor {factor} "
        f"({args.vae_name_or_path!r}); use a multiple of {factor}.",
    )
    channels, size = config["latent_channels"], args.resolution // factor
    init_from = getattr(args, "init_from", None)  # train.py's --init_from: the saved UNet's config
    unet_name = init_from or args.model_config_name_or_path
    unet_flag = "--init_from" if init_from else "--model_config_name_or_path"
    for key in ("in_channels", "out_channels"):
        stated = unet_config.get(key)
        _check(
            stated is None or stated == channels,
            f"{unet_flag} {unet_name!r} states {key} {stated}, but the VAE's "
            f"latents have {channels} channels (latent_channels of {args.vae_name_or_path!r}); remove {key} from "
            f"the UNet config (it is set from the data) or set it to {channels}.",
        )
    unet_factor = min_resolution(unet_config)
    _check(
        size >= unet_factor and size % unet_factor == 0,
        f"the latent side {size} (--resolution {args.resolution} / the VAE's factor {factor}) cannot be downsampled "
        f"by the UNet ({unet_name!r} halves it {unet_factor.bit_length() - 1} times); use a "
        f"--resolution that is a multiple of {factor * unet_factor}.",
    )
