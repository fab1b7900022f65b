"""The diffusion model a classifier is trained for: ``--pipeline``, or the objective arguments.

A classifier for guidance must see what the pipeline's UNet saw in training — the same path and schedule (so a
timestep means the same noise level), the same time distribution, the same sample space (pixels, or the VAE's
scaled latents) and size. :func:`read_pipeline` reads all of it from a saved ``ScratchDiffusionPipeline`` folder
(configs and the model card only, no weights): ``model_index.json`` (``noise_path``, ``noise_schedule``),
``unet/config.json``, ``vae/config.json`` and the card's hyperparameter table, where ``train.py`` recorded the
time distribution (``--weighting_scheme``, ``--logit_mean``, ``--logit_std``, ``--flow_shift``) and whether a latent
UNet saw posterior draws (``--vae_sample_posterior``). :func:`resolve_diffusion_model` fills the command line from
it; :func:`make_classifier_objective` gives the objective whose :meth:`~..objectives.base.Objective.noised` draws
the classifier's x_t.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from scratch_diffusion.pipelines.cross_path import noise_schedule_of
from scratch_diffusion.pipelines.saved_format import SavedPipelineError, read_json_object
from scratch_schedulers import ScratchDDPMScheduler

from ..errors import ConfigError
from ..errors import check as _check
from ..objectives import (
    OBJECTIVES,
    FlowMatchingObjective,
    Objective,
    choose_objective,
    make_objective,
    objective_class,
    own_arguments,
)
from ..objectives.flow import WEIGHTING_SCHEMES

logger = logging.getLogger(__name__)  # used before the accelerate state exists (validate_args)

DEFAULT_NUM_TRAIN_TIMESTEPS = 1000  # --ddpm_num_steps without --pipeline, as train.py's
# The time distribution of the flow objective: recorded in a pipeline's card, overridable on the command line.
TIME_ARGUMENTS = tuple(own_arguments(FlowMatchingObjective))
# What --pipeline fixes: refused on the command line with it.
PATH_ARGUMENTS = ("objective", "ddpm_num_steps", "ddpm_beta_schedule", "rescale_betas_zero_snr")
# Objective arguments that change only the diffusion loss, never the draw of x_t: refused.
LOSS_ONLY_ARGUMENTS = ("prediction_type", "snr_gamma")
# Every objective argument the command line leaves unset (None) until resolve_diffusion_model fills it.
UNSET_ARGUMENTS = ("objective", "ddpm_num_steps", *(a for cls in OBJECTIVES.values() for a in own_arguments(cls)))
CARD_ROW = re.compile(r"^\| `(\w+)` \| `(.*)` \|$", re.MULTILINE)
PATH_OF_OBJECTIVE = {"flow": "flow", "ddpm": "vp"}


@dataclass(frozen=True)
class SavedPipeline:
    """What a saved pipeline folder says about its UNet's training (read from its configs and card)."""

    folder: str
    noise_path: str
    noise_schedule: dict
    unet_config: dict
    vae_factor: int | None  # the VAE's downsampling factor; None: a pixel-space pipeline
    recorded: dict[str, str] = field(default_factory=dict)  # the card's hyperparameters, as written

    @property
    def num_classes(self) -> int | None:
        """The classes of a class-conditional UNet (its class embeddings minus the null class), else None."""
        embeds = self.unet_config.get("num_class_embeds")
        return None if embeds is None else embeds - 1

    @property
    def resolution(self) -> int:
        """The image side the UNet's samples decode to."""
        return self.unet_config["sample_size"] * (self.vae_factor or 1)


def read_pipeline(folder: str) -> SavedPipeline:
    """The training record of the pipeline saved in ``folder``; :class:`ConfigError` naming what is missing."""
    where = f"--pipeline {folder!r}"
    _check(os.path.isdir(folder), f"{where}: no such folder; pass a saved pipeline folder (a train.py --output_dir).")
    index_path = os.path.join(folder, "model_index.json")
    _check(
        os.path.isfile(index_path),
        f"{where} is not a pipeline folder (no model_index.json); pass the folder a train.py run wrote, or one "
        "saved by ScratchDiffusionPipeline.save_pretrained.",
    )
    try:
        index = read_json_object(index_path)
        unet_config = read_json_object(os.path.join(folder, "unet", "config.json"))
        vae_entry = index.get("vae")
        has_vae = isinstance(vae_entry, list) and bool(vae_entry) and vae_entry[0] is not None
        vae_config = read_json_object(os.path.join(folder, "vae", "config.json")) if has_vae else None
    except (SavedPipelineError, OSError) as err:
        raise ConfigError(f"{where} could not be read: {err}") from None
    path, schedule = index.get("noise_path"), index.get("noise_schedule")
    _check(
        path in PATH_OF_OBJECTIVE.values() and isinstance(schedule, dict),
        f"{where} does not record its noise path and schedule (noise_path {path!r}, noise_schedule {schedule!r} in "
        "model_index.json); allowed: a ScratchDiffusionPipeline folder.",
    )
    _check(
        isinstance(unet_config.get("sample_size"), int),
        f"{where}: unet/config.json states sample_size {unet_config.get('sample_size')!r}; allowed: an integer side.",
    )
    factor = None if vae_config is None else 2 ** (len(vae_config["block_out_channels"]) - 1)
    card = os.path.join(folder, "README.md")
    recorded = dict(CARD_ROW.findall(Path(card).read_text(encoding="utf-8"))) if os.path.isfile(card) else {}
    return SavedPipeline(folder, path, dict(schedule), unet_config, factor, recorded)


