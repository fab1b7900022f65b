"""The command line of ``training/train_vae.py`` and the checks that run before any training.

The data, training, logging and Hub arguments are ``train.py``'s (``training/cli_common.py``); the model,
loss and evaluation arguments are the VAE's. Every check of :func:`validate_args` runs before the first
step; a failure raises :class:`ConfigError`, which ``train_vae.py`` prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse

from ..cli_common import (
    COMMON_FLOAT_ARGS,
    add_data_arguments,
    add_held_out_arguments,
    add_hub_arguments,
    add_logging_arguments,
    add_training_arguments,
    check_finite,
    fill_data_defaults,
    validate_data_args,
    validate_held_out_args,
    validate_resume_and_hub_args,
    validate_training_args,
)
from ..cli_evaluation import feature_space_problem
from ..errors import ConfigError
from ..errors import check as _check
from ..init_from import read_saved_vae_config
from .losses import RECONSTRUCTION_LOSSES, default_discriminator_layers, min_discriminator_resolution
from .presets import VAE_PRESETS, downsampling_factor, load_vae_config

__all__ = ["ConfigError", "build_parser", "parse_args", "validate_args"]

DEFAULT_PRESET = "tiny"
DEFAULT_KL_WEIGHT = 1e-6  # the LDM KL-f autoencoders' β (Rombach et al., 2022, App. G)
VALIDATION_SHARE, MAX_DEFAULT_VALIDATION = 0.2, 360  # unset --num_validation_images: 20 %, at most 360
MAX_DISCRIMINATOR_LAYERS = 6
VAE_FLOAT_ARGS = ("kl_weight", "perceptual_weight", "adversarial_weight", "discriminator_learning_rate")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; help texts say what each argument does and its unit."""
    p = argparse.ArgumentParser(
        prog="train_vae.py",
        description="Train an AutoencoderKL (a KL-regularised VAE) from scratch, for latent diffusion.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_arguments(p)

    model = p.add_argument_group("model")
    model.add_argument(
        "--model_config_name_or_path",
        help=f"AutoencoderKL preset ({', '.join(VAE_PRESETS)}; downsampling 2, 4, 8) or a JSON config file / folder "
        f"with config.json; unset: {DEFAULT_PRESET} (or --init_from's VAE)",
    )
    model.add_argument(
        "--init_from",
        help="a saved AutoencoderKL (a train_vae.py --output_dir, a pipeline folder with vae/, or a Hub repo id) "
        "whose config and weights this run starts from instead of a fresh --model_config_name_or_path",
    )
    model.add_argument("--latent_channels", type=int, help="latent channels; unset: the preset's / config's")

    loss = p.add_argument_group("loss (see training/vae/losses.py)")
    loss.add_argument(
        "--reconstruction_loss", default="l1", help=f"per-pixel reconstruction loss: {', '.join(RECONSTRUCTION_LOSSES)}"
    )
    loss.add_argument(
        "--kl_weight",
        type=float,
        default=DEFAULT_KL_WEIGHT,
        help="β of the KL term, relative to the per-image summed reconstruction loss (LDM's KL-f VAEs: 1e-6)",
    )
    loss.add_argument("--perceptual_weight", type=float, default=0.0, help="weight of the perceptual term (0: off)")
    loss.add_argument(
        "--perceptual_features",
        default="digits",
        help="feature network of the perceptual term: 'digits' (offline CNN) or a differentiable 'module:callable'",
    )
    loss.add_argument(
        "--adversarial_weight", type=float, default=0.0, help="weight of the PatchGAN hinge term (0: no discriminator)"
    )
    loss.add_argument(
        "--adversarial_start_step", type=int, default=0, help="optimizer step from which the discriminator trains"
    )
    loss.add_argument("--discriminator_layers", type=int, help="PatchGAN stride-2 layers; unset: 3, fewer below 32 px")
    loss.add_argument("--discriminator_channels", type=int, default=64, help="PatchGAN first-layer channels")
    loss.add_argument(
        "--discriminator_learning_rate", type=float, help="the discriminator's peak LR; unset: --learning_rate"
    )

    add_training_arguments(p, default_output_dir="scratch-diffusion-vae")
    add_logging_arguments(p)

    ev = p.add_argument_group(
        "evaluation: reconstruction PSNR and Fréchet distance (with the real-vs-real baseline), EMA weights"
    )
    add_held_out_arguments(ev, VALIDATION_SHARE, MAX_DEFAULT_VALIDATION)
    ev.add_argument(
        "--eval_num_images", type=int, default=1024, help="at most this many evaluation images (PSNR and FD)"
    )
    ev.add_argument(
        "--eval_features",
        default="digits",
        help="feature space of the FD: 'digits', 'dinov2', a transformers model folder or Hub id, or "
        "'module:callable' (as train.py)",
    )
    ev.add_argument(
        "--latent_scale_num_images",
        type=int,
        default=2048,
        help="training images whose posterior means give the latent scale 1/std (written as scaling_factor)",
    )
    ev.add_argument(
        "--measure_shift_factor",
        action="store_true",
        help="also write shift_factor = the posterior means' mean (SD3-style z = (E(x) − shift)·scale); unset: "
        "scaling_factor only, as LDM",
    )
    add_hub_arguments(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` and fill the defaults that depend on other arguments."""
    args = build_parser().parse_args(argv)
    args.class_conditional = False  # the shared data loader reads it; a VAE needs no labels
    fill_data_defaults(args)
    if args.init_from is None and args.model_config_name_or_path is None:
        args.model_config_name_or_path = DEFAULT_PRESET
    if args.discriminator_layers is None:
        args.discriminator_layers = default_discriminator_layers(args.resolution)
    if args.discriminator_learning_rate is None:
        args.discriminator_learning_rate = args.learning_rate
    return args


def validate_args(args: argparse.Namespace) -> None:
    """Every check that needs no data and no model weights; raises :class:`ConfigError`."""
    validate_data_args(args)
    validate_training_args(args)
    check_finite(args, VAE_FLOAT_ARGS)
    _check(
        args.reconstruction_loss in RECONSTRUCTION_LOSSES,
        f"--reconstruction_loss {args.reconstruction_loss!r} is not allowed; pass one of "
        f"{', '.join(RECONSTRUCTION_LOSSES)}.",
    )
    for name in ("kl_weight", "perceptual_weight", "adversarial_weight"):
        _check(getattr(args, name) >= 0, f"--{name} must be ≥ 0, got {getattr(args, name)}.")
    _check(args.discriminator_learning_rate > 0, "--discriminator_learning_rate must be > 0.")
    _check(
        args.adversarial_start_step >= 0, f"--adversarial_start_step must be ≥ 0, got {args.adversarial_start_step}."
    )
    _check(
        args.discriminator_channels >= 1, f"--discriminator_channels must be ≥ 1, got {args.discriminator_channels}."
    )
    _check(
        1 <= args.discriminator_layers <= MAX_DISCRIMINATOR_LAYERS,
        f"--discriminator_layers must be in [1, {MAX_DISCRIMINATOR_LAYERS}], got {args.discriminator_layers}.",
    )
    if args.adversarial_weight > 0:
        smallest = min_discriminator_resolution(args.discriminator_layers)
        _check(
            args.resolution >= smallest,
            f"--resolution {args.resolution} is too small for a {args.discriminator_layers}-layer discriminator; "
            f"pass --discriminator_layers {default_discriminator_layers(args.resolution)} or resolution ≥ {smallest}.",
        )
    if args.perceptual_weight > 0:
        from scratch_diffusion.metrics.feature_spaces import DIGITS, is_plugin_name

        _check(
            args.perceptual_features == DIGITS or is_plugin_name(args.perceptual_features),
            f"--perceptual_features {args.perceptual_features!r} is not allowed; pass {DIGITS!r} (the offline digits "
            "CNN) or a differentiable 'package.module:callable'.",
        )
    validate_held_out_args(args)
    for name in ("eval_num_images", "latent_scale_num_images"):
        _check(getattr(args, name) >= 2, f"--{name} must be ≥ 2, got {getattr(args, name)}.")
    problem = feature_space_problem(args.eval_features)
    _check(problem is None, f"--eval_features: {problem}")

    _check(
        args.latent_channels is None or args.latent_channels >= 1,
        f"--latent_channels must be ≥ 1, got {args.latent_channels}.",
    )
    if args.init_from is not None:
        _check(
            args.model_config_name_or_path is None,
            f"pass --init_from {args.init_from!r} or --model_config_name_or_path "
            f"{args.model_config_name_or_path!r}, not both: the VAE's architecture is the saved one.",
        )
        config = read_saved_vae_config(args.init_from)
        _check(
            args.latent_channels in (None, config["latent_channels"]),
            f"--latent_channels {args.latent_channels} does not fit --init_from {args.init_from!r}, whose VAE has "
            f"latent_channels {config['latent_channels']}; allowed: {config['latent_channels']} (or leave it unset).",
        )
    else:
        try:
            config = load_vae_config(args.model_config_name_or_path)
        except (OSError, ValueError) as err:
            raise ConfigError(str(err)) from None
    factor = downsampling_factor(config)
    _check(
        args.resolution % factor == 0,
        f"--resolution {args.resolution} is not divisible by the VAE's downsampling factor {factor} "
        f"({args.model_config_name_or_path or args.init_from!r}); use a multiple of {factor}.",
    )
    validate_resume_and_hub_args(args, example_repo="your-name/vae-digits")


FLOAT_ARGS = COMMON_FLOAT_ARGS + VAE_FLOAT_ARGS  # every float argument of train_vae.py
