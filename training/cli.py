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
import os

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
from .init_from import check_parametrization, check_unet_side, read_saved_unet
from .models import PRESETS, load_unet_config, min_resolution
from .objectives import (
    OBJECTIVES,
    add_objective_arguments,
    choose_objective,
    make_objective,
    objective_class,
    validate_objective_args,
)

__all__ = ["ConfigError", "build_parser", "parse_args", "validate_args"]

DEFAULT_PRESET = "small"


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
        help=f"UNet2DModel preset ({', '.join(PRESETS)}) or a JSON config file / folder with config.json; unset: "
        f"{DEFAULT_PRESET} (or --init_from's UNet)",
    )
    model.add_argument(
        "--init_from",
        help="a saved pipeline (a training run's --output_dir, or a Hub repo id) whose UNet — config and weights — "
        "this run starts from instead of a fresh --model_config_name_or_path; it must predict what the objective "
        "trains, at this run's size, channels and classes",
    )
    model.add_argument("--class_conditional", action="store_true", help="condition the UNet on class labels")
    model.add_argument(
        "--class_dropout_prob", type=float, default=0.1, help="label dropout for classifier-free guidance"
    )
    model.add_argument("--ddpm_num_steps", type=int, default=1000, help="training timesteps T (every objective)")
    model.add_argument(
        "--guide_for",
        help="a saved pipeline folder whose autoguidance guide this run trains (Karras et al., 2024): after training, "
        "this run's UNet (EMA weights) is also saved into that folder as its guide_unet; train a smaller "
        "--model_config_name_or_path for a fraction of the main run's steps, on the same data, path and latents",
    )
    add_objective_arguments(p, model)  # --objective, then one group per objective (training/objectives/)

    add_training_arguments(p, default_output_dir="scratch-diffusion-model")
    logs = add_logging_arguments(p)
    logs.add_argument(
        "--ddpm_num_inference_steps",
        type=int,
        help="sampling steps for the grids and the model card's snippet; unset: 50, or 2 for a few-step objective "
        "(meanflow, consistency)",
    )
    add_evaluation_arguments(p)
    add_latent_arguments(p)
    add_hub_arguments(p)
    return p


def fill_step_counts(args: argparse.Namespace) -> None:
    """Unset sampling step counts: the objective's (``Objective.default_step_counts``)."""
    counts = objective_class(args.objective).default_step_counts()
    if args.ddpm_num_inference_steps is None:
        args.ddpm_num_inference_steps = counts[0]
    if args.eval_num_inference_steps is None:
        first = args.ddpm_num_inference_steps
        args.eval_num_inference_steps = [first, *(c for c in counts[1:] if c != first)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` and fill the defaults that depend on other arguments."""
    args = build_parser().parse_args(argv)
    fill_data_defaults(args)
    choose_objective(args)
    fill_step_counts(args)
    if args.init_from is None and args.model_config_name_or_path is None:
        args.model_config_name_or_path = DEFAULT_PRESET
    return args


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

    validate_objective_args(args)

    if args.init_from is not None:
        _check(
            args.model_config_name_or_path is None,
            f"pass --init_from {args.init_from!r} or --model_config_name_or_path "
            f"{args.model_config_name_or_path!r}, not both: the UNet's architecture is the saved one.",
        )
        saved = read_saved_unet(args.init_from)
        check_parametrization(saved, make_objective(args).parametrization, args.objective)
        unet_config = saved.config
        if args.vae_name_or_path is None:  # a latent run's side is checked once the VAE is loaded
            check_unet_side(saved.config, args.init_from, args.resolution)
    else:
        try:
            unet_config = load_unet_config(args.model_config_name_or_path)
        except (OSError, ValueError) as err:
            raise ConfigError(str(err)) from None
    if args.vae_name_or_path is None:
        factor = min_resolution(unet_config)
        _check(
            args.resolution >= factor and args.resolution % factor == 0,
            f"--resolution {args.resolution} cannot be downsampled by the UNet "
            f"({args.model_config_name_or_path or args.init_from!r} halves the image {factor.bit_length() - 1} "
            f"times); use a multiple of {factor}.",
        )
    validate_latent_args(args, unet_config)  # with a VAE: the UNet is checked at the latent size instead
    if args.guide_for is not None:
        _check(os.path.isdir(args.guide_for), f"--guide_for {args.guide_for!r}: no such folder; pass a saved pipeline.")
        guided = read_saved_unet(args.guide_for)
        check_parametrization(guided, make_objective(args).parametrization, args.objective)
        if args.vae_name_or_path is None:
            check_unet_side(guided.config, args.guide_for, args.resolution)
    validate_resume_and_hub_args(args)


MODEL_FLOAT_ARGS = ("class_dropout_prob",)  # each objective lists its own (Objective.float_arguments)
# every float argument of train.py (those of the objectives registered at import)
FLOAT_ARGS = COMMON_FLOAT_ARGS + MODEL_FLOAT_ARGS + tuple(a for o in OBJECTIVES.values() for a in o.float_arguments)
