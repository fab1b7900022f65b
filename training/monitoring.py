"""What the training loop reports: the run's summary and throughput, the buffered loss log, non-finite-loss checks."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator


@dataclass(frozen=True)
class TrainingSummary:
    """What a finished run reports (``train`` and ``run_training`` return it).

    The throughput figures exclude the first update of the call (kernel and allocator warm-up) and
    the evaluations (``--eval_steps``; their time is ``evaluation_seconds``), and are ``nan`` when the
    call ran fewer than two updates (e.g. resumed from the final checkpoint).
    """

    global_step: int  # optimizer updates done, counting those of a run resumed from
    images_per_second: float  # over all processes, first update excluded
    output_dir: str
    training_seconds: float  # wall time of this call's step loop, first update included; no evaluation, saving, Hub
    seconds_per_step: float  # mean wall time of one update, first update excluded
    cpu_seconds_per_step: float  # the same in this process's CPU time (all its threads): steadier on a shared host
    evaluation_seconds: float = 0.0  # wall time of this call's --eval_steps evaluations; excluded from the rest


class StepTimer:
    """The throughput of a run's loop, for its :class:`TrainingSummary`: the first update (warm-up) is left out.

    Build it just before the loop; call :meth:`update` after every optimizer update with the images that
    update took (all its micro-batches, this process), and :meth:`summary` after the loop, with the time the
    evaluations took (they all run after the first update, so it comes off the timed span).
    """

    def __init__(self, global_step: int, num_processes: int):
        self.loop_start, self.num_processes = time.perf_counter(), num_processes
        self.start: float | None = None  # the end of the first update
        self.cpu_start, self.start_step, self.images, self.global_step = 0.0, global_step, 0, global_step

    def update(self, global_step: int, images: int) -> None:
        self.global_step = global_step
        if self.start is None:  # the first update warms up kernels and allocators
            self.start, self.cpu_start, self.start_step = time.perf_counter(), time.process_time(), global_step
        else:
            self.images += images

    @property
    def timed_steps(self) -> int:
        """The updates timed: those of this call after its first."""
        return self.global_step - self.start_step

    def summary(self, output_dir: str, evaluation_seconds: float, evaluation_cpu_seconds: float) -> TrainingSummary:
        """The summary, with ``evaluation_seconds`` (wall) / ``evaluation_cpu_seconds`` taken off the timed span."""
        end, cpu_end = time.perf_counter(), time.process_time()
        elapsed = end - self.start - evaluation_seconds if self.start is not None else 0.0
        cpu_elapsed = cpu_end - self.cpu_start - evaluation_cpu_seconds if self.start is not None else 0.0
        steps, nan = self.timed_steps, float("nan")
        return TrainingSummary(
            global_step=self.global_step,
            images_per_second=self.images * self.num_processes / elapsed if elapsed > 0 else nan,
            output_dir=output_dir,
            training_seconds=end - self.loop_start - evaluation_seconds,
            seconds_per_step=elapsed / steps if steps > 0 else nan,
            cpu_seconds_per_step=cpu_elapsed / steps if steps > 0 else nan,
            evaluation_seconds=evaluation_seconds,
        )


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
