"""Checkpoints: ``accelerate.save_state`` written under a temporary name, then renamed.

A checkpoint ``checkpoint-<step>`` holds what ``Accelerator.save_state`` writes (model,
optimizer, RNG states, accelerate's step counter) plus the objects registered with
``register_for_checkpointing``: the LR scheduler, the EMA weights and :class:`TrainingProgress`.
It is written to ``checkpoint-<step>.tmp``; once every process has finished writing, the main
process adds :data:`MANIFEST` (every file and its size), flushes everything to disk and renames
the folder. A crash or SIGKILL at any point therefore leaves either a complete checkpoint or a
``.tmp`` folder, and a checkpoint is only ever loaded if its manifest matches its files:
``latest`` skips (with a warning) any ``checkpoint-<step>`` folder that is half-written —
copied partially, truncated, or not written by train.py — and resumes from the newest intact one.

Loading is safe by construction: the weights are safetensors, accelerate loads the optimizer and
RNG files with ``torch.load(weights_only=True)``, and the registered objects (which accelerate
loads with ``weights_only=False``) are first test-loaded with ``weights_only=True`` by
:func:`check_checkpoint`, so a pickle holding anything but tensors and plain containers is
refused before it is ever unpickled. :func:`resume` is what both trainers call before their loop.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

from .errors import ConfigError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
PARTIAL_RE = re.compile(r"^checkpoint-(\d+)\.tmp$")
TMP_SUFFIX = ".tmp"
MANIFEST = "checkpoint_manifest.json"  # written last: its presence and sizes make a checkpoint complete
logger = logging.getLogger(__name__)


class CheckpointError(OSError):
    """A checkpoint could not be written, or one asked for is incomplete or unsafe to load."""


class TrainingProgress:
    """The step counter and the run's shape, saved in every checkpoint.

    ``num_processes`` and ``total_batch_size`` are recorded so that a resume under a different
    setup is reported (it continues, but is no longer the same run).
    """

    def __init__(self, num_processes: int = 1, total_batch_size: int = 0):
        self.global_step = 0
        self.num_processes, self.total_batch_size = num_processes, total_batch_size
        self.skipped_updates = 0  # updates skipped for a non-finite loss (--skip_nonfinite_loss)

    def state_dict(self) -> dict:
        state = {
            "global_step": self.global_step,
            "num_processes": self.num_processes,
            "total_batch_size": self.total_batch_size,
        }
        if self.skipped_updates:  # absent means 0 (and keeps the record of ordinary runs unchanged)
            state["skipped_updates"] = self.skipped_updates
        return state

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
        self.skipped_updates = int(state.get("skipped_updates", 0))


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
    """The checkpoint folder to resume from: a given path, the latest intact one, or None for a fresh run.

    ``latest`` walks the checkpoints newest first and skips, with a warning, every one that
    :func:`checkpoint_problem` finds incomplete; such a folder is never loaded.
    """
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint != "latest":
        return resume_from_checkpoint
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        logger.info("No checkpoint in %s: 'latest' starts a new training run.", output_dir)
        return None
    for _, path in reversed(checkpoints):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Skipping %s: %s. It is never loaded.", path, problem)
    logger.warning("No intact checkpoint in %s: 'latest' starts a new training run.", output_dir)
    return None


def write_manifest(folder: str) -> None:
    """Record every file of ``folder`` and its size in :data:`MANIFEST` (the last file written)."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder).replace(os.sep, "/")] = os.path.getsize(path)
    files.pop(MANIFEST, None)
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as f:
        json.dump({"format": 1, "files": dict(sorted(files.items()))}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def checkpoint_problem(folder: str) -> str | None:
    """Why ``folder`` is not a complete checkpoint written by train.py, or None if it is.

    Checks the manifest (present, readable) against the files (each present, with its recorded
    size). Cheap: file sizes only, no file is read except the manifest.
    """
    manifest = os.path.join(folder, MANIFEST)
    if not os.path.isfile(manifest):
        return f"it has no {MANIFEST} (half-written, or not written by train.py)"
    try:
        with open(manifest, encoding="utf-8") as f:
            files = json.load(f)["files"]
        expected = {str(name): int(size) for name, size in files.items()}
        if any(name.startswith("/") or ".." in name.split("/") for name in expected):
            raise ValueError("a file name leaves the folder")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"its {MANIFEST} is unreadable ({type(err).__name__}: {err})"
    for name, size in expected.items():
        path = os.path.join(folder, *name.split("/"))
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} has {os.path.getsize(path)} bytes instead of {size} (truncated or overwritten)"
    return None


