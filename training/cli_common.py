"""Argument groups and checks shared by the trainers' command lines (``train.py``, ``train_vae.py``, …).

Each ``add_*_arguments`` adds one argument group; each ``validate_*`` raises :class:`ConfigError` with the
offending value and the allowed ones. A trainer composes them with its own model arguments.
"""

from __future__ import annotations

import argparse
import math
import os

from scratch_diffusion.images import IMAGE_EXTENSIONS, is_image_file
from scratch_diffusion.pipelines.inputs import MAX_BATCH_SIZE
from scratch_diffusion.pipelines.loading import looks_like_local_path

from .checkpoints import CHECKPOINT_RE, CheckpointError, check_checkpoint
from .errors import ConfigError
from .errors import check as _check
from .hub import repo_id_problem

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
DEFAULT_RESOLUTION = {"digits": 16, "other": 64}
MAX_RESOLUTION = 4096  # image side in pixels; beyond it a typo, refused before any data is decoded
MAX_SEED = 2**32 - 1  # numpy's seed range (accelerate's set_seed seeds numpy too)
# The float arguments of the shared groups; each must be finite.
COMMON_FLOAT_ARGS = (
    "learning_rate", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon", "max_grad_norm",
    "ema_max_decay", "ema_inv_gamma", "ema_power",
)  # fmt: skip


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """``--dataset_name``, ``--train_data_dir``, ``--resolution`` …: what the trainers read."""
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
    data.add_argument(
        "--digits_split",
        choices=("all", "train"),
        default="all",
        help="built-in digits only: all 1,797, or the metric's 70 %% training split (1,257), so that the metric's "
        "held-out reference digits stay unseen",
    )


def add_training_arguments(p: argparse.ArgumentParser, default_output_dir: str) -> argparse._ArgumentGroup:
    """Output folder, seed, batch, length, optimizer, LR schedule, precision and EMA; returns the group."""
    train = p.add_argument_group("training")
    train.add_argument("--output_dir", default=default_output_dir, help="checkpoints, logs, final model")
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
    return train


def add_logging_arguments(p: argparse.ArgumentParser, image_grids: bool = True) -> argparse._ArgumentGroup:
    """Tensorboard, image grids (unless ``image_grids`` is False) and checkpoints (with resume); returns the group."""
    logs = p.add_argument_group("logging, samples and checkpoints" if image_grids else "logging and checkpoints")
    logs.add_argument("--logger", choices=("tensorboard", "none"), default="tensorboard")
    logs.add_argument("--logging_dir", default="logs", help="tensorboard folder, relative to --output_dir")
    logs.add_argument("--logging_steps", type=int, default=10, help="write loss/LR every N steps (one device sync)")
    if image_grids:
        logs.add_argument("--save_images_steps", type=int, default=1000, help="log an image grid every N steps")
        logs.add_argument("--eval_batch_size", type=int, default=16, help="images in each image grid")
    logs.add_argument("--checkpointing_steps", type=int, default=500, help="save the training state every N steps")
    logs.add_argument("--checkpoints_total_limit", type=int, help="keep at most this many checkpoints")
    logs.add_argument("--resume_from_checkpoint", help="a checkpoint folder, or 'latest' in --output_dir")
    return logs


def add_hub_arguments(p: argparse.ArgumentParser) -> None:
    """``--push_to_hub`` and its repo, token, visibility and license."""
    hub = p.add_argument_group("Hugging Face Hub")
    hub.add_argument("--push_to_hub", action="store_true", help="upload --output_dir when training ends")
    hub.add_argument("--hub_model_id", help="repo id, 'name' or 'user/name' (required with --push_to_hub)")
    hub.add_argument("--hub_token", help="token (default: HF_TOKEN or the logged-in token); never logged")
    hub.add_argument("--hub_private_repo", action="store_true", help="create the repo private")
    hub.add_argument("--license", default="apache-2.0", help="license in the model card metadata")


def add_held_out_arguments(
    group: argparse._ArgumentGroup, share: float, max_default: int, examples: str = "images", held_out: str = ""
) -> None:
    """``--num_validation_images`` and ``--eval_steps`` of a trainer evaluated on a seeded held-out split.

    The split is ``vae.metrics.split_validation`` of ``validation_size(--num_validation_images, …, share,
    max_default)``; ``loop.evaluation_due`` reads ``--eval_steps`` and ``loop.finish_run`` evaluates at the end.
    ``examples`` names what is held out, ``held_out`` (default: ``examples``) says it more precisely.
    """
    group.add_argument(
        "--num_validation_images",
        type=int,
        help=f"{held_out or examples} held out of training (seeded) and evaluated on; 0: evaluate on training "
        f"{examples}; unset: {share * 100:g} %% of the data, at most {max_default}",
    )
    group.add_argument(
        "--eval_steps", type=int, help="also evaluate every N optimizer steps (unset or 0: at the end only)"
    )


def validate_held_out_args(args: argparse.Namespace) -> None:
    """The arguments of :func:`add_held_out_arguments`: unset or ≥ 0."""
    _check(
        args.num_validation_images is None or args.num_validation_images >= 0,
        f"--num_validation_images must be ≥ 0, got {args.num_validation_images}.",
    )
    _check(args.eval_steps is None or args.eval_steps >= 0, f"--eval_steps must be ≥ 0, got {args.eval_steps}.")


def fill_data_defaults(args: argparse.Namespace) -> None:
    """The data defaults that depend on other arguments: the resolution, the label column."""
    builtin = args.dataset_name is None and args.train_data_dir is None
    if args.resolution is None:
        args.resolution = DEFAULT_RESOLUTION["digits" if builtin else "other"]
    if getattr(args, "class_conditional", False) and args.label_column is None:
        args.label_column = "label"


