"""The training loop of ``scratch_diffusion.training``: :func:`train` and :func:`run_training`.

:func:`train` reads top to bottom: accelerate state → data → model, objective, optimizer, EMA →
resume, Hub repo, trackers → the loop (one optimizer update per ``accumulate`` cycle) → pipeline,
samples, model card → Hub push. ``train.py`` is its command line; :func:`run_training` is the same
from Python (``run_training(["--output_dir", "out", "--max_train_steps", "20"])``).

Exact resume: every random draw is seeded by (``--seed``, epoch, batch, process) — see
``randomness.py`` — and the data order by (``--seed``, epoch), so a run resumed from
``checkpoint-N`` continues with the very batches and noise of the uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from . import checkpoints, export, hub
from .cli import ConfigError, parse_args, validate_args
from .data import augment, drop_labels, load_training_data, make_dataloader, updates_per_epoch
from .evaluation import TrainingEvaluation
from .losses import make_objective
from .model_card import (
    build_model_card,
    card_hyperparameters,
    public_hyperparameters,
    save_model_card,
)
from .models import build_unet
from .monitoring import MetricsLog, TrainingSummary, nonfinite_anywhere
from .optimization import ema_weights, make_ema, make_optimizer
from .randomness import seeded_generator

logger = get_logger(__name__)


class OutputWriteError(OSError):
    """The final pipeline, sample grid or model card could not be written (disk full, read-only folder)."""


def make_accelerator(args) -> Accelerator:
    """A new ``Accelerator`` with this run's settings, whatever ran before it in this process.

    accelerate 1.x keeps its settings in process-wide singletons. A second ``Accelerator`` with the
    same settings, or another ``gradient_accumulation_steps`` (``GradientState`` takes the new
    plugin), trains exactly as in a fresh process; but one with another ``mixed_precision`` raises
    "AcceleratorState has already been initialized". So the run-level state (``AcceleratorState``,
    and ``GradientState`` with the previous run's dataloader references) is cleared here — the one
    place in the package that touches accelerate's private state — while ``PartialState`` (the
    launch: process group, ranks, device) is kept. A run replaces any ``Accelerator`` built before it.
    """
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    try:
        return Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=args.mixed_precision,
            log_with=None if args.logger == "none" else args.logger,
            project_config=ProjectConfiguration(
                project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
            ),
        )
    except ValueError as err:  # e.g. fp16 without a GPU
        raise ConfigError(str(err)) from None


def check_writable(output_dir: str) -> None:
    """Create ``output_dir`` and write a probe file into it, or raise :class:`ConfigError` (before training)."""
    probe = os.path.join(output_dir, f".write-test-{os.getpid()}.tmp")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"0")
        os.remove(probe)
    except OSError as err:
        raise ConfigError(f"--output_dir {output_dir!r} is not writable: {type(err).__name__}: {err}") from None


def log_sample_grid(accelerator, unet, ema, sampling_scheduler, args, step: int) -> None:
    """Sample ``--eval_batch_size`` images from the EMA weights and log the grid to tensorboard."""
    model = accelerator.unwrap_model(unet)
    model.eval()
    with ema_weights(ema, model):
        pipeline = export.build_pipeline(model, sampling_scheduler)
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
    accelerator = make_accelerator(args)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:  # each process would train alone and overwrite the others
        raise ConfigError(
            f"{launched} processes were launched but accelerate joined {accelerator.num_processes}; without a "
            "GPU, launch with ACCELERATE_USE_CPU=1 (e.g. ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            "--num_processes 2 training/train.py ...)."
        )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    level = logging.INFO if accelerator.is_main_process else logging.WARNING
    logging.getLogger("scratch_diffusion").setLevel(level)  # our progress messages; libraries stay at WARNING
    set_seed(args.seed)  # the UNet's initial weights; every later draw is counter-based

    # ---- data ------------------------------------------------------------------------------------
    with accelerator.main_process_first():
        data = load_training_data(args)
    dataloader = make_dataloader(data.dataset, args.train_batch_size, args.seed, args.dataloader_num_workers)

    # ---- model, objective, optimizer, EMA -------------------------------------------------------------
    unet = build_unet(args.model_config_name_or_path, args.resolution, data.num_channels, data.num_classes)
    num_parameters = sum(p.numel() for p in unet.parameters())
    objective = make_objective(args)
    sampling_scheduler = export.sampling_scheduler(objective.scheduler)
    ema = make_ema(unet, args)
    optimizer = make_optimizer(list(unet.parameters()), args)
    unet, optimizer, dataloader = accelerator.prepare(unet, optimizer, dataloader)
    if ema is not None:
        ema.to(accelerator.device)

    # Lengths count optimizer updates. The LR scheduler is not prepared (accelerate would step it
    # once per process): it is stepped once per update on every process, and checkpointed.
    steps_per_epoch = updates_per_epoch(len(dataloader), args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=max_train_steps
    )
    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    progress = checkpoints.TrainingProgress(accelerator.num_processes, total_batch_size)
    accelerator.register_for_checkpointing(lr_scheduler, progress, *([ema] if ema is not None else []))

    # ---- resume, Hub repo, trackers -----------------------------------------------------------------
    if accelerator.is_main_process:
        check_writable(args.output_dir)
        checkpoints.remove_partial_checkpoints(args.output_dir)
    accelerator.wait_for_everyone()
    resume_dir = checkpoints.resolve_resume(args.resume_from_checkpoint, args.output_dir)
    if resume_dir is not None:
        logger.info(f"Resuming from {resume_dir}", main_process_only=True)
        try:
            checkpoints.check_checkpoint(resume_dir)  # complete, and no pickle beyond tensors and containers
        except checkpoints.CheckpointError as err:
            raise ConfigError(f"cannot resume: {err}") from None
        accelerator.load_state(resume_dir)
        if ema is not None:
            ema.to(accelerator.device)
    global_step = progress.global_step

    repo_id, hub_error = None, None
    if args.push_to_hub and accelerator.is_main_process:
        try:
            repo_id = hub.create_repo(args.hub_model_id, args.hub_token, args.hub_private_repo)
        except hub.HubError as err:
            hub_error = str(err)
    repo_id, hub_error = broadcast_object_list([repo_id, hub_error])  # every process stops together
    if hub_error is not None:
        raise hub.HubError(hub_error)

    evaluation = TrainingEvaluation(
        args, data.dataset, sampling_scheduler, max_train_steps, accelerator, resume_dir is not None
    )
    accelerator.init_trackers("train", config=public_hyperparameters(args))
    logger.info(
        f"{data.description}: {len(data.dataset)} examples, {len(dataloader)} batches per process per epoch; "
        f"{accelerator.num_processes} process(es) × batch {args.train_batch_size} × accumulation "
        f"{args.gradient_accumulation_steps} = {total_batch_size} images per step; "
        f"{max_train_steps} steps ({num_epochs} epochs, {steps_per_epoch} steps each); "
        f"UNet {num_parameters / 1e6:.2f} M parameters; {objective.__class__.__name__}.",
        main_process_only=True,
    )

    # ---- the loop ---------------------------------------------------------------------------------
    generator = torch.Generator(device=accelerator.device)
    first_epoch, skip_updates = divmod(global_step, steps_per_epoch)
    skip_batches = skip_updates * args.gradient_accumulation_steps
    bar = tqdm(total=max_train_steps, initial=global_step, desc="steps", disable=not accelerator.is_local_main_process)
    metrics = MetricsLog(accelerator, bar, args.logging_steps)
    micro_losses: list[torch.Tensor] = []
    images_seen, timer_start, timer_step, cpu_start = 0, None, global_step, 0.0
    loop_start = time.perf_counter()
    unet.train()
    try:  # the progress bar is closed on every way out, so error messages start on their own line
        for epoch in range(first_epoch, num_epochs):
            if global_step >= max_train_steps:  # resumed from the final checkpoint
                break
            dataloader.set_epoch(epoch)
            batches = dataloader
            if skip_batches:  # resuming mid-epoch: skip by index, without loading the skipped batches
                batches = accelerator.skip_first_batches(dataloader, skip_batches)
                batches.set_epoch(epoch)
            for index, batch in enumerate(batches, start=skip_batches):
                seeded_generator(generator, args.seed, "batch", epoch, index, accelerator.process_index)
                skipped = False
                with accelerator.accumulate(unet):
                    x0 = augment(batch["images"], args.resolution, args.random_flip, generator)
                    labels = drop_labels(batch.get("labels"), args.class_dropout_prob, data.num_classes, generator)
                    loss = objective.loss(lambda x, t, c=labels: unet(x, t, class_labels=c).sample, x0, generator)
                    accelerator.backward(loss)
                    micro_losses.append(loss.detach())
                    if accelerator.sync_gradients and args.skip_nonfinite_loss:
                        skipped, bad_value = nonfinite_anywhere(accelerator, micro_losses)
                    if not skipped:
                        if accelerator.sync_gradients and args.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                images_seen += x0.shape[0]
                if not accelerator.sync_gradients:
                    continue

                # ---- one optimizer update done (or skipped: it still counts, so data and LR stay on the step) ----
                lr = lr_scheduler.get_last_lr()[0]  # the LR this update used
                if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: keep the LR where it is
                    lr_scheduler.step()
                if ema is not None and not skipped:
                    ema.step(unet.parameters())
                global_step += 1
                progress.global_step = global_step
                if skipped:
                    progress.skipped_updates += 1
                    logger.warning(
                        f"Step {global_step}: the loss is {bad_value} (non-finite on at least one process); update "
                        f"skipped ({progress.skipped_updates} so far, --skip_nonfinite_loss).",
                        main_process_only=True,
                    )
                    accelerator.log({"skipped_nonfinite_updates": progress.skipped_updates}, step=global_step)
                else:
                    extra = {} if ema is None else {"ema_decay": ema.cur_decay_value}
                    metrics.add(global_step, torch.stack(micro_losses).mean(), lr=lr, **extra)
                micro_losses.clear()
                bar.update(1)
                if timer_start is None:  # the first update warms up kernels and allocators
                    timer_start, cpu_start = time.perf_counter(), time.process_time()
                    timer_step, images_seen = global_step, 0

                if global_step % args.checkpointing_steps == 0:
                    metrics.flush()
                    checkpoints.save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
                if global_step % args.save_images_steps == 0 and accelerator.is_main_process and args.logger != "none":
                    log_sample_grid(accelerator, unet, ema, sampling_scheduler, args, global_step)
                if evaluation.due(global_step):
                    evaluation(accelerator, unet, ema, global_step)
                if global_step >= max_train_steps:
                    break
            skip_batches = 0
        metrics.flush()
    finally:
        bar.close()
    loop_end, cpu_end = time.perf_counter(), time.process_time()
    # Evaluations all run after the first update (timer_start), so their time comes off the timed span.
    elapsed = loop_end - timer_start - evaluation.seconds if timer_start is not None else 0.0
    cpu_elapsed = cpu_end - cpu_start - evaluation.cpu_seconds if timer_start is not None else 0.0
    timed_steps = global_step - timer_step
    images_per_second = images_seen * accelerator.num_processes / elapsed if elapsed > 0 else float("nan")
    evaluated = f"; {evaluation.seconds:.1f} s evaluating, not counted" if evaluation.enabled else ""
    logger.info(
        f"{timed_steps} steps at {images_per_second:.1f} images/s (first step excluded{evaluated}).",
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
        model = accelerator.unwrap_model(unet)
        model.eval()
        if ema is not None:
            ema.copy_to(model.parameters())
        pipeline = export.build_pipeline(model, sampling_scheduler)
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
        )
        try:
            export.image_grid(images).save(os.path.join(args.output_dir, "samples.png"))
            save_model_card(card, args.output_dir)  # written last: its presence marks a complete output
        except OSError as err:
            raise OutputWriteError(
                f"could not write samples.png / README.md to {args.output_dir!r}: {type(err).__name__}: {err}"
            ) from None
        logger.info(f"Saved the pipeline, samples.png and README.md to {args.output_dir}", main_process_only=True)
    accelerator.end_training()

    # ---- Hub -----------------------------------------------------------------------------------------
    if repo_id is not None and accelerator.is_main_process:
        url = hub.upload_output(args.output_dir, repo_id, args.hub_token, f"Training finished at step {global_step}")
        logger.info(f"Pushed {args.output_dir} to {url}", main_process_only=True)
    return TrainingSummary(
        global_step=global_step,
        images_per_second=images_per_second,
        output_dir=args.output_dir,
        training_seconds=loop_end - loop_start - evaluation.seconds,
        seconds_per_step=elapsed / timed_steps if timed_steps > 0 else float("nan"),
        cpu_seconds_per_step=cpu_elapsed / timed_steps if timed_steps > 0 else float("nan"),
        evaluation_seconds=evaluation.seconds,
    )
