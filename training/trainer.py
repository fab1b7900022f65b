"""The training loop of ``scratch_diffusion.training``: :func:`train` and :func:`run_training`.

:func:`train` reads top to bottom: accelerate state → data (with ``--vae_name_or_path``: its latents,
encoded once and cached, ``latent_data.py``) → model, objective, optimizer, EMA →
resume, Hub repo, trackers → the loop (one optimizer update per ``accumulate`` cycle) → pipeline,
samples, model card → Hub push. ``train.py`` is its command line; :func:`run_training` is the same
from Python (``run_training(["--output_dir", "out", "--max_train_steps", "20"])``).

Exact resume: every random draw is seeded by (``--seed``, epoch, batch, process) — see
``randomness.py`` — and the data order by (``--seed``, epoch), so a run resumed from
``checkpoint-N`` continues with the very batches and noise of the uninterrupted run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial

import torch
from accelerate.logging import get_logger

from scratch_diffusion.pipelines.denoiser import UNetModel

from . import checkpoints, export, hub
from .cli import parse_args, validate_args
from .data import augment, drop_labels, load_training_data, make_dataloader
from .evaluation import TrainingEvaluation, private_randomness
from .init_from import check_unet_fits, load_unet_from_pipeline
from .latent_data import latent_input, prepare_latent_training
from .loop import Optimized, OptimizerUpdates, prepare_model, resumed_batches, start_run
from .model_card import (
    build_model_card,
    card_hyperparameters,
    public_hyperparameters,
    save_model_card,
)
from .models import build_unet
from .monitoring import TrainingSummary
from .objectives import make_objective
from .optimization import ema_weights, keep_ema_weights
from .randomness import seeded_generator

logger = get_logger(__name__)


class OutputWriteError(OSError):
    """The final pipeline, sample grid or model card could not be written (disk full, read-only folder)."""


def log_sample_grid(accelerator, unet, ema, sampling_scheduler, vae, args, step: int) -> None:
    """Sample ``--eval_batch_size`` images from the EMA weights (decoded by ``vae`` if any); log the grid."""
    model = accelerator.unwrap_model(unet)
    model.eval()
    with ema_weights(ema, model):
        pipeline = export.build_pipeline(model, sampling_scheduler, vae=vae)
        images = export.generate_samples(pipeline, args.eval_batch_size, args.ddpm_num_inference_steps, args.seed)
    model.train()
    tracker = accelerator.get_tracker("tensorboard", unwrap=True)
    tracker.add_images("samples", images, step, dataformats="NHWC")


def run_training(argv: Sequence[str]) -> TrainingSummary:
    """Train as ``train.py`` would with these arguments, in this process; returns when the output is saved.

    Raises what the command line reports: :class:`ConfigError` / ``DataError`` (bad input, before
    any training step), ``HubError``, :class:`NonFiniteLossError`, ``CheckpointError`` and
    :class:`OutputWriteError`; argparse exits (``SystemExit(2)``) on an unknown or malformed
    argument. May be called any number of times in one process; each call builds its own Accelerator.
    """
    args = parse_args(list(argv))
    validate_args(args)
    return train(args)


def train(args) -> TrainingSummary:
    """Run training as the (validated) command line says; returns when the output is saved."""
    accelerator = start_run(args, "training/train.py")  # --seed: the UNet's initial weights

    # ---- data ------------------------------------------------------------------------------------
    with accelerator.main_process_first():
        data = load_training_data(args)
    latents = None  # --vae_name_or_path: the UNet trains on the VAE's cached latents (latent_data.py)
    if args.vae_name_or_path is not None:
        with private_randomness(accelerator.device):  # loading and encoding draw nothing from training's RNG
            latents = prepare_latent_training(args, data, accelerator)
    vae = None if latents is None else latents.vae
    train_set = data.dataset if latents is None else latents.dataset
    dataloader = make_dataloader(train_set, args.train_batch_size, args.seed, args.dataloader_num_workers)

    # ---- model, objective, optimizer, EMA -------------------------------------------------------------
    side, channels = (args.resolution, data.num_channels) if latents is None else (latents.size, latents.channels)
    if args.init_from is None:
        unet = build_unet(args.model_config_name_or_path, side, channels, data.num_classes)
    else:  # a saved pipeline's UNet, exactly as saved; refused before any step if it does not fit this run
        unet = load_unet_from_pipeline(args.init_from)
        check_unet_fits(unet.config, args.init_from, side, channels, data.num_classes)
    objective = make_objective(args)
    unet = objective.prepare_unet(unet)  # meanflow: a FlowMapUNet2DModel, equal to the UNet at the start
    num_parameters = sum(p.numel() for p in unet.parameters())
    sampling_scheduler = objective.sampling_scheduler(latent=vae is not None)
    prepared = prepare_model(accelerator, unet, dataloader, args)
    unet, optimizer, dataloader, ema, lr_scheduler, progress, length = prepared
    steps_per_epoch, max_train_steps, num_epochs, total_batch_size = length

    # ---- resume, Hub repo, trackers -----------------------------------------------------------------
    resume_dir = checkpoints.resume(accelerator, args.output_dir, args.resume_from_checkpoint, ema)
    global_step = progress.global_step
    repo_id = hub.create_repo_before_training(accelerator, args)

    resumed = resume_dir is not None
    evaluation = TrainingEvaluation(
        args, data.dataset, objective, sampling_scheduler, max_train_steps, accelerator, resumed, vae=vae
    )
    accelerator.init_trackers("train", config=public_hyperparameters(args))
    logger.info(
        f"{data.description}{'' if latents is None else ' as ' + latents.description}: "
        f"{len(data.dataset)} examples, {len(dataloader)} batches per process per epoch; "
        f"{accelerator.num_processes} process(es) × batch {args.train_batch_size} × accumulation "
        f"{args.gradient_accumulation_steps} = {total_batch_size} images per step; "
        f"{max_train_steps} steps ({num_epochs} epochs, {steps_per_epoch} steps each); "
        f"UNet {num_parameters / 1e6:.2f} M parameters; {objective.__class__.__name__}.",
        main_process_only=True,
    )

    # ---- the loop ---------------------------------------------------------------------------------
    generator = torch.Generator(device=accelerator.device)
    parameters = list(unet.parameters())
    trained = [Optimized(parameters, optimizer, lr_scheduler)]
    updates = OptimizerUpdates(accelerator, args, progress, max_train_steps, trained, ema, parameters)
    unet.train()
    model = UNetModel(unet)  # the one call of the UNet (pipelines/denoiser.py), as sampling makes it
    with updates:
        for epoch, index, batch in resumed_batches(accelerator, dataloader, length, global_step):
            seeded_generator(generator, args.seed, "batch", epoch, index, accelerator.process_index)
            with accelerator.accumulate(unet):
                if latents is None:
                    x0 = augment(batch["images"], args.resolution, args.random_flip, generator)
                else:
                    x0 = latent_input(batch, args.random_flip, generator)
                labels = drop_labels(batch.get("labels"), args.class_dropout_prob, data.num_classes, generator)
                objective.begin_step(updates.global_step, max_train_steps)
                loss = objective.loss(partial(model, class_labels=labels), x0, generator)
                accelerator.backward(loss)
                updates.step(loss, x0.shape[0])
            if not updates.finish():
                continue
            global_step = updates.global_step  # an update done (or skipped: it still counts)
            if global_step % args.save_images_steps == 0 and accelerator.is_main_process and args.logger != "none":
                log_sample_grid(accelerator, unet, ema, sampling_scheduler, vae, args, global_step)
            if evaluation.due(global_step):
                evaluation(accelerator, unet, ema, global_step)
            if updates.done:
                break
    global_step = updates.global_step
    timer = updates.timer
    summary = timer.summary(args.output_dir, evaluation.seconds, evaluation.cpu_seconds)
    evaluated = f"; {evaluation.seconds:.1f} s evaluating, not counted" if evaluation.enabled else ""
    logger.info(
        f"{timer.timed_steps} steps at {summary.images_per_second:.1f} images/s (first step excluded{evaluated}).",
        main_process_only=True,
    )
    if progress.skipped_updates:
        logger.warning(
            f"{progress.skipped_updates} update(s) were skipped for a non-finite loss (--skip_nonfinite_loss).",
            main_process_only=True,
        )

    # ---- outputs: pipeline with EMA weights, sample grid, model card -----------------------------------
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = keep_ema_weights(ema, accelerator.unwrap_model(unet))
        model.eval()
        pipeline = export.build_pipeline(model, sampling_scheduler, vae=vae)
        try:
            export.save_pipeline(pipeline, args.output_dir)
        except OSError as err:
            raise OutputWriteError(
                f"could not save the pipeline to {args.output_dir!r}: {type(err).__name__}: {err}"
            ) from None
        images = export.generate_samples(pipeline, args.eval_batch_size, args.ddpm_num_inference_steps, args.seed)
        card = build_model_card(
            args,
            model_id=repo_id or os.path.basename(os.path.normpath(args.output_dir)),
            data_description=data.description,
            hub_dataset_id=data.hub_dataset_id,
            num_classes=data.num_classes,
            num_parameters=num_parameters,
            hyperparameters=card_hyperparameters(
                args,
                num_processes=accelerator.num_processes,
                total_batch_size=total_batch_size,
                total_train_steps=max_train_steps,
                trained_epochs=num_epochs,
            ),
            final_evaluation=evaluation.last,
            best_evaluation=evaluation.best,
            latents=latents,
        )
        try:
            export.image_grid(images).save(os.path.join(args.output_dir, "samples.png"))
            save_model_card(card, args.output_dir)  # written last: its presence marks a complete output
        except OSError as err:
            raise OutputWriteError(
                f"could not write samples.png / README.md to {args.output_dir!r}: {type(err).__name__}: {err}"
            ) from None
        logger.info(f"Saved the pipeline, samples.png and README.md to {args.output_dir}", main_process_only=True)
        if args.guide_for is not None:
            export.attach_component(args.guide_for, "guide_unet", model)
            logger.info(f"Saved this run's UNet as the guide_unet of {args.guide_for}", main_process_only=True)
    accelerator.end_training()

    # ---- Hub -----------------------------------------------------------------------------------------
    hub.push_after_training(accelerator, args, repo_id, f"Training finished at step {global_step}")
    return summary