def validate_data_args(args: argparse.Namespace) -> None:
    """The data source exists and holds images; the resolution is in range."""
    _check(not (args.dataset_name and args.train_data_dir), "pass --dataset_name or --train_data_dir, not both.")
    _check(
        args.digits_split == "all" or (args.dataset_name is None and args.train_data_dir is None),
        f"--digits_split {args.digits_split!r} applies to the built-in digits only (no --dataset_name or "
        "--train_data_dir); allowed with a dataset: all.",
    )
    if args.train_data_dir is not None:
        _check(os.path.isdir(args.train_data_dir), f"--train_data_dir {args.train_data_dir!r} is not a folder.")
        _check(
            _contains_image(args.train_data_dir),
            f"--train_data_dir {args.train_data_dir!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).",
        )
    if args.dataset_name is not None and looks_like_local_path(args.dataset_name):
        _check(os.path.exists(args.dataset_name), f"--dataset_name {args.dataset_name!r}: no such local path.")
    _check(
        1 <= args.resolution <= MAX_RESOLUTION,
        f"--resolution {args.resolution} is not allowed; pass an image side in pixels in [1, {MAX_RESOLUTION}].",
    )
    _check(args.dataloader_num_workers >= 0, "--dataloader_num_workers must be ≥ 0.")


def validate_training_args(args: argparse.Namespace) -> None:
    """The shared training and logging arguments: sizes, seed, lengths, optimizer, EMA, logging folder.

    The image-grid arguments are checked where the parser has them (``add_logging_arguments``' ``image_grids``).
    """
    sizes = [name for name in ("train_batch_size", "eval_batch_size") if hasattr(args, name)]
    for name in (*sizes, "num_epochs", "gradient_accumulation_steps"):
        _check(getattr(args, name) >= 1, f"--{name} must be ≥ 1, got {getattr(args, name)}.")
    for name in sizes:
        value = getattr(args, name)
        _check(value <= MAX_BATCH_SIZE, f"--{name} {value} is not allowed; pass at most {MAX_BATCH_SIZE}.")
    _check(0 <= args.seed <= MAX_SEED, f"--seed {args.seed} is not allowed; pass an integer in [0, {MAX_SEED}].")
    check_finite(args, COMMON_FLOAT_ARGS)
    for name, low, high in (("adam_beta1", 0, 1), ("adam_beta2", 0, 1)):
        value = getattr(args, name)
        _check(low <= value < high, f"--{name} must be in [{low}, {high}), got {value}.")
    for name in ("adam_epsilon", "adam_weight_decay"):
        _check(getattr(args, name) >= 0, f"--{name} must be ≥ 0, got {getattr(args, name)}.")
    for name in ("ema_inv_gamma", "ema_power"):
        _check(getattr(args, name) > 0, f"--{name} must be > 0, got {getattr(args, name)}.")
    for name in ("max_train_steps", "checkpointing_steps", "save_images_steps", "checkpoints_total_limit",
                 "logging_steps"):  # fmt: skip
        value = getattr(args, name, None)
        _check(value is None or value >= 1, f"--{name} must be ≥ 1, got {value}.")
    _check(args.lr_warmup_steps >= 0, f"--lr_warmup_steps must be ≥ 0, got {args.lr_warmup_steps}.")
    _check(args.learning_rate > 0, f"--learning_rate must be > 0, got {args.learning_rate}.")
    _check(args.max_grad_norm >= 0, f"--max_grad_norm must be ≥ 0, got {args.max_grad_norm}.")
    _check(0 < args.ema_max_decay <= 1, f"--ema_max_decay must be in (0, 1], got {args.ema_max_decay}.")
    logging_dir = os.path.normpath(args.logging_dir)
    _check(
        not os.path.isabs(logging_dir) and logging_dir != ".." and not logging_dir.startswith(".." + os.sep),
        f"--logging_dir {args.logging_dir!r} leaves --output_dir; pass a relative folder inside it (default 'logs').",
    )


def check_finite(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Each float argument in ``names`` is unset or finite (argparse's ``float`` accepts 'nan' and 'inf')."""
    for name in names:
        value = getattr(args, name)
        _check(value is None or math.isfinite(value), f"--{name} {value} is not allowed; pass a finite number.")


def validate_resume_and_hub_args(args: argparse.Namespace, example_repo: str = "your-name/ddpm-digits") -> None:
    """``--resume_from_checkpoint`` names an intact checkpoint; a push has a valid repo id and a token."""
    resume = args.resume_from_checkpoint
    if resume is not None and resume != "latest":
        _check(os.path.isdir(resume), f"--resume_from_checkpoint {resume!r}: no such checkpoint folder.")
        _check(
            CHECKPOINT_RE.match(os.path.basename(os.path.normpath(resume))) is not None,
            f"--resume_from_checkpoint {resume!r} is not a checkpoint-<step> folder written by a trainer here.",
        )
        try:
            check_checkpoint(resume)
        except CheckpointError as err:
            raise ConfigError(f"--resume_from_checkpoint: {err}") from None

    if args.hub_model_id is not None:
        problem = repo_id_problem(args.hub_model_id)
        _check(problem is None, str(problem))

    if args.push_to_hub:
        _check(args.hub_model_id is not None, f"--push_to_hub needs --hub_model_id (e.g. {example_repo!r}).")
        from huggingface_hub import get_token  # imported here: only pushes need it

        _check(
            args.hub_token is not None or get_token() is not None,
            "--push_to_hub needs a token: pass --hub_token, set HF_TOKEN, or run `hf auth login`.",
        )


def _contains_image(folder: str) -> bool:
    return any(is_image_file(f) for _, _, files in os.walk(folder) for f in files)
