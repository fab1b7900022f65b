"""What every trainer's loop is built on: the accelerate state, the launch check, the run's length, its batches,
the optimizer update and the loop's end.

``trainer.py`` (the UNet), ``classifier/trainer.py`` (the noise-aware classifier), ``vae/trainer.py`` (the
AutoencoderKL) and ``controlnet/trainer.py`` run: :func:`start_run` (:func:`make_accelerator`,
:func:`check_launch`), … prepare (:func:`prepare_model` for one model) …, :func:`run_length`, … resume …, then
``for epoch, index, batch in resumed_batches(...)``, one optimizer update per ``accumulate`` cycle, done by
:class:`OptimizerUpdates`. A trainer with a held-out evaluation evaluates when :func:`evaluation_due` and ends
with :func:`finish_run`. Lengths count optimizer updates.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from . import checkpoints
from .data import updates_per_epoch
from .errors import ConfigError
from .monitoring import MetricsLog, StepTimer, TrainingSummary, nonfinite_anywhere
from .optimization import make_ema, make_lr_scheduler, make_optimizer

logger = get_logger(__name__)


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


def check_launch(accelerator: Accelerator, script: str) -> None:
    """Refuse a launch whose processes did not join one group: each would train alone and overwrite the others.

    ``script`` names the training script in the message's example launch (``training/train.py``, …).
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ConfigError(
            f"{launched} processes were launched but accelerate joined {accelerator.num_processes}; without a "
            "GPU, launch with ACCELERATE_USE_CPU=1 (e.g. ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            f"--num_processes 2 {script} ...)."
        )


def start_run(args, script: str) -> Accelerator:
    """A run's first step: its ``Accelerator`` (:func:`make_accelerator`), the launch checked (:func:`check_launch`;
    ``script`` names the training script), this package's progress messages at INFO on the main process (the
    libraries', and the other processes', stay at WARNING), and every RNG seeded with ``--seed`` — for the initial
    weights only: every later draw is counter-based (``randomness.py``)."""
    accelerator = make_accelerator(args)
    check_launch(accelerator, script)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("scratch_diffusion").setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    set_seed(args.seed)
    return accelerator


class RunLength(NamedTuple):
    """How long a run is, in optimizer updates, and how many images one update takes (all processes)."""

    steps_per_epoch: int
    max_train_steps: int  # --max_train_steps, else --num_epochs whole epochs
    num_epochs: int  # the epochs started, the last one maybe cut short
    total_batch_size: int


