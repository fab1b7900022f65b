"""The command line of ``training/train_classifier.py`` and the checks that run before any training.

The data, training, logging, latent and Hub arguments are ``train.py``'s (``cli_common``, ``cli_latents``), the
path and time arguments its objectives' (``--objective``, ``--weighting_scheme``, ``--logit_mean`` …); with
``--pipeline`` those come from the saved pipeline instead (``source.py``). Every check of :func:`validate_args`
runs before the first step; a failure raises :class:`ConfigError`, which ``train_classifier.py`` prints as one
line with exit status 2.
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from scratch_diffusion.guidance.noisy_classifier import NoisyClassifier
from scratch_schedulers.validation import MAX_TRAIN_TIMESTEPS

from ..cli_common import (
    add_data_arguments,
    add_held_out_arguments,
    add_hub_arguments,
    add_logging_arguments,
    add_training_arguments,
    fill_data_defaults,
    validate_data_args,
    validate_held_out_args,
    validate_resume_and_hub_args,
    validate_training_args,
)
from ..cli_latents import add_latent_arguments, validate_latent_args
from ..errors import ConfigError
from ..errors import check as _check
from ..models import PRESETS, load_unet_config, min_resolution
from ..objectives import OBJECTIVES, add_objective_arguments, validate_objective_args
from .evaluation import DEFAULT_NOISE_LEVEL_EDGES
from .source import UNSET_ARGUMENTS, SavedPipeline, resolve_diffusion_model

__all__ = ["ConfigError", "build_parser", "classifier_architecture", "parse_args", "validate_args"]

DEFAULT_PRESET = "tiny"
VALIDATION_SHARE, MAX_DEFAULT_VALIDATION = 0.2, 360  # unset --num_validation_images: 20 %, at most 360
DEFAULT_NOISE_DRAWS = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; help texts say what each argument does and its unit."""
    p = argparse.ArgumentParser(
        prog="train_classifier.py",
        description="Train a noise-aware classifier p(y | x_t) for classifier guidance, on the noise path, time "
        "distribution and sample space of a diffusion model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        conflict_handler="resolve",  # the loss-only objective arguments are replaced by hidden ones below
    )
    add_data_arguments(p)

    model = p.add_argument_group("the diffusion model it guides, and the classifier")
    model.add_argument(
        "--pipeline",
        help="a saved ScratchDiffusionPipeline folder (a train.py --output_dir): the classifier trains on its noise "
        "path and schedule, its time distribution (as its model card records it; the flow arguments below override "
        "it), its sample space (a latent pipeline's VAE and latent scale) and resolution, and mirrors its UNet",
    )
    model.add_argument(
        "--model_config_name_or_path",
        help=f"the UNet2DModel whose encoder the classifier mirrors: a preset ({', '.join(PRESETS)}) or a JSON config "
        f"file / folder with config.json; unset: --pipeline's UNet, else {DEFAULT_PRESET}",
    )
    model.add_argument(
        "--ddpm_num_steps", type=int, help="training timesteps T of the path (without --pipeline); unset: 1000"
    )
    add_objective_arguments(p, model)  # --objective and the path / time arguments of each objective
    model.add_argument(  # replaces train.py's --objective, whose help is about the diffusion loss
        "--objective",
        choices=tuple(OBJECTIVES),
        help="the diffusion model's path (without --pipeline): ddpm (VP, t ~ U{0..T−1}) or flow (σ as "
        "--weighting_scheme draws it); unset: ddpm if a ddpm argument is given, else flow",
    )
    for name, kind in (("prediction_type", str), ("snr_gamma", float)):  # they shape the loss, not x_t: refused
        p.add_argument(f"--{name}", type=kind, help=argparse.SUPPRESS)

    add_training_arguments(p, default_output_dir="scratch-diffusion-classifier")
    add_logging_arguments(p, image_grids=False)

    ev = p.add_argument_group("evaluation: accuracy on held-out images by noise level σ = b/a, EMA weights")
    add_held_out_arguments(ev, VALIDATION_SHARE, MAX_DEFAULT_VALIDATION, held_out="labelled images")
    ev.add_argument(
        "--eval_num_images", type=int, default=1024, help="at most this many evaluation images (a seeded subset)"
    )
    ev.add_argument(
        "--noise_level_edges",
        type=float,
        nargs="+",
        default=list(DEFAULT_NOISE_LEVEL_EDGES),
        help="edges of the bins of σ = b/a = exp(−λ) that accuracy is reported in (increasing, > 0)",
    )
    ev.add_argument(
        "--eval_noise_draws",
        type=int,
        default=DEFAULT_NOISE_DRAWS,
        help="noisy copies of each evaluation image per bin (log σ uniform in the bin, fresh noise)",
    )
    add_latent_arguments(p)
    add_hub_arguments(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; the path and time arguments stay None (unset) until :func:`validate_args` fills them."""
    parser = build_parser()
    parser.set_defaults(**dict.fromkeys(UNSET_ARGUMENTS))
    args = parser.parse_args(argv)
    args.class_conditional = True  # the shared data loader reads it: a classifier needs the labels
    return args


def classifier_architecture(args: argparse.Namespace, saved: SavedPipeline | None) -> dict:
    """The UNet2DModel config the classifier mirrors: ``--model_config_name_or_path``, or the pipeline's UNet's."""
    if args.model_config_name_or_path is None and saved is not None:
        return {k: v for k, v in saved.unet_config.items() if not k.startswith("_")}
    try:
        return load_unet_config(args.model_config_name_or_path or DEFAULT_PRESET)
    except (OSError, ValueError) as err:
        raise ConfigError(str(err)) from None


def validate_args(args: argparse.Namespace) -> None:
    """Resolve ``--pipeline`` and check everything that needs no data and no weights; raises :class:`ConfigError`."""
    saved = resolve_diffusion_model(args)
    fill_data_defaults(args)
    validate_data_args(args)
    validate_training_args(args)
    validate_objective_args(args)
    _check(
        2 <= args.ddpm_num_steps <= MAX_TRAIN_TIMESTEPS,
        f"--ddpm_num_steps must be in [2, {MAX_TRAIN_TIMESTEPS}], got {args.ddpm_num_steps}.",
    )
    architecture = classifier_architecture(args, saved)
    try:  # every structural check of the classifier, on the meta device: no memory, no random draws
        with torch.device("meta"):
            NoisyClassifier.from_unet_config(
                architecture, 2, "flow", None, sample_size=min_resolution(architecture), in_channels=1
            )
    except (ValueError, TypeError) as err:
        where = args.model_config_name_or_path or f"--pipeline {args.pipeline!r}'s UNet"
        raise ConfigError(f"{where} does not make a classifier: {err}") from None
    if args.vae_name_or_path is None:
        factor = min_resolution(architecture)
        _check(
            args.resolution % factor == 0,
            f"--resolution {args.resolution} cannot be downsampled by the classifier (it halves the image "
            f"{factor.bit_length() - 1} times); use a multiple of {factor}.",
        )
    validate_latent_args(args, architecture)  # with a VAE: its config, and the latent side against the levels
    validate_held_out_args(args)
    _check(args.eval_num_images >= 1, f"--eval_num_images must be ≥ 1, got {args.eval_num_images}.")
    _check(args.eval_noise_draws >= 1, f"--eval_noise_draws must be ≥ 1, got {args.eval_noise_draws}.")
    edges = args.noise_level_edges
    _check(
        len(edges) >= 2
        and all(math.isfinite(e) and e > 0 for e in edges)
        and all(a < b for a, b in itertools.pairwise(edges)),
        f"--noise_level_edges {edges} is not allowed; pass at least two finite, positive, increasing σ values.",
    )
    validate_resume_and_hub_args(args, example_repo="your-name/classifier-digits")
