"""The command line of ``training/train.py`` and the checks that run before any training.

Where diffusers' ``examples/unconditional_image_generation/train_unconditional.py`` has the same
concept, the argument has the same name (``--train_batch_size``, ``--ddpm_beta_schedule``,
``--checkpointing_steps``, ``--hub_model_id`` …), so its users can keep their command lines.
New here: ``--seed``, ``--objective``, v-prediction, ``--snr_gamma``, flow matching, presets,
class conditioning, ``--max_train_steps``, ``--save_images_steps`` and ``--max_grad_norm``; and
evaluation during training (``--eval_steps``, ``--eval_num_samples``, ``--eval_sampler``,
``--eval_num_inference_steps``, ``--eval_features``, ``--save_best``: FD and KID of EMA samples against
real training images, logged to tensorboard, in the model card, and the best pipeline kept in ``best/``;
see ``evaluation.py``); latent diffusion (``--vae_name_or_path`` and the ``cli_latents`` group: train on a
frozen AutoencoderKL's cached latents).

Every check in :func:`validate_args` runs before the first training step; a failure raises
:class:`ConfigError`, which ``train.py`` turns into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse

from scratch_schedulers.noise_path import VP_PREDICTION_TYPES
from scratch_schedulers.validation import MAX_TRAIN_TIMESTEPS

from .cli_common import (
    COMMON_FLOAT_ARGS,
    add_data_arguments,
    add_hub_arguments,
    add_logging_arguments,
    add_training_arguments,
    check_finite,
    fill_data_defaults,
    validate_data_args,
    validate_resume_and_hub_args,
    validate_training_args,
)
from .cli_evaluation import add_evaluation_arguments, validate_evaluation_args
from .cli_latents import add_latent_arguments, validate_latent_args
from .errors import ConfigError
from .errors import check as _check
from .models import PRESETS, load_unet_config, min_resolution

__all__ = ["ConfigError", "build_parser", "parse_args", "validate_args"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; help texts say what each argument does and its unit."""
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train a UNet2DModel from scratch with a DDPM-family or flow-matching objective.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_arguments(p)

    model = p.add_argument_group("model and objective")
    model.add_argument(
        "--model_config_name_or_path",
        default="small",
        help=f"UNet2DModel preset ({', '.join(PRESETS)}) or a JSON config file / folder with config.json",
    )
    model.add_argument("--class_conditional", action="store_true", help="condition the UNet on class labels")
    model.add_argument(
        "--class_dropout_prob", type=float, default=0.1, help="label dropout for classifier-free guidance"
    )
    model.add_argument(
        "--objective",
        choices=("ddpm", "flow"),
        help="training objective; unset: ddpm if a ddpm-only argument is given (--prediction_type, "
        "--ddpm_beta_schedule, --rescale_betas_zero_snr, --snr_gamma), else flow with logit-normal σ — the best "
        "measured short-run recipe (README, 'Objectives at equal steps')",
    )
    model.add_argument(
        "--prediction_type",
        choices=VP_PREDICTION_TYPES,
        help="what a ddpm UNet predicts; unset: epsilon (flow always predicts the velocity ε − x0)",
    )
    model.add_argument("--ddpm_num_steps", type=int, default=1000, help="training timesteps T (both objectives)")
    model.add_argument(
        "--ddpm_beta_schedule",
        choices=("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"),
        help="β schedule of the ddpm objective; unset: linear",
    )
    model.add_argument("--rescale_betas_zero_snr", action="store_true", help="ddpm: zero terminal SNR")
    model.add_argument("--snr_gamma", type=float, help="ddpm: min-SNR-γ loss weighting (Hang et al., 2023)")
    model.add_argument(
        "--weighting_scheme",
        choices=("uniform", "logit_normal"),
        help="flow: how σ is sampled in training (diffusers' SD3 scripts' name); unset: logit_normal",
    )
    model.add_argument("--logit_mean", type=float, default=0.0, help="flow logit_normal: mean of logit(σ)")
    model.add_argument("--logit_std", type=float, default=1.0, help="flow logit_normal: std of logit(σ)")
    model.add_argument("--flow_shift", type=float, default=1.0, help="flow: time shift s of σ (training and sampling)")

    add_training_arguments(p, default_output_dir="scratch-diffusion-model")
    logs = add_logging_arguments(p)
    logs.add_argument("--ddpm_num_inference_steps", type=int, default=50, help="sampling steps for the grids")
    add_evaluation_arguments(p)
    add_latent_arguments(p)
    add_hub_arguments(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` and fill the defaults that depend on other arguments."""
    args = build_parser().parse_args(argv)
    fill_data_defaults(args)
    if args.objective is None:
        given = [getattr(args, name) for name in DDPM_ONLY_ARGS]
        args.objective = "ddpm" if any(value is not None and value is not False for value in given) else "flow"
    if args.objective == "ddpm":
        args.prediction_type = args.prediction_type or "epsilon"
        args.ddpm_beta_schedule = args.ddpm_beta_schedule or "linear"
    elif args.weighting_scheme is None:
        args.weighting_scheme = "logit_normal"
    return args


# Given any of these without --objective, the objective is ddpm (a diffusers train_unconditional.py command line).
DDPM_ONLY_ARGS = ("prediction_type", "ddpm_beta_schedule", "rescale_betas_zero_snr", "snr_gamma")


def validate_args(args: argparse.Namespace) -> None:
    """Every check that needs no data and no model weights; raises :class:`ConfigError`."""
    validate_data_args(args)
    validate_training_args(args)
    check_finite(args, MODEL_FLOAT_ARGS)
    _check(args.ddpm_num_inference_steps >= 1, "--ddpm_num_inference_steps must be ≥ 1.")
    _check(
        2 <= args.ddpm_num_steps <= MAX_TRAIN_TIMESTEPS,
        f"--ddpm_num_steps must be in [2, {MAX_TRAIN_TIMESTEPS}], got {args.ddpm_num_steps}.",
    )
    _check(
        args.ddpm_num_inference_steps <= args.ddpm_num_steps,
        f"--ddpm_num_inference_steps {args.ddpm_num_inference_steps} is not allowed: the sample grids can take at "
        f"most --ddpm_num_steps ({args.ddpm_num_steps}) steps.",
    )
    _check(0 <= args.class_dropout_prob < 1, f"--class_dropout_prob must be in [0, 1), got {args.class_dropout_prob}.")
    validate_evaluation_args(args)

    if args.objective == "flow":
        _check(
            args.prediction_type is None,
            "--prediction_type applies to --objective ddpm; flow matching predicts the velocity ε − x0.",
        )
        _check(args.snr_gamma is None, "--snr_gamma applies to --objective ddpm only.")
        _check(args.ddpm_beta_schedule is None, "--ddpm_beta_schedule applies to --objective ddpm only.")
        _check(not args.rescale_betas_zero_snr, "--rescale_betas_zero_snr applies to --objective ddpm only.")
        _check(args.flow_shift > 0, f"--flow_shift must be > 0, got {args.flow_shift}.")
        _check(args.logit_std > 0, f"--logit_std must be > 0, got {args.logit_std}.")
    else:
        _check(args.weighting_scheme is None, "--weighting_scheme applies to --objective flow only.")
        _check(args.flow_shift == 1.0, "--flow_shift applies to --objective flow only.")
        _check(args.snr_gamma is None or args.snr_gamma > 0, f"--snr_gamma must be > 0, got {args.snr_gamma}.")

    try:
        unet_config = load_unet_config(args.model_config_name_or_path)
    except (OSError, ValueError) as err:
        raise ConfigError(str(err)) from None
    if args.vae_name_or_path is None:
        factor = min_resolution(unet_config)
        _check(
            args.resolution >= factor and args.resolution % factor == 0,
            f"--resolution {args.resolution} cannot be downsampled by the UNet "
            f"({args.model_config_name_or_path!r} halves the image {factor.bit_length() - 1} times); "
            f"use a multiple of {factor}.",
        )
    validate_latent_args(args, unet_config)  # with a VAE: the UNet is checked at the latent size instead
    validate_resume_and_hub_args(args)


MODEL_FLOAT_ARGS = ("class_dropout_prob", "snr_gamma", "logit_mean", "logit_std", "flow_shift")
FLOAT_ARGS = COMMON_FLOAT_ARGS + MODEL_FLOAT_ARGS  # every float argument of train.py
