#!/usr/bin/env python
"""Train a ``UNet2DModel`` from scratch with a DDPM-family or flow-matching objective.

    accelerate launch training/train.py --output_dir ddpm-digits --max_train_steps 3000
    python training/train.py --objective flow --weighting_scheme logit_normal --output_dir flow-digits

With no data argument it trains on the built-in scikit-learn digits (16×16, offline). The script
reads top to bottom: arguments → data → model, objective, optimizer, EMA → accelerate state and
resume → the loop (one optimizer update per ``accumulate`` cycle) → pipeline, samples, model card,
Hub push. Losses, data, checkpoints, export, card and Hub code live in ``scratch_diffusion.training``.

Exact resume: every random draw is seeded by (``--seed``, epoch, batch, process) — see
``randomness.py`` — and the data order by (``--seed``, epoch), so a run resumed from
``checkpoint-N`` continues with the very batches and noise of the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from diffusers import UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from scratch_diffusion.training import checkpoints, export, hub
from scratch_diffusion.training.cli import ConfigError, parse_args, validate_args
from scratch_diffusion.training.data import (
    DataError,
    augment,
    drop_labels,
    load_training_data,
    make_dataloader,
    updates_per_epoch,
)
from scratch_diffusion.training.losses import make_objective
from scratch_diffusion.training.model_card import (
    build_model_card,
    card_hyperparameters,
    public_hyperparameters,
    save_model_card,
)
from scratch_diffusion.training.models import build_unet
from scratch_diffusion.training.randomness import seeded_generator

logger = get_logger(__name__)


@dataclass
class TrainingSummary:
    """What a finished run reports (``train`` returns it; the benchmark reads the throughput)."""

    global_step: int
    images_per_second: float  # step-loop throughput over all processes, first step excluded
    output_dir: str


class NonFiniteLossError(RuntimeError):
    """The loss of an update was NaN or inf (found at a flush, before that state was checkpointed)."""

    def __init__(self, step: int, value: float | None):
        super().__init__(f"the loss was {value if value is not None else 'non-finite'} at step {step}")
        self.step, self.value = step, value


class MetricsLog:
    """Per-update metrics kept on the device and written every ``every`` updates.

    The loss stays a device tensor until :meth:`flush`, so the loop synchronises with the device
    once per ``--logging_steps`` updates rather than once per update. :meth:`flush` also checks
    that every loss since the last flush is finite, on all processes together, and raises
    :class:`NonFiniteLossError` naming the first bad step otherwise. The loop flushes before every
    checkpoint and before the final save, so a diverged state never reaches the disk.
    """

    def __init__(self, accelerator: Accelerator, bar, every: int):
        self.accelerator, self.bar, self.every = accelerator, bar, every
        self.rows: list[tuple[int, torch.Tensor, dict]] = []

    def add(self, step: int, loss: torch.Tensor, **scalars: float) -> None:
        self.rows.append((step, loss, scalars))
        if step % self.every == 0:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        steps = [step for step, _, _ in self.rows]
        losses = torch.stack([loss for _, loss, _ in self.rows]).double()
        step_values = torch.tensor(steps, dtype=torch.float64, device=losses.device)
        first_bad = torch.where(torch.isfinite(losses), math.inf, step_values).min()
        first_bad = self.accelerator.gather(first_bad.reshape(1)).min().reshape(1)  # every process decides alike
        *values, first_bad = torch.cat([losses, first_bad]).tolist()  # the one host sync of this flush
        for (step, _, scalars), loss in zip(self.rows, values):
            self.accelerator.log({"loss": loss, **scalars}, step=step)
        self.bar.set_postfix(loss=f"{values[-1]:.4f}", lr=f"{self.rows[-1][2]['lr']:.2e}")
        self.rows.clear()
        if first_bad != math.inf:
            raise NonFiniteLossError(int(first_bad), dict(zip(steps, values)).get(int(first_bad)))


def nonfinite_anywhere(accelerator: Accelerator, losses: list[torch.Tensor]) -> tuple[bool, float]:
    """Whether any process's loss of this update is NaN/inf (one host sync and one tiny collective)."""
    loss = torch.stack(losses).mean()
    bad = accelerator.reduce((~torch.isfinite(loss)).float().reshape(1), reduction="sum")
    bad, value = torch.cat([bad.double(), loss.detach().double().reshape(1)]).tolist()
    return bad > 0, value


