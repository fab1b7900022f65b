"""The control network's training loop: :func:`train_controlnet` and :func:`run_controlnet_training`.

It reads like the UNet and classifier trainers and uses their pieces: accelerate state, the launch check, one
model's preparation and the optimizer update (``loop``), the data and its labels (``load_training_data``, the
epoch-seeded sampler, ``augment``), a latent pipeline's cached latents (``latent_data``), counter-based draws
(``randomness``), AdamW and EMA (``optimization``), atomic checkpoints with exact resume (``checkpoints``), the
throughput timer and loss log (``monitoring``), the held-out split (``vae.metrics``), the pipeline's own objective
(``objectives``, read from the pipeline as ``classifier/source.py`` reads it), the component attached to a saved
pipeline (``export``) and the Hub repo and push (``hub``). Its own: the frozen UNet (and VAE) — loaded exactly as
saved, ``requires_grad`` off, in eval mode, never in the optimizer or a checkpoint — and the control network
trained through :class:`~scratch_diffusion.control.ControlledUNet` on (sample, control image) pairs.

Exact resume: the crop/flip, the control and label dropout and the draw of (t, ε) of each micro-batch come from
a generator seeded by (``--seed``, epoch, batch, process); the evaluations draw privately, so a resumed run ends
with bit-identical weights.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import torch
from accelerate.logging import get_logger

from scratch_diffusion.control import ControlNet2DModel

from .. import checkpoints, export, hub
from ..classifier.source import describe_time_distribution, read_pipeline
from ..data import load_training_data, make_dataloader
from ..errors import ConfigError
from ..evaluation import private_randomness
from ..init_from import load_unet_from_pipeline
from ..latent_data import prepare_latent_training
from ..loop import Optimized, OptimizerUpdates, evaluation_due, finish_run, prepare_model, resumed_batches, start_run
from ..model_card import public_hyperparameters, save_model_card
from ..monitoring import TrainingSummary
from ..objectives import objective_class
from ..optimization import keep_ema_weights
from ..randomness import derive_seed, seeded_generator
from ..trainer import OutputWriteError
from ..vae.metrics import split_validation, validation_size
from . import card
from .cli import (
    COMPONENT,
    MAX_DEFAULT_VALIDATION,
    VALIDATION_SHARE,
    conditioning_of,
    parse_args,
    pipeline_objective,
    validate_args,
)
from .data import (
    ControlPairs,
    ControlRecipe,
    controlled_batch,
    evaluation_batch,
    load_paired_controls,
    make_transform,
)
from .evaluation import ControlEvaluator, HeldOut, controlled_unet

logger = get_logger(__name__)
METRICS_FILE = "controlnet_metrics.json"
FIGURE_FILE = "control_samples.png"


def run_controlnet_training(argv: Sequence[str]) -> TrainingSummary:
    """Train as ``train_controlnet.py`` would with these arguments, in this process; returns when it is saved."""
    args = parse_args(list(argv))
    validate_args(args)
    return train_controlnet(args)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with ``requires_grad`` off and in eval mode: used, never trained."""
    return module.requires_grad_(False).eval()


def _check_data_fits(args, data, saved, latents) -> None:
    """The data's classes are the UNet's, and its images the UNet's (pixel) or the VAE's (latent) channels."""
    if data.num_classes != saved.num_classes:
        raise ConfigError(
            f"--pipeline {args.pipeline!r} is conditioned on {saved.num_classes} classes, but {data.description} has "
            f"{data.num_classes}; allowed: the data the pipeline was trained on (its classes)."
        )
    if latents is None and data.num_channels != saved.unet_config.get("in_channels"):
        raise ConfigError(
            f"--pipeline {args.pipeline!r}'s UNet takes {saved.unet_config.get('in_channels')}-channel images, but "
            f"{data.description} has {data.num_channels} channel(s); allowed: the pipeline's kind of images."
        )