def check_checkpoint(folder: str) -> None:
    """Raise :class:`CheckpointError` unless ``folder`` is complete and safe to hand to ``load_state``.

    accelerate loads the optimizer and RNG files with ``weights_only=True`` but unpickles the
    registered objects' files (``custom_checkpoint_<i>.pkl``) with ``weights_only=False``. Every
    pickle of the folder is therefore first loaded here with ``weights_only=True`` (accelerate's own
    loader, which allows the numpy arrays of RNG states): that only rebuilds tensors, numbers,
    strings and containers and refuses anything else, so a planted pickle that would run code is
    rejected before anything unpickles it.
    """
    import pickle

    from accelerate.utils.other import load as weights_only_load

    problem = checkpoint_problem(folder)
    if problem is not None:
        raise CheckpointError(f"{folder} is not a complete checkpoint: {problem}.")
    for name in sorted(os.listdir(folder)):
        if not name.endswith((".pkl", ".bin")):
            continue
        try:
            weights_only_load(os.path.join(folder, name), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, AttributeError, TypeError) as err:
            lines = str(err).strip().splitlines()
            raise CheckpointError(
                f"{os.path.join(folder, name)} holds more than tensors and plain containers; refusing to unpickle it "
                f"(it was not written by train.py): {lines[0] if lines else type(err).__name__}"
            ) from None


def _remove(path: str) -> None:
    """Delete a folder of ours; a symlink is unlinked, never followed out of the output folder."""
    if os.path.islink(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_partial_checkpoints(output_dir: str) -> None:
    """Deal with ``checkpoint-*.tmp`` folders left by a run that died while saving (main process only).

    A ``checkpoint-<step>.tmp`` whose manifest matches its files was complete and only missed its
    rename (a crash in between): it is renamed to ``checkpoint-<step>`` unless that exists. Every
    other ``.tmp`` folder is half-written: it is deleted, with a warning, and never loaded.
    """
    if not os.path.isdir(output_dir):
        return
    for name in sorted(os.listdir(output_dir)):
        if not (name.startswith("checkpoint-") and name.endswith(TMP_SUFFIX)):
            continue
        path = os.path.join(output_dir, name)
        match = PARTIAL_RE.match(name)
        final = os.path.join(output_dir, f"checkpoint-{match.group(1)}") if match else None
        if final and not os.path.islink(path) and not os.path.exists(final) and checkpoint_problem(path) is None:
            logger.warning("%s is complete but was not renamed when its run stopped: renaming it to %s.", path, final)
            os.replace(path, final)
            continue
        logger.warning("Removing %s: a checkpoint half-written by a run that stopped while saving; never loaded.", path)
        _remove(path)


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


def resume(accelerator, output_dir: str, resume_from_checkpoint: str | None, ema=None) -> str | None:
    """Prepare ``output_dir`` (writable, half-written checkpoints dealt with) and load the checkpoint asked for.

    Called on every process, after ``register_for_checkpointing``. Returns the checkpoint folder loaded
    (``--resume_from_checkpoint``: a folder, or ``latest``), or None for a fresh run. A checkpoint that is
    incomplete or holds more than tensors raises :class:`ConfigError` before anything is unpickled.
    """
    if accelerator.is_main_process:
        check_writable(output_dir)
        remove_partial_checkpoints(output_dir)
    accelerator.wait_for_everyone()
    resume_dir = resolve_resume(resume_from_checkpoint, output_dir)
    if resume_dir is None:
        return None
    if accelerator.is_main_process:
        logger.info("Resuming from %s", resume_dir)
    try:
        check_checkpoint(resume_dir)  # complete, and no pickle beyond tensors and containers
    except CheckpointError as err:
        raise ConfigError(f"cannot resume: {err}") from None
    accelerator.load_state(resume_dir)
    if ema is not None:
        ema.to(accelerator.device)
    return resume_dir


def save_checkpoint(accelerator, output_dir: str, step: int, total_limit: int | None) -> str:
    """Save the training state as ``output_dir/checkpoint-<step>``; called on every process.

    Raises :class:`CheckpointError` on every process if any of them could not write (disk full,
    read-only folder): the half-written folder is removed and every earlier checkpoint is intact.
    """
    from accelerate.utils import gather_object

    final = os.path.join(output_dir, f"checkpoint-{step}")
    partial = final + TMP_SUFFIX
    if accelerator.is_main_process and os.path.lexists(partial):
        _remove(partial)
    accelerator.wait_for_everyone()
    error = None
    try:
        accelerator.save_state(partial)
    except OSError as err:
        error = f"{type(err).__name__}: {err}"
    errors = [e for e in gather_object([error]) if e]  # every process learns whether any failed
    if not errors and accelerator.is_main_process:
        try:
            write_manifest(partial)
            _fsync_tree(partial)
            stale = final + ".old" + TMP_SUFFIX  # re-running a step in the same folder replaces the old copy
            if os.path.exists(final):
                os.replace(final, stale)
            os.replace(partial, final)
            _fsync_dir(output_dir)
            _remove(stale)
            if total_limit is not None:
                for _, old in list_checkpoints(output_dir)[:-total_limit]:
                    _remove(old)
        except OSError as err:
            errors = [f"{type(err).__name__}: {err}"]
    errors = [e for e in gather_object(errors) if e]
    if errors:
        if accelerator.is_main_process:
            _remove(partial)
        intact = [os.path.basename(p) for _, p in list_checkpoints(output_dir) if checkpoint_problem(p) is None]
        raise CheckpointError(
            f"could not write checkpoint-{step} in {output_dir!r}: {errors[0]}. "
            + (
                f"The checkpoints already written are intact ({', '.join(intact)}); free space or fix the folder, "
                "then continue with --resume_from_checkpoint latest."
                if intact
                else "No earlier checkpoint exists."
            )
        )
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