def run_length(args, batches_per_epoch: int, num_processes: int) -> RunLength:
    """The run's length from ``--max_train_steps`` / ``--num_epochs`` and one process's batches per epoch."""
    steps_per_epoch = updates_per_epoch(batches_per_epoch, args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
    total_batch_size = args.train_batch_size * num_processes * args.gradient_accumulation_steps
    return RunLength(steps_per_epoch, max_train_steps, math.ceil(max_train_steps / steps_per_epoch), total_batch_size)


class PreparedModel(NamedTuple):
    """One trained model with everything :func:`prepare_model` made for it."""

    model: torch.nn.Module  # accelerate's wrapper of the model
    optimizer: torch.optim.Optimizer
    dataloader: object
    ema: object | None
    lr_scheduler: object
    progress: checkpoints.TrainingProgress
    length: RunLength


def prepare_model(accelerator: Accelerator, model: torch.nn.Module, dataloader, args) -> PreparedModel:
    """EMA, optimizer, ``accelerator.prepare``, the run's length, LR schedule and checkpointed progress of one model.

    What the UNet and classifier trainers share, in their order (the EMA copies the weights before ``prepare``);
    the LR schedule, progress and EMA are registered for checkpointing, so a resume restores them.
    """
    ema = make_ema(model, args)
    optimizer = make_optimizer(list(model.parameters()), args)
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    if ema is not None:
        ema.to(accelerator.device)
    length = run_length(args, len(dataloader), accelerator.num_processes)
    lr_scheduler = make_lr_scheduler(optimizer, args, length.max_train_steps)
    progress = checkpoints.TrainingProgress(accelerator.num_processes, length.total_batch_size)
    accelerator.register_for_checkpointing(lr_scheduler, progress, *([ema] if ema is not None else []))
    return PreparedModel(model, optimizer, dataloader, ema, lr_scheduler, progress, length)


def resumed_batches(accelerator: Accelerator, dataloader, length: RunLength, global_step: int) -> Iterator[tuple]:
    """``(epoch, index, batch)`` of every micro-batch from update ``global_step`` on, to the end of the last epoch.

    The data order is the epoch's (``set_epoch``); resuming mid-epoch skips the batches already trained on by
    index, without loading them, so a resumed run sees the very batches of the uninterrupted one. The caller
    stops at ``max_train_steps``; nothing is yielded when a run resumes from its final checkpoint.
    """
    if global_step >= length.max_train_steps:
        return
    first_epoch, skip_updates = divmod(global_step, length.steps_per_epoch)
    skip_batches = skip_updates * accelerator.gradient_accumulation_steps
    for epoch in range(first_epoch, length.num_epochs):
        dataloader.set_epoch(epoch)
        batches = dataloader
        if skip_batches:
            batches = accelerator.skip_first_batches(dataloader, skip_batches)
            batches.set_epoch(epoch)
        for index, batch in enumerate(batches, start=skip_batches):
            yield epoch, index, batch
        skip_batches = 0


@dataclass(frozen=True)
class Optimized:
    """Parameters stepped by one optimizer under one LR schedule; a trainer has one or more (a GAN's critic)."""

    parameters: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler


class OptimizerUpdates:
    """One optimizer update per ``accumulate`` cycle, the same in every trainer.

    Per micro-batch, inside ``accelerator.accumulate`` and after the backward pass(es), :meth:`step` records the
    loss and, at the cycle's last micro-batch (``sync_gradients``): skips a non-finite update when
    ``--skip_nonfinite_loss`` (all processes agree), clips each part's gradients to ``--max_grad_norm`` and
    steps its optimizer; every micro-batch ends with the gradients zeroed (accelerate makes both no-ops
    mid-cycle). After the block, :meth:`finish` closes an update: the LR schedules step (not when accelerate
    skipped the step for an fp16 overflow), the EMA follows the weights (not after a skipped update), the
    step counter, progress bar, throughput timer and loss log move on, and every ``--checkpointing_steps`` the
    log is flushed (a non-finite loss stops the run before its state is saved) and a checkpoint written.
    A skipped update still counts, so the data and the LR stay on the step. Use it as a context manager around
    the loop: leaving it normally flushes the loss log (so a diverged final state is never saved either), and
    the progress bar closes on every way out, so error messages start on their own line.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        args,
        progress: checkpoints.TrainingProgress,
        max_train_steps: int,
        optimized: Sequence[Optimized],
        ema=None,
        ema_parameters: Sequence[torch.nn.Parameter] = (),
    ):
        """``optimized``: every part the trainer trains; ``ema_parameters``: what the EMA follows (with ``ema``)."""
        self.accelerator, self.args, self.progress, self.max_train_steps = accelerator, args, progress, max_train_steps
        self.optimized, self.active = list(optimized), list(optimized)
        self.ema, self.ema_parameters = ema, list(ema_parameters)
        self.bar = tqdm(
            total=max_train_steps, initial=progress.global_step, desc="steps",
            disable=not accelerator.is_local_main_process,
        )  # fmt: skip
        self.metrics = MetricsLog(accelerator, self.bar, args.logging_steps)
        self.timer = StepTimer(progress.global_step, accelerator.num_processes)
        self.micro_losses: list[torch.Tensor] = []
        self.images_seen = 0  # this process's, since the last update
        self.skipped, self.bad_value = False, None

    def __enter__(self) -> OptimizerUpdates:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:
                self.metrics.flush()  # may raise NonFiniteLossError
        finally:
            self.bar.close()

    @property
    def global_step(self) -> int:
        """Optimizer updates done (skipped ones included), counting those of a run resumed from."""
        return self.progress.global_step

    @property
    def done(self) -> bool:
        return self.progress.global_step >= self.max_train_steps

    def step(self, loss: torch.Tensor, images: int, active: Sequence[Optimized] | None = None) -> None:
        """After one micro-batch's backward pass(es) of ``loss`` on ``images`` images, inside ``accumulate``.

        ``active``: the parts trained in this update (default: all); the first one's clip unscales every
        optimizer's gradients under fp16 (accelerate does that once, in its first ``clip_grad_norm_``).
        """
        self.active = list(self.optimized if active is None else active)
        self.micro_losses.append(loss.detach())
        self.images_seen += images
        sync = self.accelerator.sync_gradients
        self.skipped = False
        if sync and self.args.skip_nonfinite_loss:
            self.skipped, self.bad_value = nonfinite_anywhere(self.accelerator, self.micro_losses)
        if not self.skipped:
            if sync and self.args.max_grad_norm > 0:
                for i, part in enumerate(self.active):
                    clip = self.accelerator.clip_grad_norm_ if i == 0 else torch.nn.utils.clip_grad_norm_
                    clip(part.parameters, self.args.max_grad_norm)
            for part in self.active:
                part.optimizer.step()
        for part in self.optimized:
            part.optimizer.zero_grad(set_to_none=True)

    def finish(self) -> bool:
        """After the ``accumulate`` block: True when it ended an update (then the trainer's own hooks may run)."""
        if not self.accelerator.sync_gradients:
            return False
        lr = self.active[0].lr_scheduler.get_last_lr()[0]  # the LR this update used
        if not self.accelerator.optimizer_step_was_skipped:  # fp16 overflow: keep the LR where it is
            for part in self.active:
                part.lr_scheduler.step()
        if self.ema is not None and not self.skipped:
            self.ema.step(self.ema_parameters)
        self.progress.global_step += 1
        step = self.progress.global_step
        if self.skipped:
            self.progress.skipped_updates += 1
            logger.warning(
                f"Step {step}: the loss is {self.bad_value} (non-finite on at least one process); update "
                f"skipped ({self.progress.skipped_updates} so far, --skip_nonfinite_loss).",
                main_process_only=True,
            )
            self.accelerator.log({"skipped_nonfinite_updates": self.progress.skipped_updates}, step=step)
        else:
            extra = {} if self.ema is None else {"ema_decay": self.ema.cur_decay_value}
            self.metrics.add(step, torch.stack(self.micro_losses).mean(), lr=lr, **extra)
        self.micro_losses.clear()
        self.bar.update(1)
        self.timer.update(step, self.images_seen)
        self.images_seen = 0
        if step % self.args.checkpointing_steps == 0:
            self.metrics.flush()
            checkpoints.save_checkpoint(self.accelerator, self.args.output_dir, step, self.args.checkpoints_total_limit)
        return True


class TimedEvaluator(Protocol):
    """A trainer's evaluation as the loop calls it: on every process (the main one evaluates, the others wait at
    a barrier), summing the wall and CPU time it takes, so the throughput leaves it out."""

    seconds: float
    cpu_seconds: float

    def __call__(self, accelerator: Accelerator, model: torch.nn.Module, ema, step: int) -> None: ...


def evaluation_due(args, updates: OptimizerUpdates) -> bool:
    """After an update: ``--eval_steps`` N asks for an evaluation now — every N-th update but the last, whose
    evaluation :func:`finish_run` runs. Unset or 0: none during training."""
    return bool(args.eval_steps) and updates.global_step % args.eval_steps == 0 and not updates.done


def finish_run(
    accelerator: Accelerator, args, updates: OptimizerUpdates, evaluator: TimedEvaluator, model: torch.nn.Module, ema
) -> TrainingSummary:
    """After the loop (its ``with updates`` block left): the run's summary, the evaluations' time taken off, with
    its throughput logged; then the final evaluation (of the EMA weights) and all processes at a barrier.

    The main process then saves ``optimization.keep_ema_weights(ema, accelerator.unwrap_model(model))``.
    """
    summary = updates.timer.summary(args.output_dir, evaluator.seconds, evaluator.cpu_seconds)
    logger.info(f"{summary.images_per_second:.1f} images/s (first step and evaluations excluded).",
                main_process_only=True)  # fmt: skip
    evaluator(accelerator, model, ema, updates.global_step)
    accelerator.wait_for_everyone()
    return summary