def _recorded_time_argument(saved: SavedPipeline, name: str, default: object) -> object:
    """``name``'s value as the card records it, converted like its default (str or float); None if absent."""
    value = saved.recorded.get(name)
    if value is None:
        return None
    try:
        return type(default)(value) if isinstance(default, float) else value
    except ValueError:
        raise ConfigError(f"--pipeline {saved.folder!r}: its card records {name} {value!r}, not a number.") from None


def resolve_diffusion_model(args: argparse.Namespace) -> SavedPipeline | None:
    """Fill the path, time-distribution, latent and resolution arguments from ``--pipeline`` (or the defaults).

    Without ``--pipeline``: the objective arguments as ``train.py`` takes them. With it: its path and schedule,
    its VAE (latent pipelines) and its resolution; the time distribution from its card unless given here
    (``args.time_distribution_source`` says which). Raises :class:`ConfigError`.
    """
    for name in LOSS_ONLY_ARGUMENTS:
        _check(
            getattr(args, name) is None,
            f"--{name} is not allowed: it changes the diffusion model's loss, not the noisy inputs a classifier sees.",
        )
    saved = None
    if args.pipeline is not None:
        saved = read_pipeline(args.pipeline)
        for name in PATH_ARGUMENTS:
            _check(getattr(args, name) is None, f"--{name} is not allowed with --pipeline: the pipeline fixes it.")
        for name, default in (("vae_name_or_path", None), ("vae_subfolder", None), ("latent_scaling_factor", "auto")):
            _check(
                getattr(args, name) == default,
                f"--{name} is not allowed with --pipeline: a latent pipeline's own VAE and latent scale are used.",
            )
        args.objective = next(name for name, path in PATH_OF_OBJECTIVE.items() if path == saved.noise_path)
        args.ddpm_num_steps = int(saved.noise_schedule["num_train_timesteps"])
        if saved.noise_path == "vp":  # for the card: the schedule itself is taken whole (make_classifier_objective)
            args.ddpm_beta_schedule = saved.noise_schedule.get("beta_schedule", "linear")
            args.rescale_betas_zero_snr = bool(saved.noise_schedule.get("rescale_betas_zero_snr", False))
        if saved.vae_factor is not None:  # its VAE and scale; posterior draws if its UNet trained on them
            args.vae_name_or_path, args.vae_subfolder = args.pipeline, "vae"
            args.vae_sample_posterior |= saved.recorded.get("vae_sample_posterior") == "True"
        _check(
            args.resolution in (None, saved.resolution),
            f"--resolution {args.resolution} is not allowed with --pipeline {args.pipeline!r}, whose samples are "
            f"{saved.resolution}×{saved.resolution}; allowed: {saved.resolution} (or leave it unset).",
        )
        args.resolution = saved.resolution
    else:
        choose_objective(args)
        if args.ddpm_num_steps is None:
            args.ddpm_num_steps = DEFAULT_NUM_TRAIN_TIMESTEPS
    chosen = objective_class(args.objective)
    given = [name for name in own_arguments(chosen) if getattr(args, name) is not None]
    recorded = []
    for name, default in own_arguments(chosen).items():
        if getattr(args, name) is None and saved is not None and name in TIME_ARGUMENTS:
            setattr(args, name, _recorded_time_argument(saved, name, default))
            recorded += [name] if getattr(args, name) is not None else []
        if getattr(args, name) is None:
            setattr(args, name, default)
    chosen.fill_defaults(args)
    if chosen is FlowMatchingObjective:
        _check(
            args.weighting_scheme in WEIGHTING_SCHEMES,
            f"--weighting_scheme {args.weighting_scheme!r} (from {args.pipeline or 'the command line'}) is not "
            f"allowed; pass one of {', '.join(WEIGHTING_SCHEMES)}.",
        )
    if saved is None:
        args.time_distribution_source = "the command line"
    elif chosen is not FlowMatchingObjective:
        args.time_distribution_source = "the VP path's (uniform t, as every DDPM-family pipeline)"
    elif recorded:
        args.time_distribution_source = f"the pipeline's model card ({', '.join(recorded)})" + (
            f"; given: {', '.join(given)}" if given else ""
        )
    else:
        args.time_distribution_source = "the command line and defaults (the pipeline's card records none)"
        logger.warning(
            f"--pipeline {args.pipeline!r} records no time distribution in its model card; training on "
            f"{args.weighting_scheme} σ (pass --weighting_scheme/--logit_mean/--logit_std/--flow_shift to match it)."
        )
    return saved


def describe_time_distribution(args: argparse.Namespace) -> str:
    """The noise levels the classifier trains at, in words (the card and the metrics record)."""
    if args.objective != "flow":
        return f"t ~ U{{0..{args.ddpm_num_steps - 1}}}"
    normal = args.weighting_scheme == "logit_normal"
    logit = f", logit(σ) ~ N({args.logit_mean:g}, {args.logit_std:g}²)" if normal else ""
    shift = f", shifted by {args.flow_shift:g}" if args.flow_shift != 1 else ""
    return f"{args.weighting_scheme} σ{logit}{shift}"


def make_classifier_objective(args: argparse.Namespace, saved: SavedPipeline | None) -> tuple[Objective, dict]:
    """The objective whose ``noised`` draws the classifier's inputs, and the path's ``noise_schedule``.

    A VP pipeline's schedule is taken whole (β range and given betas too), not rebuilt from the command line.
    """
    if saved is not None and saved.noise_path == "vp":
        return objective_class("ddpm")(ScratchDDPMScheduler(**saved.noise_schedule)), dict(saved.noise_schedule)
    objective = make_objective(args)
    schedule = noise_schedule_of(objective.scheduler, PATH_OF_OBJECTIVE[args.objective])
    return objective, dict(saved.noise_schedule) if saved is not None else schedule
