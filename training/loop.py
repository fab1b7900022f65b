"""What every trainer's loop is built on: the accelerate state, the launch check, the run's length and its batches.

``trainer.py`` (the UNet) and ``vae/trainer.py`` (the AutoencoderKL) both run: :func:`make_accelerator`,
:func:`check_launch`, … prepare …, :func:`run_length`, … resume …, then ``for epoch, index, batch in
resumed_batches(...)``, one optimizer update per ``accumulate`` cycle. Lengths count optimizer updates.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import NamedTuple

from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import ProjectConfiguration

from .data import updates_per_epoch
from .errors import ConfigError


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