def train_controlnet(args: argparse.Namespace) -> TrainingSummary:
    """Run control network training as the (validated) command line says; returns when the output is saved."""
    accelerator = start_run(args, "training/train_controlnet.py")  # --seed: the conditioning encoder's initial weights
    saved = read_pipeline(args.pipeline)

    # ---- data: images (or the pipeline's latents) with what their controls are made from ---------------------
    with accelerator.main_process_first():
        data = load_training_data(args)
        paired = load_paired_controls(args, data)
    latents = None
    if args.vae_name_or_path is not None:
        with private_randomness(accelerator.device):  # loading and encoding draw nothing from training's RNG
            latents = prepare_latent_training(args, data, accelerator)
        freeze(latents.vae)
    _check_data_fits(args, data, saved, latents)
    if latents is None:
        pairs = ControlPairs(data.dataset, controls=paired)
    else:
        pairs = ControlPairs(latents.dataset, images=data.dataset, controls=paired)
    num_validation = validation_size(args.num_validation_images, len(pairs), VALIDATION_SHARE, MAX_DEFAULT_VALIDATION)
    train_set, held_out_set = split_validation(pairs, num_validation, args.seed)
    transform = make_transform(args)
    recipe = ControlRecipe(transform, args.resolution, args.random_flip, latents is not None,
                           args.control_dropout_prob, args.class_dropout_prob or 0.0, saved.num_classes)  # fmt: skip
    subset = torch.Generator().manual_seed(derive_seed(args.seed, "eval-subset"))
    evaluated = train_set if held_out_set is None else held_out_set
    x0, control, labels, images = evaluation_batch(evaluated, recipe, args.eval_num_images, subset)
    device = accelerator.device
    held_out = HeldOut(x0.to(device), control.to(device), None if labels is None else labels.to(device), images,
                       "held-out" if held_out_set is not None else "training")  # fmt: skip
    dataloader = make_dataloader(train_set, args.train_batch_size, args.seed, args.dataloader_num_workers)

    # ---- the frozen UNet, the control network made from it, the pipeline's objective, optimizer, EMA ------------
    unet = freeze(load_unet_from_pipeline(args.pipeline))
    vae_config = None if latents is None else dict(latents.vae.config)
    controlnet = ControlNet2DModel.from_unet(unet, **conditioning_of(args, saved, vae_config))
    unet.to(device)
    num_parameters = sum(p.numel() for p in controlnet.parameters())
    objective = pipeline_objective(args, saved)
    sampling_scheduler = objective.sampling_scheduler(latent=latents is not None)
    prepared = prepare_model(accelerator, controlnet, dataloader, args)
    model, optimizer, dataloader, ema, lr_scheduler, progress, length = prepared
    _, max_train_steps, num_epochs, total_batch_size = length

    # ---- resume, Hub repo, trackers -----------------------------------------------------------------
    checkpoints.resume(accelerator, args.output_dir, args.resume_from_checkpoint, ema)
    repo_id = hub.create_repo_before_training(accelerator, args)
    accelerator.init_trackers("train_controlnet", config=public_hyperparameters(args))
    vae = None if latents is None else latents.vae
    evaluator = ControlEvaluator(args, objective, unet, held_out, sampling_scheduler, vae, transform)
    space = "pixels" if latents is None else f"latents of {latents.source.name}"
    control_description = describe_control(args)
    logger.info(
        f"{data.description}{'' if latents is None else ' as ' + latents.description}: {len(train_set)} training "
        f"examples, {num_validation} held out; {total_batch_size} per step; {max_train_steps} steps ({num_epochs} "
        f"epochs); ControlNet2DModel {num_parameters / 1e6:.2f} M parameters for the frozen UNet of {args.pipeline} "
        f"({space}); control: {control_description}; {objective.__class__.__name__} "
        f"({args.time_distribution_source}).",
        main_process_only=True,
    )

    # ---- the loop: only the control network learns ------------------------------------------------------------
    controlled = controlled_unet(unet, accelerator.unwrap_model(model), model)  # calls through accelerate's wrapper
    generator = torch.Generator(device=device)
    parameters = list(model.parameters())
    updates = OptimizerUpdates(accelerator, args, progress, max_train_steps,
                               [Optimized(parameters, optimizer, lr_scheduler)], ema, parameters)  # fmt: skip
    model.train()
    with updates:
        for epoch, index, batch in resumed_batches(accelerator, dataloader, length, progress.global_step):
            seeded_generator(generator, args.seed, "batch", epoch, index, accelerator.process_index)
            with accelerator.accumulate(model):
                step = controlled_batch(batch, recipe, generator)
                conditions = {} if step.labels is None else {"class_labels": step.labels}

                def predict(x_t, t, step=step, conditions=conditions):
                    return controlled(x_t, t, step.control, **conditions).sample

                with accelerator.autocast():  # the frozen UNet under the run's precision too
                    loss = objective.loss(predict, step.x0, generator)
                accelerator.backward(loss)
                updates.step(loss, step.x0.shape[0])
            if not updates.finish():
                continue
            if evaluation_due(args, updates):
                evaluator(accelerator, model, ema, updates.global_step)
            if updates.done:
                break
    summary = finish_run(accelerator, args, updates, evaluator, model, ema)  # and the final evaluation

    # ---- outputs: the EMA control network, its metrics, the figure, the model card; --attach --------------------
    if accelerator.is_main_process:
        controlnet = keep_ema_weights(ema, accelerator.unwrap_model(model))
        final = evaluator.history[-1]
        record = {
            **final,
            "history": evaluator.history,
            "control": args.control or "paired",
            "control_description": control_description,
            "control_dropout_prob": args.control_dropout_prob,
            "class_dropout_prob": args.class_dropout_prob,
            "num_classes": saved.num_classes,
            "n_training_images": len(train_set),
            "noise_path": saved.noise_path,
            "objective": objective_class(args.objective).describe(args),
            "time_distribution": describe_time_distribution(args),
            "time_distribution_source": args.time_distribution_source,
            "space": space,
            "sample_shape": [unet.config.in_channels, unet.config.sample_size, unet.config.sample_size],
            "control_shape": [controlnet.config.conditioning_channels, args.resolution, args.resolution],
            "num_parameters": num_parameters,
            "images_per_second": summary.images_per_second,
            "seconds_per_step": summary.seconds_per_step,
            "training_seconds": summary.training_seconds,
        }  # fmt: skip
        save_outputs(args, controlnet, record, evaluator.figure, data, repo_id)
        if args.attach:
            export.attach_component(args.pipeline, COMPONENT, controlnet)
            logger.info(f"Saved the control network as the {COMPONENT} of {args.pipeline}", main_process_only=True)
    accelerator.end_training()

    hub.push_after_training(accelerator, args, repo_id, f"ControlNet training finished at step {updates.global_step}")
    return summary


