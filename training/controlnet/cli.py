"""The command line of ``training/train_controlnet.py`` and the checks that run before any training.

The data, training, logging and Hub arguments are ``train.py``'s (``cli_common``); the noise path, schedule,
prediction type, time distribution, sample space and resolution come from ``--pipeline`` as the classifier trainer
reads them (``classifier/source.py``; a flow pipeline's time distribution may be overridden here). Every check of
:func:`validate_args` runs before the first step; a failure raises :class:`ConfigError`, which
``train_controlnet.py`` prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import os

import torch
from diffusers import UNet2DModel

from scratch_diffusion.control import ControlNet2DModel
from scratch_diffusion.control.transforms import CONTROL_TRANSFORMS, DEFAULT_LOW_RESOLUTION_FACTOR
from scratch_diffusion.images import list_image_files
from scratch_diffusion.pipelines.components import COMPONENTS
from scratch_diffusion.pipelines.saved_format import SavedPipelineError, read_json_object
from scratch_schedulers import Parametrization, ScratchDDPMScheduler
from scratch_schedulers.validation import MAX_TRAIN_TIMESTEPS

from ..classifier.source import (
    LOSS_ONLY_ARGUMENTS,
    PATH_ARGUMENTS,
    UNSET_ARGUMENTS,
    SavedPipeline,
    make_classifier_objective,
    resolve_diffusion_model,
)
from ..cli_common import (
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
from ..cli_latents import DEFAULT_VAE_BATCH_SIZE
from ..errors import ConfigError
from ..errors import check as _check
from ..objectives import DDPMObjective, FlowMatchingObjective, Objective, validate_objective_args

__all__ = ["ConfigError", "build_parser", "conditioning_of", "parse_args", "pipeline_objective", "validate_args"]

COMPONENT = "controlnet"  # its name in a pipeline folder (--attach) and its row in pipelines/components.py
DEFAULT_CONTROL = "low_resolution"
DEFAULT_CONTROL_DROPOUT = 0.1
DEFAULT_CLASS_DROPOUT = 0.1  # train.py's default: the control network also learns the unconditional half
VALIDATION_SHARE, MAX_DEFAULT_VALIDATION = 0.1, 256  # unset --num_validation_images: 10 %, at most 256
# Set by --pipeline (resolve_diffusion_model) and refused on this command line: not arguments here.
LATENT_DEFAULTS = {"vae_name_or_path": None, "vae_subfolder": None, "vae_sample_posterior": False,
                   "latent_scaling_factor": "auto"}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; help texts say what each argument does and its unit."""
    p = argparse.ArgumentParser(
        prog="train_controlnet.py",
        description="Train a ControlNet (Zhang et al., 2023) for the frozen UNet of a saved pipeline, on pairs of "
        "images and control images, with the pipeline's own objective.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_arguments(p)

    control = p.add_argument_group(
        "control images",
        "One source: --control (a built-in transform of each training image, computed per batch after its crop "
        "and flip) or a user's pairs (--control_dir, --control_column), cropped and flipped with their images. "
        f"None given: --control {DEFAULT_CONTROL}.",
    )
    control.add_argument(
        "--control",
        help=f"a built-in control: {', '.join(CONTROL_TRANSFORMS)} (scratch_diffusion.control.transforms); "
        f"unset: {DEFAULT_CONTROL} unless --control_dir or --control_column is given",
    )
    control.add_argument(
        "--low_resolution_factor",
        type=int,
        help=f"--control low_resolution: the side of the averaged blocks, in pixels; unset: "
        f"{DEFAULT_LOW_RESOLUTION_FACTOR}",
    )
    control.add_argument(
        "--control_dir",
        help="a folder of control images with the same relative file names as --train_data_dir's images (each "
        "image's control, of its size)",
    )
    control.add_argument("--control_column", help="a column of --dataset_name holding each image's control image")
    control.add_argument(
        "--control_dropout_prob",
        type=float,
        default=DEFAULT_CONTROL_DROPOUT,
        help="replace a training example's control image by zeros (the empty control) with this probability, as "
        "the paper drops prompts: the network also learns the uncontrolled prediction, for guidance with control",
    )

    model = p.add_argument_group("the frozen pipeline and the control network")
    model.add_argument(
        "--pipeline",
        help="required: a saved ScratchDiffusionPipeline folder (a train.py --output_dir); its UNet (and VAE) stay "
        "frozen; the control network is made from its UNet and trained on its noise path, schedule, prediction "
        "type, time distribution (its model card's), sample space and resolution",
    )
    model.add_argument(
        "--class_dropout_prob",
        type=float,
        help="a class-conditional pipeline: replace a label by the null class with this probability, so the "
        "control network also learns classifier-free guidance's unconditional half; unset: "
        f"{DEFAULT_CLASS_DROPOUT} (refused for an unconditional pipeline)",
    )
    model.add_argument(
        "--conditioning_embedding_channels",
        type=int,
        nargs="+",
        default=[16, 32],
        help="the widths of the control image's encoder (Conv 3×3 + SiLU layers; stride 2 where a latent "
        "pipeline's control image is larger than the latents)",
    )
    model.add_argument(
        "--attach",
        action="store_true",
        help="after training, also save the control network into --pipeline as its controlnet component "
        "(model_index.json lists it; an earlier controlnet/ is replaced)",
    )
    times = p.add_argument_group("time distribution of a flow pipeline (unset: as its model card records it)")
    FlowMatchingObjective.add_arguments(times)

    add_training_arguments(p, default_output_dir="scratch-diffusion-controlnet")
    add_logging_arguments(p, image_grids=False)

    ev = p.add_argument_group(
        "evaluation: held-out loss with and without the control, and the control consistency of samples, EMA weights"
    )
    add_held_out_arguments(ev, VALIDATION_SHARE, MAX_DEFAULT_VALIDATION, examples="examples")
    ev.add_argument(
        "--eval_num_images",
        type=int,
        default=256,
        help="at most this many examples for the held-out loss (one seeded noise draw each)",
    )
    ev.add_argument(
        "--eval_num_samples",
        type=int,
        default=16,
        help="sample this many images with held-out controls and as many without (the same noise) for "
        "control_samples.png and, with a built-in --control, MSE(transform(sample), control); 0: no sampling",
    )
    ev.add_argument(
        "--eval_num_inference_steps",
        type=int,
        default=20,
        help="sampling steps of those samples (the sampler train.py saves for the pipeline's objective)",
    )
    latent = p.add_argument_group("latent pipelines (their VAE and latent scale are the pipeline's)")
    latent.add_argument(
        "--latent_cache_dir",
        help="where the encoded latents are cached (unset: $SCRATCH_DIFFUSION_CACHE/latents, else "
        "~/.cache/scratch-diffusion/latents)",
    )
    latent.add_argument(
        "--vae_batch_size", type=int, default=DEFAULT_VAE_BATCH_SIZE, help="images per VAE call when encoding"
    )
    add_hub_arguments(p)
    # The path, time and latent arguments stay unset until validate_args fills them from --pipeline (or the card).
    p.set_defaults(**dict.fromkeys((*UNSET_ARGUMENTS, *PATH_ARGUMENTS, *LOSS_ONLY_ARGUMENTS)), **LATENT_DEFAULTS)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; the path, time and latent arguments stay unset until :func:`validate_args` fills them."""
    return build_parser().parse_args(argv)


def conditioning_of(args: argparse.Namespace, saved: SavedPipeline, vae_config: dict | None) -> dict:
    """``ControlNet2DModel.from_unet``'s conditioning keywords: the image's channels, the VAE's factor (or 1)."""
    channels = saved.unet_config.get("in_channels", 3) if vae_config is None else vae_config.get("in_channels", 3)
    return {
        "conditioning_channels": channels,
        "conditioning_downscale_factor": saved.vae_factor or 1,
        "conditioning_embedding_channels": tuple(args.conditioning_embedding_channels),
    }


def recorded_prediction_type(folder: str) -> str:
    """What the pipeline's UNet predicts (``model_index.json``'s ``prediction_type``)."""
    try:
        prediction_type = read_json_object(os.path.join(folder, "model_index.json")).get("prediction_type")
    except (SavedPipelineError, OSError) as err:
        raise ConfigError(f"--pipeline {folder!r} could not be read: {err}") from None
    _check(
        isinstance(prediction_type, str),
        f"--pipeline {folder!r} does not record what its UNet predicts (prediction_type {prediction_type!r} in "
        "model_index.json); allowed: a ScratchDiffusionPipeline folder.",
    )
    return prediction_type


def _fill_loss_from_pipeline(args: argparse.Namespace, saved: SavedPipeline) -> None:
    """The UNet's own loss: its prediction type and, on the VP path, the min-SNR-γ its card records."""
    args.prediction_type = recorded_prediction_type(saved.folder) if saved.noise_path == "vp" else None
    gamma = saved.recorded.get("snr_gamma") if saved.noise_path == "vp" else None
    try:
        args.snr_gamma = None if gamma in (None, "None") else float(gamma)
    except ValueError:
        raise ConfigError(f"--pipeline {saved.folder!r}: its card records snr_gamma {gamma!r}, not a number.") from None


def pipeline_objective(args: argparse.Namespace, saved: SavedPipeline) -> Objective:
    """The objective the pipeline's UNet was trained with: its path and schedule (a VP schedule taken whole), its
    prediction type and min-SNR-γ (VP), its time distribution (flow; as :func:`resolve_diffusion_model` filled it).

    Raises :class:`ConfigError` if that objective would not train what the UNet predicts.
    """
    objective, _ = make_classifier_objective(args, saved)
    if saved.noise_path == "vp":
        scheduler = ScratchDDPMScheduler(**{**saved.noise_schedule, "prediction_type": args.prediction_type})
        objective = DDPMObjective(scheduler, args.prediction_type, args.snr_gamma)
    recorded = Parametrization(saved.noise_path, recorded_prediction_type(saved.folder))
    _check(
        objective.parametrization == recorded,
        f"--pipeline {saved.folder!r}: its UNet predicts {recorded.prediction_type!r} on the {recorded.path!r} path, "
        f"which no objective here trains (allowed: {objective.parametrization.prediction_type!r} on that path).",
    )
    return objective


def _validate_control(args: argparse.Namespace) -> None:
    """One control source, fitting the data; fills ``--control``'s default."""
    paired = [name for name in ("control_dir", "control_column") if getattr(args, name) is not None]
    _check(len(paired) <= 1, "pass --control_dir or --control_column, not both.")
    if paired:
        _check(
            args.control is None,
            f"pass --control {args.control} or --{paired[0]}, not both: a control is built in or paired.",
        )
    elif args.control is None:
        args.control = DEFAULT_CONTROL
    if args.control is not None:
        _check(
            args.control in CONTROL_TRANSFORMS,
            f"--control {args.control!r} is not allowed; pass one of {', '.join(CONTROL_TRANSFORMS)} (or a user's "
            "pairs with --control_dir / --control_column).",
        )
    if args.control == "low_resolution":
        if args.low_resolution_factor is None:
            args.low_resolution_factor = DEFAULT_LOW_RESOLUTION_FACTOR
        factor = args.low_resolution_factor
        _check(
            factor >= 1 and args.resolution % factor == 0,
            f"--low_resolution_factor {factor} is not allowed at --resolution {args.resolution}; pass a factor ≥ 1 "
            "that divides the resolution.",
        )
    else:
        _check(args.low_resolution_factor is None, "--low_resolution_factor applies to --control low_resolution only.")
    if args.control_dir is not None:
        _check(
            args.train_data_dir is not None,
            "--control_dir pairs with --train_data_dir's images (the same file names); pass --train_data_dir.",
        )
        _check(os.path.isdir(args.control_dir), f"--control_dir {args.control_dir!r} is not a folder.")
        missing = [
            path.relative_to(args.train_data_dir).as_posix()
            for path in list_image_files(args.train_data_dir)
            if not os.path.isfile(os.path.join(args.control_dir, path.relative_to(args.train_data_dir)))
        ]
        _check(
            not missing,
            f"--control_dir {args.control_dir!r} lacks the control of {len(missing)} image(s) of --train_data_dir, "
            f"e.g. {', '.join(missing[:3])}; allowed: a folder with a control image of each image's file name.",
        )
    if args.control_column is not None:
        _check(
            args.dataset_name is not None,
            "--control_column is a column of --dataset_name; pass --dataset_name (or pairs in --control_dir).",
        )
        _check(
            args.control_column != args.image_column,
            f"--control_column {args.control_column!r} is the --image_column; pass the column of the controls.",
        )


def validate_args(args: argparse.Namespace) -> None:
    """Resolve ``--pipeline`` and check everything that needs no data and no weights; raises :class:`ConfigError`."""
    _check(
        args.pipeline is not None,
        "--pipeline is required: the saved pipeline folder (a train.py --output_dir) whose UNet the control "
        "network steers.",
    )
    saved = resolve_diffusion_model(args)
    _fill_loss_from_pipeline(args, saved)
    unet_class = saved.unet_config.get("_class_name", "UNet2DModel")
    _check(unet_class == "UNet2DModel", f"--pipeline {args.pipeline!r}: unet/ holds a {unet_class}; allowed: "
           "a UNet2DModel.")  # fmt: skip
    args.class_conditional = saved.num_classes is not None  # the shared data loader reads it: labels, or none
    fill_data_defaults(args)
    validate_data_args(args)
    validate_training_args(args)
    validate_objective_args(args)
    check_finite(args, ("control_dropout_prob", "class_dropout_prob"))
    _check(
        2 <= args.ddpm_num_steps <= MAX_TRAIN_TIMESTEPS,
        f"--pipeline {args.pipeline!r} records num_train_timesteps {args.ddpm_num_steps}; allowed: [2, "
        f"{MAX_TRAIN_TIMESTEPS}].",
    )
    _validate_control(args)
    _check(
        0 <= args.control_dropout_prob < 1,
        f"--control_dropout_prob must be in [0, 1), got {args.control_dropout_prob}.",
    )
    if args.class_conditional:
        if args.class_dropout_prob is None:
            args.class_dropout_prob = DEFAULT_CLASS_DROPOUT
        _check(
            0 <= args.class_dropout_prob < 1,
            f"--class_dropout_prob must be in [0, 1), got {args.class_dropout_prob}.",
        )
    else:
        _check(
            args.class_dropout_prob is None,
            f"--class_dropout_prob is not allowed: --pipeline {args.pipeline!r}'s UNet is unconditional (no class "
            "labels to drop).",
        )
    _check(
        all(width >= 1 for width in args.conditioning_embedding_channels),
        f"--conditioning_embedding_channels {args.conditioning_embedding_channels} is not allowed; pass widths ≥ 1.",
    )
    pipeline_objective(args, saved)  # the UNet's parametrisation is one an objective trains
    _check(args.vae_batch_size >= 1, f"--vae_batch_size must be ≥ 1, got {args.vae_batch_size}.")
    vae_config = None
    if saved.vae_factor is not None:
        vae_config = read_json_object(os.path.join(args.pipeline, "vae", "config.json"))
    try:  # every structural check of the control network, on the meta device: no memory, no random draws
        with torch.device("meta"):
            unet = UNet2DModel.from_config({k: v for k, v in saved.unet_config.items() if not k.startswith("_")})
            ControlNet2DModel.from_unet(unet, **conditioning_of(args, saved, vae_config), load_weights_from_unet=False)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"--pipeline {args.pipeline!r}'s UNet does not make a control network: {err}") from None
    if args.attach:
        _check(
            COMPONENT in COMPONENTS,
            f"--attach is not available: the pipeline has no {COMPONENT!r} component in this installation "
            f"(pipelines/components.py lists {', '.join(COMPONENTS)}).",
        )
        _check(os.access(args.pipeline, os.W_OK), f"--attach: --pipeline {args.pipeline!r} is not writable.")
    validate_held_out_args(args)
    _check(args.eval_num_images >= 1, f"--eval_num_images must be ≥ 1, got {args.eval_num_images}.")
    _check(args.eval_num_samples >= 0, f"--eval_num_samples must be ≥ 0, got {args.eval_num_samples}.")
    _check(
        1 <= args.eval_num_inference_steps <= args.ddpm_num_steps,
        f"--eval_num_inference_steps must be in [1, {args.ddpm_num_steps}] (the pipeline's training timesteps), "
        f"got {args.eval_num_inference_steps}.",
    )
    validate_resume_and_hub_args(args, example_repo="your-name/controlnet-digits")