class OutputWriteError(OSError):
    """The final pipeline, sample grid or model card could not be written (disk full, read-only folder)."""


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


def make_optimizer(params: list[torch.nn.Parameter], args) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this device has one, else the foreach implementation."""
    hyper = dict(
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    with contextlib.suppress(RuntimeError, ValueError):
        return torch.optim.AdamW(params, fused=True, **hyper)
    return torch.optim.AdamW(params, **hyper)  # torch picks foreach where the device supports it


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, model: torch.nn.Module):
    """Temporarily swap the EMA weights into ``model`` (no-op without EMA)."""
    if ema is None:
        yield model
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield model
    finally:
        ema.restore(model.parameters())


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


def train(args) -> TrainingSummary:
    """Run training as the (validated) command line says; returns when the output is saved."""
    try:
        accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=args.mixed_precision,
            log_with=None if args.logger == "none" else args.logger,
            project_config=ProjectConfiguration(
                project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
            ),
        )
    except ValueError as err:  # e.g. fp16 without a GPU
        raise ConfigError(str(err)) from None
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:  # each process would train alone and overwrite the others
        raise ConfigError(
            f"{launched} processes were launched but accelerate joined {accelerator.num_processes}; without a "
            "GPU, launch with ACCELERATE_USE_CPU=1 (e.g. ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            "--num_processes 2 training/train.py ...)."
        )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    for name in (__name__, "scratch_diffusion"):  # our progress messages; libraries stay at WARNING
        logging.getLogger(name).setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
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
    ema = None
    if args.use_ema:
        ema = EMAModel(
            unet.parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            foreach=True,
            model_cls=UNet2DModel,
            model_config=unet.config,
        )
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
    images_seen, timer_start, timer_step = 0, None, global_step
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
                    timer_start, timer_step, images_seen = time.perf_counter(), global_step, 0

                if global_step % args.checkpointing_steps == 0:
                    metrics.flush()
                    checkpoints.save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
                if global_step % args.save_images_steps == 0 and accelerator.is_main_process and args.logger != "none":
                    log_sample_grid(accelerator, unet, ema, sampling_scheduler, args, global_step)
                if global_step >= max_train_steps:
                    break
            skip_batches = 0
        metrics.flush()
    finally:
        bar.close()
    elapsed = time.perf_counter() - timer_start if timer_start is not None else 0.0
    images_per_second = images_seen * accelerator.num_processes / elapsed if elapsed > 0 else float("nan")
    logger.info(
        f"{global_step - timer_step} steps at {images_per_second:.1f} images/s (first step excluded).",
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
    return TrainingSummary(global_step, images_per_second, args.output_dir)


def _last_good_checkpoint(output_dir: str) -> str:
    intact = [p for _, p in checkpoints.list_checkpoints(output_dir) if checkpoints.checkpoint_problem(p) is None]
    if not intact:
        return "There is no checkpoint to resume from."
    return f"The last good checkpoint is {intact[-1]}; continue from it with --resume_from_checkpoint latest."


# Exit statuses of main(); the README ("Reliability") lists them.
EXIT_OK, EXIT_HUB, EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_WRITE = 0, 1, 2, 3, 4


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status.

    0 done; 1 the Hub push failed (the local output is complete); 2 bad input, before any training
    step; 3 a non-finite loss stopped training (nothing after the last good checkpoint was saved);
    4 a checkpoint or the final output could not be written (earlier checkpoints are intact).
    """
    args = parse_args(argv)
    try:
        validate_args(args)
        train(args)
    except (ConfigError, DataError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except hub.HubError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return EXIT_HUB
    except NonFiniteLossError as err:
        print(
            f"train.py: error: {err}: training stopped, and no state from that step on was saved. "
            f"{_last_good_checkpoint(args.output_dir)} Lower --learning_rate, or pass --skip_nonfinite_loss to skip "
            "such updates.",
            file=sys.stderr,
        )
        return EXIT_NONFINITE
    except checkpoints.CheckpointError as err:  # the message lists the intact checkpoints
        print(f"train.py: error: {err}", file=sys.stderr)
        return EXIT_WRITE
    except OutputWriteError as err:
        print(f"train.py: error: {err}. {_last_good_checkpoint(args.output_dir)}", file=sys.stderr)
        return EXIT_WRITE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