def describe_control(args: argparse.Namespace) -> str:
    """The control images in words (the log and the card)."""
    if args.control == "low_resolution":
        factor = args.low_resolution_factor
        return f"the image at {factor}× lower resolution ({factor}×{factor} average pooling, repeated back)"
    if args.control == "edges":
        return "the image's Sobel edge map, normalised per image"
    if args.control_dir is not None:
        return "paired control images (a folder with the images' file names)"
    return f"paired control images (the dataset column {args.control_column!r})"


def save_outputs(args, controlnet: ControlNet2DModel, record: dict, figure, data, repo_id: str | None) -> None:
    """Write the control network, ``controlnet_metrics.json``, the figure and the model card (last)."""
    try:
        controlnet.save_pretrained(args.output_dir)
        record["figure"] = None
        if figure is not None:
            pixels = figure.permute(0, 2, 3, 1).float().numpy()
            export.image_grid(pixels).save(os.path.join(args.output_dir, FIGURE_FILE))
            record["figure"] = FIGURE_FILE
        with open(os.path.join(args.output_dir, METRICS_FILE), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        model_id = repo_id or os.path.basename(os.path.normpath(args.output_dir))
        model_card = card.build_controlnet_card(args, record, model_id, data.description, data.hub_dataset_id)
        save_model_card(model_card, args.output_dir)  # written last: its presence marks a complete output
    except OSError as err:
        raise OutputWriteError(
            f"could not write the control network to {args.output_dir!r}: {type(err).__name__}: {err}"
        ) from None
    logger.info(f"{card.describe(record)}. Saved the control network, {METRICS_FILE}"
                f"{', ' + FIGURE_FILE if record['figure'] else ''} and README.md to {args.output_dir}",
                main_process_only=True)  # fmt: skip


__all__ = ["FIGURE_FILE", "METRICS_FILE", "run_controlnet_training", "train_controlnet"]
