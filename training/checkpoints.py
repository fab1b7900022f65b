"""Checkpoints: ``accelerate.save_state`` written under a temporary name, then renamed.

A checkpoint ``checkpoint-<step>`` holds what ``Accelerator.save_state`` writes (model,
optimizer, RNG states, accelerate's step counter) plus the objects registered with
``register_for_checkpointing``: the LR scheduler, the EMA weights and :class:`TrainingProgress`.
It is written to ``checkpoint-<step>.tmp`` and renamed once every process has finished writing,
so a crash or SIGKILL at any point leaves either a complete checkpoint or none; ``latest`` only
ever sees complete ones.
"""

from __future__ import annotations

import logging
import os
import re
import shutil

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_SUFFIX = ".tmp"
logger = logging.getLogger(__name__)


class TrainingProgress:
    """The step counter and the run's shape, saved in every checkpoint.

    ``num_processes`` and ``total_batch_size`` are recorded so that a resume under a different
    setup is reported (it continues, but is no longer the same run).
    """

    def __init__(self, num_processes: int = 1, total_batch_size: int = 0):
        self.global_step = 0
        self.num_processes, self.total_batch_size = num_processes, total_batch_size

    def state_dict(self) -> dict:
        return {
            "global_step": self.global_step,
            "num_processes": self.num_processes,
            "total_batch_size": self.total_batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("num_processes", "total_batch_size"):
            if state[key] != getattr(self, key):
                logger.warning(
                    "Resuming a run saved with %s=%s under %s=%s: it continues, but not bit for bit.",
                    key,
                    state[key],
                    key,
                    getattr(self, key),
                )
        self.global_step = int(state["global_step"])


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in ``output_dir`` as (step, path), oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """The checkpoint folder to resume from: a given path, the latest one, or None for a fresh run."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint != "latest":
        return resume_from_checkpoint
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        logger.info("No checkpoint in %s: 'latest' starts a new training run.", output_dir)
        return None
    return checkpoints[-1][1]


def remove_partial_checkpoints(output_dir: str) -> None:
    """Delete ``checkpoint-*.tmp`` folders left by a run that died while saving (main process only)."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if name.startswith("checkpoint-") and name.endswith(TMP_SUFFIX):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def save_checkpoint(accelerator, output_dir: str, step: int, total_limit: int | None) -> str:
    """Save the training state as ``output_dir/checkpoint-<step>``; called on every process."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    partial = final + TMP_SUFFIX
    if accelerator.is_main_process and os.path.exists(partial):
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    accelerator.wait_for_everyone()  # every process wrote its RNG state
    if accelerator.is_main_process:
        _fsync_tree(partial)
        stale = final + ".old" + TMP_SUFFIX  # re-running a step in the same folder replaces the old copy
        if os.path.exists(final):
            os.replace(final, stale)
        os.replace(partial, final)
        _fsync_dir(output_dir)
        shutil.rmtree(stale, ignore_errors=True)
        if total_limit is not None:
            for _, old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _fsync_tree(folder: str) -> None:
    """Flush every file so the rename never publishes data still in flight (power loss, not just kill)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)
