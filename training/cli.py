"""The command line of ``training/train.py`` and the checks that run before any training.

Where diffusers' ``examples/unconditional_image_generation/train_unconditional.py`` has the same
concept, the argument has the same name (``--train_batch_size``, ``--ddpm_beta_schedule``,
``--checkpointing_steps``, ``--hub_model_id`` …), so its users can keep their command lines.
New here: ``--seed``, ``--objective``, v-prediction, ``--snr_gamma``, flow matching, presets,
class conditioning, ``--max_train_steps``, ``--save_images_steps`` and ``--max_grad_norm``; and
evaluation during training (``--eval_steps``, ``--eval_num_samples``, ``--eval_sampler``,
``--eval_num_inference_steps``, ``--eval_features``, ``--save_best``: FD and KID of EMA samples against
real training images, logged to tensorboard, in the model card, and the best pipeline kept in ``best/``;
see ``evaluation.py``).

Every check in :func:`validate_args` runs before the first training step; a failure raises
:class:`ConfigError`, which ``train.py`` turns into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os

from scratch_diffusion.images import IMAGE_EXTENSIONS, is_image_file
from scratch_diffusion.pipelines.loading import looks_like_local_path
from scratch_diffusion.pipelines.pipeline_scratch_diffusion import MAX_BATCH_SIZE
from scratch_schedulers.noise_path import VP_PREDICTION_TYPES
from scratch_schedulers.validation import MAX_TRAIN_TIMESTEPS

from .checkpoints import CHECKPOINT_RE, CheckpointError, check_checkpoint
from .cli_evaluation import add_evaluation_arguments, validate_evaluation_args
from .errors import ConfigError
from .errors import check as _check
from .hub import repo_id_problem
from .models import PRESETS, load_unet_config, min_resolution

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
DEFAULT_RESOLUTION = {"digits": 16, "other": 64}
MAX_RESOLUTION = 4096  # image side in pixels; beyond it a typo, refused before any data is decoded
MAX_SEED = 2**32 - 1  # numpy's seed range (accelerate's set_seed seeds numpy too)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; help texts say what each argument does and its unit."""
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train a UNet2DModel from scratch with a DDPM-family or flow-matching objective.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = p.add_argument_group("data (no data argument: the built-in 8×8 scikit-learn digits, 16×16)")
    data.add_argument("--dataset_name", help="a Hub dataset name or a local dataset path (datasets.load_dataset)")
    data.add_argument("--dataset_config_name", help="the dataset's configuration name")
    data.add_argument("--train_data_dir", help="a folder of images, read as datasets' imagefolder")
    data.add_argument("--cache_dir", help="datasets cache folder")
    data.add_argument("--image_column", default="image", help="column holding the images")
    data.add_argument("--label_column", help="column holding class labels; unset: 'label' with --class_conditional")
    data.add_argument("--resolution", type=int, help="image side in pixels; unset: 16 for digits, else 64")
    data.add_argument("--center_crop", action="store_true", help="center crop instead of a random crop")
    data.add_argument("--random_flip", action="store_true", help="random horizontal flips")
    data.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes")

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
    model.add_argument("--objective", choices=("ddpm", "flow"), default="ddpm", help="training objective")
    model.add_argument(
        "--prediction_type",
        choices=VP_PREDICTION_TYPES,
        help="what a ddpm UNet predicts; unset: epsilon (flow always predicts the velocity ε − x0)",
    )
    model.add_argument("--ddpm_num_steps", type=int, default=1000, help="training timesteps T (both objectives)")
    model.add_argument(
        "--ddpm_beta_schedule",
        choices=("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"),
        default="linear",
        help="β schedule of the ddpm objective",
    )
    model.add_argument("--rescale_betas_zero_snr", action="store_true", help="ddpm: zero terminal SNR")
    model.add_argument("--snr_gamma", type=float, help="ddpm: min-SNR-γ loss weighting (Hang et al., 2023)")
    model.add_argument(
        "--weighting_scheme",
        choices=("uniform", "logit_normal"),
        default="uniform",
        help="flow: how σ is sampled in training (diffusers' SD3 scripts' name)",
    )
    model.add_argument("--logit_mean", type=float, default=0.0, help="flow logit_normal: mean of logit(σ)")
    model.add_argument("--logit_std", type=float, default=1.0, help="flow logit_normal: std of logit(σ)")
    model.add_argument("--flow_shift", type=float, default=1.0, help="flow: time shift s of σ (training and sampling)")

    train = p.add_argument_group("training")
    train.add_argument("--output_dir", default="scratch-diffusion-model", help="checkpoints, logs, final pipeline")
    train.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and noise")
    train.add_argument("--train_batch_size", type=int, default=16, help="images per process per micro-batch")
    train.add_argument("--num_epochs", type=int, default=100, help="training length in epochs")
    train.add_argument("--max_train_steps", type=int, help="training length in optimizer steps (wins over epochs)")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per update")
    train.add_argument("--learning_rate", type=float, default=1e-4, help="peak learning rate")
    train.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, default="cosine", help="LR schedule")
    train.add_argument("--lr_warmup_steps", type=int, default=500, help="LR warm-up, in optimizer steps")
    train.add_argument("--adam_beta1", type=float, default=0.95)
    train.add_argument("--adam_beta2", type=float, default=0.999)
    train.add_argument("--adam_weight_decay", type=float, default=1e-6)
    train.add_argument("--adam_epsilon", type=float, default=1e-8)
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm (0: off)")
    train.add_argument(
        "--skip_nonfinite_loss",
        action="store_true",
        help="skip (and count) an update whose loss is NaN/inf instead of stopping; costs one host sync per update",
    )
    train.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), help="unset: from accelerate config")
    train.add_argument(
        "--use_ema", action=argparse.BooleanOptionalAction, default=True, help="EMA weights for samples and output"
    )
    train.add_argument("--ema_max_decay", type=float, default=0.9999)
    train.add_argument("--ema_inv_gamma", type=float, default=1.0, help="EMA warm-up: 1 − (1 + step/γ)^−power")
    train.add_argument("--ema_power", type=float, default=0.75)

    logs = p.add_argument_group("logging, samples and checkpoints")
    logs.add_argument("--logger", choices=("tensorboard", "none"), default="tensorboard")
    logs.add_argument("--logging_dir", default="logs", help="tensorboard folder, relative to --output_dir")
    logs.add_argument("--logging_steps", type=int, default=10, help="write loss/LR every N steps (one device sync)")
    logs.add_argument("--save_images_steps", type=int, default=1000, help="log a sample grid every N steps")
    logs.add_argument("--eval_batch_size", type=int, default=16, help="images in each sample grid")
    logs.add_argument("--ddpm_num_inference_steps", type=int, default=50, help="sampling steps for the grids")
    logs.add_argument("--checkpointing_steps", type=int, default=500, help="save the training state every N steps")
    logs.add_argument("--checkpoints_total_limit", type=int, help="keep at most this many checkpoints")
    logs.add_argument("--resume_from_checkpoint", help="a checkpoint folder, or 'latest' in --output_dir")

    add_evaluation_arguments(p)

    hub = p.add_argument_group("Hugging Face Hub")
    hub.add_argument("--push_to_hub", action="store_true", help="upload --output_dir when training ends")
    hub.add_argument("--hub_model_id", help="repo id, 'name' or 'user/name' (required with --push_to_hub)")
    hub.add_argument("--hub_token", help="token (default: HF_TOKEN or the logged-in token); never logged")
    hub.add_argument("--hub_private_repo", action="store_true", help="create the repo private")
    hub.add_argument("--license", default="apache-2.0", help="license in the model card metadata")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` and fill the defaults that depend on other arguments."""
    args = build_parser().parse_args(argv)
    builtin = args.dataset_name is None and args.train_data_dir is None
    if args.resolution is None:
        args.resolution = DEFAULT_RESOLUTION["digits" if builtin else "other"]
    if args.objective == "ddpm" and args.prediction_type is None:
        args.prediction_type = "epsilon"
    if args.class_conditional and args.label_column is None:
        args.label_column = "label"
    return args


def validate_args(args: argparse.Namespace) -> None:
    """Every check that needs no data and no model weights; raises :class:`ConfigError`."""
    _check(not (args.dataset_name and args.train_data_dir), "pass --dataset_name or --train_data_dir, not both.")
    if args.train_data_dir is not None:
        _check(os.path.isdir(args.train_data_dir), f"--train_data_dir {args.train_data_dir!r} is not a folder.")
        _check(
            _contains_image(args.train_data_dir),
            f"--train_data_dir {args.train_data_dir!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).",
        )
    if args.dataset_name is not None and looks_like_local_path(args.dataset_name):
        _check(os.path.exists(args.dataset_name), f"--dataset_name {args.dataset_name!r}: no such local path.")

    for name in ("train_batch_size", "eval_batch_size", "num_epochs", "gradient_accumulation_steps"):
        _check(getattr(args, name) >= 1, f"--{name} must be ≥ 1, got {getattr(args, name)}.")
    for name in ("train_batch_size", "eval_batch_size"):
        value = getattr(args, name)
        _check(value <= MAX_BATCH_SIZE, f"--{name} {value} is not allowed; pass at most {MAX_BATCH_SIZE}.")
    _check(0 <= args.seed <= MAX_SEED, f"--seed {args.seed} is not allowed; pass an integer in [0, {MAX_SEED}].")
    _check(
        1 <= args.resolution <= MAX_RESOLUTION,
        f"--resolution {args.resolution} is not allowed; pass an image side in pixels in [1, {MAX_RESOLUTION}].",
    )
    for name in FLOAT_ARGS:
        value = getattr(args, name)
        _check(value is None or math.isfinite(value), f"--{name} {value} is not allowed; pass a finite number.")
    for name, low, high in (("adam_beta1", 0, 1), ("adam_beta2", 0, 1)):
        value = getattr(args, name)
        _check(low <= value < high, f"--{name} must be in [{low}, {high}), got {value}.")
    for name in ("adam_epsilon", "adam_weight_decay"):
        _check(getattr(args, name) >= 0, f"--{name} must be ≥ 0, got {getattr(args, name)}.")
    for name in ("ema_inv_gamma", "ema_power"):
        _check(getattr(args, name) > 0, f"--{name} must be > 0, got {getattr(args, name)}.")
    for name in (
        "max_train_steps",
        "checkpointing_steps",
        "save_images_steps",
        "checkpoints_total_limit",
        "logging_steps",
    ):
        value = getattr(args, name)
        _check(value is None or value >= 1, f"--{name} must be ≥ 1, got {value}.")
    _check(args.ddpm_num_inference_steps >= 1, "--ddpm_num_inference_steps must be ≥ 1.")
    _check(args.dataloader_num_workers >= 0, "--dataloader_num_workers must be ≥ 0.")
    _check(args.lr_warmup_steps >= 0, f"--lr_warmup_steps must be ≥ 0, got {args.lr_warmup_steps}.")
    _check(args.learning_rate > 0, f"--learning_rate must be > 0, got {args.learning_rate}.")
    _check(args.max_grad_norm >= 0, f"--max_grad_norm must be ≥ 0, got {args.max_grad_norm}.")
    _check(
        2 <= args.ddpm_num_steps <= MAX_TRAIN_TIMESTEPS,
        f"--ddpm_num_steps must be in [2, {MAX_TRAIN_TIMESTEPS}], got {args.ddpm_num_steps}.",
    )
    _check(
        args.ddpm_num_inference_steps <= args.ddpm_num_steps,
        f"--ddpm_num_inference_steps {args.ddpm_num_inference_steps} is not allowed: the sample grids can take at "
        f"most --ddpm_num_steps ({args.ddpm_num_steps}) steps.",
    )
    logging_dir = os.path.normpath(args.logging_dir)
    _check(
        not os.path.isabs(logging_dir) and logging_dir != ".." and not logging_dir.startswith(".." + os.sep),
        f"--logging_dir {args.logging_dir!r} leaves --output_dir; pass a relative folder inside it (default 'logs').",
    )
    _check(0 <= args.class_dropout_prob < 1, f"--class_dropout_prob must be in [0, 1), got {args.class_dropout_prob}.")
    _check(0 < args.ema_max_decay <= 1, f"--ema_max_decay must be in (0, 1], got {args.ema_max_decay}.")
    validate_evaluation_args(args)

    if args.objective == "flow":
        _check(
            args.prediction_type is None,
            "--prediction_type applies to --objective ddpm; flow matching predicts the velocity ε − x0.",
        )
        _check(args.snr_gamma is None, "--snr_gamma applies to --objective ddpm only.")
        _check(args.flow_shift > 0, f"--flow_shift must be > 0, got {args.flow_shift}.")
        _check(args.logit_std > 0, f"--logit_std must be > 0, got {args.logit_std}.")
    else:
        _check(args.weighting_scheme == "uniform", "--weighting_scheme applies to --objective flow only.")
        _check(args.flow_shift == 1.0, "--flow_shift applies to --objective flow only.")
        _check(args.snr_gamma is None or args.snr_gamma > 0, f"--snr_gamma must be > 0, got {args.snr_gamma}.")

    try:
        unet_config = load_unet_config(args.model_config_name_or_path)
    except (OSError, ValueError) as err:
        raise ConfigError(str(err)) from None
    factor = min_resolution(unet_config)
    _check(
        args.resolution >= factor and args.resolution % factor == 0,
        f"--resolution {args.resolution} cannot be downsampled by the UNet "
        f"({args.model_config_name_or_path!r} halves the image {factor.bit_length() - 1} times); "
        f"use a multiple of {factor}.",
    )

    resume = args.resume_from_checkpoint
    if resume is not None and resume != "latest":
        _check(os.path.isdir(resume), f"--resume_from_checkpoint {resume!r}: no such checkpoint folder.")
        _check(
            CHECKPOINT_RE.match(os.path.basename(os.path.normpath(resume))) is not None,
            f"--resume_from_checkpoint {resume!r} is not a checkpoint-<step> folder written by train.py.",
        )
        try:
            check_checkpoint(resume)
        except CheckpointError as err:
            raise ConfigError(f"--resume_from_checkpoint: {err}") from None

    if args.hub_model_id is not None:
        problem = repo_id_problem(args.hub_model_id)
        _check(problem is None, str(problem))

    if args.push_to_hub:
        _check(args.hub_model_id is not None, "--push_to_hub needs --hub_model_id (e.g. 'your-name/ddpm-digits').")
        from huggingface_hub import get_token  # imported here: only pushes need it

        _check(
            args.hub_token is not None or get_token() is not None,
            "--push_to_hub needs a token: pass --hub_token, set HF_TOKEN, or run `hf auth login`.",
        )


FLOAT_ARGS = (
    "learning_rate", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon", "max_grad_norm",
    "class_dropout_prob", "snr_gamma", "logit_mean", "logit_std", "flow_shift", "ema_max_decay", "ema_inv_gamma",
    "ema_power",
)  # fmt: skip


def _contains_image(folder: str) -> bool:
    return any(is_image_file(f) for _, _, files in os.walk(folder) for f in files)
